//! `flock(2)` locks on files in the store. A lock is released when its guard is dropped
//! (the file is closed), and by the kernel when the process dies, so a crash never leaves
//! a stale lock behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{IoContext, Result};

/// A held lock. Dropping it unlocks.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

fn lock(path: &Path, op: libc::c_int) -> Result<LockGuard> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    loop {
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(LockGuard { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).at(path);
        }
    }
}

/// Take `path`'s lock exclusively if no one holds it; `None` if someone does.
pub fn try_exclusive(path: &Path) -> Result<Option<LockGuard>> {
    match lock(path, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(g) => Ok(Some(g)),
        Err(crate::error::Error::Io { source, .. })
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Take `path`'s lock exclusively, waiting for other holders.
pub fn exclusive(path: &Path) -> Result<LockGuard> {
    lock(path, libc::LOCK_EX)
}

/// Take `path`'s lock shared, waiting for an exclusive holder.
pub fn shared(path: &Path) -> Result<LockGuard> {
    lock(path, libc::LOCK_SH)
}
