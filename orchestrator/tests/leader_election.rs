//! Several `tugboat server`s on one etcd: one leads (runs the controllers), the others
//! follow and serve the API; SIGTERM of the leader hands over at once, kill -9 of the leader
//! makes another lead within 3 s, and its controllers act; a leader cut off from etcd stops
//! leading and says so, and the API answers 503. A node heartbeating to a follower stays
//! ready: the follower relays what it hears to the leader.
//!
//! A real etcd on loopback (tests/common/etcd.rs; SKIP without the binary) and three server
//! processes on 127.0.0.1 with plain HTTP and no auth, each with its own data dir in a temp
//! dir, all killed by pid at the end. Prints `leader failover: X.X s`.

#[path = "common/etcd.rs"]
mod etcd;

use etcd::wait_for;
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::spec::ServiceSpec;

async fn instance_count(client: &ApiClient, service: &str) -> Option<usize> {
    client
        .instances(Some(service))
        .await
        .ok()
        .map(|l| l.items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_3_seconds() {
    let Some((etcd, _dir, mut servers)) =
        etcd::three_servers("a_killed_leader_is_replaced_within_3_seconds", "election")
    else {
        return;
    };
    let dump = etcd::outputs;

    // Exactly one leads; every server says its store and role.
    let leader = tokio::task::block_in_place(|| {
        wait_for(
            "one leader and two followers",
            Duration::from_secs(20),
            || {
                let roles: Vec<_> = servers.iter().map(|s| s.role()).collect();
                let leaders = roles.iter().filter(|r| **r == Some("leader")).count();
                let followers = roles.iter().filter(|r| **r == Some("follower")).count();
                let up = servers.iter().all(|s| s.addr().is_some());
                (up && leaders == 1 && followers == 2)
                    .then(|| roles.iter().position(|r| *r == Some("leader")).unwrap())
            },
        )
    });
    for s in &servers {
        assert!(
            s.output()
                .contains(&format!("store etcd {}", etcd.endpoint)),
            "{}",
            s.output()
        );
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().unwrap()).collect();
    let follower = (leader + 1) % 3;

    // A write through a follower's API; the leader's controllers act on it.
    let via_follower = ApiClient::new(&addrs[follower], None);
    via_follower
        .create_service("web", &ServiceSpec::new("app:1"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while instance_count(&via_follower, "web").await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the leader did not create web's instance:\n{}",
            dump(&servers)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A node that heartbeats to a follower stays ready past the lost grace (3 s): the
    // follower relays what it hears to the leader, whose node controller decides.
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
    via_follower.register_node(&registration).await.unwrap();
    let beats = {
        let client = via_follower.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat("n1", &Default::default()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let watched_from = Instant::now();
    while watched_from.elapsed() < Duration::from_secs(4) {
        let nodes = via_follower.nodes().await.unwrap().items;
        let status = nodes.iter().find(|n| n.name == "n1").map(|n| n.status);
        assert_eq!(
            status,
            Some(tugboat::model::NodeStatus::Ready),
            "n1 after {:?} of heartbeats to a follower:\n{}",
            watched_from.elapsed(),
            dump(&servers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    beats.abort();

    // SIGTERM of the leader: it gives up its lease, another leads at once.
    let stopped_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(servers[leader].child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = servers[leader].child.wait().unwrap();
    assert!(
        status.success(),
        "a SIGTERM stops the server cleanly: {status}"
    );
    let mut alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let leader = tokio::task::block_in_place(|| {
        wait_for(
            "a new leader after SIGTERM of the old one",
            Duration::from_secs(10),
            || {
                alive
                    .iter()
                    .copied()
                    .find(|i| servers[*i].role() == Some("leader"))
            },
        )
    });
    let handover = stopped_at.elapsed();
    println!(
        "leader handover on SIGTERM: {:.1} s",
        handover.as_secs_f64()
    );
    assert!(
        handover < Duration::from_millis(1500),
        "handover took {handover:?}:\n{}",
        dump(&servers)
    );

    // kill -9 of the leader: another leads within 3 s.
    let killed_at = Instant::now();
    servers[leader].child.kill().unwrap();
    servers[leader].child.wait().unwrap();
    alive.retain(|i| *i != leader);
    let survivors = alive;
    let new_leader = tokio::task::block_in_place(|| {
        wait_for(
            "a new leader after kill -9 of the old one",
            Duration::from_secs(10),
            || {
                survivors
                    .iter()
                    .copied()
                    .find(|i| servers[*i].role() == Some("leader"))
            },
        )
    });
    let failover = killed_at.elapsed();
    println!("leader failover: {:.1} s", failover.as_secs_f64());
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}:\n{}",
        dump(&servers)
    );

    // The new leader's controllers act: a scale is carried out, with no instance twice.
    let via_other = ApiClient::new(&addrs[new_leader], None);
    via_other.scale("web", 3).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let instances = via_other.instances(Some("web")).await.unwrap().items;
        let mut slots: Vec<u32> = instances.iter().map(|i| i.slot).collect();
        slots.sort();
        if slots == [0, 1, 2] {
            break;
        }
        assert!(
            instances.len() <= 3,
            "more instances than replicas: {slots:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the new leader did not scale web to 3 (slots {slots:?}):\n{}",
            dump(&servers)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // etcd gone: the leader cannot renew its lease, stops leading and says so; the API
    // answers 503 and says why.
    drop(etcd);
    let err = via_other.services().await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(
        err.to_string().contains("store_unavailable")
            || err.to_string().contains("does not answer"),
        "{err}"
    );
    tokio::task::block_in_place(|| {
        wait_for(
            "the leader cut off from etcd says it stopped leading",
            Duration::from_secs(10),
            || {
                let out = servers[new_leader].output();
                let after = out.rsplit("role leader").next().unwrap_or("");
                after.contains("stopped leading").then_some(())
            },
        )
    });
    for s in &mut servers {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
}
