//! The control plane on a 3-member etcd loses members: with one member killed (-9)
//! everything keeps working; with two, the API answers 503 and says why, and the leader
//! says it stopped leading; when a member returns, all recovers and the controllers act.
//!
//! A real etcd cluster on loopback (tests/common/etcd.rs; SKIP without the binary), two
//! `tugboat server` processes on it, everything killed by pid at the end.

#[path = "common/etcd.rs"]
mod etcd;

use etcd::{wait_for, EtcdCluster, ServerProcess};
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::spec::ServiceSpec;

/// Poll the API until `check` holds, at most `timeout`.
async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn instances(client: &ApiClient, service: &str) -> Option<usize> {
    client
        .instances(Some(service))
        .await
        .ok()
        .map(|l| l.items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_members_and_getting_them_back() {
    let mut cluster = match EtcdCluster::start(3) {
        Ok(cluster) => cluster,
        Err(reason) => {
            println!("SKIP losing_etcd_members_and_getting_them_back: {reason}");
            return;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("tugboat-test-etcd-faults-")
        .tempdir()
        .unwrap();
    let prefix = etcd::unique_prefix("faults");
    let servers: Vec<ServerProcess> = (0..2)
        .map(|n| ServerProcess::start(dir.path(), n, &cluster.endpoints(), &prefix))
        .collect();
    // Both up (each printed its address) and one leads.
    let leader = tokio::task::block_in_place(|| {
        wait_for("a leader and a follower", Duration::from_secs(20), || {
            let roles: Vec<_> = servers.iter().map(|s| s.role()).collect();
            let up = servers.iter().all(|s| s.addr().is_some());
            (up && roles.contains(&Some("leader")) && roles.contains(&Some("follower")))
                .then(|| roles.iter().position(|r| *r == Some("leader")).unwrap())
        })
    });
    let follower = 1 - leader;
    let api = ApiClient::new(&servers[follower].addr().unwrap(), None);
    let dump = || {
        servers
            .iter()
            .map(|s| s.output())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    // One member gone: writes are stored and the controllers act on them.
    cluster.kill(0);
    api.create_service("web", &ServiceSpec::new("app:1"))
        .await
        .unwrap();
    eventually(
        "web's instance created with a member down",
        Duration::from_secs(15),
        async || instances(&api, "web").await == Some(1),
    )
    .await;

    // And the leader kept leading through it (its lease renewed on another member): one
    // term, never a follower of another. A renewal stuck on the killed member may make it
    // pause its controllers and go on with the same term ("role leader again"), which
    // etcd's lease guarantees nobody else led during.
    let out = servers[leader].output();
    assert!(
        out.matches("role leader (").count() == 1
            && out.matches("stopped leading").count() == out.matches("role leader again").count(),
        "leadership changed when one member of three went:\n{}",
        dump()
    );

    // Two gone: no quorum. The API answers 503 and says the store does not answer; the
    // leader cannot renew its lease and says it stopped.
    cluster.kill(1);
    let mut last = String::new();
    eventually(
        "503 store_unavailable without quorum",
        Duration::from_secs(20),
        async || match api.services().await {
            Err(e) if e.status() == Some(503) => {
                last = e.to_string();
                true
            }
            other => {
                last = format!("{other:?}");
                false
            }
        },
    )
    .await;
    assert!(last.contains("does not answer"), "{last}");
    tokio::task::block_in_place(|| {
        wait_for(
            "the leader says it stopped leading",
            Duration::from_secs(15),
            || {
                let out = servers[leader].output();
                out.rsplit("role leader")
                    .next()
                    .is_some_and(|after| after.contains("stopped leading"))
                    .then_some(())
            },
        )
    });

    // A member back: quorum again. The API answers, a leader is elected, and a scale is
    // carried out by its controllers.
    cluster.restart(1).unwrap();
    eventually(
        "the API answers again",
        Duration::from_secs(30),
        async || api.services().await.is_ok(),
    )
    .await;
    api.scale("web", 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while instances(&api, "web").await != Some(2) {
        assert!(
            Instant::now() < deadline,
            "no leader scaled web after quorum returned:\n{}",
            dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        servers
            .iter()
            .filter(|s| s.role() == Some("leader"))
            .count(),
        1,
        "{}",
        dump()
    );
    drop(servers);
    drop(cluster);
}
