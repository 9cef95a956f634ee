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
