//! Unpacking one layer tarball into its own directory, in the form overlayfs reads as a
//! lower layer: whiteouts (`.wh.NAME`) become 0:0 character devices and opaque markers
//! (`.wh..wh..opq`) become the `trusted.overlay.opaque` xattr on their directory.
//!
//! The target directory is private to the unpacker (a fresh temp dir), so no other writer
//! races with these checks. Every entry is placed with these rules:
//! - its path is cleaned: `.` and empty components dropped, a leading `/` stripped, and any
//!   `..` refused;
//! - every parent must be a real directory inside the target (missing ones are made); a
//!   parent that is a symlink is refused, so nothing is ever written through a link, whatever
//!   it points at (absolute or relative);
//! - an existing final entry is removed first and files are created with
//!   `O_EXCL|O_NOFOLLOW`, so a symlink in the way is replaced, never followed;
//! - hard-link targets obey the same path rules and must already exist in this layer;
//! - GNU long names and PAX headers larger than [`MAX_EXTENSION_HEADER`] are refused before
//!   they are read into memory.
//!
//! The uncompressed stream is hashed on the way through, which gives the layer's diff id.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::digest::{Algorithm, Digest, HashingReader};
use crate::error::{Error, Result};

/// The largest GNU long-name/long-link or PAX extension header read into memory.
pub const MAX_EXTENSION_HEADER: u64 = 1024 * 1024;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The compression of a layer blob, found from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detect from the magic number at the start of `head`.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream (the layer's diff id).
    pub diff_id: Digest,
    /// Entries applied (extension headers not counted).
    pub entries: u64,
    /// Uncompressed bytes read.
    pub tar_bytes: u64,
}

/// Wrap `reader` in the decompressor its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(256 * 1024, reader);
    let compression = Compression::detect(buf.fill_buf()?);
    Ok(match compression {
        Compression::None => Box::new(buf),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buf)?),
    })
}

/// Unpack the layer blob read from `reader` (plain, gzip or zstd) into `target`, which
/// must be an existing empty directory. `layer` names the layer in errors.
pub fn unpack_layer<R: Read>(reader: R, target: &Path, layer: &str) -> Result<Unpacked> {
    let stream_err = |source: io::Error| Error::TarStream {
        layer: layer.to_string(),
        source,
    };
    let plain = decompress(reader).map_err(stream_err)?;
    let mut hashing = HashingReader::new(plain, Algorithm::Sha256);
    let entries = {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut unpacker = Unpacker::new(target, layer);
        let iter = archive.entries().map_err(stream_err)?.raw(true);
        for entry in iter {
            let entry = entry.map_err(stream_err)?;
            unpacker.entry(entry)?;
        }
        unpacker.finish()?
    };
    // The end-of-archive blocks and any padding after them are part of the diff id.
    io::copy(&mut hashing, &mut io::sink()).map_err(stream_err)?;
    let (diff_id, tar_bytes) = hashing.finish();
    Ok(Unpacked {
        diff_id,
        entries,
        tar_bytes,
    })
}

/// Extension headers waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: i64,
}

struct Unpacker<'a> {
    target: &'a Path,
    layer: &'a str,
    pending: Pending,
    dirs: Vec<DirMeta>,
    entries: u64,
    as_root: bool,
}

/// The fields of a PAX extended header that the unpacker uses.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

fn parse_pax(data: &[u8]) -> std::result::Result<Pax, String> {
    let mut pax = Pax::default();
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| format!("malformed PAX header: {e}"))?;
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        let num = || -> std::result::Result<u64, String> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("bad PAX {} value", String::from_utf8_lossy(key)))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(num()?),
            b"uid" => pax.uid = Some(num()?),
            b"gid" => pax.gid = Some(num()?),
            b"mtime" => {
                let v = std::str::from_utf8(value).unwrap_or("");
                let secs = v.split('.').next().unwrap_or("");
                pax.mtime = secs.parse().ok();
            }
            _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(pax)
}

/// Clean a tar path: drop `.`, empty components and a leading `/`; refuse `..`.
pub fn clean_entry_path(raw: &[u8]) -> std::result::Result<PathBuf, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(raw)).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("path contains `..`".into()),
            Component::Prefix(_) => return Err("path has a prefix".into()),
        }
    }
    Ok(out)
}

fn read_limited<R: Read>(entry: &mut R, size: u64) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(size.min(64 * 1024) as usize);
    entry.take(size).read_to_end(&mut v)?;
    Ok(v)
}

impl<'a> Unpacker<'a> {
    fn new(target: &'a Path, layer: &'a str) -> Self {
        Unpacker {
            target,
            layer,
            pending: Pending::default(),
            dirs: Vec::new(),
            entries: 0,
            as_root: nix::unistd::geteuid().is_root(),
        }
    }

    fn refuse(&self, entry: &[u8], reason: impl Into<String>) -> Error {
        Error::TarEntry {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        let header_path = entry.path_bytes().into_owned();
        let size = entry.header().entry_size().unwrap_or(u64::MAX);
        let is_ext = matches!(
            kind,
            tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
        );
        if is_ext {
            if size > MAX_EXTENSION_HEADER {
                return Err(self.refuse(
                    &header_path,
                    format!(
                        "{kind:?} extension header of {size} bytes is over the {MAX_EXTENSION_HEADER}-byte limit"
                    ),
                ));
            }
            let mut data = read_limited(&mut entry, size).map_err(|source| Error::TarStream {
                layer: self.layer.to_string(),
                source,
            })?;
            let slot = match kind {
                tar::EntryType::GNULongName => &mut self.pending.long_name,
                tar::EntryType::GNULongLink => &mut self.pending.long_link,
                tar::EntryType::XHeader => &mut self.pending.pax,
                _ => return Ok(()), // global PAX headers carry nothing we use
            };
            if slot.is_some() {
                return Err(self.refuse(&header_path, "two extension headers for one entry"));
            }
            if kind != tar::EntryType::XHeader {
                while data.last() == Some(&0) {
                    data.pop();
                }
            }
            *slot = Some(data);
            return Ok(());
        }

        let pending = std::mem::take(&mut self.pending);
        let pax = match &pending.pax {
            Some(data) => parse_pax(data).map_err(|r| self.refuse(&header_path, r))?,
            None => Pax::default(),
        };
        let raw_path = pax
            .path
            .clone()
            .or(pending.long_name)
            .unwrap_or(header_path);
        let raw_link = pax
            .linkpath
            .clone()
            .or(pending.long_link)
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
        if let Some(psize) = pax.size {
            if psize != size {
                return Err(self.refuse(&raw_path, "PAX size differs from the header size"));
            }
        }
        // Sparse files would need their map applied to the data; layers do not use them.
        if pax.sparse || kind == tar::EntryType::GNUSparse {
            return Err(self.refuse(&raw_path, "sparse files are not supported"));
        }
        self.entries += 1;
        let rel = clean_entry_path(&raw_path).map_err(|r| self.refuse(&raw_path, r))?;

        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = pax.uid.or_else(|| header.uid().ok()).unwrap_or(0);
        let gid = pax.gid.or_else(|| header.gid().ok()).unwrap_or(0);
        let mtime = pax
            .mtime
            .or_else(|| header.mtime().ok().map(|m| m as i64))
            .unwrap_or(0);
        let dev = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );

        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                self.dirs.push(DirMeta {
                    path: self.target.to_path_buf(),
                    mode,
                    mtime,
                });
                return Ok(());
            }
            return Err(self.refuse(&raw_path, "non-directory entry for the layer root"));
        }

        let name = rel.file_name().unwrap_or_default().as_bytes().to_vec();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = self.ensure_dir_path(&parent_rel, &raw_path)?;

        // Whiteouts, in overlay form.
        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            if name == OPAQUE_MARKER.as_bytes() {
                set_xattr(&parent, OVERLAY_OPAQUE_XATTR.as_bytes(), b"y")
                    .map_err(|e| self.refuse(&raw_path, format!("marking opaque: {e}")))?;
            } else if name.starts_with(b".wh..wh.") {
                // aufs bookkeeping (e.g. .wh..wh.plnk): nothing to apply.
            } else {
                let hidden_name = &name[WHITEOUT_PREFIX.len()..];
                if hidden_name.is_empty() || hidden_name == b"." || hidden_name == b".." {
                    return Err(self.refuse(&raw_path, "whiteout of an empty, `.` or `..` name"));
                }
                let hidden = parent.join(OsStr::from_bytes(hidden_name));
                self.remove_existing(&hidden, &raw_path)?;
                mknod(
                    &hidden,
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(|e| self.refuse(&raw_path, format!("making whiteout device: {e}")))?;
            }
            return Ok(());
        }

        let dest = parent.join(OsStr::from_bytes(&name));
        let layer = self.layer;
        let err = |e: io::Error| Error::TarEntry {
            layer: layer.to_string(),
            entry: String::from_utf8_lossy(&raw_path).into_owned(),
            reason: e.to_string(),
        };
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.remove_existing(&dest, &raw_path)?;
                        fs::create_dir(&dest).map_err(err)?;
                    }
                    Err(_) => fs::create_dir(&dest).map_err(err)?,
                }
                self.dirs.push(DirMeta {
                    path: dest.clone(),
                    mode,
                    mtime,
                });
            }
            T::Regular | T::Continuous => {
                self.remove_existing(&dest, &raw_path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(err)?;
                io::copy(&mut entry, &mut file).map_err(|source| Error::TarStream {
                    layer: self.layer.to_string(),
                    source,
                })?;
                drop(file);
            }
            T::Symlink => {
                let target =
                    raw_link.ok_or_else(|| self.refuse(&raw_path, "symlink without a target"))?;
                self.remove_existing(&dest, &raw_path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest).map_err(err)?;
            }
            T::Link => {
                let target =
                    raw_link.ok_or_else(|| self.refuse(&raw_path, "hard link without a target"))?;
                let target_rel = clean_entry_path(&target)
                    .map_err(|r| self.refuse(&raw_path, format!("hard link target: {r}")))?;
                let source = self.existing_path(&target_rel, &raw_path)?;
                if source == dest {
                    return Ok(());
                }
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.refuse(&raw_path, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(self.refuse(
                            &raw_path,
                            format!(
                                "hard link target {:?} is not in the layer",
                                String::from_utf8_lossy(&target)
                            ),
                        ))
                    }
                }
                self.remove_existing(&dest, &raw_path)?;
                fs::hard_link(&source, &dest).map_err(err)?;
                // A hard link shares the inode: metadata was set with the first name.
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                self.remove_existing(&dest, &raw_path)?;
                let flag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let devno = nix::sys::stat::makedev(dev.0 as u64, dev.1 as u64);
                mknod(&dest, flag, Mode::from_bits_truncate(0o600), devno)
                    .map_err(|e| self.refuse(&raw_path, format!("mknod: {e}")))?;
            }
            other => {
                return Err(self.refuse(&raw_path, format!("unsupported entry type {other:?}")));
            }
        }

        // Ownership before mode (chown clears set-id bits), never following a symlink.
        if self.as_root {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &dest,
                Some(nix::unistd::Uid::from_raw(uid as u32)),
                Some(nix::unistd::Gid::from_raw(gid as u32)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.refuse(&raw_path, format!("chown: {e}")))?;
        }
        for (key, value) in &pax.xattrs {
            if let Err(e) = set_xattr(&dest, key, value) {
                // Unsupported by this filesystem, not allowed to us, or a user.* xattr
                // on a symlink (which Linux refuses): skipped, as tar does.
                let skip = e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    || (e.raw_os_error() == Some(libc::EPERM)
                        && (!self.as_root || kind == T::Symlink));
                if !skip {
                    return Err(self.refuse(
                        &raw_path,
                        format!("xattr {}: {e}", String::from_utf8_lossy(key)),
                    ));
                }
            }
        }
        if !matches!(kind, T::Symlink | T::Directory) {
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).map_err(err)?;
        }
        if kind != T::Directory {
            set_mtime(&dest, mtime).map_err(err)?;
        }
        Ok(())
    }

    /// Make sure `rel` (a cleaned relative path) is a real directory inside the target,
    /// creating missing components, refusing symlinks and non-directories on the way.
    fn ensure_dir_path(&self, rel: &Path, entry: &[u8]) -> Result<PathBuf> {
        let mut cur = self.target.to_path_buf();
        for comp in rel.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.refuse(
                        entry,
                        format!("path goes through the symlink {:?}", self.shown(&cur)),
                    ))
                }
                Ok(_) => {
                    return Err(self.refuse(
                        entry,
                        format!("parent {:?} is not a directory", self.shown(&cur)),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|e| self.refuse(entry, e.to_string()))?;
                }
                Err(e) => return Err(self.refuse(entry, e.to_string())),
            }
        }
        Ok(cur)
    }

    /// The path of an existing entry `rel`, whose parents must be real directories.
    fn existing_path(&self, rel: &Path, entry: &[u8]) -> Result<PathBuf> {
        let mut cur = self.target.to_path_buf();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for comp in parent.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    return Err(self.refuse(
                        entry,
                        format!(
                            "hard link target goes through {:?}, which is not a directory",
                            self.shown(&cur)
                        ),
                    ))
                }
            }
        }
        match rel.file_name() {
            Some(name) => Ok(cur.join(name)),
            None => Err(self.refuse(entry, "hard link to the layer root")),
        }
    }

    fn remove_existing(&self, path: &Path, entry: &[u8]) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(path).map_err(|e| self.refuse(entry, e.to_string()))
            }
            Ok(_) => fs::remove_file(path).map_err(|e| self.refuse(entry, e.to_string())),
            Err(_) => Ok(()),
        }
    }

    fn shown(&self, p: &Path) -> String {
        p.strip_prefix(self.target)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// Directory modes and times last, deepest first, so creating children does not
    /// change them afterwards and read-only directories could still be filled.
    fn finish(mut self) -> Result<u64> {
        self.dirs.sort_by(|a, b| b.path.cmp(&a.path));
        let mut seen: HashMap<PathBuf, ()> = HashMap::new();
        for d in &self.dirs {
            if seen.insert(d.path.clone(), ()).is_some() {
                continue;
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(|e| Error::io(&d.path, e))?;
            set_mtime(&d.path, d.mtime).map_err(|e| Error::io(&d.path, e))?;
        }
        Ok(self.entries)
    }
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let t = TimeSpec::new(mtime, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// `syncfs(2)` on the filesystem holding `dir`: called before an unpacked layer is renamed
/// into place, so that after a power cut a layer directory that exists has its files'
/// contents too (the rename alone does not order the data of the files inside). One call
/// per layer instead of an fsync per file.
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(Error::io(dir, io::Error::last_os_error()));
    }
    Ok(())
}

/// `lsetxattr(2)`: never follows a symlink.
pub(crate) fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: valid NUL-terminated strings and a buffer with its length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
