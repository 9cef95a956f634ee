//! The system calls that set up a container's filesystem and namespaces, behind a trait.
//!
//! [`LinuxSyscall`] makes the real calls. [`RecordingSyscall`] records them, so the ordering
//! logic in [`crate::rootfs`] is unit-tested without root.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file (and its parents) when nothing is at `path`.
    fn touch(&self, path: &Path) -> io::Result<()>;
    /// Makes a device node with exactly the mode `perm` (the umask does not apply).
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    fn symlink(&self, original: &Path, link: &Path) -> io::Result<()>;
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> io::Result<()>;
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// Bind-mounts `source` on `target` with its ids mapped through the user namespace
    /// `userns` (an idmapped mount: open_tree, mount_setattr, move_mount).
    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        userns: BorrowedFd<'_>,
        recursive: bool,
    ) -> io::Result<()>;
    /// Attaches a detached mount tree made by tug (see [`idmapped_tree`]) at `target`.
    fn attach_tree(&self, tree: BorrowedFd<'_>, target: &Path) -> io::Result<()>;
    /// Changes the attributes (`MOUNT_ATTR_*`) of the mount at `target`, and of every mount
    /// under it when `recursive` (mount_setattr with AT_RECURSIVE).
    fn mount_setattr(&self, target: &Path, set: u64, clear: u64, recursive: bool)
        -> io::Result<()>;
    /// The per-mount flags (nosuid, nodev, noexec, the atime flags, ...) of the mount that
    /// holds `path`, from statvfs: a remount in a user namespace must keep the locked ones.
    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags>;
    /// Whether `path` exists and is a directory (following symlinks).
    fn is_dir(&self, path: &Path) -> bool;
    fn exists(&self, path: &Path) -> bool;
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(errno)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(errno)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(errno)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(errno)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chroot(path).map_err(errno)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn touch(&self, path: &Path) -> io::Result<()> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        // Exactly `perm`, whatever the caller's umask (init is single-threaded here).
        let old = nix::sys::stat::umask(Mode::empty());
        let r = nix::sys::stat::mknod(path, kind, perm, dev).map_err(errno);
        nix::sys::stat::umask(old);
        r
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn symlink(&self, original: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(original, link)
    }

    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        std::fs::write(path, contents)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(errno)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`, which outlives the call.
        let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> io::Result<()> {
        nix::sched::setns(fd, nstype).map_err(errno)
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        nix::sched::unshare(flags).map_err(errno)
    }

    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        userns: BorrowedFd<'_>,
        recursive: bool,
    ) -> io::Result<()> {
        let tree = idmapped_tree(source, userns, recursive)?;
        attach_tree(std::os::fd::AsFd::as_fd(&tree), target)
    }

    fn attach_tree(&self, tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
        attach_tree(tree, target)
    }

    fn mount_setattr(
        &self,
        target: &Path,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(target.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let attr = MountAttr {
            attr_set: set,
            attr_clr: clear,
            propagation: 0,
            userns_fd: 0,
        };
        let flags = if recursive {
            libc::AT_RECURSIVE as libc::c_uint
        } else {
            0
        };
        // SAFETY: mount_setattr on a NUL-terminated path with an attr of the size we pass.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags> {
        use nix::sys::statvfs::FsFlags;
        let st = nix::sys::statvfs::statvfs(path).map_err(errno)?.flags();
        // ST_* and MS_* share names, not all their bits (ST_RELATIME is MS_BIND's bit).
        let pairs = [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            // ST_RELATIME (4096; nix names it for glibc only, and the musl build must
            // compile) and ST_NOSYMFOLLOW (Linux 5.10), which libc does not name.
            (FsFlags::from_bits_retain(0x1000), MsFlags::MS_RELATIME),
            (
                FsFlags::from_bits_retain(0x2000),
                MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
            ),
        ];
        Ok(pairs
            .iter()
            .filter(|(st_flag, _)| st.contains(*st_flag))
            .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    PivotRoot(PathBuf, PathBuf),
    Chdir(PathBuf),
    Chroot(PathBuf),
    MkdirAll(PathBuf),
    Touch(PathBuf),
    /// Path, device number, mode.
    Mknod(PathBuf, u64, u32),
    Chown(PathBuf, u32, u32),
    Symlink(PathBuf, PathBuf),
    WriteFile(PathBuf, String),
    Sethostname(String),
    Setdomainname(String),
    Setns(i32, CloneFlags),
    Unshare(CloneFlags),
    IdmappedBind(PathBuf, PathBuf),
    AttachTree(PathBuf),
    /// Target, attributes set, attributes cleared, recursive.
    MountSetattr(PathBuf, u64, u64, bool),
}

/// Records every call and succeeds. Paths listed in `dirs` are directories, in `files` files.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub dirs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    /// What [`Syscall::mount_flags`] answers for every path (None: no flags).
    pub mount_flags: Option<MsFlags>,
}

impl RecordingSyscall {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn push(&self, c: Call) -> io::Result<()> {
        self.calls.borrow_mut().push(c);
        Ok(())
    }

    /// Targets of the mount calls, in order.
    pub fn mount_targets(&self) -> Vec<PathBuf> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target),
                _ => None,
            })
            .collect()
    }
}

fn owned(p: Option<&Path>) -> Option<PathBuf> {
    p.map(Path::to_path_buf)
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.push(Call::Mount {
            source: owned(source),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn umount2(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.push(Call::Umount(target.into()))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.push(Call::PivotRoot(new_root.into(), put_old.into()))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Chdir(path.into()))
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Chroot(path.into()))
    }
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.push(Call::MkdirAll(path.into()))
    }
    fn touch(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Touch(path.into()))
    }
    fn mknod(&self, path: &Path, _kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        self.push(Call::Mknod(path.into(), dev, perm.bits()))
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.push(Call::Chown(path.into(), uid, gid))
    }
    fn symlink(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink(original.into(), link.into()))
    }
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        self.push(Call::WriteFile(path.into(), contents.into()))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.push(Call::Sethostname(name.into()))
    }
    fn setdomainname(&self, name: &str) -> io::Result<()> {
        self.push(Call::Setdomainname(name.into()))
    }
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> io::Result<()> {
        self.push(Call::Setns(fd.as_raw_fd(), nstype))
    }
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.push(Call::Unshare(flags))
    }
    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        _userns: BorrowedFd<'_>,
        _recursive: bool,
    ) -> io::Result<()> {
        self.push(Call::IdmappedBind(source.into(), target.into()))
    }
    fn attach_tree(&self, _tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
        self.push(Call::AttachTree(target.into()))
    }
    fn mount_setattr(
        &self,
        target: &Path,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> io::Result<()> {
        self.push(Call::MountSetattr(target.into(), set, clear, recursive))
    }
    fn mount_flags(&self, _path: &Path) -> io::Result<MsFlags> {
        Ok(self.mount_flags.unwrap_or(MsFlags::empty()))
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d == path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.is_dir(path) || self.files.iter().any(|f| f == path)
    }
}

/// Joins `unsafe_path` onto `root` so that the result stays inside `root`, resolving symlinks
/// in the existing part as if `root` were `/` (the idea of filepath-securejoin).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    use std::path::Component;
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsStr::new("..").to_os_string()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// A detached copy of the mount tree at `source` with its ids mapped through the user
/// namespace `userns` (open_tree, mount_setattr): made where tug holds CAP_SYS_ADMIN over the
/// source's filesystem (the host's user namespace), attached by init, which in a user
/// namespace of its own could not make it.
pub fn idmapped_tree(
    source: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let src = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let empty = CString::default();
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: open_tree with a valid path; the fd it returns is ours.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel gave us this fd.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree with an attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached mount tree (from [`idmapped_tree`]) at `target` (move_mount).
pub fn attach_tree(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let dst = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let empty = std::ffi::CString::default();
    // SAFETY: move_mount of a detached tree we hold onto a path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("etc/up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/abs/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/etc/up/tmp")).unwrap(),
            root.join("tmp")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/b")).unwrap(),
            root.join("a/b")
        );
    }

    #[test]
    fn symlink_loops_end() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("loop", d.path().join("loop")).unwrap();
        assert!(secure_join(d.path(), Path::new("/loop/x")).is_err());
    }
}
