//! Starting the container's init: clone3 with the new namespaces (and CLONE_INTO_CGROUP where
//! the host has cgroup v2), falling back to clone(2).
//!
//! Like fork, the child gets a copy of the address space and continues on the same stack. That
//! is sound only because `tug` is single-threaded at this point: no other thread can hold a lock
//! the child would need. [`crate::container`] checks this before cloning.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The result of a clone, as with fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: i32 },
    Child,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether the process has exactly one thread; cloning without CLONE_VM needs that.
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 2..];
            after.split(' ').nth(17)?.parse::<u64>().ok()
        })
        == Some(1)
}

/// Clones the calling process with `flags` (CLONE_NEW* bits). With `cgroup`, the child starts
/// in that cgroup (v2) and `placed` is true; otherwise the caller must move it there.
pub fn clone_child(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<(Forked, bool)> {
    if let Some(cg) = cgroup {
        let args = CloneArgs {
            flags: flags | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cg.as_raw_fd() as u64,
            ..Default::default()
        };
        match raw_clone3(&args) {
            Ok(f) => return Ok((f, true)),
            // Old kernels, or a cgroup that cannot take processes this way: fall through.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    match raw_clone3(&args) {
        Ok(f) => Ok((f, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => raw_clone(flags).map(|f| (f, false)),
        Err(e) => Err(e),
    }
}

fn raw_clone3(args: &CloneArgs) -> io::Result<Forked> {
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of memory and
    // returns here with 0. The args struct lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    forked(r)
}

fn raw_clone(flags: u64) -> io::Result<Forked> {
    // SAFETY: as above; a null stack makes the child continue on a copy of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as u64,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0u64,
        )
    };
    forked(r)
}

fn forked(r: libc::c_long) -> io::Result<Forked> {
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { child: pid as i32 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_without_namespaces_forks() {
        // Test binaries run tests on threads, so this only checks the plain path in a child.
        match clone_child(0, None).unwrap() {
            (Forked::Child, _) => unsafe { libc::_exit(7) },
            (Forked::Parent { child }, placed) => {
                assert!(!placed);
                let mut status = 0;
                let r = unsafe { libc::waitpid(child, &mut status, 0) };
                assert_eq!(r, child);
                assert!(libc::WIFEXITED(status));
                assert_eq!(libc::WEXITSTATUS(status), 7);
            }
        }
    }
}
