//! Two processes allocate from one network at the same time: the flock on the lease file
//! must keep every address unique. Needs no root.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use tug_netns::alloc::Allocator;

const ENV: &str = "TUG_NETNS_ALLOC_WORKER";
const PER_PROCESS: usize = 100;

fn allocator(dir: &str) -> Allocator {
    Allocator::new(
        std::path::Path::new(dir),
        "race",
        "10.77.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 77, 0, 1),
    )
    .unwrap()
}

/// The child's side; started by `two_processes_never_get_the_same_address`.
#[test]
#[ignore = "worker process for two_processes_never_get_the_same_address"]
fn alloc_worker() {
    let spec = std::env::var(ENV).expect("started by the parent test, with TUG_NETNS_ALLOC_WORKER");
    let (dir, label) = spec.split_once(',').unwrap();
    let a = allocator(dir);
    for i in 0..PER_PROCESS {
        let id = format!("{label}-{i}");
        let mut book = a.lock().unwrap();
        let ip = book.allocate(&id, None).unwrap();
        book.commit().unwrap();
        drop(book);
        println!("ALLOC {id} {ip}");
    }
}

#[test]
fn two_processes_never_get_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|label| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "alloc_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV, format!("{},{label}", dir.path().display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "worker failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // libtest prints "test alloc_worker ... " before the first line
            if let Some(rest) = line.split_once("ALLOC ").map(|(_, r)| r) {
                let ip: Ipv4Addr = rest.split(' ').nth(1).unwrap().parse().unwrap();
                assert!(seen.insert(ip), "{ip} handed out twice");
                total += 1;
            }
        }
    }
    assert_eq!(total, 2 * PER_PROCESS);
    let leases = allocator(&dir.path().display().to_string())
        .snapshot()
        .unwrap();
    assert_eq!(leases.len(), 2 * PER_PROCESS, "every allocation persisted");
    let distinct: HashSet<_> = leases.values().map(|l| l.ip).collect();
    assert_eq!(distinct.len(), 2 * PER_PROCESS);
}
