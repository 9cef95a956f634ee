//! Root tests: how the container's mounts behave: linux.rootfsPropagation on its `/`, and
//! the recursive (`rro`, ...) and nosymfollow mount options.

mod common;

use std::path::{Path, PathBuf};

use common::{id, no_cgroup_left, show, Env, HostMount};
use nix::mount::MsFlags;
use serde_json::json;

/// Runs `script` in a fresh container made by `env`, returning what it printed.
fn run(env: &Env, name: &str) -> String {
    let id = id(name);
    let out = env.run(&id);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!env.state_root().join(&id).exists(), "{}", show(&out));
    no_cgroup_left(&id);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The optional fields (shared:N, master:N, unbindable) of the mount at `/` in a mountinfo.
fn root_propagation(mountinfo: &str) -> String {
    let line = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in\n{mountinfo}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let end = fields.iter().position(|f| *f == "-").unwrap();
    fields[6..end].join(" ")
}

#[test]
fn rootfs_propagation_applies_to_the_containers_root() {
    skip_unless_root!("rootfs_propagation_applies_to_the_containers_root");
    for (propagation, want) in [
        ("shared", "shared:"),
        ("rshared", "shared:"),
        ("slave", "master:"),
        ("unbindable", "unbindable"),
        ("private", ""),
    ] {
        let mut env = Env::new(&["cat", "/proc/self/mountinfo"]);
        env.edit(|s| s["linux"]["rootfsPropagation"] = json!(propagation));
        // The rootfs on a shared mount, as on a systemd host, so a slave root has a master.
        let bundle = env.bundle();
        let shared = HostMount::new(&bundle, &bundle, None, MsFlags::MS_BIND, None);
        shared.change(MsFlags::MS_SHARED);
        let info = run(&env, &format!("prop-{propagation}"));
        let got = root_propagation(&info);
        if want.is_empty() {
            assert_eq!(got, "", "{propagation}: {info}");
        } else {
            assert!(got.contains(want), "{propagation}: / has '{got}'\n{info}");
        }
        // Nothing the container mounted reached the host's side of the shared mount.
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let rootfs = env.rootfs();
        assert!(
            !host
                .lines()
                .any(|l| l.contains(&format!("{}/", rootfs.display()))),
            "{propagation}: a container mount propagated to the host:\n{host}"
        );
    }
}

/// A host tree for bind mounts: vol/{file, link -> file}, and a tmpfs on vol/sub with
/// sub/{file, link -> file}.
fn tree(env: &Env) -> (PathBuf, HostMount) {
    let vol = env.dir.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("file"), "top\n").unwrap();
    std::os::unix::fs::symlink("file", vol.join("link")).unwrap();
    let sub = HostMount::new(
        Path::new("tmpfs"),
        &vol.join("sub"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k"),
    );
    std::fs::write(vol.join("sub/file"), "sub\n").unwrap();
    std::os::unix::fs::symlink("file", vol.join("sub/link")).unwrap();
    (vol, sub)
}

#[test]
fn recursive_read_only_reaches_submounts() {
    skip_unless_root!("recursive_read_only_reaches_submounts");
    let mut env = Env::new(&[
        "sh",
        "-c",
        "for d in /ro /rro; do touch $d/sub/x 2>/dev/null && echo $d sub rw || echo $d sub ro; \
         grep \" $d/sub \" /proc/self/mountinfo | cut -d' ' -f6; done",
    ]);
    let (vol, _sub) = tree(&env);
    env.edit(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        for (dest, opts) in [
            ("/ro", json!(["rbind", "ro"])),
            ("/rro", json!(["rbind", "rro"])),
        ] {
            mounts
                .push(json!({"destination": dest, "type": "bind", "source": vol, "options": opts}));
        }
    });
    let out = run(&env, "rro");
    // "ro" makes only the top mount read-only; "rro" every mount under it too.
    assert!(out.contains("/ro sub rw"), "{out}");
    assert!(out.contains("/rro sub ro"), "{out}");
    let rro_opts = out.lines().nth(3).unwrap_or("");
    assert!(rro_opts.split(',').any(|o| o == "ro"), "{out}");
    let _ = std::fs::remove_file(vol.join("sub/x"));
}

#[test]
fn nosymfollow_refuses_symlinks_and_rnosymfollow_reaches_submounts() {
    skip_unless_root!("nosymfollow_refuses_symlinks_and_rnosymfollow_reaches_submounts");
    let mut env = Env::new(&[
        "sh",
        "-c",
        "for p in /nf/file /nf/link /nf/sub/link /rnf/sub/file /rnf/sub/link; do \
         cat $p >/dev/null 2>&1 && echo $p follows || echo $p refused; done",
    ]);
    let (vol, _sub) = tree(&env);
    env.edit(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        for (dest, opts) in [
            ("/nf", json!(["rbind", "nosymfollow"])),
            ("/rnf", json!(["rbind", "rnosymfollow"])),
        ] {
            mounts
                .push(json!({"destination": dest, "type": "bind", "source": vol, "options": opts}));
        }
    });
    let out = run(&env, "nosymfollow");
    for want in [
        "/nf/file follows",
        "/nf/link refused",
        // nosymfollow is the top mount's only; rnosymfollow is every mount's.
        "/nf/sub/link follows",
        "/rnf/sub/file follows",
        "/rnf/sub/link refused",
    ] {
        assert!(out.lines().any(|l| l == want), "want '{want}' in\n{out}");
    }
}

/// Takes the mount namespace out of `env`'s config, with the fields that would need one
/// (`tug spec` writes mounts, masked and read-only paths, a read-only root).
fn without_mount_namespace(env: &mut Env, join: Option<String>) {
    env.edit(|s| {
        let mut ns: Vec<serde_json::Value> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] != "mount")
            .cloned()
            .collect();
        if let Some(path) = join {
            ns.push(json!({"type": "mount", "path": path}));
        }
        s["linux"]["namespaces"] = json!(ns);
        s["mounts"] = json!([]);
        s["root"]["readonly"] = json!(false);
        s["linux"]["maskedPaths"] = json!([]);
        s["linux"]["readonlyPaths"] = json!([]);
    });
}

fn ns_of(pid: &str, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

#[test]
fn a_container_without_a_mount_namespace_shares_tugs_and_is_chrooted() {
    skip_unless_root!("a_container_without_a_mount_namespace_shares_tugs_and_is_chrooted");
    let mut env = Env::new(&["sleep", "1000"]);
    std::fs::write(env.rootfs().join("marker"), "in the rootfs\n").unwrap();
    // With mounts still listed, create refuses by field, and leaves nothing.
    let mounts = env.spec["mounts"].clone();
    without_mount_namespace(&mut env, None);
    env.edit(|s| s["mounts"] = mounts);
    let refused = id("nomntns-refused");
    let b = env.bundle();
    let out = env.tug(&["create", &refused, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mounts:") && err.contains("mount namespace"),
        "{}",
        show(&out)
    );
    assert!(!env.state_root().join(&refused).exists());
    no_cgroup_left(&refused);

    without_mount_namespace(&mut env, None);
    let host_root = root_propagation(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    let id = id("nomntns");
    env.create(&id);
    env.ok(&["start", &id]);
    let pid = common::init_pid(&env, &id).to_string();
    // The host's mount namespace (tug's), with the bundle's rootfs as its root.
    assert_eq!(ns_of(&pid, "mnt"), ns_of("self", "mnt"));
    assert_ne!(ns_of(&pid, "uts"), ns_of("self", "uts"));
    assert_eq!(
        std::fs::canonicalize(format!("/proc/{pid}/root")).unwrap(),
        std::fs::canonicalize(env.rootfs()).unwrap()
    );
    // A process exec'd into it gets the same root.
    let out = env.ok(&["exec", &id, "cat", "/marker"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in the rootfs\n");
    // Nothing was mounted in the host's namespace, and its / kept its propagation.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bundle = env.bundle();
    assert!(
        !host.lines().any(|l| l.contains(&*bundle.to_string_lossy())),
        "a mount in the host's namespace:\n{host}"
    );
    assert_eq!(root_propagation(&host), host_root);
    env.ok(&["delete", "--force", &id]);
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}

/// A process of the test holding a mount namespace of its own, in which a tmpfs covers
/// `dir`; killed (by its pid) when the test ends, however it ends.
struct MountNamespaceHolder(std::process::Child);

impl MountNamespaceHolder {
    fn new(dir: &Path) -> MountNamespaceHolder {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let script = format!(
            "mount -t tmpfs -o size=64k tmpfs {0} && echo joined > {0}/only-here && echo ready \
             && exec sleep 1000",
            dir.display()
        );
        let mut cmd = std::process::Command::new("/bin/busybox");
        cmd.args(["sh", "-c", &script])
            .stdout(std::process::Stdio::piped());
        // SAFETY: only syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let holder = MountNamespaceHolder(child);
        assert_eq!(line, "ready\n", "the namespace holder failed");
        holder
    }

    fn ns_path(&self) -> String {
        format!("/proc/{}/ns/mnt", self.0.id())
    }
}

impl Drop for MountNamespaceHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_container_joins_a_mount_namespace_by_path() {
    skip_unless_root!("a_container_joins_a_mount_namespace_by_path");
    let mut env = Env::new(&["cat", "/mnt/only-here"]);
    std::fs::create_dir(env.rootfs().join("mnt")).unwrap();
    let holder = MountNamespaceHolder::new(&env.rootfs().join("mnt"));
    // The tmpfs and its file exist only in the holder's namespace.
    assert!(!env.rootfs().join("mnt/only-here").exists());
    without_mount_namespace(&mut env, Some(holder.ns_path()));
    let out = run(&env, "joinmntns");
    assert_eq!(out, "joined\n");

    // Created and started: the container's init is in the holder's namespace.
    env.edit(|s| s["process"]["args"] = json!(["sleep", "1000"]));
    let id = id("joinmntns-live");
    env.create(&id);
    env.ok(&["start", &id]);
    let pid = common::init_pid(&env, &id).to_string();
    assert_eq!(ns_of(&pid, "mnt"), ns_of(&holder.0.id().to_string(), "mnt"));
    let out = env.ok(&["exec", &id, "cat", "/mnt/only-here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "joined\n");
    env.ok(&["delete", "--force", &id]);
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
    drop(holder);
}
