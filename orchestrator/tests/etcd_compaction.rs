//! `tugboat server --store etcd --etcd-compaction-interval`: the leader compacts etcd's
//! history to the revision of one interval before, so a watch from before then is told to
//! list again (410 `compacted`) while a watch from now goes on; the flag without etcd, or
//! of zero, is refused before anything starts. A real etcd on loopback (SKIP without it).

#[path = "common/etcd.rs"]
mod etcd;

use etcd::{wait_for, ServerProcess};
use std::time::Duration;
use tugboat::client::ApiClient;
use tugboat::wire::WatchKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_etcd_one_interval_behind() {
    let etcd = match etcd::Etcd::start() {
        Ok(etcd) => etcd,
        Err(reason) => {
            println!("SKIP the_leader_compacts_etcd_one_interval_behind: {reason}");
            return;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("tugboat-test-compaction-")
        .tempdir()
        .unwrap();
    let prefix = etcd::unique_prefix("compaction");
    let server = ServerProcess::start_with(
        dir.path(),
        0,
        &etcd.endpoint,
        &prefix,
        &["--etcd-compaction-interval", "1s"],
    );
    let addr = tokio::task::block_in_place(|| {
        wait_for("the server leads", Duration::from_secs(20), || {
            (server.role() == Some("leader"))
                .then(|| server.addr())
                .flatten()
        })
    });
    let client = ApiClient::new(&addr, None);
    // A client lists, then watches from the listing's revision on.
    let first = client.services().await.unwrap().revision;
    // History from `first` on is there now.
    let spec = tugboat::spec::parse_spec_file(
        "one.yaml",
        "services:\n  one:\n    image: busybox\n",
        &|_| false,
    )
    .unwrap();
    client.apply(&spec).await.unwrap();
    client
        .watch(WatchKind::Services, first, Duration::ZERO, None)
        .await
        .unwrap_or_else(|e| panic!("a watch from {first} before any compaction: {e}"));
    // Two ticks later it is compacted past `first`: a watch from there must list again.
    tokio::task::block_in_place(|| {
        wait_for(
            "a compaction past the first revision",
            Duration::from_secs(20),
            || {
                server
                    .output()
                    .lines()
                    .filter_map(|l| {
                        l.strip_prefix("tugboat server: compacted etcd's history to revision ")
                    })
                    .filter_map(|r| r.trim().parse::<u64>().ok())
                    .any(|r| r > first)
                    .then_some(())
            },
        )
    });
    let err = client
        .watch(WatchKind::Services, first, Duration::ZERO, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(410), "{err}");
    // A watch from now goes on.
    let now = client.services().await.unwrap().revision + 1;
    client
        .watch(WatchKind::Services, now, Duration::ZERO, None)
        .await
        .unwrap_or_else(|e| panic!("a watch from now ({now}): {e}\n{}", server.output()));
}

#[test]
fn the_flag_is_refused_without_etcd_or_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["server", "--listen", "127.0.0.1:0", "--insecure-no-auth"])
            .args(args)
            .output()
            .unwrap()
    };
    let embedded = run(&["--etcd-compaction-interval", "5m"]);
    assert!(!embedded.status.success());
    let said = String::from_utf8_lossy(&embedded.stderr);
    assert!(
        said.contains("--etcd-compaction-interval is for --store etcd"),
        "{said}"
    );
    let zero = run(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
        "--etcd-compaction-interval",
        "0s",
    ]);
    assert!(!zero.status.success());
    let said = String::from_utf8_lossy(&zero.stderr);
    assert!(said.contains("must be longer than 0"), "{said}");
    // Refused before anything was made in the data dir.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
