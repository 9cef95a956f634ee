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
fn ids_outside_the_kernels_range_are_refused() {
    skip_unless_root!("ids_outside_the_kernels_range_are_refused");
    let mut env = Env::new(&["id"]);
    // 4294967295 is -1 to setuid: "leave unchanged", and the process would run as root.
    env.edit(|s| s["process"]["user"]["uid"] = json!(4294967295u32));
    refused(&env, "uid", &["process.user.uid", "4294967295"]);
    env.edit(|s| {
        s["process"]["user"]["uid"] = json!(1000);
        s["process"]["user"]["gid"] = json!(2147483648u32);
    });
    refused(&env, "gid", &["process.user.gid", "2147483648"]);
    env.edit(|s| {
        s["process"]["user"]["gid"] = json!(1000);
        s["process"]["user"]["additionalGids"] = json!([5, 4294967295u32]);
    });
    refused(&env, "gids", &["process.user.additionalGids[1]"]);
    // The largest id that is allowed still runs as that id.
    env.edit(|s| s["process"]["user"]["additionalGids"] = json!([]));
    env.edit(|s| s["process"]["user"]["uid"] = json!(2147483647u32));
    env.edit(|s| s["process"]["args"] = json!(["id", "-u"]));
    let out = env.run(&id("maxuid"));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2147483647");
}

#[test]
fn proc_and_sys_on_a_symlink_are_refused() {
    skip_unless_root!("proc_and_sys_on_a_symlink_are_refused");
    let env = Env::new(&["true"]);
    let rootfs = env.rootfs();
    std::fs::remove_dir(rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink("/tmp", rootfs.join("proc")).unwrap();
    refused(
        &env,
        "procsym",
        &["mounts[", "/proc", "must be mounted on ordinary directory"],
    );
    // Not followed: nothing was mounted where it points.
    assert_eq!(std::fs::read_dir(rootfs.join("tmp")).unwrap().count(), 0);
    std::fs::remove_file(rootfs.join("proc")).unwrap();
    std::fs::create_dir(rootfs.join("proc")).unwrap();
    std::fs::remove_dir(rootfs.join("sys")).unwrap();
    std::fs::write(rootfs.join("sys"), "").unwrap();
    refused(
        &env,
        "sysfile",
        &["/sys", "sysfs", "must be mounted on ordinary directory"],
    );
}

#[test]
fn capabilities_that_cannot_be_raised_fail_create() {
    skip_unless_root!("capabilities_that_cannot_be_raised_fail_create");
    let mut env = Env::new(&["true"]);
    // Effective but not bounding: lost at exec before; now refused.
    env.edit(|s| {
        let caps = &mut s["process"]["capabilities"];
        caps["effective"]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_ADMIN"));
    });
    refused(
        &env,
        "capeff",
        &[
            "process.capabilities.effective",
            "CAP_SYS_ADMIN",
            "bounding",
        ],
    );
    // A name that is no capability.
    env.edit(|s| {
        s["process"]["capabilities"]["effective"] = json!(["CAP_KILL"]);
        s["process"]["capabilities"]["bounding"] = json!(["CAP_KILL", "CAP_NOT_A_CAP"]);
    });
    refused(&env, "capname", &["process.capabilities.bounding"]);
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

#[test]
fn the_hosts_root_is_refused_as_rootfs() {
    skip_unless_root!("the_hosts_root_is_refused_as_rootfs");
    let mut env = Env::new(&["true"]);
    env.edit(|s| s["root"]["path"] = json!("/"));
    refused(&env, "slash", &["root.path", "host's /"]);
    std::os::unix::fs::symlink("/", env.bundle().join("hostroot")).unwrap();
    env.edit(|s| s["root"]["path"] = json!("hostroot"));
    refused(&env, "slashlink", &["root.path", "hostroot", "host's /"]);
}
