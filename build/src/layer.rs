//! The builder's own storage under `<data_dir>/build/`, and writing layers.
//!
//! ```text
//! blobs/sha256/<hex>    layer blobs (gzip tar), image configs and manifests it made
//! layers/sha256/<hex>   each new layer unpacked (by diff id): the lower dirs of later RUNs
//! cache/<key>.json      a step's cache key -> the layer it made
//! tmp/<what>.<pid>.<n>  a running build's scratch (overlay dirs, bundles, layouts)
//! ```
//!
//! A layer is written once as a tar stream that is hashed (the diff id), gzip-compressed and
//! hashed again (the blob digest) on its way to a temp file, then renamed into `blobs/`;
//! it is unpacked with the image store's unpacker into a temp dir renamed into `layers/`.
//! Everything appears by rename, so an interrupted build leaves only `tmp/`, which the next
//! build emptied of dead builds' entries.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tug_image::digest::{Algorithm, HashingWriter};
use tug_image::Digest;

use crate::error::{BuildError, IoContext};
use crate::view::{is_opaque, is_whiteout};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A layer of the image being built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub diff_id: Digest,
    pub blob: Digest,
    pub size: u64,
    pub media_type: String,
    /// The unpacked directory (a lower dir for RUN).
    pub dir: PathBuf,
}

/// Metadata of one tar entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

impl EntryMeta {
    pub fn of(meta: &fs::Metadata) -> EntryMeta {
        EntryMeta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime().max(0) as u64,
        }
    }
}

/// The tar builder layers are written through.
pub type LayerTar = tar::Builder<HashingWriter<flate2::write::GzEncoder<HashingWriter<File>>>>;

/// The builder's directories.
#[derive(Debug, Clone)]
pub struct BuildDirs {
    pub root: PathBuf,
}

/// A temp file or directory under `tmp/`, removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0).or_else(|_| fs::remove_file(&self.0));
    }
}

impl BuildDirs {
    /// Open (creating) `<data_dir>/build`, removing what dead builds left in `tmp/`.
    pub fn open(data_dir: &Path) -> Result<BuildDirs, BuildError> {
        let root = data_dir.join("build");
        for d in ["blobs/sha256", "layers/sha256", "cache", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        let dirs = BuildDirs { root };
        dirs.clean_tmp()?;
        Ok(dirs)
    }

    fn clean_tmp(&self) -> Result<(), BuildError> {
        let tmp = self.root.join("tmp");
        for ent in fs::read_dir(&tmp).at(&tmp)?.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('.').nth(1).and_then(|p| p.parse().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let p = ent.path();
                // A mount left by a killed build is detached before its dir goes.
                let _ = nix::mount::umount2(&p.join("merged"), nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
        Ok(())
    }

    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// A fresh temp directory, removed when the guard drops.
    pub fn scratch_dir(&self, what: &str) -> Result<Scratch, BuildError> {
        let p = self.tmp_path(what);
        fs::create_dir_all(&p).at(&p)?;
        Ok(Scratch(p))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(d.hex())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join("sha256").join(diff_id.hex())
    }

    /// Store a small document (config, manifest) as a blob.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, BuildError> {
        let d = Digest::sha256_of(data);
        let dest = self.blob_path(&d);
        if !dest.exists() {
            let tmp = self.tmp_path("blob");
            let _guard = Scratch(tmp.clone());
            fs::write(&tmp, data).at(&tmp)?;
            fs::rename(&tmp, &dest).at(&dest)?;
        }
        Ok(d)
    }

    /// Write a layer with `fill`, store its blob and unpack it.
    pub fn write_layer(
        &self,
        fill: impl FnOnce(&mut LayerTar) -> Result<(), BuildError>,
    ) -> Result<LayerRef, BuildError> {
        let tmp = self.tmp_path("layer.tar.gz");
        let guard = Scratch(tmp.clone());
        let file = File::create(&tmp).at(&tmp)?;
        let gz = flate2::write::GzEncoder::new(
            HashingWriter::new(file, Algorithm::Sha256),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(HashingWriter::new(gz, Algorithm::Sha256));
        fill(&mut tar)?;
        let plain = tar.into_inner().at(&tmp)?;
        let (gz, diff_id, _) = plain.finish();
        let hashed = gz.finish().at(&tmp)?;
        let (file, blob, size) = hashed.finish();
        file.sync_all().at(&tmp)?;
        drop(file);
        let dest = self.blob_path(&blob);
        fs::rename(&tmp, &dest).at(&dest)?;
        drop(guard);
        let dir = self.unpack(&blob, &diff_id)?;
        Ok(LayerRef {
            diff_id,
            blob,
            size,
            media_type: tug_image::oci::MT_OCI_LAYER_GZIP.to_string(),
            dir,
        })
    }

    /// The unpacked directory of a layer blob of ours, made if missing.
    pub fn unpack(&self, blob: &Digest, diff_id: &Digest) -> Result<PathBuf, BuildError> {
        let dest = self.layer_dir(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.scratch_dir("unpack")?;
        let path = self.blob_path(blob);
        let f = File::open(&path).at(&path)?;
        let unpacked = tug_image::unpack::unpack_layer(f, &tmp.0, &format!("layer {blob}"))?;
        if &unpacked.diff_id != diff_id {
            return Err(BuildError::Other(format!(
                "layer {blob}: diff id {} where {diff_id} was expected",
                unpacked.diff_id
            )));
        }
        match fs::rename(&tmp.0, &dest) {
            Ok(()) => {}
            // Another build made it meanwhile: the same content.
            Err(_) if dest.is_dir() => {}
            Err(e) => return Err(BuildError::io(&dest, e)),
        }
        Ok(dest)
    }
}

fn header(kind: tar::EntryType, m: EntryMeta, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(m.mode);
    h.set_uid(m.uid as u64);
    h.set_gid(m.gid as u64);
    h.set_mtime(m.mtime);
    h.set_size(size);
    h
}

fn tar_err(path: &Path) -> impl Fn(io::Error) -> BuildError + '_ {
    move |e| BuildError::io(path, e)
}

pub fn add_dir(tar: &mut LayerTar, path: &Path, m: EntryMeta) -> Result<(), BuildError> {
    let mut h = header(tar::EntryType::Directory, m, 0);
    tar.append_data(&mut h, path, io::empty())
        .map_err(tar_err(path))
}

pub fn add_file(
    tar: &mut LayerTar,
    path: &Path,
    m: EntryMeta,
    size: u64,
    data: impl Read,
) -> Result<(), BuildError> {
    let mut h = header(tar::EntryType::Regular, m, size);
    tar.append_data(&mut h, path, data.take(size))
        .map_err(tar_err(path))
}

pub fn add_symlink(
    tar: &mut LayerTar,
    path: &Path,
    m: EntryMeta,
    target: &Path,
) -> Result<(), BuildError> {
    let mut h = header(tar::EntryType::Symlink, m, 0);
    tar.append_link(&mut h, path, target).map_err(tar_err(path))
}

fn add_hardlink(tar: &mut LayerTar, path: &Path, target: &Path) -> Result<(), BuildError> {
    let m = EntryMeta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    let mut h = header(tar::EntryType::Link, m, 0);
    tar.append_link(&mut h, path, target).map_err(tar_err(path))
}

fn add_whiteout(tar: &mut LayerTar, path: &Path) -> Result<(), BuildError> {
    let m = EntryMeta {
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    add_file(tar, path, m, 0, io::empty())
}

/// Add one filesystem object found at `real` as `path` (not followed), with `m` as its
/// metadata; directories are not descended into.
pub fn add_object(
    tar: &mut LayerTar,
    real: &Path,
    path: &Path,
    meta: &fs::Metadata,
    m: EntryMeta,
) -> Result<(), BuildError> {
    let ft = meta.file_type();
    if ft.is_dir() {
        add_dir(tar, path, m)
    } else if ft.is_symlink() {
        let target = fs::read_link(real).at(real)?;
        add_symlink(tar, path, m, &target)
    } else if ft.is_file() {
        let f = File::open(real).at(real)?;
        add_file(tar, path, m, meta.len(), f)
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        };
        let mut h = header(kind, m, 0);
        let rdev = meta.rdev();
        h.set_device_major(nix::sys::stat::major(rdev) as u32)
            .map_err(tar_err(path))?;
        h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
            .map_err(tar_err(path))?;
        tar.append_data(&mut h, path, io::empty())
            .map_err(tar_err(path))
    } else {
        // Sockets have no place in a layer.
        Ok(())
    }
}

/// The tree of an overlay upper directory (what a RUN changed) as layer entries: 0:0
/// character devices become `.wh.NAME`, opaque directories get `.wh..wh..opq`, hard links
/// stay links. `skip(rel, meta)` drops entries (the runtime's empty mount points).
pub fn add_upper_tree(
    tar: &mut LayerTar,
    upper: &Path,
    skip: &dyn Fn(&Path, &fs::Metadata) -> bool,
) -> Result<(), BuildError> {
    let mut links: std::collections::HashMap<(u64, u64), PathBuf> = Default::default();
    walk_upper(tar, upper, Path::new(""), skip, &mut links)
}

fn walk_upper(
    tar: &mut LayerTar,
    upper: &Path,
    rel: &Path,
    skip: &dyn Fn(&Path, &fs::Metadata) -> bool,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> Result<(), BuildError> {
    let dir = upper.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .at(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .at(&dir)?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let real = upper.join(&child);
        let meta = fs::symlink_metadata(&real).at(&real)?;
        if skip(&child, &meta) {
            continue;
        }
        if is_whiteout(&meta) {
            let mut wh = name.clone();
            wh = format!(".wh.{}", wh.to_string_lossy()).into();
            add_whiteout(tar, &rel.join(wh))?;
            continue;
        }
        if meta.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key) {
                add_hardlink(tar, &child, first)?;
                continue;
            }
            links.insert(key, child.clone());
        }
        add_object(tar, &real, &child, &meta, EntryMeta::of(&meta))?;
        if meta.is_dir() {
            if is_opaque(&real) {
                add_whiteout(tar, &child.join(".wh..wh..opq"))?;
            }
            walk_upper(tar, upper, &child, skip, links)?;
        }
    }
    Ok(())
}

/// Feed a file's content to a hasher (cache keys).
pub fn hash_file(path: &Path, h: &mut tug_image::digest::Hasher) -> Result<(), BuildError> {
    let mut f = File::open(path).at(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}
