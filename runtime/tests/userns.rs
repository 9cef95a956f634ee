//! Root tests: user namespaces. The container's root is a mapped host uid: it owns its files
//! and is nobody special outside.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{id, no_cgroup_left, show, Env, HostMount};
use nix::mount::MsFlags;
use serde_json::json;

const HOST_BASE: u32 = 300_000;

fn chown_tree(dir: &std::path::Path, uid: u32, gid: u32) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
        if entry.file_type().unwrap().is_dir() {
            chown_tree(&p, uid, gid);
        }
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
}

fn userns_env(args: &[&str]) -> Env {
    let mut env = Env::new(args);
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": HOST_BASE, "size": 65536}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": HOST_BASE, "size": 65536}]);
    });
    chown_tree(&env.rootfs(), HOST_BASE, HOST_BASE);
    // The bundle dir itself must be reachable by the mapped root.
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env
}

#[test]
fn mapped_root_owns_its_files_and_is_nobody_outside() {
    skip_unless_root!("mapped_root_owns_its_files_and_is_nobody_outside");
    let env = userns_env(&["sh", "-c", "id -u; touch /tmp/made-inside; sleep 100"]);
    let id = id("userns");
    env.create(&id);
    env.ok(&["start", &id]);
    let made = env.rootfs().join("tmp/made-inside");
    common::wait_for(
        "the file to be made",
        std::time::Duration::from_secs(10),
        || made.exists(),
    );
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (HOST_BASE, HOST_BASE));
    // Outside, the container's root is the mapped host uid, not root.
    let pid = common::init_pid(&env, &id);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == HOST_BASE.to_string()),
        "{uid_line}"
    );
    // Inside, it is uid 0 and sees the mapping.
    let out = env.ok(&["exec", &id, "cat", "/proc/self/uid_map"]);
    let map: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        map,
        ["0", &HOST_BASE.to_string(), "65536"],
        "{}",
        show(&out)
    );
    let out = env.ok(&["exec", &id, "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn bad_mappings_are_refused_and_leave_nothing() {
    skip_unless_root!("bad_mappings_are_refused_and_leave_nothing");
    let cases = [
        (
            json!([{"containerID": 0, "hostID": 400000, "size": 1000},
                   {"containerID": 500, "hostID": 500000, "size": 10}]),
            "linux.uidMappings[1].containerID",
        ),
        (
            json!([{"containerID": 0, "hostID": 400000, "size": 0}]),
            "linux.uidMappings[0].size",
        ),
        (
            json!([{"containerID": 0, "hostID": 4294967000u64, "size": 65536}]),
            "linux.uidMappings[0]",
        ),
    ];
    for (i, (maps, field)) in cases.into_iter().enumerate() {
        let mut env = userns_env(&["true"]);
        env.edit(|s| s["linux"]["uidMappings"] = maps.clone());
        let id = id(&format!("badmap{i}"));
        let b = env.bundle();
        let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{field}: {}",
            show(&out)
        );
        assert!(!env.state_root().join(&id).exists());
        no_cgroup_left(&id);
    }
    // Mappings without a user namespace.
    let mut env = Env::new(&["true"]);
    env.edit(|s| {
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": HOST_BASE, "size": 1}]);
    });
    let b = env.bundle();
    let out = env.tug(&["create", &id("nouserns"), "--bundle", b.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("linux.uidMappings"),
        "{}",
        show(&out)
    );
}

#[test]
fn an_idmapped_bind_mount_shows_files_under_mapped_owners() {
    skip_unless_root!("an_idmapped_bind_mount_shows_files_under_mapped_owners");
    let mut env = Env::new(&["sh", "-c", "stat -c %u:%g /data/owned-by-root"]);
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/stat")).unwrap();
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("owned-by-root"), "x").unwrap();
    std::fs::create_dir(env.rootfs().join("data")).unwrap();
    env.edit(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"],
            "uidMappings": [{"containerID": 0, "hostID": 1234, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 5678, "size": 1}]
        }));
    });
    let id = id("idmap");
    let out = env.run(&id);
    if String::from_utf8_lossy(&out.stderr).contains("idmapped bind-mount")
        && String::from_utf8_lossy(&out.stderr).contains("Invalid argument")
    {
        eprintln!("SKIP an_idmapped_bind_mount_shows_files_under_mapped_owners: the temp dir's filesystem has no idmapped mounts: {}", show(&out));
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // On disk the file is 0:0; through the mount it is what 0 maps to.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1234:5678");
    let meta = std::fs::metadata(data.join("owned-by-root")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "the file on disk is unchanged"
    );
    no_cgroup_left(&id);

    // An idmapped mount that is not a bind mount is refused by field.
    env.edit(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        let last = mounts.last_mut().unwrap();
        last["type"] = json!("tmpfs");
        last["options"] = json!([]);
    });
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("uidMappings"),
        "{}",
        show(&out)
    );
}

#[test]
fn read_only_root_and_paths_keep_the_locked_mount_flags() {
    skip_unless_root!("read_only_root_and_paths_keep_the_locked_mount_flags");
    let mut env = userns_env(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo root rw || echo root ro; \
         touch /etc/x 2>/dev/null && echo etc rw || echo etc ro; \
         touch /tmp/x 2>/dev/null && echo tmp rw || echo tmp ro; \
         grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ (/|/etc) ' /proc/self/mountinfo | cut -d' ' -f5,6",
    ]);
    env.edit(|s| {
        s["root"]["readonly"] = json!(true);
        s["linux"]["readonlyPaths"] = json!(["/etc"]);
        // /tmp stays writable: a tmpfs the container's namespace owns.
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]
        }));
    });
    // The rootfs on a nosuid,nodev,noexec,noatime mount, as on a host whose /var or /tmp is:
    // copied into the container's user namespace, those flags are locked.
    let bundle = env.bundle();
    let host = HostMount::new(&bundle, &bundle, None, MsFlags::MS_BIND, None);
    host.change(
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOATIME,
    );
    let id = id("userns-ro");
    let out = env.run(&id);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["root ro", "etc ro", "tmp rw"] {
        assert!(text.lines().any(|l| l == want), "want '{want}' in\n{text}");
    }
    for line in text.lines().filter(|l| l.starts_with('/')) {
        let opts: Vec<&str> = line.split_once(' ').unwrap().1.split(',').collect();
        for flag in ["ro", "nosuid", "nodev", "noatime"] {
            assert!(opts.contains(&flag), "{line}: no {flag}\n{text}");
        }
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with('/')).count(),
        2,
        "{text}"
    );
    no_cgroup_left(&id);
}

/// What an orchestrator asks for (tugboat's `security.user_namespace`): a new user namespace,
/// a network namespace made beforehand and joined by path (owned by the host's user
/// namespace), an oom score (set by tug before the clone: init in its user namespace could
/// not lower one; lowering is not tested, this machine lacks CAP_SYS_RESOURCE), an idmapped bind of a host directory, and an exec.
#[test]
fn a_new_user_namespace_joins_a_host_network_namespace_by_path() {
    skip_unless_root!("a_new_user_namespace_joins_a_host_network_namespace_by_path");
    let netns = format!("tugrt-{}", std::process::id());
    let add = std::process::Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .expect("run ip");
    assert!(add.success(), "ip netns add {netns}");
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _gone = Gone(netns.clone());
    let path = format!("/run/netns/{netns}");
    let mut env = userns_env(&["sh", "-c", "touch /data/made; sleep 100"]);
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(env.rootfs().join("data")).unwrap();
    chown_tree(&env.rootfs().join("data"), HOST_BASE, HOST_BASE);
    env.edit(|s| {
        let namespaces = s["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "network");
        namespaces.push(json!({"type": "network", "path": path}));
        s["process"]["oomScoreAdj"] = json!(500);
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"],
            "uidMappings": [{"containerID": 0, "hostID": HOST_BASE, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": HOST_BASE, "size": 65536}]
        }));
    });
    let id = id("usernet");
    env.create(&id);
    let pid = common::init_pid(&env, &id);
    let inode = |p: &str| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(&format!("/proc/{pid}/ns/net")),
        inode(&path),
        "init is not in the namespace at {path}"
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap(),
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "500");
    env.ok(&["start", &id]);
    common::wait_for(
        "the file in the idmapped bind",
        std::time::Duration::from_secs(10),
        || data.join("made").exists(),
    );
    // Written as the container's root: root's on disk, through the idmapped mount.
    assert_eq!(std::fs::metadata(data.join("made")).unwrap().uid(), 0);
    let out = env.ok(&["exec", &id, "cat", "/proc/self/uid_map"]);
    let map: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(map, ["0", &HOST_BASE.to_string(), "65536"]);
    env.ok(&["kill", &id, "KILL"]);
    common::wait_for("init to die", std::time::Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

/// An orchestrator makes these from many threads at once (the agent prepares instances in
/// parallel): none may wait on another's child, which inherits every fd of the process.
#[test]
fn user_namespaces_made_from_many_threads_at_once_do_not_wait_on_each_other() {
    skip_unless_root!("user_namespaces_made_from_many_threads_at_once_do_not_wait_on_each_other");
    let mapping: oci_spec::runtime::LinuxIdMapping =
        serde_json::from_value(json!({"containerID": 0, "hostID": HOST_BASE, "size": 65536}))
            .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    for _ in 0..8 {
        let (done, mapping) = (done.clone(), mapping);
        std::thread::spawn(move || {
            for _ in 0..25 {
                let fd = tug_runtime::rootless::userns_fd(&[mapping], &[mapping]).unwrap();
                drop(fd);
            }
            done.send(()).unwrap();
        });
    }
    for n in 0..8 {
        // Generous for a loaded machine; a deadlock never ends.
        finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{} of 8 threads still waiting after 120 s", 8 - n));
    }
}
