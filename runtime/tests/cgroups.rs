//! Root tests: cgroup limits are enforced by the kernel, on whatever layout this host has
//! (v1, hybrid or pure v2; the qemu stage in tests/vm runs them on pure v2).

mod common;

use std::time::{Duration, Instant};

use common::{cgroup_dir, cgroup_read, host_is_v2, id, keyed, no_cgroup_left, show, wait_for, Env};
use serde_json::json;

const MIB: i64 = 1024 * 1024;

fn limit_memory(env: &mut Env, bytes: i64) {
    // Swap limited to the same figure, where the host accounts swap, so the limit cannot
    // be escaped into swap.
    let memory_root = cgroup_dir("x", "memory");
    let memory_root = memory_root.parent().unwrap().parent().unwrap();
    let swap = host_is_v2() || memory_root.join("memory.memsw.limit_in_bytes").exists();
    env.edit(|s| {
        s["linux"]["resources"]["memory"] = if swap {
            json!({"limit": bytes, "swap": bytes})
        } else {
            json!({"limit": bytes})
        };
    });
}

fn oom_kills(id: &str) -> u64 {
    if host_is_v2() {
        keyed(&cgroup_read(id, "memory", "memory.events"), "oom_kill").unwrap_or(0)
    } else {
        keyed(&cgroup_read(id, "memory", "memory.oom_control"), "oom_kill").unwrap_or(0)
    }
}

#[test]
fn memory_limit_oom_kills() {
    skip_unless_root!("memory_limit_oom_kills");
    // dd fills a 64 MiB buffer from /dev/zero: that memory is touched, so it is charged.
    let mut env = Env::new(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    limit_memory(&mut env, 24 * MIB);
    let id1 = id("oom-run");
    let out = env.run(&id1);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", show(&out));
    no_cgroup_left(&id1);

    // The same, created and started, to read the kernel's own count before delete.
    let id2 = id("oom");
    env.create(&id2);
    env.ok(&["start", &id2]);
    env.wait_status(&id2, "stopped");
    assert!(oom_kills(&id2) >= 1, "the kernel counted no OOM kill");
    env.ok(&["delete", &id2]);
    no_cgroup_left(&id2);

    // Within the limit the same program succeeds: the limit is not killing everything.
    let mut small = Env::new(&["dd", "if=/dev/zero", "of=/dev/null", "bs=4M", "count=1"]);
    limit_memory(&mut small, 24 * MIB);
    let id3 = id("oom-fits");
    let out = small.run(&id3);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

#[test]
fn a_memory_limit_below_what_the_container_uses_names_limit_and_usage() {
    skip_unless_root!("a_memory_limit_below_what_the_container_uses_names_limit_and_usage");
    // At create: the limit goes on the empty cgroup, and init is killed setting up.
    let mut env = Env::new(&["true"]);
    limit_memory(&mut env, 20_000);
    let id1 = id("mem-setup");
    let b = env.bundle();
    let out = env.tug(&["create", &id1, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("OOM killer") && err.contains("memory.limit 20000"),
        "{}",
        show(&out)
    );
    assert!(!env.state_root().join(&id1).exists());
    no_cgroup_left(&id1);

    // At update: v1 refuses a limit below the usage (EBUSY); v2 takes it and reclaims.
    if host_is_v2() {
        eprintln!("SKIP the update half: cgroup v2 takes a memory.max below the usage");
        return;
    }
    // 8 MiB of touched tmpfs pages, charged to the container.
    let mut env = Env::new(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>/dev/null; echo filled > /tmp/done; sleep 100",
    ]);
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=16m"]}),
        );
    });
    let id2 = id("mem-update");
    env.create(&id2);
    env.ok(&["start", &id2]);
    let pid = common::init_pid(&env, &id2);
    wait_for("the tmpfs to be filled", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/root/tmp/done")).is_ok()
    });
    let out = env.tug(&["update", "--memory", "1048576", &id2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("linux.resources.memory.limit 1048576")
            && err.contains("current usage: ")
            && err.contains("peak usage: "),
        "{}",
        show(&out)
    );
    let usage: u64 = err
        .split("current usage: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no usage figure in {err}"));
    assert!(usage >= 8 * MIB as u64, "{err}");
    env.ok(&["delete", "--force", &id2]);
    no_cgroup_left(&id2);
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    skip_unless_root!("pids_limit_stops_a_fork_loop");
    // The loop runs in a child shell, which dies at the first refused fork; the outer shell
    // then marks the end with a builtin and execs, needing no fork itself.
    let script = "sh -c 'i=0; while [ $i -lt 40 ]; do sleep 100 & i=$((i+1)); done' 2>/dev/null; \
                  echo done > /tmp/forked; exec sleep 100";
    let mut env = Env::new(&["sh", "-c", script]);
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        s["linux"]["resources"]["pids"] = json!({"limit": 8});
    });
    let id = id("pids");
    env.create(&id);
    env.ok(&["start", &id]);
    let marker = env.rootfs().join("tmp/forked");
    wait_for("the fork loop to finish", Duration::from_secs(30), || {
        marker.exists()
    });
    let current: u64 = cgroup_read(&id, "pids", "pids.current")
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 8, "{current} processes under a limit of 8");
    let refused = keyed(&cgroup_read(&id, "pids", "pids.events"), "max").unwrap();
    assert!(refused > 0, "no fork was refused");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

/// CPU time the container's cgroup has used, in nanoseconds.
fn cpu_usage_ns(id: &str) -> u64 {
    if host_is_v2() {
        keyed(&cgroup_read(id, "cpu", "cpu.stat"), "usage_usec").unwrap() * 1000
    } else {
        cgroup_read(id, "cpuacct", "cpuacct.usage")
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn cpu_quota_throttles() {
    skip_unless_root!("cpu_quota_throttles");
    let mut env = Env::new(&["sh", "-c", "while :; do :; done"]);
    // A fifth of one CPU.
    env.edit(|s| s["linux"]["resources"]["cpu"] = json!({"quota": 20000, "period": 100000}));
    let id = id("cpu");
    env.create(&id);
    env.ok(&["start", &id]);
    std::thread::sleep(Duration::from_millis(300));
    let (t0, u0) = (Instant::now(), cpu_usage_ns(&id));
    // A measurement window, not a wait for a condition.
    std::thread::sleep(Duration::from_millis(1500));
    let (wall, used) = (t0.elapsed(), cpu_usage_ns(&id) - u0);
    let share = used as f64 / wall.as_nanos() as f64;
    let throttled = keyed(&cgroup_read(&id, "cpu", "cpu.stat"), "nr_throttled").unwrap();
    env.ok(&["delete", "--force", &id]);
    assert!(share < 0.30, "used {share:.2} of a CPU under a 0.2 quota");
    assert!(throttled > 0, "never throttled");
    no_cgroup_left(&id);
}

/// The whole-disk block device (major, minor) that holds `path`, if it is a plain disk.
fn disk_of(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    if !sys.exists() {
        return None;
    }
    let sys = if sys.join("partition").exists() {
        sys.canonicalize().ok()?.parent()?.to_path_buf()
    } else {
        sys
    };
    let text = std::fs::read_to_string(sys.join("dev")).ok()?;
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn io_limit_slows_direct_writes() {
    skip_unless_root!("io_limit_slows_direct_writes");
    let mut env = Env::new(&[
        "dd",
        "if=/dev/zero",
        "of=/data/f",
        "bs=64k",
        "count=32",
        "oflag=direct",
    ]);
    std::fs::create_dir(env.rootfs().join("data")).unwrap();
    let Some((major, minor)) = disk_of(&env.rootfs()) else {
        eprintln!("SKIP io_limit_slows_direct_writes: the temp dir is not on a plain block device");
        return;
    };
    let data = env.rootfs().join("data");
    env.edit(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
        }));
        // 2 MiB at 1 MiB/s: at least a second and a half, where unthrottled it takes ms.
        s["linux"]["resources"]["blockIO"] =
            json!({"throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": MIB}]});
    });
    let id = id("io");
    let t0 = Instant::now();
    let out = env.run(&id);
    let took = t0.elapsed();
    if String::from_utf8_lossy(&out.stderr).contains("Invalid argument") {
        eprintln!(
            "SKIP io_limit_slows_direct_writes: O_DIRECT not supported here: {}",
            show(&out)
        );
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        took >= Duration::from_millis(1400),
        "2 MiB at 1 MiB/s took {took:?}"
    );
    no_cgroup_left(&id);
}

#[test]
fn pause_freezes_and_resume_thaws() {
    skip_unless_root!("pause_freezes_and_resume_thaws");
    let mut env = Env::new(&[
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; done",
    ]);
    env.edit(|s| s["root"]["readonly"] = json!(false));
    let id = id("freeze");
    env.create(&id);
    env.ok(&["start", &id]);
    let n = env.rootfs().join("tmp/n");
    let read = || std::fs::read_to_string(&n).unwrap_or_default();
    wait_for("the counter to start", Duration::from_secs(10), || {
        !read().is_empty()
    });
    env.ok(&["pause", &id]);
    assert_eq!(env.status(&id), "paused");
    let frozen = if host_is_v2() {
        keyed(&cgroup_read(&id, "freezer", "cgroup.events"), "frozen") == Some(1)
    } else {
        cgroup_read(&id, "freezer", "freezer.state").trim() == "FROZEN"
    };
    assert!(frozen, "the cgroup is not frozen");
    let before = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), before, "the counter moved while paused");
    env.ok(&["resume", &id]);
    assert_eq!(env.status(&id), "running");
    wait_for("the counter to move again", Duration::from_secs(10), || {
        read() != before
    });
    let again = env.tug(&["resume", &id]);
    assert!(!again.status.success(), "resume of a running container");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn device_rules_hold() {
    skip_unless_root!("device_rules_hold");
    // With CAP_MKNOD the only thing between the container and a device is the cgroup's rules
    // (the devices controller on v1, tug's eBPF program on v2).
    // The disk under the temp dir exists, so reading it can only fail by the rules.
    let Some((major, minor)) = disk_of(std::path::Path::new("/tmp")) else {
        eprintln!("SKIP device_rules_hold: /tmp is not on a plain block device");
        return;
    };
    let script = format!(
        "mknod /tmp/null2 c 1 3 && head -c 1 /tmp/null2 && echo null-ok; \
         mknod /tmp/blk b {major} {minor} && (head -c 1 /tmp/blk >/dev/null 2>&1 || echo blk-denied); \
         mknod /tmp/mem c 1 1 && (head -c 1 /tmp/mem >/dev/null 2>&1 || echo mem-denied)"
    );
    let mut env = Env::new(&["sh", "-c", &script]);
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/mknod")).unwrap();
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        let caps = json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE"]);
        s["process"]["capabilities"] =
            json!({"bounding": caps, "effective": caps, "permitted": caps});
    });
    let id = id("devices");
    let out = env.run(&id);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("null-ok"), "{}", show(&out));
    assert!(text.contains("blk-denied"), "{}", show(&out));
    assert!(text.contains("mem-denied"), "{}", show(&out));
    no_cgroup_left(&id);
}

#[test]
fn the_v2_device_program_loads_and_decides() {
    skip_unless_root!("the_v2_device_program_loads_and_decides");
    // A cgroup2 directory exists on pure v2 and on hybrid hosts (the unified mount).
    let Some((base, _)) = common::cgroup_mounts()
        .into_iter()
        .find(|(_, o)| o.is_empty())
    else {
        eprintln!("SKIP the_v2_device_program_loads_and_decides: no cgroup2 mount");
        return;
    };
    /// The test's own cgroup, removed however the test ends (a failed load or assert too).
    struct TempCgroup(std::path::PathBuf);
    impl Drop for TempCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let cgroup = TempCgroup(base.join(id("bpf")));
    let dir = cgroup.0.clone();
    std::fs::create_dir(&dir).unwrap();
    let rules: Vec<oci_spec::runtime::LinuxDeviceCgroup> =
        serde_json::from_value(json!([{"allow": false, "access": "rwm"}])).unwrap();
    let rules: Vec<_> = rules
        .into_iter()
        .chain(tug_runtime::cgroups::default_device_rules())
        .collect();
    tug_runtime::devices_bpf::attach(&dir, &rules).unwrap();
    let procs = dir.join("cgroup.procs");
    let out = std::process::Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            &format!(
                "echo $$ > {}; head -c 1 /dev/null && echo null-ok; \
                 head -c 1 /dev/mem >/dev/null 2>&1 || echo mem-denied",
                procs.display()
            ),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The shell has exited, so its cgroup is empty and goes now.
    drop(cgroup);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        text.contains("null-ok") && text.contains("mem-denied"),
        "{}",
        show(&out)
    );
}

#[test]
fn a_new_v2_device_program_replaces_the_old_one() {
    skip_unless_root!("a_new_v2_device_program_replaces_the_old_one");
    // Programs attached side by side must all allow an access: a second one that only adds
    // the old one could only take permissions away, never give them (what `update` does).
    let Some((base, _)) = common::cgroup_mounts()
        .into_iter()
        .find(|(_, o)| o.is_empty())
    else {
        eprintln!("SKIP a_new_v2_device_program_replaces_the_old_one: no cgroup2 mount");
        return;
    };
    struct TempCgroup(std::path::PathBuf);
    impl Drop for TempCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let cgroup = TempCgroup(base.join(id("bpf-replace")));
    let dir = cgroup.0.clone();
    std::fs::create_dir(&dir).unwrap();
    let rules = |extra: serde_json::Value| -> Vec<oci_spec::runtime::LinuxDeviceCgroup> {
        let extra: Vec<oci_spec::runtime::LinuxDeviceCgroup> =
            serde_json::from_value(extra).unwrap();
        tug_runtime::cgroups::device_rules(&extra)
    };
    // Opening /dev/kmsg write-only needs no capability: only the device rules decide.
    let kmsg = || {
        let out = std::process::Command::new("/bin/busybox")
            .args([
                "sh",
                "-c",
                &format!(
                    "echo $$ > {}; (: > /dev/kmsg) 2>/dev/null && echo kmsg-ok || echo kmsg-denied",
                    dir.join("cgroup.procs").display()
                ),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let deny = rules(json!([]));
    let allow =
        rules(json!([{"allow": true, "type": "c", "major": 1, "minor": 11, "access": "w"}]));
    tug_runtime::devices_bpf::attach(&dir, &deny).unwrap();
    assert_eq!(kmsg(), "kmsg-denied");
    tug_runtime::devices_bpf::attach(&dir, &allow).unwrap();
    assert_eq!(kmsg(), "kmsg-ok", "the first program still denies");
    tug_runtime::devices_bpf::attach(&dir, &deny).unwrap();
    assert_eq!(kmsg(), "kmsg-denied", "the second program still allows");
    drop(cgroup);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Containers made and deleted side by side: each delete may remove the shared, empty `tug`
/// parent while another create is making its cgroup under it. Every create succeeds, and
/// nothing of theirs is left.
#[test]
fn concurrent_creates_and_deletes_share_the_parent_safely() {
    skip_unless_root!("concurrent_creates_and_deletes_share_the_parent_safely");
    let env = Env::new(&["true"]);
    std::thread::scope(|s| {
        for t in 0..3 {
            let env = &env;
            s.spawn(move || {
                for i in 0..25 {
                    let cid = id(&format!("churn{t}-{i}"));
                    env.create(&cid);
                    env.ok(&["delete", "--force", &cid]);
                    no_cgroup_left(&cid);
                }
            });
        }
    });
}
