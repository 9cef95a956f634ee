//! kill -9 a process that writes to the embedded store at random points: every write it
//! acknowledged is there afterwards, and the file always opens.
//!
//! The writer is this same test binary, run again with `crash_writer_child` selected and
//! the store path in an environment variable. It prints `ACK <revision>` after each commit
//! returns, and the parent kills it after a random number of acknowledgements.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tugboat::store::{EmbeddedStore, EmbeddedStoreOptions, Operation};

const WRITER_ENV: &str = "TUGBOAT_CRASH_WRITER_STORE";

fn options() -> EmbeddedStoreOptions {
    // Compact often, so kills also land during compactions.
    EmbeddedStoreOptions {
        history_events: 1000,
        history_keep: std::time::Duration::ZERO,
        compact_min_bytes: 8 << 10,
        ..Default::default()
    }
}

/// The operations of the write that makes revision `revision` (deterministic).
fn operations_for(revision: u64) -> Vec<Operation> {
    let key = |n: u64| format!("/k/{:03}", n % 40);
    let value =
        |n: u64| format!("value-{revision}-{}", "x".repeat((n % 200) as usize)).into_bytes();
    match revision % 5 {
        // Every transaction changes something (a put), so each raises the revision: one
        // that changes nothing raises none, as in etcd.
        0 => vec![
            Operation::Put {
                key: key(revision * 3),
                value: value(revision),
            },
            Operation::Delete {
                key: key(revision * 7),
            },
        ],
        1 => vec![
            Operation::Put {
                key: key(revision),
                value: value(revision),
            },
            Operation::Put {
                key: key(revision + 1),
                value: value(revision + 3),
            },
            Operation::Delete {
                key: key(revision + 2),
            },
        ],
        _ => vec![Operation::Put {
            key: key(revision),
            value: value(revision * 13),
        }],
    }
}

/// What the store must hold after revisions 1..=revision.
fn model(revision: u64) -> BTreeMap<String, Vec<u8>> {
    let mut data = BTreeMap::new();
    for r in 1..=revision {
        for op in operations_for(r) {
            match op {
                Operation::Put { key, value } => {
                    data.insert(key, value);
                }
                Operation::Delete { key } => {
                    data.remove(&key);
                }
            }
        }
    }
    data
}

fn contents(store: &EmbeddedStore) -> (u64, BTreeMap<String, Vec<u8>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let listing = runtime
        .block_on(tugboat::store::Store::list(store, "/"))
        .unwrap();
    (
        listing.revision,
        listing
            .items
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
    )
}

#[test]
#[ignore = "the writer half of kill_9_never_loses_an_acknowledged_write; run by it"]
fn crash_writer_child() {
    let path = std::env::var(WRITER_ENV).expect("run by kill_9_never_loses_an_acknowledged_write");
    let store = EmbeddedStore::open(path.as_ref(), options()).unwrap();
    let mut revision = contents(&store).0;
    let stdout = std::io::stdout();
    loop {
        revision = store
            .commit_now(vec![], operations_for(revision + 1))
            .unwrap();
        let mut out = stdout.lock();
        writeln!(out, "ACK {revision}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.log");
    let mut rng = fastrand::Rng::with_seed(std::process::id() as u64);
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut last_acked = 0u64;
    for round in 0..12 {
        assert!(Instant::now() < deadline, "crash rounds took too long");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = rng.u64(0..200);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acks = 0;
        while acks < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(revision) = line.strip_prefix("ACK ") {
                last_acked = revision.trim().parse().unwrap();
                acks += 1;
            }
        }
        // Sometimes kill mid-stream with no pause, sometimes a moment later.
        if rng.bool() {
            std::thread::sleep(Duration::from_micros(rng.u64(0..3000)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines.map_while(Result::ok) {
            if let Some(revision) = line.strip_prefix("ACK ") {
                last_acked = revision.trim().parse().unwrap();
            }
        }
        let store = EmbeddedStore::open(&path, options())
            .unwrap_or_else(|e| panic!("round {round}: store does not open: {e}"));
        let (revision, data) = contents(&store);
        // The write in flight at the kill may or may not have landed; nothing acked may be lost.
        assert!(
            revision == last_acked || revision == last_acked + 1,
            "round {round}: store at revision {revision}, last acknowledged {last_acked}"
        );
        assert_eq!(
            data,
            model(revision),
            "round {round}: contents differ from the acknowledged writes"
        );
        last_acked = revision;
    }
    assert!(
        last_acked > 100,
        "the writer made too little progress to test anything: {last_acked}"
    );
}
