//! Root tests: exec, ps, events, update and capabilities on a running busybox container.

mod common;

use std::time::Duration;

use common::{cgroup_read, host_is_v2, id, no_cgroup_left, show, wait_for, Env};
use serde_json::json;

fn running(env: &Env, name: &str) -> String {
    let id = id(name);
    env.create(&id);
    env.ok(&["start", &id]);
    id
}

#[test]
fn exec_sees_the_containers_hostname_mounts_and_pids() {
    skip_unless_root!("exec_sees_the_containers_hostname_mounts_and_pids");
    let mut env = Env::new(&["sleep", "100"]);
    env.edit(|s| s["hostname"] = json!("execbox"));
    let id = running(&env, "exec");
    let out = env.tug(&[
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /bin/busybox; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "execbox", "{text}");
    assert_eq!(
        lines[1].trim(),
        "sleep 100",
        "pid 1 is the container's init: {text}"
    );
    assert_eq!(lines[2], "/bin/busybox", "{text}");
    // env from the container plus --env; --cwd; --user.
    let out = env.ok(&[
        "exec",
        "--env",
        "EXTRA=1",
        "--cwd",
        "/bin",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $TUGVAR $EXTRA $(pwd) $(id -u)",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "yes 1 /bin 1000"
    );
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn exec_detach_with_pid_file_joins_the_cgroup() {
    skip_unless_root!("exec_detach_with_pid_file_joins_the_cgroup");
    let env = Env::new(&["sleep", "100"]);
    let id = running(&env, "execd");
    let pid_file = env.dir.path().join("exec.pid");
    env.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "50",
    ]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ps: Vec<i32> =
        serde_json::from_slice(&env.ok(&["ps", "--format", "json", &id]).stdout).unwrap();
    assert!(
        ps.contains(&pid),
        "exec'd pid {pid} not in the container's cgroup: {ps:?}"
    );
    assert_eq!(ps.len(), 2, "{ps:?}");
    env.ok(&["delete", "--force", &id]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "the exec'd process outlived delete"
    );
    no_cgroup_left(&id);
}

#[test]
fn exec_refuses_stopped_and_paused_containers_and_bad_programs() {
    skip_unless_root!("exec_refuses_stopped_and_paused_containers_and_bad_programs");
    let env = Env::new(&["sleep", "100"]);
    let id = running(&env, "execbad");
    let out = env.tug(&["exec", &id, "no-such-program"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-such-program"),
        "{}",
        show(&out)
    );
    env.ok(&["pause", &id]);
    let out = env.tug(&["exec", &id, "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("resume it first"),
        "{}",
        show(&out)
    );
    env.ok(&["resume", &id]);
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    let out = env.tug(&["exec", &id, "true"]);
    assert!(!out.status.success(), "{}", show(&out));
    let out = env.tug(&["exec", "nosuch", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch"),
        "{}",
        show(&out)
    );
    env.ok(&["delete", &id]);
    no_cgroup_left(&id);
}

#[test]
fn capabilities_outside_the_bounding_set_are_absent() {
    skip_unless_root!("capabilities_outside_the_bounding_set_are_absent");
    let mut env = Env::new(&["sleep", "100"]);
    // Only CAP_KILL (bit 5) and CAP_CHOWN (bit 0).
    let caps = json!(["CAP_KILL", "CAP_CHOWN"]);
    env.edit(|s| {
        s["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps, "inheritable": []
        });
    });
    let id = running(&env, "caps");
    let pid = common::init_pid(&env, &id);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for field in ["CapBnd", "CapEff", "CapPrm"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask, (1 << 5) | 1, "{line}");
    }
    // exec gets the same sets, and --cap adds one.
    let out = env.ok(&["exec", &id, "grep", "CapBnd", "/proc/self/status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0000000000000021"),
        "{}",
        show(&out)
    );
    let out = env.ok(&[
        "exec",
        "--cap",
        "CAP_NET_RAW",
        &id,
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    // CAP_NET_RAW is bit 13.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0000000000002021"),
        "{}",
        show(&out)
    );
    env.ok(&["delete", "--force", &id]);
}

fn memory_limit(id: &str) -> i64 {
    let file = if host_is_v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    cgroup_read(id, "memory", file).trim().parse().unwrap()
}

#[test]
fn update_raises_and_lowers_a_memory_limit_live() {
    skip_unless_root!("update_raises_and_lowers_a_memory_limit_live");
    let mut env = Env::new(&["sleep", "100"]);
    env.edit(|s| {
        s["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 20}})
    });
    let id = running(&env, "update");
    assert_eq!(memory_limit(&id), 64 << 20);
    env.ok(&["update", "--memory", "128m", &id]);
    assert_eq!(memory_limit(&id), 128 << 20);
    env.ok(&["update", "--memory", "32m", &id]);
    assert_eq!(memory_limit(&id), 32 << 20);
    let r = env.dir.path().join("r.json");
    std::fs::write(&r, r#"{"pids": {"limit": 7}}"#).unwrap();
    env.ok(&["update", "-r", r.to_str().unwrap(), &id]);
    assert_eq!(cgroup_read(&id, "pids", "pids.max").trim(), "7");
    // Bad input names the flag or the field.
    let out = env.tug(&["update", "--memory", "lots", &id]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--memory lots"),
        "{}",
        show(&out)
    );
    std::fs::write(&r, r#"{"pids": {"limit": "seven"}}"#).unwrap();
    let out = env.tug(&["update", "-r", r.to_str().unwrap(), &id]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pids.limit"),
        "{}",
        show(&out)
    );
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn events_stats_grow_with_load() {
    skip_unless_root!("events_stats_grow_with_load");
    let mut env = Env::new(&["sh", "-c", "while :; do :; done"]);
    env.edit(|s| s["root"]["readonly"] = json!(false));
    let id = running(&env, "events");
    let stats = |env: &Env| -> serde_json::Value {
        let out = env.ok(&["events", "--stats", &id]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["type"], "stats");
        v["data"].clone()
    };
    let a = stats(&env);
    let cpu_a = a["cpu"]["usage"]["total"].as_u64().unwrap();
    let mem_a = a["memory"]["usage"]["usage"].as_u64().unwrap();
    // More load: a process that holds 32 MiB of touched memory.
    env.ok(&[
        "exec",
        "--detach",
        &id,
        "sh",
        "-c",
        "dd if=/dev/zero bs=32M count=1 2>/dev/null | (read -r x; sleep 100)",
    ]);
    let mut cpu_b = 0;
    wait_for("cpu and memory to grow", Duration::from_secs(20), || {
        let b = stats(&env);
        cpu_b = b["cpu"]["usage"]["total"].as_u64().unwrap();
        let mem_b = b["memory"]["usage"]["usage"].as_u64().unwrap();
        cpu_b > cpu_a && mem_b > mem_a + (8 << 20)
    });
    assert!(stats(&env)["pids"]["current"].as_u64().unwrap() >= 2);
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn exec_t_relays_a_terminal() {
    skip_unless_root!("exec_t_relays_a_terminal");
    let env = Env::new(&["sleep", "100"]);
    let id = running(&env, "exect");
    let cmd = format!(
        "{} --root {} exec -t {id} sh -c 'tty; exit 4'",
        common::tug_bin().display(),
        env.state_root().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(text.contains("/dev/pts/"), "{text}");
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_refuses_ids_outside_the_kernels_range() {
    skip_unless_root!("exec_refuses_ids_outside_the_kernels_range");
    let env = Env::new(&["sleep", "100"]);
    let id = running(&env, "execids");
    // 4294967295 is -1 to setuid ("unchanged"): the process would have run as root.
    for user in ["4294967295", "1000:4294967295", "2147483648"] {
        let out = env.tug(&["exec", "--user", user, &id, "id", "-u"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--user") && err.contains("outside"),
            "--user {user}: {}",
            show(&out)
        );
    }
    // The same in a --process file names the field.
    let mut process = env.spec["process"].clone();
    process["args"] = json!(["id", "-u"]);
    process["user"]["uid"] = json!(4294967295u32);
    let file = env.dir.path().join("process.json");
    std::fs::write(&file, process.to_string()).unwrap();
    let out = env.tug(&["exec", "--process", file.to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("process.user.uid"),
        "{}",
        show(&out)
    );
    let out = env.ok(&["exec", "--user", "2147483647", &id, "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2147483647");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn exec_gets_the_containers_personality_and_time_offsets() {
    skip_unless_root!("exec_gets_the_containers_personality_and_time_offsets");
    let time_ns = std::path::Path::new("/proc/self/ns/time").exists();
    let mut env = Env::new(&["sleep", "100"]);
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/uname")).unwrap();
    const OFFSET: u64 = 10_000_000;
    env.edit(|s| {
        s["linux"]["personality"] = json!({"domain": "LINUX32"});
        if time_ns {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "time"}));
            s["linux"]["timeOffsets"] = json!({"boottime": {"secs": OFFSET, "nanosecs": 0}});
        }
    });
    let id = running(&env, "execpers");
    let out = env.ok(&["exec", &id, "sh", "-c", "uname -m; cat /proc/uptime"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let machine = lines.next().unwrap_or_default();
    assert!(
        machine.starts_with('i') && machine.ends_with("86"),
        "LINUX32 personality: {text}"
    );
    if time_ns {
        let uptime: f64 = lines
            .next()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no uptime in {text}"));
        assert!(uptime >= OFFSET as f64, "boottime offset not seen: {text}");
    } else {
        eprintln!("no time namespaces on this kernel: offsets not checked");
    }
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn exec_into_a_paused_container_needs_ignore_paused() {
    skip_unless_root!("exec_into_a_paused_container_needs_ignore_paused");
    let env = Env::new(&["sleep", "100"]);
    let id = running(&env, "execpaused");
    env.ok(&["pause", &id]);
    let out = env.tug(&["exec", &id, "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("paused") && err.contains("--ignore-paused"),
        "{}",
        show(&out)
    );
    // With the flag the exec is accepted; its process is frozen with the container and runs
    // once it is resumed.
    let child = std::process::Command::new(common::tug_bin())
        .arg("--root")
        .arg(env.state_root())
        .args(["exec", "--ignore-paused", &id, "echo", "ran"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let procs = || cgroup_read(&id, "pids", "cgroup.procs").lines().count();
    wait_for(
        "the exec'd process in the cgroup",
        Duration::from_secs(10),
        || procs() == 2,
    );
    assert_eq!(env.status(&id), "paused");
    env.ok(&["resume", &id]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}
