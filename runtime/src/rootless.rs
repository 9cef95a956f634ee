//! Rootless tug: a user who is not root runs containers in a user namespace of their own.
//!
//! A single mapping of the user's own uid and gid the parent writes itself (after denying
//! setgroups, as the kernel requires of an unprivileged writer). Several ranges need the
//! host's setuid helpers newuidmap and newgidmap (package uidmap), which check them against
//! /etc/subuid and /etc/subgid; this is how runc, crun and podman do it too.

use std::path::PathBuf;
use std::process::Command;

use oci_spec::runtime::LinuxIdMapping;

/// The ranges (start, end) that `file` (/etc/subuid or /etc/subgid) gives the user `uid`,
/// listed by name or by number.
pub fn sub_ids(file: &str, uid: u32) -> Vec<(u64, u64)> {
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name);
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let who = f.next()?;
            let start: u64 = f.next()?.parse().ok()?;
            let count: u64 = f.next()?.parse().ok()?;
            let ours = who == uid.to_string() || Some(who) == name.as_deref();
            ours.then_some((start, start + count))
        })
        .collect()
}

/// The default state root of a rootless user: $XDG_RUNTIME_DIR/tug, as runc uses
/// $XDG_RUNTIME_DIR/runc.
pub fn default_root() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("tug"),
        _ => PathBuf::from(format!("/tmp/tug-{}", nix::unistd::geteuid())),
    }
}

/// Writes the id maps of `pid`'s new user namespace: directly as root; as another user,
/// directly for a mapping of their own ids only, else through newuidmap/newgidmap.
pub fn write_maps(
    pid: i32,
    uids: &[LinuxIdMapping],
    gids: &[LinuxIdMapping],
) -> Result<(), String> {
    let write = |file: &str, text: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text).map_err(|e| format!("write {path}: {e}"))
    };
    let lines = |maps: &[LinuxIdMapping]| {
        maps.iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    if nix::unistd::geteuid().is_root() {
        write("uid_map", lines(uids))?;
        return write("gid_map", lines(gids));
    }
    let own_only = |maps: &[LinuxIdMapping], id: u32| {
        maps.len() == 1 && maps[0].host_id() == id && maps[0].size() == 1
    };
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if own_only(uids, euid) && own_only(gids, egid) {
        // An unprivileged writer must deny setgroups before it may write gid_map.
        write("setgroups", "deny".into())?;
        write("uid_map", lines(uids))?;
        return write("gid_map", lines(gids));
    }
    for (helper, maps) in [("newuidmap", uids), ("newgidmap", gids)] {
        let mut cmd = Command::new(helper);
        cmd.arg(pid.to_string());
        for m in maps {
            cmd.args([
                m.container_id().to_string(),
                m.host_id().to_string(),
                m.size().to_string(),
            ]);
        }
        let out = cmd.output().map_err(|e| {
            format!("{helper} (package uidmap) is needed for several id ranges: {e}")
        })?;
        if !out.status.success() {
            return Err(format!(
                "{helper}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// A user namespace with these mappings, held by an fd (for idmapped mounts): a child is
/// cloned into a new user namespace, its maps are written, its namespace is opened, and it
/// is killed. The child only waits to be killed: it holds no pipe end, so that in a
/// multithreaded caller (the agent) a child cloned by another thread at the same moment,
/// which inherits every fd, cannot keep this one waiting for an end of file.
pub fn userns_fd(
    uids: &[LinuxIdMapping],
    gids: &[LinuxIdMapping],
) -> Result<std::os::fd::OwnedFd, String> {
    use crate::clone::{clone_child, Forked};
    let flags = nix::sched::CloneFlags::CLONE_NEWUSER.bits() as u64;
    match clone_child(flags, None).map_err(|e| format!("clone a user namespace: {e}"))? {
        (Forked::Child, _) => {
            // SAFETY: prctl and pause are async-signal-safe; the loop ends with SIGKILL.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            loop {
                // SAFETY: as above.
                unsafe { libc::pause() };
            }
        }
        (Forked::Parent { child }, _) => {
            let result = (|| {
                write_maps(child, uids, gids)?;
                let ns = format!("/proc/{child}/ns/user");
                std::fs::File::open(&ns)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| format!("open {ns}: {e}"))
            })();
            let pid = nix::unistd::Pid::from_raw(child);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            result
        }
    }
}
