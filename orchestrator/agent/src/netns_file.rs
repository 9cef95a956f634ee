//! A network namespace per instance, kept alive by a bind mount on a file in the instance
//! directory (what `ip netns add` does, without the `ip` process).
//!
//! The namespace outlives the container's processes: a container restarted in place joins
//! the same namespace (its address, veth and published ports stay), and a restarted agent
//! finds it again. Made in a short-lived thread that unshares only itself.

use std::io;
use std::path::Path;

/// Is `path` a mounted network namespace?
pub fn is_netns(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC,
        Err(_) => false,
    }
}

/// Makes `path` a new network namespace, unless it already is one.
pub fn ensure(path: &Path) -> io::Result<()> {
    if is_netns(path) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Unmounts and removes the namespace file; nothing to do when it is not there.
pub fn remove(path: &Path) -> io::Result<()> {
    if is_netns(path) {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
