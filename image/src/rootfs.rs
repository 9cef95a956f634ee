//! Instance root filesystems: an overlay mount whose lower layers are the image's shared
//! unpacked layers and whose upper and work dirs belong to the instance.
//!
//! `<data_dir>/rootfs/<instance>/` holds `image.json` (the manifest digest and layer dirs,
//! written before the mount so garbage collection never removes a layer in use), `upper/`,
//! `work/` and `merged/` (the mount point, the bundle's `root.path`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::store::{write_atomic, Image, ImageStore, Rootfs};

/// The kernel reads legacy mount options from one page.
pub const MAX_MOUNT_OPTIONS: usize = 4095;

/// The mount syscalls, behind a trait so the option building and ordering are tested
/// without root.
pub trait Mounter {
    fn mount_overlay(&self, target: &Path, options: &str) -> nix::Result<()>;
    /// An idmapped bind of `source` at `target` (open_tree, mount_setattr with the user
    /// namespace's mappings, move_mount): files show the ids the namespace maps theirs to.
    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        userns: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<()>;
    fn unmount(&self, target: &Path, detach: bool) -> nix::Result<()>;
    fn is_mounted(&self, target: &Path) -> bool;
}

/// The real thing: `mount(2)` and `umount2(2)`, `/proc/self/mountinfo`.
pub struct NixMounter;

impl Mounter for NixMounter {
    fn mount_overlay(&self, target: &Path, options: &str) -> nix::Result<()> {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
    }

    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        userns: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<()> {
        bind_idmapped(source, target, userns)
    }

    fn unmount(&self, target: &Path, detach: bool) -> nix::Result<()> {
        let flags = if detach {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        umount2(target, flags)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        mount_points()
            .map(|points| points.iter().any(|p| p == target))
            .unwrap_or(false)
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn bind_idmapped(
    source: &Path,
    target: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL);
    let (src, dst, empty) = (c(source)?, c(target)?, CString::default());
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(nix::Error::last())
        } else {
            Ok(r)
        }
    };
    // SAFETY: open_tree on a valid path; the fd it returns is ours.
    let tree = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel gave us this fd.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree with an attr of the size we pass.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    // SAFETY: move_mount of our detached tree onto a path.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Mount points of this mount namespace, with mountinfo's octal escapes decoded.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStringExt;
    let text = fs::read("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(field) = line.split(|&b| b == b' ').nth(4) else {
            continue;
        };
        let mut decoded = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            if field[i] == b'\\'
                && i + 3 < field.len()
                && field[i + 1..i + 4]
                    .iter()
                    .all(|c| (b'0'..=b'7').contains(c))
            {
                let v =
                    (field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0');
                decoded.push(v);
                i += 4;
            } else {
                decoded.push(field[i]);
                i += 1;
            }
        }
        out.push(PathBuf::from(std::ffi::OsString::from_vec(decoded)));
    }
    Ok(out)
}

/// What `image.json` records for one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsRecord {
    pub instance: String,
    pub reference: String,
    pub manifest: Digest,
    pub layers: Vec<PathBuf>,
}

/// A container's user namespace, for [`ImageStore::prepare_rootfs_mapped`]: the namespace
/// (an fd, for the idmapped layers) and the host ids its root is.
#[derive(Debug, Clone, Copy)]
pub struct Mapped<'a> {
    pub userns: std::os::fd::BorrowedFd<'a>,
    pub root_uid: u32,
    pub root_gid: u32,
}

/// Every instance rootfs recorded under `<data_dir>/rootfs`.
pub fn records(data_dir: &Path) -> Result<Vec<RootfsRecord>> {
    let dir = data_dir.join("rootfs");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let p = ent.at(&dir)?.path().join("image.json");
        match fs::read(&p) {
            Ok(data) => {
                if let Ok(r) = serde_json::from_slice(&data) {
                    out.push(r);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    Ok(out)
}

fn check_instance_id(id: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidInstanceId {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 128 {
        return Err(bad("must be 1 to 128 characters"));
    }
    if id == "." || id == ".." {
        return Err(bad("not a directory name"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// The overlay options for `layers` (lowest first): overlay lists the top layer first.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String> {
    for p in layers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains(',') || s.contains(':') || s.contains('\\') {
            return Err(Error::io(
                p,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "overlay paths may not contain ',', ':' or '\\'",
                ),
            ));
        }
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    Ok(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    ))
}

impl ImageStore {
    fn rootfs_dir(&self, instance_id: &str) -> PathBuf {
        self.data_dir.join("rootfs").join(instance_id)
    }

    /// Mount the instance's rootfs (idempotent: an existing mount is returned unchanged).
    pub fn prepare_rootfs(&self, image: &Image, instance_id: &str) -> Result<Rootfs> {
        self.prepare_rootfs_mapped(image, instance_id, None)
    }

    /// [`ImageStore::prepare_rootfs`] for a container in a user namespace of its own
    /// (`mapped`): each layer is bound idmapped under `<rootfs>/lower/N` (overlay does not
    /// take an idmapped mount of itself, but takes idmapped layers), and the writable layer
    /// belongs to the namespace's root, so the tree looks to the container as it does to a
    /// container without one, and what it writes lands in the layer under its own ids.
    pub fn prepare_rootfs_mapped(
        &self,
        image: &Image,
        instance_id: &str,
        mapped: Option<&Mapped<'_>>,
    ) -> Result<Rootfs> {
        check_instance_id(instance_id)?;
        let dir = self.rootfs_dir(instance_id);
        let merged = dir.join("merged");
        if self.mounter.is_mounted(&merged) {
            return Ok(Rootfs { path: merged });
        }
        let _g = self.shared_lock()?;
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).at(d)?;
        }
        let manifest: Digest = image.digest.parse()?;
        let record = RootfsRecord {
            instance: instance_id.to_string(),
            reference: image.reference.clone(),
            manifest,
            layers: image.layers.clone(),
        };
        write_atomic(
            &dir.join("image.json"),
            &serde_json::to_vec_pretty(&record).expect("record serialises"),
            &dir,
        )?;
        for l in &image.layers {
            if !l.is_dir() {
                return Err(Error::io(
                    l,
                    io::Error::new(io::ErrorKind::NotFound, "unpacked layer is missing"),
                ));
            }
        }
        // A layer repeated in an image (it happens: `RUN true` twice) would be the same
        // lower dir twice, which overlay refuses; its topmost place alone gives the same
        // tree, since the copies below it can only show what it shows itself.
        let mut lower: Vec<PathBuf> = Vec::new();
        for l in image.layers.iter().rev() {
            if !lower.contains(l) {
                lower.push(l.clone());
            }
        }
        lower.reverse();
        if lower.is_empty() {
            // Overlay needs one lower dir; an image with no layers gets an empty one.
            let empty = dir.join("empty");
            fs::create_dir_all(&empty).at(&empty)?;
            lower.push(empty);
        }
        if let Some(m) = mapped {
            lower = self.bind_layers_idmapped(&dir, &lower, m)?;
            for d in [&upper, &work] {
                std::os::unix::fs::chown(d, Some(m.root_uid), Some(m.root_gid)).at(d)?;
            }
        }
        let mut options = overlay_options(&lower, &upper, &work)?;
        if options.len() > MAX_MOUNT_OPTIONS {
            // Too long for one page: name the layers through short links instead, as
            // Docker's overlay2 does (`images/l/<12 hex>` -> `../layers/<alg>/<hex>`).
            let short: Vec<PathBuf> = lower
                .iter()
                .map(|l| self.short_layer_link(l))
                .collect::<Result<_>>()?;
            options = overlay_options(&short, &upper, &work)?;
        }
        if options.len() > MAX_MOUNT_OPTIONS {
            return Err(Error::TooManyLayers {
                path: merged,
                len: options.len(),
                limit: MAX_MOUNT_OPTIONS,
            });
        }
        self.mounter
            .mount_overlay(&merged, &options)
            .map_err(|source| Error::Mount {
                path: merged.clone(),
                op: "mount overlay",
                source,
            })?;
        Ok(Rootfs { path: merged })
    }

    /// Each layer bound idmapped at `<dir>/lower/N` (kept when already there: a prepare
    /// cut short and done again); returns those paths in the same order.
    fn bind_layers_idmapped(
        &self,
        dir: &Path,
        layers: &[PathBuf],
        mapped: &Mapped<'_>,
    ) -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(layers.len());
        for (n, layer) in layers.iter().enumerate() {
            let target = dir.join("lower").join(n.to_string());
            fs::create_dir_all(&target).at(&target)?;
            if !self.mounter.is_mounted(&target) {
                self.mounter
                    .bind_idmapped(layer, &target, mapped.userns)
                    .map_err(|source| Error::Mount {
                        path: target.clone(),
                        op: "idmapped bind of a layer (needs Linux 5.19 and a filesystem that takes idmapped mounts)",
                        source,
                    })?;
            }
            out.push(target);
        }
        Ok(out)
    }

    /// A short path for a layer dir of this store: a symlink `images/l/<12 hex>`. Paths
    /// that are not this store's layers, or whose short name is taken, stay as they are.
    fn short_layer_link(&self, layer: &Path) -> Result<PathBuf> {
        let layers_root = self.root.join("layers");
        let Ok(rel) = layer.strip_prefix(&layers_root) else {
            return Ok(layer.to_path_buf());
        };
        let (Some(alg), Some(hex)) = (
            rel.parent().and_then(|p| p.to_str()),
            rel.file_name().and_then(|h| h.to_str()),
        ) else {
            return Ok(layer.to_path_buf());
        };
        if hex.len() < 12 {
            return Ok(layer.to_path_buf());
        }
        let links = self.root.join("l");
        fs::create_dir_all(&links).at(&links)?;
        let prefix = if alg == "sha256" { "" } else { "5" };
        let link = links.join(format!("{prefix}{}", &hex[..12]));
        let target = Path::new("../layers").join(alg).join(hex);
        for _ in 0..2 {
            match fs::read_link(&link) {
                Ok(t) if t == target => return Ok(link),
                Ok(_) => return Ok(layer.to_path_buf()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match std::os::unix::fs::symlink(&target, &link) {
                        Ok(()) => return Ok(link),
                        // Made by someone else meanwhile: look again.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(Error::io(&link, e)),
                    }
                }
                Err(e) => return Err(Error::io(&link, e)),
            }
        }
        Ok(layer.to_path_buf())
    }

    /// Unmount and delete the instance's rootfs (idempotent).
    pub fn remove_rootfs(&self, instance_id: &str) -> Result<()> {
        check_instance_id(instance_id)?;
        let dir = self.rootfs_dir(instance_id);
        let merged = dir.join("merged");
        // A mount may be stacked more than once (an earlier crash); a busy one is detached.
        let mut tries = 0;
        while self.mounter.is_mounted(&merged) {
            tries += 1;
            match self.mounter.unmount(&merged, false) {
                Ok(()) => {}
                Err(nix::errno::Errno::EBUSY) if tries < 8 => self
                    .mounter
                    .unmount(&merged, true)
                    .map_err(|source| Error::Mount {
                    path: merged.clone(),
                    op: "unmount (detach)",
                    source,
                })?,
                Err(source) => {
                    return Err(Error::Mount {
                        path: merged.clone(),
                        op: "unmount",
                        source,
                    })
                }
            }
            if tries > 8 {
                break;
            }
        }
        // The idmapped layers of a container in a user namespace.
        if let Ok(rd) = fs::read_dir(dir.join("lower")) {
            for ent in rd.flatten() {
                let target = ent.path();
                if self.mounter.is_mounted(&target) && self.mounter.unmount(&target, false).is_err()
                {
                    self.mounter
                        .unmount(&target, true)
                        .map_err(|source| Error::Mount {
                            path: target.clone(),
                            op: "unmount (detach)",
                            source,
                        })?;
                }
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_top_layer_first() {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let o = overlay_options(&layers, Path::new("/r/u"), Path::new("/r/w")).unwrap();
        assert_eq!(o, "lowerdir=/l/top:/l/bottom,upperdir=/r/u,workdir=/r/w");
        assert!(
            overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err()
        );
    }

    #[test]
    fn instance_ids() {
        for ok in ["abc", "svc-1_a.2"] {
            check_instance_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(200)] {
            assert!(check_instance_id(bad).is_err(), "{bad}");
        }
    }
}
