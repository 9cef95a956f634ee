//! Root tests: the device nodes a container gets and the device rules of its cgroup.

mod common;

use common::{cgroup_read, host_is_v2, id, no_cgroup_left, show, Env};
use serde_json::json;

/// The mode column of `ls -l` for each path, in order.
fn modes(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mode = l.split_whitespace().next()?;
            let path = l.split_whitespace().last()?;
            Some((path.to_string(), mode.to_string()))
        })
        .collect()
}

#[test]
fn device_nodes_get_exactly_the_mode_asked_whatever_the_umask() {
    skip_unless_root!("device_nodes_get_exactly_the_mode_asked_whatever_the_umask");
    let mut env = Env::new(&[
        "ls",
        "-l",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/fuse",
    ]);
    env.edit(|s| {
        s["linux"]["devices"] = json!([
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o660}
        ]);
    });
    // tug is started with a umask that would take group and other bits away.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let out = env.run(&id("devmode"));
    nix::sys::stat::umask(old);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let got = modes(&text);
    assert_eq!(got.len(), 7, "{text}");
    for (path, mode) in got {
        let want = if path == "/dev/fuse" {
            "crw-rw----"
        } else {
            "crw-rw-rw-"
        };
        assert_eq!(mode, want, "{path}: {text}");
    }
}

#[test]
fn devices_outside_the_rules_cannot_be_opened_in_a_default_container() {
    skip_unless_root!("devices_outside_the_rules_cannot_be_opened_in_a_default_container");
    // The nodes are in the rootfs, not made by tug: the cgroup's rules are what stop them.
    let script = "( : < /tmp/kvm ) 2>&1; ( : < /tmp/fuse ) 2>&1; \
                  echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c";
    let env = Env::new(&["sh", "-c", script]);
    // `tug spec` writes no linux.resources.devices: the defaults alone must hold.
    assert!(env.spec["linux"]["resources"]["devices"]
        .as_array()
        .is_none_or(|d| d.is_empty()));
    for (name, minor) in [("kvm", 232), ("fuse", 229)] {
        nix::sys::stat::mknod(
            &env.rootfs().join("tmp").join(name),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(10, minor),
        )
        .unwrap();
    }
    let id = id("devdeny");
    env.create(&id);
    if !host_is_v2() {
        // The v1 devices controller no longer allows everything.
        let list = cgroup_read(&id, "devices", "devices.list");
        assert!(!list.contains("a *:* rwm"), "{list}");
        assert!(list.lines().any(|l| l == "c 1:3 rwm"), "{list}");
    }
    env.ok(&["start", &id]);
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);
    no_cgroup_left(&id);
    // The output went to tug create's stdout, which is gone: run it again in the foreground.
    let out = env.run(&common::id("devdeny-run"));
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 4
            && lines[0].contains("/tmp/kvm")
            && lines[0].contains("Operation not permitted")
            && lines[1].contains("/tmp/fuse")
            && lines[1].contains("Operation not permitted"),
        "{text}"
    );
    assert_eq!(lines[2], "null-ok", "{text}");
    assert_eq!(lines[3].trim(), "4", "{text}");
}

#[test]
fn update_replaces_the_device_rules() {
    skip_unless_root!("update_replaces_the_device_rules");
    // On v1 the devices controller takes rule lines; on v2 each update loads a new eBPF
    // program, which must replace the container's, not join it (then both must allow).
    if !host_is_v2() {
        eprintln!(
            "SKIP update_replaces_the_device_rules: needs pure cgroup v2 (tests/vm/run.sh devices)"
        );
        return;
    }
    let env = Env::new(&["sleep", "1000"]);
    // A node in the rootfs for the kernel's log, 1:11; opening it write-only needs no
    // capability, so only the device rules decide.
    nix::sys::stat::mknod(
        &env.rootfs().join("tmp/kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 11),
    )
    .unwrap();
    let id = id("devupdate");
    env.create(&id);
    env.ok(&["start", &id]);
    let kmsg = || {
        let out = env.ok(&[
            "exec",
            &id,
            "sh",
            "-c",
            "(: > /tmp/kmsg) 2>/dev/null && echo kmsg-ok || echo kmsg-denied",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let update = |rule: serde_json::Value| {
        let r = env.dir.path().join("r.json");
        std::fs::write(&r, json!({"devices": [rule]}).to_string()).unwrap();
        env.ok(&["update", "-r", r.to_str().unwrap(), &id]);
    };
    assert_eq!(kmsg(), "kmsg-denied");
    update(json!({"allow": true, "type": "c", "major": 1, "minor": 11, "access": "w"}));
    assert_eq!(kmsg(), "kmsg-ok", "the device rules of create still hold");
    update(json!({"allow": false, "type": "c", "major": 1, "minor": 11, "access": "rwm"}));
    assert_eq!(kmsg(), "kmsg-denied", "the first update's rules still hold");
    // The defaults survive every update.
    let out = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo x > /dev/null && echo null-ok",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null-ok");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}
