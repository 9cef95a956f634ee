//! Root tests: configs `tug create` must refuse, naming what is wrong, leaving nothing behind
//! (no state dir, cgroup, mount or process).

mod common;

use common::{id, no_cgroup_left, show, Env};
use serde_json::json;

/// Asserts a create of `env`'s bundle fails with every one of `words` in its error, and that
/// it left nothing.
fn refused(env: &Env, name: &str, words: &[&str]) {
    let id = id(name);
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "create {id} succeeded: {}",
        show(&out)
    );
    for w in words {
        assert!(err.contains(w), "create {id}: no \"{w}\" in: {err}");
    }
    assert!(!env.state_root().join(&id).exists(), "{id}: state dir left");
    no_cgroup_left(&id);
    let rootfs = env.rootfs();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(rootfs.to_str().unwrap()),
        "{id}: a mount of the rootfs left: {mounts}"
    );
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(root) = std::fs::read_link(entry.path().join("root")) {
            assert!(
                !root.starts_with(&rootfs),
                "{id}: process {:?} left in the container",
                entry.file_name()
            );
        }
    }
}

#[test]
fn process_settings_the_kernel_refuses_fail_create_not_start() {
    skip_unless_root!("process_settings_the_kernel_refuses_fail_create_not_start");
    let mut env = Env::new(&["true"]);
    // SCHED_DEADLINE with a runtime longer than its deadline: sched_setattr says EINVAL.
    env.edit(|s| {
        s["process"]["scheduler"] = json!({"policy": "SCHED_DEADLINE",
            "runtime": 2000000, "deadline": 1000000, "period": 1000000});
    });
    refused(&env, "sched", &["process.scheduler"]);
    // An rlimit above the hard limit the kernel allows (nofile over fs.nr_open).
    env.edit(|s| {
        s["process"]["scheduler"] = json!(null);
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE",
            "soft": 4294967295u64, "hard": 4294967295u64}]);
    });
    refused(&env, "rlimit", &["process.rlimits", "RLIMIT_NOFILE"]);
    // A good config still creates, and start only execs.
    env.edit(|s| s["process"]["rlimits"] = json!(null));
    let ok = id("good");
    env.create(&ok);
    env.ok(&["start", &ok]);
    env.wait_status(&ok, "stopped");
    env.ok(&["delete", &ok]);
    no_cgroup_left(&ok);
}
