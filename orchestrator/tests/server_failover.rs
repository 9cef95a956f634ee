//! A client with several server addresses (`--addr a,b,c`) on three `tugboat server`s
//! sharing one etcd: when the server it talks to is killed (kill -9), its calls go to the
//! next one and give the same answers; a watch open on the killed server is re-opened on
//! the next from the same revision, with no change lost or repeated; a node heartbeating
//! through that client stays Ready. Prints `client failover: X ms`.
//!
//! A real etcd on loopback (tests/common/etcd.rs; SKIP without the binary) and three server
//! processes on 127.0.0.1 with plain HTTP and no auth, killed by pid at the end.

#[path = "common/etcd.rs"]
mod etcd;

use etcd::wait_for;
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::model::NodeStatus;
use tugboat::spec::ServiceSpec;
use tugboat::wire::{ObjectChange, WatchKind};

/// Every change a watch from `from` sees until one is about `until`'s key.
async fn watch_until(
    client: &ApiClient,
    mut from: u64,
    until: &str,
) -> Result<Vec<ObjectChange>, String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|c: &ObjectChange| c.key.ends_with(until)) {
        if Instant::now() > deadline {
            return Err(format!("no change to {until} in 20 s; saw {seen:?}"));
        }
        let batch = client
            .watch(WatchKind::Services, from, Duration::from_secs(5), None)
            .await
            .map_err(|e| e.to_string())?;
        seen.extend(batch.changes);
        from = batch.revision + 1;
    }
    Ok(seen)
}

fn keys(changes: &[ObjectChange]) -> Vec<(String, u64)> {
    changes
        .iter()
        .map(|c| (c.key.clone(), c.revision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_the_next_server_when_its_server_dies() {
    let Some((_etcd, _dir, mut servers)) = etcd::three_servers(
        "a_client_moves_to_the_next_server_when_its_server_dies",
        "server-failover",
    ) else {
        return;
    };
    let addrs: Vec<String> = tokio::task::block_in_place(|| {
        wait_for(
            "three servers and a leader",
            Duration::from_secs(20),
            || {
                let addrs: Option<Vec<String>> = servers.iter().map(|s| s.addr()).collect();
                let leaders = servers
                    .iter()
                    .filter(|s| s.role() == Some("leader"))
                    .count();
                addrs.filter(|_| leaders == 1)
            },
        )
    });
    let dump = etcd::outputs;

    // The client lists all three; it talks to the first.
    let client = ApiClient::new(&addrs.join(","), None);
    let witness = ApiClient::new(&addrs[2], None);
    let start = client.services().await.unwrap().revision + 1;
    for name in ["s1", "s2"] {
        client
            .create_service(name, &ServiceSpec::new("app:1"))
            .await
            .unwrap();
    }
    let before = watch_until(&client, start, "s2").await.unwrap();
    let resume_from = before.last().unwrap().revision + 1;

    // A node registered through the client, heartbeating through it every 200 ms.
    let registration = tugboat::wire::NodeRegistration {
        runtimes: vec![],
        name: "n1".into(),
        labels: Default::default(),
        capacity: tugboat::model::Resources::new(4000, 8 << 30, 0),
        address: Some("127.0.0.1".into()),
        subnet: None,
        volumes: vec![],
        agent_url: None,
    };
    client.register_node(&registration).await.unwrap();
    let failed_beats = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let beats = {
        let client = client.clone();
        let failed = failed_beats.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = client.heartbeat("n1", &Default::default()).await {
                    eprintln!("heartbeat: {e}");
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // A watch waiting on the first server when it dies.
    let open_watch = {
        let client = client.clone();
        tokio::spawn(async move { watch_until(&client, resume_from, "s3").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.base(), format!("http://{}", addrs[0]));
    servers[0].child.kill().unwrap();
    servers[0].child.wait().unwrap();

    // The same answers, from the next server.
    let killed_at = Instant::now();
    let listed = client.services().await.unwrap();
    let failover = killed_at.elapsed();
    println!("client failover: {} ms", failover.as_millis());
    assert!(failover < Duration::from_secs(1), "{failover:?}");
    assert_eq!(client.base(), format!("http://{}", addrs[1]));
    let names = |l: &tugboat::client::Listed<tugboat::model::Service>| {
        l.items.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&listed), names(&witness.services().await.unwrap()));
    let err = client.scale("nope", 1).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "a 4xx is an answer: {err}");
    assert_eq!(client.base(), format!("http://{}", addrs[1]));

    // A write through the client (now on the second server) reaches the open watch.
    client
        .create_service("s3", &ServiceSpec::new("app:1"))
        .await
        .unwrap();
    let after = open_watch
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", dump(&servers)));

    // Nothing lost, nothing twice: the two watches together are one watch from the start.
    let reference = watch_until(&witness, start, "s3").await.unwrap();
    let mut joined = keys(&before);
    joined.extend(keys(&after));
    assert_eq!(joined, keys(&reference));

    // The node stays Ready through the change of server (past the lost grace).
    let watched_from = Instant::now();
    while watched_from.elapsed() < Duration::from_secs(4) {
        let nodes = witness.nodes().await.unwrap().items;
        let status = nodes.iter().find(|n| n.name == "n1").map(|n| n.status);
        assert_eq!(
            status,
            Some(NodeStatus::Ready),
            "n1 {:?} after the kill:\n{}",
            killed_at.elapsed(),
            dump(&servers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    beats.abort();
    assert_eq!(
        failed_beats.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every heartbeat reached a server"
    );

    // Every server gone: the error names every address.
    for s in &mut servers[1..] {
        s.child.kill().unwrap();
        s.child.wait().unwrap();
    }
    let err = client.services().await.unwrap_err().to_string();
    for addr in &addrs {
        assert!(err.contains(addr.as_str()), "{err}");
    }
}

/// `tugboat get servers` through the command line: (name, role, api) per row.
fn get_servers(addrs: &str) -> Vec<(String, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .args(["--addr", addrs, "get", "servers"])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME"), "{text}");
    // Aligned columns: ROLE and API start at the same place on every line.
    let role_at = header.find("ROLE").unwrap();
    let api_at = header.find("API").unwrap();
    lines
        .map(|line| {
            assert!(line.len() > api_at, "{text}");
            (
                line[..role_at].trim().to_string(),
                line[role_at..api_at].trim().to_string(),
                line[api_at..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_servers_lists_every_server_and_the_leader() {
    let Some((_etcd, _dir, mut servers)) = etcd::three_servers(
        "get_servers_lists_every_server_and_the_leader",
        "get-servers",
    ) else {
        return;
    };
    let (addrs, leader) = tokio::task::block_in_place(|| etcd::addrs_and_leader(&servers));
    let all = addrs.join(",");

    let rows = tokio::task::block_in_place(|| {
        wait_for("get servers lists 3", Duration::from_secs(10), || {
            let rows = get_servers(&all);
            (rows.len() == 3).then_some(rows)
        })
    });
    let mut apis: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    apis.sort();
    let mut expected: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    expected.sort();
    assert_eq!(apis, expected);
    let leaders: Vec<_> = rows.iter().filter(|r| r.1 == "leader").collect();
    assert_eq!(leaders.len(), 1, "{rows:?}");
    assert_eq!(leaders[0].2, format!("http://{}", addrs[leader]));
    assert_eq!(rows.iter().filter(|r| r.1 == "follower").count(), 2);

    // describe cluster carries the same list.
    let client = ApiClient::new(&all, None);
    assert_eq!(client.describe_cluster().await.unwrap().servers.len(), 3);

    // kill -9 of the leader: it drops out, and another is listed as leader.
    let killed_at = Instant::now();
    servers[leader].child.kill().unwrap();
    servers[leader].child.wait().unwrap();
    let new_leader = loop {
        if let Ok(list) = client.servers().await {
            let leaders: Vec<_> = list
                .iter()
                .filter(|s| s.role == tugboat::wire::ServerRole::Leader)
                .collect();
            if list.len() == 2 && leaders.len() == 1 {
                break leaders[0].api_url.clone();
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "get servers after kill -9 of the leader: {:?}",
            client.servers().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "get servers: new leader listed {:.1} s after kill -9",
        killed_at.elapsed().as_secs_f64()
    );
    assert_ne!(new_leader, format!("http://{}", addrs[leader]));
    let rows = get_servers(&all);
    assert_eq!(rows.len(), 2, "{rows:?}");
}
