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

/// The first memory policy /proc/PID/numa_maps shows (`bind=static:0`, ...): each mapping
/// without a policy of its own shows the process's.
fn numa_policy(numa_maps: &str) -> String {
    numa_maps
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn memory_policy_applies_to_the_container_and_its_exec() {
    skip_unless_root!("memory_policy_applies_to_the_container_and_its_exec");
    if !std::path::Path::new("/proc/self/numa_maps").exists() {
        eprintln!(
            "SKIP memory_policy_applies_to_the_container_and_its_exec: no NUMA in this kernel"
        );
        return;
    }
    let mut env = Env::new(&["sleep", "1000"]);
    env.edit(|s| {
        s["linux"]["memoryPolicy"] =
            json!({"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]})
    });
    let id = id("mempolicy");
    env.create(&id);
    env.ok(&["start", &id]);
    let pid = common::init_pid(&env, &id);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    assert_eq!(numa_policy(&maps), "bind=static:0", "{maps}");
    let out = env.ok(&["exec", &id, "cat", "/proc/self/numa_maps"]);
    let maps = String::from_utf8_lossy(&out.stdout);
    assert_eq!(numa_policy(&maps), "bind=static:0", "{maps}");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);

    // A node the host does not have: create fails naming the field, leaving nothing.
    env.edit(|s| s["linux"]["memoryPolicy"] = json!({"mode": "MPOL_INTERLEAVE", "nodes": "1000"}));
    let id = common::id("mempolicy-bad");
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("linux.memoryPolicy")
            && err.contains("MPOL_INTERLEAVE"),
        "{}",
        show(&out)
    );
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
    // A mode the spec does not name, and nodes a mode refuses: named at validation.
    for (policy, field) in [
        (json!({"mode": "MPOL_NOPE"}), "linux.memoryPolicy.mode"),
        (
            json!({"mode": "MPOL_DEFAULT", "nodes": "0"}),
            "linux.memoryPolicy.nodes",
        ),
        (json!({"mode": "MPOL_BIND"}), "linux.memoryPolicy.nodes"),
    ] {
        env.edit(|s| s["linux"]["memoryPolicy"] = policy.clone());
        let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{policy}: {}",
            show(&out)
        );
        assert!(!env.state_root().join(&id).exists());
    }
}

fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn exec_cpu_affinity_places_the_exec_process_not_init() {
    skip_unless_root!("exec_cpu_affinity_places_the_exec_process_not_init");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    if online.trim() == "0" {
        eprintln!("SKIP exec_cpu_affinity_places_the_exec_process_not_init: one CPU online");
        return;
    }
    let mut env = Env::new(&["sleep", "1000"]);
    // In config.json it is not for init (the spec says so), but exec by flags inherits it.
    env.edit(|s| s["process"]["execCPUAffinity"] = json!({"initial": "0", "final": "1"}));
    let id = id("affinity");
    env.create(&id);
    env.ok(&["start", &id]);
    let pid = common::init_pid(&env, &id);
    let init = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(cpus_allowed(&init), cpus_allowed(&host));
    let out = env.ok(&["exec", &id, "cat", "/proc/self/status"]);
    assert_eq!(cpus_allowed(&String::from_utf8_lossy(&out.stdout)), "1");

    // --process: its own affinity; bad lists are refused naming the field.
    let p = env.dir.path().join("p.json");
    let process = |affinity: serde_json::Value| {
        let v = json!({"args": ["cat", "/proc/self/status"], "cwd": "/", "env": ["PATH=/bin"],
                       "user": {"uid": 0, "gid": 0}, "execCPUAffinity": affinity});
        std::fs::write(&p, v.to_string()).unwrap();
        env.tug(&["exec", "--process", p.to_str().unwrap(), &id])
    };
    let out = process(json!({"final": "0"}));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(cpus_allowed(&String::from_utf8_lossy(&out.stdout)), "0");
    for (affinity, field) in [
        (json!({"final": "1-0"}), "execCPUAffinity.final"),
        // The format, checked as the JSON is read, names the object and the value.
        (
            json!({"initial": "0-"}),
            "execCPUAffinity: Invalid execCPUAffinity format: 0-",
        ),
        (json!({"final": "1000"}), "execCPUAffinity.final"),
    ] {
        let out = process(affinity.clone());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{affinity}: {}",
            show(&out)
        );
    }
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}
