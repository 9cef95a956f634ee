//! Root test: many create/start/delete cycles leave nothing behind (checked, not assumed).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{init_pid, no_cgroup_left, Env};

/// Every mount of the host's mount namespace, as its mountinfo line without the ids.
fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect()
}

fn fds(pid: &str) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose root directory is inside `dir`: containers that outlived delete.
fn processes_rooted_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(root) = std::fs::read_link(e.path().join("root")) {
            if root.starts_with(dir) {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn two_hundred_cycles_leave_nothing() {
    skip_unless_root!("two_hundred_cycles_leave_nothing");
    let cycles: usize = std::env::var("TUG_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let env = Env::new(&["sleep", "100"]);
    let mounts_before = mounts();
    let fds_before = fds("self");
    for i in 0..cycles {
        let id = common::id(&format!("leak{i}"));
        env.create(&id);
        env.ok(&["start", &id]);
        if i % 50 == 0 {
            // The container holds only its stdio: no fd of tug's leaks into it.
            let pid = init_pid(&env, &id).to_string();
            let open = fds(&pid);
            assert_eq!(
                open,
                ["0", "1", "2"].map(String::from).into(),
                "fds of the container's init"
            );
        }
        env.ok(&["delete", "--force", &id]);
        no_cgroup_left(&id);
    }
    let left: Vec<_> = std::fs::read_dir(env.state_root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "state left: {left:?}");
    let mounts_after = mounts();
    let new: Vec<_> = mounts_after.difference(&mounts_before).collect();
    assert!(new.is_empty(), "mounts left: {new:?}");
    assert_eq!(fds("self"), fds_before, "fds of the test process");
    let procs = processes_rooted_in(env.dir.path());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    for (mp, _) in common::cgroup_mounts() {
        let tug = mp.join("tug");
        let ours: Vec<_> = std::fs::read_dir(&tug)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&common::id("")))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            ours.is_empty(),
            "cgroups left under {}: {ours:?}",
            tug.display()
        );
    }
}
