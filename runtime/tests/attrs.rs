//! Root tests: time namespace offsets, personality, I/O priority, scheduler, LSM refusal.

mod common;

use common::{id, no_cgroup_left, show, Env};
use serde_json::json;

#[test]
fn time_namespace_offsets_move_the_containers_clocks() {
    skip_unless_root!("time_namespace_offsets_move_the_containers_clocks");
    let mut env = Env::new(&["cat", "/proc/uptime"]);
    env.edit(|s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        s["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1_000_000, "nanosecs": 0}});
    });
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let id = id("timens");
    let out = env.run(&id);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let inside: f64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        inside >= host + 999_000.0,
        "uptime inside {inside}, host {host}"
    );
    no_cgroup_left(&id);
}

#[test]
fn personality_io_priority_and_scheduler_apply() {
    skip_unless_root!("personality_io_priority_and_scheduler_apply");
    let mut env = Env::new(&[
        "sh",
        "-c",
        "uname -m; ionice -p $$; cut -d' ' -f19 /proc/self/stat",
    ]);
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/uname")).unwrap();
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/ionice")).unwrap();
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/cut")).unwrap();
    env.edit(|s| {
        s["linux"]["personality"] = json!({"domain": "LINUX32"});
        s["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
        s["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    });
    let id = id("attrs");
    let out = env.run(&id);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "i686", "{text}");
    assert!(lines[1].starts_with("idle"), "{text}");
    assert_eq!(lines[2].trim(), "7", "{text}");
    no_cgroup_left(&id);
}

#[test]
fn what_the_host_cannot_give_is_refused_by_field() {
    skip_unless_root!("what_the_host_cannot_give_is_refused_by_field");
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"process": {"apparmorProfile": "tug-test"}}),
            "process.apparmorProfile",
        ),
        (
            json!({"process": {"selinuxLabel": "system_u:system_r:container_t:s0"}}),
            "process.selinuxLabel",
        ),
        (
            json!({"linux": {"timeOffsets": {"boottime": {"secs": 1}}}}),
            "linux.timeOffsets",
        ),
        (
            json!({"process": {"scheduler": {"policy": "SCHED_OTHER", "nice": 99}}}),
            "process.scheduler.nice",
        ),
    ];
    for (i, (patch, field)) in cases.into_iter().enumerate() {
        if field == "process.apparmorProfile" && tug_runtime::procattr::host_has_apparmor() {
            continue;
        }
        if field == "process.selinuxLabel" && tug_runtime::procattr::host_has_selinux() {
            continue;
        }
        let mut env = Env::new(&["true"]);
        env.edit(|s| {
            for (section, fields) in patch.as_object().unwrap() {
                for (k, v) in fields.as_object().unwrap() {
                    s[section][k] = v.clone();
                }
            }
        });
        let id = id(&format!("refuse{i}"));
        let b = env.bundle();
        let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(field),
            "{field}: {}",
            show(&out)
        );
        assert!(!env.state_root().join(&id).exists());
        no_cgroup_left(&id);
    }
}
