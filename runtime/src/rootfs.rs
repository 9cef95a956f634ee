//! The container's filesystem: mounts, devices, pivot_root, masked and read-only paths.
//!
//! Runs in the container's init, in its new mount namespace, through [`Syscall`] so the order
//! of operations is unit-tested with [`crate::syscall::RecordingSyscall`].

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::syscall::{secure_join, Syscall};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct RootfsError {
    pub what: String,
    pub path: PathBuf,
    pub source: io::Error,
}

fn ctx<T>(r: io::Result<T>, what: &str, path: &Path) -> Result<T, RootfsError> {
    r.map_err(|source| RootfsError {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Where the container's own cgroup lives on the host, for the `cgroup` mount type.
#[derive(Debug, Clone, Default)]
pub struct CgroupMounts {
    /// cgroup v2: the container's cgroup directory.
    pub unified: Option<PathBuf>,
    /// cgroup v1: (name under /sys/fs/cgroup, container's directory in that hierarchy).
    pub v1: Vec<(String, PathBuf)>,
}

/// mount(2)'s flag for `nosymfollow` (Linux 5.10), which nix does not name.
pub const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// mount_setattr(2)'s `MOUNT_ATTR_*` bits, for the recursive options (`rro`, `rnosuid`, ...).
pub mod attr {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
    /// The atime mode: one of RELATIME (0), NOATIME, STRICTATIME; clear the whole mask to set one.
    pub const ATIME_MASK: u64 = 0x70;
    pub const RELATIME: u64 = 0x0;
    pub const NOATIME: u64 = 0x10;
    pub const STRICTATIME: u64 = 0x20;
    pub const NODIRATIME: u64 = 0x80;
    pub const NOSYMFOLLOW: u64 = 0x20_0000;
}

/// Mount options split as mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation changes, applied one by one after the mount.
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes (`rro`, `rnosuid`, ...): `MOUNT_ATTR_*` bits to set and to clear
    /// on the mount and every mount under it, with mount_setattr(2) after the mount.
    pub rec_set: u64,
    pub rec_clear: u64,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
}

/// The `MOUNT_ATTR_*` bits a recursive option sets and clears, as runc reads them.
fn recursive_attr(opt: &str) -> Option<(u64, u64)> {
    use attr::*;
    Some(match opt {
        "rro" => (RDONLY, 0),
        "rrw" => (0, RDONLY),
        "rnosuid" => (NOSUID, 0),
        "rsuid" => (0, NOSUID),
        "rnodev" => (NODEV, 0),
        "rdev" => (0, NODEV),
        "rnoexec" => (NOEXEC, 0),
        "rexec" => (0, NOEXEC),
        "rnodiratime" => (NODIRATIME, 0),
        "rdiratime" => (0, NODIRATIME),
        "rrelatime" => (RELATIME, ATIME_MASK),
        "rnoatime" => (NOATIME, ATIME_MASK),
        "rstrictatime" => (STRICTATIME, ATIME_MASK),
        "rnosymfollow" => (NOSYMFOLLOW, 0),
        "rsymfollow" => (0, NOSYMFOLLOW),
        _ => return None,
    })
}

/// Splits fstab-style options into flags, propagation and data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        rec_set: 0,
        rec_clear: 0,
        data: String::new(),
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" | "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "nosymfollow" => (MS_NOSYMFOLLOW, MsFlags::empty()),
            "symfollow" => (MsFlags::empty(), MS_NOSYMFOLLOW),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation.push(propagation_flag(opt).expect("listed"));
                continue;
            }
            // Engines pass these for other runtimes; they have no meaning to mount(2).
            "tmpcopyup" | "copyup" | "idmap" | "ridmap" => continue,
            other => {
                if let Some((set, clear)) = recursive_attr(other) {
                    // A later option wins over an earlier one, as for the flags.
                    // (An atime mode clears the whole mask and sets its own bits.)
                    o.rec_set = (o.rec_set & !clear) | set;
                    o.rec_clear = (o.rec_clear & !set) | clear;
                    continue;
                }
                data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o.data = data.join(",");
    o
}

/// The mount(2) flag for a propagation name such as "rslave".
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn is_bind(m: &Mount, o: &MountOptions) -> bool {
    m.typ().as_deref() == Some("bind") || o.flags.contains(MsFlags::MS_BIND)
}

/// Everything before pivot_root: propagation, the rootfs bind, the config's mounts, devices.
pub fn prepare(
    sys: &dyn Syscall,
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    cgroups: &CgroupMounts,
) -> Result<(), RootfsError> {
    prepare_with(sys, spec, rootfs, bundle, cgroups, &[])
}

/// [`prepare`], with the idmapped bind mounts made by tug: (index in `mounts`, detached tree).
pub fn prepare_with(
    sys: &dyn Syscall,
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    cgroups: &CgroupMounts,
    idmaps: &[(usize, std::os::fd::OwnedFd)],
) -> Result<(), RootfsError> {
    let linux = spec.linux().as_ref();
    // Nothing the container mounts may propagate back to the host. linux.rootfsPropagation
    // is the new root's, set after pivot_root ([`pivot`]): set here on the old "/", a shared
    // one makes pivot_root fail (EINVAL: the new root or its parent is shared) and an
    // unbindable one refuses the rootfs bind below.
    ctx(
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        ),
        "set propagation of",
        Path::new("/"),
    )?;
    ctx(
        sys.mount(
            Some(rootfs),
            rootfs,
            Some("bind"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        "bind-mount rootfs",
        rootfs,
    )?;

    let mut dev_mounted = false;
    let mut dev_is_bind = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let o = parse_options(m.options().as_deref().unwrap_or(&[]));
        let idmap = idmaps
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, fd)| std::os::fd::AsFd::as_fd(fd));
        if m.destination() == Path::new("/dev") {
            dev_mounted = true;
            dev_is_bind = is_bind(m, &o);
        }
        mount_entry(sys, m, &o, rootfs, bundle, cgroups, idmap)?;
    }

    if !dev_is_bind {
        create_devices(sys, rootfs, linux.and_then(|l| l.devices().as_deref()))?;
        dev_symlinks(sys, rootfs, dev_mounted)?;
    }
    Ok(())
}

/// Where a proc or sysfs mount goes (None for other types): its destination inside `rootfs`,
/// which must be a directory or nothing yet. A symlink or a file there is refused, not
/// followed: it would put /proc or /sys somewhere else in the container, as in the attacks
/// runc guards against with the same rule. Checked when config.json is validated, and again
/// right before the mount.
pub fn special_mount_point(rootfs: &Path, m: &Mount) -> io::Result<Option<PathBuf>> {
    let fstype = match m.typ().as_deref() {
        Some(t @ ("proc" | "sysfs")) => t,
        _ => return Ok(None),
    };
    let dest = m.destination();
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return secure_join(rootfs, dest).map(Some);
    };
    // Symlinks above the last component are resolved inside the rootfs; the last is not.
    let full = secure_join(rootfs, parent)?.join(name);
    let what = match std::fs::symlink_metadata(&full) {
        Ok(md) if md.is_dir() => return Ok(Some(full)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(full)),
        Err(e) => return Err(e),
        Ok(md) if md.file_type().is_symlink() => match std::fs::read_link(&full) {
            Ok(target) => format!("a symlink to {}", target.display()),
            Err(_) => "a symlink".to_string(),
        },
        Ok(_) => "not a directory".to_string(),
    };
    Err(io::Error::other(format!(
        "filesystem \"{fstype}\" must be mounted on ordinary directory, and {} in the rootfs is {what}",
        dest.display()
    )))
}

fn mount_entry(
    sys: &dyn Syscall,
    m: &Mount,
    o: &MountOptions,
    rootfs: &Path,
    bundle: &Path,
    cgroups: &CgroupMounts,
    idmap: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), RootfsError> {
    let dest = ctx(
        special_mount_point(rootfs, m)
            .transpose()
            .unwrap_or_else(|| secure_join(rootfs, m.destination())),
        "mount destination",
        m.destination(),
    )?;
    let data = (!o.data.is_empty()).then_some(o.data.as_str());
    if is_bind(m, o) {
        let source = bundle.join(m.source().as_deref().unwrap_or(Path::new("")));
        if sys.is_dir(&source) {
            ctx(sys.mkdir_all(&dest), "create mount point", &dest)?;
        } else {
            ctx(sys.touch(&dest), "create mount point", &dest)?;
        }
        let bind_flags = o.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        if let Some(tree) = idmap {
            // Made idmapped by tug before init was cloned (container.rs).
            ctx(sys.attach_tree(tree, &dest), "idmapped bind-mount", &dest)?;
        } else {
            ctx(
                sys.mount(
                    Some(&source),
                    &dest,
                    Some("bind"),
                    bind_flags | MsFlags::MS_BIND,
                    None,
                ),
                "bind-mount",
                &dest,
            )?;
        }
        // A bind mount ignores the other flags; a remount applies them.
        let rest = o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            ctx(
                sys.mount(
                    None,
                    &dest,
                    None,
                    rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                    None,
                ),
                "remount",
                &dest,
            )?;
        }
    } else if m.typ().as_deref() == Some("cgroup") {
        mount_cgroup(sys, &dest, o, cgroups)?;
    } else {
        ctx(sys.mkdir_all(&dest), "create mount point", &dest)?;
        let source = m.source().clone().unwrap_or_else(|| "none".into());
        let fstype = m.typ().as_deref();
        let r = sys.mount(Some(&source), &dest, fstype, o.flags, data);
        // mqueue and sysfs may be refused in some sandboxes; runc then binds the host's.
        if let Err(e) = r {
            if fstype == Some("sysfs") && e.raw_os_error() == Some(libc::EPERM) {
                ctx(
                    sys.mount(
                        Some(Path::new("/sys")),
                        &dest,
                        Some("bind"),
                        MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY,
                        None,
                    ),
                    "bind /sys to",
                    &dest,
                )?;
            } else {
                return ctx(
                    Err(e),
                    &format!("mount {}", fstype.unwrap_or("?")),
                    m.destination(),
                );
            }
        }
    }
    if o.rec_set != 0 || o.rec_clear != 0 {
        ctx(
            sys.mount_setattr(&dest, o.rec_set, o.rec_clear, true),
            "set recursive mount attributes of",
            &dest,
        )?;
    }
    for p in &o.propagation {
        ctx(
            sys.mount(None, &dest, None, *p, None),
            "set propagation of",
            &dest,
        )?;
    }
    Ok(())
}

/// A `cgroup` mount shows the container its own cgroup: the directory on v2, a tmpfs with one
/// directory per hierarchy on v1, each a bind of the container's cgroup in that hierarchy.
fn mount_cgroup(
    sys: &dyn Syscall,
    dest: &Path,
    o: &MountOptions,
    cgroups: &CgroupMounts,
) -> Result<(), RootfsError> {
    ctx(sys.mkdir_all(dest), "create mount point", dest)?;
    let keep = o.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    let remount = |path: &Path| {
        ctx(
            sys.mount(
                None,
                path,
                None,
                o.flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None,
            ),
            "remount",
            path,
        )
    };
    if let Some(dir) = &cgroups.unified {
        ctx(
            sys.mount(Some(dir), dest, Some("bind"), bind, None),
            "bind cgroup",
            dest,
        )?;
        return remount(dest);
    }
    ctx(
        sys.mount(
            Some(Path::new("tmpfs")),
            dest,
            Some("tmpfs"),
            keep,
            Some("mode=755"),
        ),
        "mount tmpfs",
        dest,
    )?;
    for (name, dir) in &cgroups.v1 {
        let target = dest.join(name);
        ctx(sys.mkdir_all(&target), "create mount point", &target)?;
        ctx(
            sys.mount(Some(dir), &target, Some("bind"), bind, None),
            "bind cgroup",
            &target,
        )?;
        remount(&target)?;
    }
    if o.flags.contains(MsFlags::MS_RDONLY) {
        ctx(
            sys.mount(
                None,
                dest,
                None,
                keep | MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT,
                None,
            ),
            "remount",
            dest,
        )?;
    }
    Ok(())
}

/// The devices every container gets, as runc gives them: (path, major, minor).
pub const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// (path, kind, mode, major, minor, uid, gid)
type DeviceNode = (PathBuf, SFlag, u32, u64, u64, Option<u32>, Option<u32>);

fn create_devices(
    sys: &dyn Syscall,
    rootfs: &Path,
    extra: Option<&[LinuxDevice]>,
) -> Result<(), RootfsError> {
    let mut devs: Vec<DeviceNode> = DEFAULT_DEVICES
        .iter()
        .map(|(p, ma, mi)| {
            (
                PathBuf::from(p),
                SFlag::S_IFCHR,
                0o666,
                *ma,
                *mi,
                None,
                None,
            )
        })
        .collect();
    for d in extra.into_iter().flatten() {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let entry = (
            d.path().clone(),
            kind,
            d.file_mode().unwrap_or(0o666),
            d.major() as u64,
            d.minor() as u64,
            d.uid(),
            d.gid(),
        );
        devs.retain(|x| x.0 != entry.0);
        devs.push(entry);
    }
    for (path, kind, mode, major, minor, uid, gid) in devs {
        let dest = ctx(secure_join(rootfs, &path), "resolve device", &path)?;
        if let Some(parent) = dest.parent() {
            ctx(sys.mkdir_all(parent), "create directory", parent)?;
        }
        let dev = nix::sys::stat::makedev(major, minor);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        match sys.mknod(&dest, kind, perm, dev) {
            Ok(()) => {}
            // A device already there (an image that ships /dev/null) is fine.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // Where mknod is not allowed, bind the host's device instead.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                ctx(sys.touch(&dest), "create device mount point", &dest)?;
                ctx(
                    sys.mount(Some(&path), &dest, Some("bind"), MsFlags::MS_BIND, None),
                    "bind device",
                    &dest,
                )?;
            }
            Err(e) => return ctx(Err(e), "mknod", &dest),
        }
        if uid.is_some() || gid.is_some() {
            ctx(
                sys.chown(&dest, uid.unwrap_or(0), gid.unwrap_or(0)),
                "chown",
                &dest,
            )?;
        }
    }
    Ok(())
}

fn dev_symlinks(sys: &dyn Syscall, rootfs: &Path, dev_mounted: bool) -> Result<(), RootfsError> {
    let mut links = vec![
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    if dev_mounted {
        links.push(("pts/ptmx", "/dev/ptmx"));
    }
    for (target, link) in links {
        let dest = rootfs.join(link.trim_start_matches('/'));
        if sys.exists(&dest) {
            continue;
        }
        ctx(sys.symlink(Path::new(target), &dest), "symlink", &dest)?;
    }
    Ok(())
}

/// The propagation config.json asks for the container's `/` (linux.rootfsPropagation).
pub fn root_propagation(spec: &Spec) -> Option<MsFlags> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
}

/// Makes `rootfs` the container's `/`: pivot_root, or a move and chroot with `--no-pivot`;
/// then gives the new `/` the `propagation` asked (as runc does after pivot_root).
pub fn pivot(
    sys: &dyn Syscall,
    rootfs: &Path,
    no_pivot: bool,
    propagation: Option<MsFlags>,
) -> Result<(), RootfsError> {
    ctx(sys.chdir(rootfs), "chdir to rootfs", rootfs)?;
    if no_pivot {
        ctx(
            sys.mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None),
            "move rootfs to /",
            rootfs,
        )?;
        ctx(sys.chroot(Path::new(".")), "chroot to", rootfs)?;
    } else {
        // pivot_root(".", ".") stacks the old root under the new one; detach it at once.
        let dot = Path::new(".");
        ctx(sys.pivot_root(dot, dot), "pivot_root to", rootfs)?;
        ctx(
            sys.mount(None, dot, None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None),
            "make old root a slave",
            rootfs,
        )?;
        ctx(
            sys.umount2(dot, MntFlags::MNT_DETACH),
            "detach old root",
            rootfs,
        )?;
    }
    let root = Path::new("/");
    ctx(sys.chdir(root), "chdir to", root)?;
    if let Some(p) = propagation {
        ctx(
            sys.mount(None, root, None, p, None),
            "set rootfsPropagation of",
            root,
        )?;
    }
    Ok(())
}

/// The flags a read-only remount of the mount at `path` must repeat: in a user namespace
/// the kernel locks nosuid, nodev, noexec, nosymfollow and the atime mode of a mount the
/// namespace did not make, and refuses (EPERM) a remount that would drop them, as runc's
/// remount keeps them from statfs.
fn kept_flags(sys: &dyn Syscall, path: &Path) -> Result<MsFlags, RootfsError> {
    let now = ctx(sys.mount_flags(path), "statvfs", path)?;
    let mut keep = now
        & (MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NODIRATIME
            | MsFlags::MS_RELATIME
            | MS_NOSYMFOLLOW);
    // Neither noatime nor relatime is strictatime; a remount without one means relatime.
    if !now.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME) {
        keep |= MsFlags::MS_STRICTATIME;
    }
    Ok(keep)
}

/// Writes linux.sysctl through /proc/sys; the values land in the namespaces (net, ipc, uts)
/// of the calling process, whichever /proc is mounted there.
fn write_sysctls(sys: &dyn Syscall, spec: &Spec) -> Result<(), RootfsError> {
    if let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        let mut keys: Vec<_> = sysctl.keys().collect();
        keys.sort();
        for key in keys {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            ctx(sys.write_file(&path, &sysctl[key]), "write sysctl", &path)?;
        }
    }
    Ok(())
}

/// A container without a mount namespace of its own ([`crate::spec::MountNamespace::Shared`]):
/// no mount at all (the namespace is the host's or another's); sysctls through the /proc
/// there, then a chroot into `rootfs` (pivot_root would move the whole namespace's root).
/// `rootfs` is resolved in the mount namespace init is in, the joined one if any, as runc
/// does.
pub fn enter_shared(sys: &dyn Syscall, spec: &Spec, rootfs: &Path) -> Result<(), RootfsError> {
    write_sysctls(sys, spec)?;
    ctx(sys.chdir(rootfs), "chdir to rootfs", rootfs)?;
    ctx(sys.chroot(Path::new(".")), "chroot to", rootfs)?;
    let root = Path::new("/");
    ctx(sys.chdir(root), "chdir to", root)
}

/// After pivot_root: sysctls, read-only and masked paths, the read-only root.
pub fn finalize(sys: &dyn Syscall, spec: &Spec) -> Result<(), RootfsError> {
    let linux = spec.linux().as_ref();
    write_sysctls(sys, spec)?;
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        if !sys.exists(path) {
            continue;
        }
        ctx(
            sys.mount(
                Some(path),
                path,
                Some("bind"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            "bind read-only path",
            path,
        )?;
        let keep = kept_flags(sys, path)?;
        ctx(
            sys.mount(
                None,
                path,
                None,
                keep | MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None,
            ),
            "remount read-only",
            path,
        )?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        if !sys.exists(path) {
            continue;
        }
        if sys.is_dir(path) {
            ctx(
                sys.mount(
                    Some(Path::new("tmpfs")),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                ),
                "mask directory",
                path,
            )?;
        } else {
            ctx(
                sys.mount(
                    Some(Path::new("/dev/null")),
                    path,
                    Some("bind"),
                    MsFlags::MS_BIND,
                    None,
                ),
                "mask file",
                path,
            )?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let root = Path::new("/");
        let keep = kept_flags(sys, root)?;
        ctx(
            sys.mount(
                None,
                root,
                None,
                keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            ),
            "remount read-only",
            root,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    fn spec_with(json: serde_json::Value) -> Spec {
        let mut v = serde_json::to_value(crate::spec::default_spec()).unwrap();
        for (k, val) in json.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "rbind".into(),
            "rslave".into(),
            "mode=755".into(),
            "size=65536k".into(),
        ]);
        assert!(o.flags.contains(
            MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC
        ));
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data, "mode=755,size=65536k");
        let o = parse_options(&["ro".into(), "rw".into()]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn root_is_made_slave_before_anything_is_mounted() {
        let sys = RecordingSyscall::default();
        let spec = spec_with(serde_json::json!({}));
        prepare(
            &sys,
            &spec,
            Path::new("/b/rootfs"),
            Path::new("/b"),
            &CgroupMounts::default(),
        )
        .unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[0],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
                data: None
            }
        );
        assert!(matches!(&calls[1], Call::Mount { target, flags, .. }
            if target == Path::new("/b/rootfs") && flags.contains(MsFlags::MS_BIND)));
        // the config's mounts follow, in the listed order
        let targets = sys.mount_targets();
        let want: Vec<PathBuf> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| Path::new("/b/rootfs").join(m.destination().strip_prefix("/").unwrap()))
            .collect();
        let got: Vec<PathBuf> = targets.into_iter().filter(|t| want.contains(t)).collect();
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup, want);
    }

    #[test]
    fn bind_mount_with_ro_is_remounted() {
        let sys = RecordingSyscall {
            dirs: vec![PathBuf::from("/data")],
            ..Default::default()
        };
        let spec = spec_with(serde_json::json!({"mounts": [
            {"destination": "/vol", "type": "bind", "source": "/data", "options": ["rbind", "ro", "rprivate"]}
        ]}));
        prepare(
            &sys,
            &spec,
            Path::new("/r"),
            Path::new("/b"),
            &CgroupMounts::default(),
        )
        .unwrap();
        let calls = sys.calls();
        let i = calls
            .iter()
            .position(|c| *c == Call::MkdirAll("/r/vol".into()))
            .unwrap();
        assert!(
            matches!(&calls[i + 1], Call::Mount { source: Some(s), flags, .. }
            if s == Path::new("/data") && *flags == MsFlags::MS_BIND | MsFlags::MS_REC)
        );
        assert!(
            matches!(&calls[i + 2], Call::Mount { source: None, flags, .. }
            if flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | MsFlags::MS_BIND))
        );
        assert!(matches!(&calls[i + 3], Call::Mount { flags, .. }
            if *flags == MsFlags::MS_PRIVATE | MsFlags::MS_REC));
    }

    #[test]
    fn file_bind_source_gets_a_file_mount_point() {
        let sys = RecordingSyscall {
            files: vec![PathBuf::from("/etc/hosts")],
            ..Default::default()
        };
        let spec = spec_with(serde_json::json!({"mounts": [
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["bind"]}
        ]}));
        prepare(
            &sys,
            &spec,
            Path::new("/r"),
            Path::new("/b"),
            &CgroupMounts::default(),
        )
        .unwrap();
        assert!(sys.calls().contains(&Call::Touch("/r/etc/hosts".into())));
    }

    #[test]
    fn proc_and_sysfs_only_go_on_a_directory_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("real/proc")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("proc")).unwrap();
        std::fs::write(root.join("sys"), "").unwrap();
        std::os::unix::fs::symlink("/real", root.join("up")).unwrap();
        let mount = |typ: &str, dest: &str| -> Mount {
            serde_json::from_value(serde_json::json!({"type": typ, "destination": dest})).unwrap()
        };
        let e = special_mount_point(root, &mount("proc", "/proc")).unwrap_err();
        assert!(
            e.to_string().contains("ordinary directory") && e.to_string().contains("/tmp"),
            "{e}"
        );
        let e = special_mount_point(root, &mount("sysfs", "/sys")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        // Missing is fine (it is made); a symlink above the last part resolves in the rootfs.
        assert_eq!(
            special_mount_point(root, &mount("proc", "/other")).unwrap(),
            Some(root.join("other"))
        );
        assert_eq!(
            special_mount_point(root, &mount("proc", "/up/proc")).unwrap(),
            Some(root.join("real/proc"))
        );
        // Other types are not its business.
        assert_eq!(
            special_mount_point(root, &mount("tmpfs", "/proc")).unwrap(),
            None
        );
    }

    #[test]
    fn default_devices_and_links_are_made() {
        let sys = RecordingSyscall::default();
        let mut spec = spec_with(serde_json::json!({}));
        let fuse: LinuxDevice = serde_json::from_value(serde_json::json!(
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o660}
        ))
        .unwrap();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_devices(Some(vec![fuse]));
        spec.set_linux(Some(linux));
        prepare(
            &sys,
            &spec,
            Path::new("/r"),
            Path::new("/b"),
            &CgroupMounts::default(),
        )
        .unwrap();
        let calls = sys.calls();
        for (p, ma, mi) in DEFAULT_DEVICES {
            let want = Call::Mknod(
                Path::new("/r").join(&p[1..]),
                nix::sys::stat::makedev(ma, mi),
                0o666,
            );
            assert!(calls.contains(&want), "{p}");
        }
        // A device's fileMode is passed as given (the real mknod sets it umask-free).
        let fuse = Call::Mknod(
            "/r/dev/fuse".into(),
            nix::sys::stat::makedev(10, 229),
            0o660,
        );
        assert!(calls.contains(&fuse), "{calls:?}");
        assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), "/r/dev/ptmx".into())));
    }

    #[test]
    fn cgroup_v1_mount_binds_each_hierarchy() {
        let sys = RecordingSyscall::default();
        let spec = spec_with(serde_json::json!({"mounts": [
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "ro"]}
        ]}));
        let cg = CgroupMounts {
            unified: None,
            v1: vec![
                ("memory".into(), "/sys/fs/cgroup/memory/tug/c".into()),
                ("pids".into(), "/sys/fs/cgroup/pids/tug/c".into()),
            ],
        };
        prepare(&sys, &spec, Path::new("/r"), Path::new("/b"), &cg).unwrap();
        let t = sys.mount_targets();
        let tmpfs = t
            .iter()
            .position(|p| p == Path::new("/r/sys/fs/cgroup"))
            .unwrap();
        let mem = t
            .iter()
            .position(|p| p == Path::new("/r/sys/fs/cgroup/memory"))
            .unwrap();
        let pids = t
            .iter()
            .position(|p| p == Path::new("/r/sys/fs/cgroup/pids"))
            .unwrap();
        let last_ro = t
            .iter()
            .rposition(|p| p == Path::new("/r/sys/fs/cgroup"))
            .unwrap();
        assert!(tmpfs < mem && mem < pids && pids < last_ro);
    }

    #[test]
    fn pivot_detaches_old_root() {
        let sys = RecordingSyscall::default();
        pivot(&sys, Path::new("/r"), false, None).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], Call::Chdir("/r".into()));
        assert_eq!(calls[1], Call::PivotRoot(".".into(), ".".into()));
        assert_eq!(calls[3], Call::Umount(".".into()));
        assert_eq!(calls[4], Call::Chdir("/".into()));
        let sys = RecordingSyscall::default();
        pivot(&sys, Path::new("/r"), true, None).unwrap();
        assert!(sys.calls().contains(&Call::Chroot(".".into())));
    }

    #[test]
    fn without_a_mount_namespace_nothing_is_mounted_and_the_rootfs_is_chrooted() {
        let spec = spec_with(serde_json::json!({
            "linux": {"namespaces": [{"type": "network"}], "sysctl": {"net.ipv4.ip_forward": "1"}}
        }));
        let sys = RecordingSyscall::default();
        enter_shared(&sys, &spec, Path::new("/r")).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                // Through the /proc of the namespace tug runs in, before the chroot hides it.
                Call::WriteFile("/proc/sys/net/ipv4/ip_forward".into(), "1".into()),
                Call::Chdir("/r".into()),
                Call::Chroot(".".into()),
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn root_propagation_is_set_on_the_new_root_after_pivot() {
        // Before: the old "/" is made rslave whatever was asked, so pivot_root and the
        // rootfs bind work; after: the new "/" gets what was asked.
        let spec = spec_with(serde_json::json!({
            "linux": {"namespaces": [{"type": "mount"}], "rootfsPropagation": "shared"}
        }));
        let sys = RecordingSyscall::default();
        prepare(
            &sys,
            &spec,
            Path::new("/r"),
            Path::new("/b"),
            &CgroupMounts::default(),
        )
        .unwrap();
        assert!(matches!(&sys.calls()[0], Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == MsFlags::MS_SLAVE | MsFlags::MS_REC));
        let sys = RecordingSyscall::default();
        pivot(&sys, Path::new("/r"), false, root_propagation(&spec)).unwrap();
        let calls = sys.calls();
        let pivoted = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .unwrap();
        let last = calls.len() - 1;
        assert!(pivoted < last);
        assert!(matches!(&calls[last], Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == MsFlags::MS_SHARED));
        // finalize no longer touches it.
        let sys = RecordingSyscall::default();
        finalize(&sys, &spec).unwrap();
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_SHARED))));
    }

    #[test]
    fn recursive_options_become_mount_setattr_and_nosymfollow_a_flag() {
        let o = parse_options(&[
            "rbind".into(),
            "rro".into(),
            "rnosuid".into(),
            "rstrictatime".into(),
            "rnoatime".into(),
            "nosymfollow".into(),
        ]);
        assert_eq!(
            o.rec_set,
            attr::RDONLY | attr::NOSUID | attr::NOATIME,
            "the later atime mode wins"
        );
        assert_eq!(o.rec_clear, attr::ATIME_MASK);
        assert!(o.flags.contains(MS_NOSYMFOLLOW));
        assert_eq!(o.data, "", "none of them reach the data string");
        let o = parse_options(&["rro".into(), "rrw".into()]);
        assert_eq!((o.rec_set, o.rec_clear), (0, attr::RDONLY));

        let sys = RecordingSyscall {
            dirs: vec![PathBuf::from("/data")],
            ..Default::default()
        };
        let spec = spec_with(serde_json::json!({"mounts": [
            {"destination": "/vol", "type": "bind", "source": "/data",
             "options": ["rbind", "rro", "nosymfollow", "rprivate"]}
        ]}));
        prepare(
            &sys,
            &spec,
            Path::new("/r"),
            Path::new("/b"),
            &CgroupMounts::default(),
        )
        .unwrap();
        let calls = sys.calls();
        let bind = calls
            .iter()
            .position(
                |c| matches!(c, Call::Mount { source: Some(s), .. } if s == Path::new("/data")),
            )
            .unwrap();
        // bind, remount with nosymfollow, recursive attributes, then propagation.
        assert!(matches!(&calls[bind + 1], Call::Mount { flags, .. }
            if flags.contains(MS_NOSYMFOLLOW | MsFlags::MS_REMOUNT)));
        assert_eq!(
            calls[bind + 2],
            Call::MountSetattr("/r/vol".into(), attr::RDONLY, 0, true)
        );
        assert!(matches!(&calls[bind + 3], Call::Mount { flags, .. }
            if *flags == MsFlags::MS_PRIVATE | MsFlags::MS_REC));
    }

    #[test]
    fn read_only_remounts_keep_the_mounts_locked_flags() {
        let sys = RecordingSyscall {
            dirs: vec![PathBuf::from("/etc")],
            mount_flags: Some(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME),
            ..Default::default()
        };
        let spec = spec_with(serde_json::json!({
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"namespaces": [{"type": "mount"}], "readonlyPaths": ["/etc"]}
        }));
        finalize(&sys, &spec).unwrap();
        let remounts: Vec<MsFlags> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT) => Some(flags),
                _ => None,
            })
            .collect();
        assert_eq!(remounts.len(), 2, "/etc, then /");
        for f in remounts {
            assert!(f.contains(
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME
            ));
            assert!(!f.contains(MsFlags::MS_STRICTATIME));
        }
        // A strictatime mount (neither noatime nor relatime) says so, or the remount is
        // relatime.
        let sys = RecordingSyscall::default();
        finalize(&sys, &spec).unwrap();
        assert!(
            matches!(sys.calls().last().unwrap(), Call::Mount { flags, .. }
            if flags.contains(MsFlags::MS_STRICTATIME))
        );
    }

    #[test]
    fn masked_and_readonly_paths_then_readonly_root() {
        let sys = RecordingSyscall {
            dirs: vec![PathBuf::from("/proc/acpi"), PathBuf::from("/proc/sys")],
            files: vec![PathBuf::from("/proc/kcore")],
            ..Default::default()
        };
        let spec = spec_with(serde_json::json!({
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "network"}],
                      "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/missing"],
                      "readonlyPaths": ["/proc/sys"],
                      "sysctl": {"net.ipv4.ip_forward": "1"}}
        }));
        finalize(&sys, &spec).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[0],
            Call::WriteFile("/proc/sys/net/ipv4/ip_forward".into(), "1".into())
        );
        let t = sys.mount_targets();
        assert_eq!(
            t,
            vec![
                PathBuf::from("/proc/sys"),
                "/proc/sys".into(),
                "/proc/acpi".into(),
                "/proc/kcore".into(),
                "/".into()
            ]
        );
        assert!(
            matches!(calls.last().unwrap(), Call::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY))
        );
    }
}
