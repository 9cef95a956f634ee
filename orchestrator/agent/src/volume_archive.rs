//! A volume's contents as a tar archive and back (`tugboat volume snapshot|restore`,
//! docs/volumes.md): [`pack`] writes the tree under a volume's root; [`unpack`] restores
//! one into a scratch directory inside the volume and swaps it in only once the whole
//! archive was read, so a corrupt, truncated or too-big archive leaves the volume as it
//! was. Owners, modes, symlinks and times are kept; an entry that would land outside the
//! volume (`..`, an absolute path, a link pointing out) and device nodes are refused.
//!
//! The swap is crash-safe: its state is in the scratch directories' names, each changed by
//! one rename, so a restore cut by a crash or a power loss is finished or undone by
//! [`recover`] (called by the next restore and before the agent hands the volume to an
//! instance):
//!
//! | left in the volume's root | meaning | recovery |
//! |---|---|---|
//! | `.tug-restore-T` | the archive was being unpacked | removed: the volume is as before |
//! | `.tug-restore-ready-T` | unpacked whole (synced); old data moving aside | rolled forward |
//! | `.tug-restore-swap-T` | old data aside; new data moving in | rolled forward |
//! | `.tug-restore-old-T` alone | the swap was done; the old data was being removed | removed |
//!
//! (Not one rename of the whole tree, `renameat2(RENAME_EXCHANGE)` with a sibling: the
//! root of a sized, nfs or exec volume is a mount point, which cannot be renamed.)

use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Scratch directories of a restore, inside the volume's root (same file system, so the
/// swap is renames). Left-overs of an interrupted restore are removed by the next one and
/// are never part of a snapshot.
pub const SCRATCH_PREFIX: &str = ".tug-restore-";
/// The swap's stages, after [`SCRATCH_PREFIX`] (see the module's table).
const READY: &str = "ready-";
const SWAP: &str = "swap-";
const OLD: &str = "old-";
/// Inside the new tree: the archive's `./` entry (the root's owner, mode and time), applied
/// to the root when the swap ends, also by a recovery.
const ROOT_META: &str = ".tug-restore-root";
/// ext4's own directory at the root of a sized volume: neither archived nor replaced.
const LOST_FOUND: &str = "lost+found";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry `{entry}` would be written outside the volume (absolute path or `..`): refused")]
    Escapes { entry: String },
    #[error("archive entry `{entry}` is a symlink to `{target}`, which points outside the volume: refused")]
    LinkEscapes { entry: String, target: String },
    #[error("archive entry `{entry}` is a device node: refused (a volume holds no devices)")]
    Device { entry: String },
    #[error("archive entry `{entry}` has a type a volume archive does not hold ({kind}): refused")]
    Unsupported { entry: String, kind: String },
    #[error("the archive is corrupt or truncated ({cause}); nothing was restored, the volume is as before")]
    Corrupt { cause: String },
    #[error("no space left on the volume (ENOSPC) while restoring `{entry}`: the archive is bigger than the volume; nothing was restored, the volume is as before")]
    NoSpace { entry: String },
    #[error("the volume is not empty ({first} and maybe more): restore into an empty volume, or give --force to replace its contents")]
    NotEmpty { first: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    pub entries: u64,
    pub bytes: u64,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { what, path, source }
}

/// Whether a name at the volume's root belongs to the volume's machinery, not its data.
fn is_machinery(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name == LOST_FOUND || name.starts_with(SCRATCH_PREFIX)
}

/// Writes the tree under `root` as a tar archive into `out` (ends with the end-of-archive
/// blocks): `./` with the root's own owner, mode and time first, then every entry below it,
/// symlinks as symlinks.
pub fn pack(root: &Path, out: impl Write) -> Result<(), ArchiveError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder
        .append_path_with_name(root, ".")
        .map_err(io_err("archiving", root))?;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_err("reading", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("reading", &dir))?;
        names.sort();
        for name in names {
            if relative.as_os_str().is_empty() && is_machinery(&name) {
                continue;
            }
            let path = dir.join(&name);
            let entry = relative.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
            // A socket is its process's, a device node no restore takes: neither is data.
            let kind = meta.file_type();
            if kind.is_socket() || kind.is_block_device() || kind.is_char_device() {
                continue;
            }
            if meta.is_file() {
                append_file(&mut builder, &path, &entry)?;
            } else {
                builder
                    .append_path_with_name(&path, &entry)
                    .map_err(io_err("archiving", &path))?;
            }
            if meta.is_dir() {
                stack.push(entry);
            }
        }
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(io_err("writing the archive of", root))
}

/// Archives the regular file at `path` as `entry` with exactly the size its header says:
/// tar's own `append_path` copies the file to its end, so a file that grew between its
/// stat and its copy (a writer that was not paused: `--no-freeze`, or a shared volume's
/// user on another node) made the entry longer than its header and the rest of the
/// archive unreadable. Bytes appended after the stat are left out; a file that shrank is
/// padded with zeros.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    entry: &Path,
) -> Result<(), ArchiveError> {
    let file = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("reading", path))?;
    append_sized(builder, entry, &meta, file).map_err(io_err("archiving", path))
}

/// An entry of `meta`'s size from `data`: cut there, or padded with zeros up to it.
fn append_sized<W: Write>(
    builder: &mut tar::Builder<W>,
    entry: &Path,
    meta: &std::fs::Metadata,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    let size = meta.len();
    let data = data.take(size).chain(io::repeat(0)).take(size);
    builder.append_data(&mut header, entry, data)
}

/// The entries at the root of a volume that hold data (not ext4's lost+found, not a
/// restore's scratch).
fn data_entries(root: &Path) -> Result<Vec<std::ffi::OsString>, ArchiveError> {
    let mut names = vec![];
    for e in std::fs::read_dir(root).map_err(io_err("reading", root))? {
        let name = e.map_err(io_err("reading", root))?.file_name();
        if !is_machinery(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The path of an entry below the volume's root, or a refusal when it is absolute or
/// climbs out with `..`.
fn inside(entry: &Path) -> Result<PathBuf, ArchiveError> {
    let mut clean = PathBuf::new();
    for part in entry.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Escapes {
                    entry: entry.display().to_string(),
                })
            }
        }
    }
    Ok(clean)
}

/// Whether a symlink at `entry` (clean, relative to the root) with `target` stays inside the
/// volume: a relative target whose `..` never climb above the root.
fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = entry.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn is_enospc(e: &io::Error) -> bool {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
        return true;
    }
    // tar wraps the cause (`failed to unpack ... : No space left on device`).
    let mut source: Option<&dyn std::error::Error> = e.get_ref().map(|s| s as _);
    while let Some(s) = source {
        if s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
        {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("No space left on device")
}

/// An error with its causes (tar's own hides the cause behind "failed to unpack").
fn chain(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.get_ref().and_then(|s| s.source());
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Remembers the last block the tar reader consumed, so that an archive cut at an entry's
/// end (which tar reads as a clean end) is told from one that ended with its end blocks.
struct Tail<R> {
    inner: R,
    last: Vec<u8>,
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.last.extend_from_slice(&buf[..n]);
        if self.last.len() > 512 {
            self.last.drain(..self.last.len() - 512);
        }
        Ok(n)
    }
}

impl<R> Tail<R> {
    fn ended_cleanly(&self) -> bool {
        self.last.len() == 512 && self.last.iter().all(|b| *b == 0)
    }
}

/// Finishes or undoes a restore that a crash (or an error after its commit) left in the
/// volume at `root` (the module's table); what it did, one line each (empty: nothing was
/// left).
pub fn recover(root: &Path) -> Result<Vec<String>, ArchiveError> {
    let mut done = vec![];
    let mut left: Vec<String> = std::fs::read_dir(root)
        .map_err(io_err("reading", root))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(SCRATCH_PREFIX))
        .collect();
    left.sort();
    // Roll forward first: an old-T beside ready-T or swap-T is part of that swap.
    for name in &left {
        let stage = &name[SCRATCH_PREFIX.len()..];
        if let Some(token) = stage
            .strip_prefix(READY)
            .or_else(|| stage.strip_prefix(SWAP))
        {
            finish_swap(root, token)?;
            done.push(format!("rolled forward the restore {token} ({name})"));
        }
    }
    for name in &left {
        let path = root.join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
            done.push(format!("removed {name}"));
        }
    }
    Ok(done)
}

/// Restores the archive read from `input` into the volume at `root`. Refused when the
/// volume holds data and `force` is not given; with `force`, its data is replaced. The
/// archive is unpacked into a scratch directory in the volume first, and swapped in only
/// when all of it was read: on any error the volume is as it was.
pub fn unpack(root: &Path, input: impl Read, force: bool) -> Result<Restored, ArchiveError> {
    recover(root)?;
    let old = data_entries(root)?;
    if let (Some(first), false) = (old.first(), force) {
        return Err(ArchiveError::NotEmpty {
            first: first.to_string_lossy().into_owned(),
        });
    }
    let token = format!("{}{}", std::process::id(), tugboat_api::model::now_ms());
    let scratch = root.join(format!("{SCRATCH_PREFIX}{token}"));
    std::fs::create_dir(&scratch).map_err(io_err("making", &scratch))?;
    let restored = unpack_into(&scratch, input).and_then(|(restored, root_meta)| {
        commit(root, &scratch, &token, root_meta)?;
        Ok(restored)
    });
    let restored = match restored {
        Ok(restored) => restored,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
    };
    finish_swap(root, &token)?;
    Ok(restored)
}

/// The archive's `./` entry: the volume root's owner, mode and time.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct RootMeta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
}

/// The commit point: the unpacked tree (with the root's metadata beside it) is synced to
/// disk, then renamed ready. From here on a crash rolls the restore forward.
fn commit(
    root: &Path,
    scratch: &Path,
    token: &str,
    root_meta: Option<RootMeta>,
) -> Result<(), ArchiveError> {
    if let Some(meta) = root_meta {
        let file = scratch.join(ROOT_META);
        let text = serde_json::to_vec(&meta).expect("plain numbers");
        std::fs::write(&file, text).map_err(io_err("writing", &file))?;
    }
    sync_fs(root)?;
    let ready = root.join(format!("{SCRATCH_PREFIX}{READY}{token}"));
    std::fs::rename(scratch, &ready).map_err(io_err("renaming", scratch))?;
    sync_dir(root)
}

/// Every file of the volume's file system on disk (one syncfs, not one fsync a file).
fn sync_fs(root: &Path) -> Result<(), ArchiveError> {
    let dir = std::fs::File::open(root).map_err(io_err("opening", root))?;
    nix::unistd::syncfs(&dir)
        .map_err(|e| io_err("syncing the file system of", root)(io::Error::from(e)))
}

/// The directory's entries (renames in it) on disk.
fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Swaps the committed tree of restore `token` in, from wherever a crash left it: the old
/// data moves aside into old-T (ready-T), then ready-T becomes swap-T and the new data
/// moves in, the root takes the archive's owner, mode and time, and old-T and swap-T go.
/// Each step is a rename, so running it again after a crash in the middle finishes it.
fn finish_swap(root: &Path, token: &str) -> Result<(), ArchiveError> {
    let ready = root.join(format!("{SCRATCH_PREFIX}{READY}{token}"));
    let swap = root.join(format!("{SCRATCH_PREFIX}{SWAP}{token}"));
    let aside = root.join(format!("{SCRATCH_PREFIX}{OLD}{token}"));
    if ready.exists() {
        if !aside.exists() {
            std::fs::create_dir(&aside).map_err(io_err("making", &aside))?;
        }
        // Every data entry at the root is old while ready-T exists.
        for name in data_entries(root)? {
            let from = root.join(&name);
            std::fs::rename(&from, aside.join(&name)).map_err(io_err("moving aside", &from))?;
        }
        sync_dir(root)?;
        std::fs::rename(&ready, &swap).map_err(io_err("renaming", &ready))?;
        sync_dir(root)?;
    }
    if swap.exists() {
        for name in data_entries(&swap)? {
            let from = swap.join(&name);
            std::fs::rename(&from, root.join(&name)).map_err(io_err("moving in", &from))?;
        }
        let meta = std::fs::read(swap.join(ROOT_META))
            .ok()
            .and_then(|b| serde_json::from_slice::<RootMeta>(&b).ok());
        if let Some(meta) = meta {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::os::unix::fs::chown(root, Some(meta.uid), Some(meta.gid));
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(meta.mode & 0o7777))
                .map_err(io_err("setting the mode of", root))?;
        }
        sync_dir(root)?;
        std::fs::remove_dir_all(&swap).map_err(io_err("removing", &swap))?;
        if let Some(meta) = meta {
            let t = filetime::FileTime::from_unix_time(meta.mtime as i64, 0);
            filetime::set_file_times(root, t, t).map_err(io_err("setting the times of", root))?;
        }
    }
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(io_err("removing", &aside))?;
    }
    Ok(())
}

fn unpack_into(
    scratch: &Path,
    input: impl Read,
) -> Result<(Restored, Option<RootMeta>), ArchiveError> {
    let mut archive = tar::Archive::new(Tail {
        inner: input,
        last: Vec::with_capacity(1024),
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let corrupt = |e: io::Error| ArchiveError::Corrupt {
        cause: e.to_string(),
    };
    let mut restored = Restored::default();
    let mut root_meta = None;
    // Directories get their times last: what is unpacked into them changes them.
    let mut dirs: Vec<(PathBuf, u64)> = vec![];
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let name = raw.display().to_string();
        let path = inside(&raw)?;
        let kind = entry.header().entry_type();
        let header = entry.header();
        let mtime = header.mtime().unwrap_or(0);
        match kind {
            tar::EntryType::Block | tar::EntryType::Char => {
                return Err(ArchiveError::Device { entry: name })
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Fifo => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if !link_stays_inside(&path, &target) {
                    return Err(ArchiveError::LinkEscapes {
                        entry: name,
                        target: target.display().to_string(),
                    });
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                inside(&target).map_err(|_| ArchiveError::LinkEscapes {
                    entry: name.clone(),
                    target: target.display().to_string(),
                })?;
            }
            other => {
                return Err(ArchiveError::Unsupported {
                    entry: name,
                    kind: format!("{other:?}"),
                })
            }
        }
        if path.as_os_str().is_empty() {
            // `./`: the volume root itself, applied after the swap.
            if kind == tar::EntryType::Directory {
                root_meta = Some(RootMeta {
                    uid: header.uid().map_err(corrupt)? as u32,
                    gid: header.gid().map_err(corrupt)? as u32,
                    mode: header.mode().map_err(corrupt)?,
                    mtime,
                });
            }
            continue;
        }
        let size = entry.size();
        match entry.unpack_in(scratch) {
            Ok(true) => {}
            Ok(false) => return Err(ArchiveError::Escapes { entry: name }),
            Err(e) if is_enospc(&e) => return Err(ArchiveError::NoSpace { entry: name }),
            Err(e) => {
                return Err(ArchiveError::Corrupt {
                    cause: format!("`{name}`: {}", chain(&e)),
                })
            }
        }
        if kind == tar::EntryType::Directory {
            dirs.push((scratch.join(&path), mtime));
        }
        restored.entries += 1;
        restored.bytes += size;
    }
    let tail = archive.into_inner();
    if !tail.ended_cleanly() {
        return Err(ArchiveError::Corrupt {
            cause: "it ends without tar's end-of-archive blocks".into(),
        });
    }
    for (dir, mtime) in dirs.iter().rev() {
        let t = filetime::FileTime::from_unix_time(*mtime as i64, 0);
        filetime::set_file_times(dir, t, t).map_err(io_err("setting the times of", dir))?;
    }
    Ok((restored, root_meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("sub/deeper/file"), b"hello").unwrap();
        std::fs::write(root.join("script"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.join("script"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::symlink("sub/deeper/file", root.join("link")).unwrap();
        let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_times(root.join("sub/deeper/file"), t, t).unwrap();
        filetime::set_file_times(root.join("sub"), t, t).unwrap();
    }

    fn archive_of(root: &Path) -> Vec<u8> {
        let mut out = vec![];
        pack(root, &mut out).unwrap();
        out
    }

    #[test]
    fn a_tree_comes_back_with_modes_links_and_times() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(from.path());
        let restored = unpack(to.path(), &archive_of(from.path())[..], false).unwrap();
        assert_eq!(restored.entries, 5);
        assert_eq!(
            std::fs::read(to.path().join("sub/deeper/file")).unwrap(),
            b"hello"
        );
        let mode = std::fs::metadata(to.path().join("script")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o750);
        assert_eq!(
            std::fs::read_link(to.path().join("link")).unwrap(),
            Path::new("sub/deeper/file")
        );
        for p in ["sub/deeper/file", "sub"] {
            assert_eq!(
                std::fs::metadata(to.path().join(p)).unwrap().mtime(),
                1_600_000_000,
                "{p}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(to.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with(SCRATCH_PREFIX))
            .collect();
        assert!(left.is_empty(), "scratch left: {left:?}");
    }

    #[test]
    fn a_file_that_grows_or_shrinks_while_archived_keeps_the_archive_readable() {
        // A writer that is not paused changes the file between its stat and its copy.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grows");
        std::fs::write(&file, vec![b'a'; 1000]).unwrap();
        let stat = std::fs::metadata(&file).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(&[b'b'; 700])
            .unwrap();
        let shrinks = dir.path().join("shrinks");
        std::fs::write(&shrinks, vec![b'c'; 600]).unwrap();
        let shrinks_stat = std::fs::metadata(&shrinks).unwrap();
        std::fs::write(&shrinks, b"cc").unwrap();
        std::fs::write(dir.path().join("next"), b"next").unwrap();
        let mut out = vec![];
        {
            let mut builder = tar::Builder::new(&mut out);
            let open = |p: &Path| std::fs::File::open(p).unwrap();
            append_sized(&mut builder, Path::new("grows"), &stat, open(&file)).unwrap();
            append_sized(
                &mut builder,
                Path::new("shrinks"),
                &shrinks_stat,
                open(&shrinks),
            )
            .unwrap();
            append_file(&mut builder, &dir.path().join("next"), Path::new("next")).unwrap();
            builder.finish().unwrap();
        }
        let mut archive = tar::Archive::new(&out[..]);
        let read: Vec<(String, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut data = vec![];
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect();
        let mut shrunk = b"cc".to_vec();
        shrunk.resize(600, 0);
        assert_eq!(
            read,
            [
                ("grows".to_string(), vec![b'a'; 1000]),
                ("shrinks".to_string(), shrunk),
                ("next".to_string(), b"next".to_vec())
            ]
        );
    }

    #[test]
    fn sockets_are_left_out_of_a_snapshot() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(from.path().join("data"), b"d").unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(from.path().join("sock")).unwrap();
        unpack(to.path(), &archive_of(from.path())[..], false).unwrap();
        assert!(to.path().join("data").exists());
        assert!(!to.path().join("sock").exists());
    }

    #[test]
    fn a_volume_with_data_is_refused_unless_forced_and_then_replaced() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(from.path());
        std::fs::write(to.path().join("old"), b"x").unwrap();
        let archive = archive_of(from.path());
        let e = unpack(to.path(), &archive[..], false).unwrap_err();
        assert!(
            matches!(e, ArchiveError::NotEmpty { ref first } if first == "old"),
            "{e}"
        );
        assert!(to.path().join("old").exists());
        unpack(to.path(), &archive[..], true).unwrap();
        assert!(!to.path().join("old").exists());
        assert!(to.path().join("script").exists());
    }

    /// A hand-made archive with one entry (tar's builder refuses some of these names).
    fn one_entry(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        {
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(if kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        if let Some(link) = link {
            let target = &mut header.as_old_mut().linkname;
            target[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        if kind == tar::EntryType::Regular {
            out.extend_from_slice(&[b'x'; 1]);
            out.resize(1024, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    #[test]
    fn escaping_entries_and_devices_are_refused_and_leave_nothing() {
        let to = tempfile::tempdir().unwrap();
        let cases = [
            one_entry("../evil", tar::EntryType::Regular, None),
            one_entry("/etc/evil", tar::EntryType::Regular, None),
            one_entry("a/../../evil", tar::EntryType::Regular, None),
            one_entry("link", tar::EntryType::Symlink, Some("/etc")),
            one_entry("d/link", tar::EntryType::Symlink, Some("../../etc")),
            one_entry("hard", tar::EntryType::Link, Some("../x")),
            one_entry("dev", tar::EntryType::Char, None),
            one_entry("blk", tar::EntryType::Block, None),
        ];
        for (i, archive) in cases.iter().enumerate() {
            let e = unpack(to.path(), &archive[..], false).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("outside the volume") || text.contains("device node"),
                "case {i}: {text}"
            );
            assert_eq!(std::fs::read_dir(to.path()).unwrap().count(), 0, "case {i}");
        }
        // A link that stays inside is fine.
        let ok = one_entry("d/link", tar::EntryType::Symlink, Some("../x"));
        unpack(to.path(), &ok[..], false).unwrap();
    }

    #[test]
    fn a_truncated_or_corrupt_archive_restores_nothing() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(from.path());
        std::fs::write(from.path().join("big"), vec![7u8; 100_000]).unwrap();
        let archive = archive_of(from.path());
        std::fs::write(to.path().join("keep"), b"mine").unwrap();
        for cut in [archive.len() / 2, archive.len() - 1024, 700] {
            let e = unpack(to.path(), &archive[..cut], true).unwrap_err();
            assert!(
                e.to_string().contains("corrupt or truncated"),
                "cut {cut}: {e}"
            );
            let names: Vec<_> = std::fs::read_dir(to.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["keep"], "cut {cut}");
        }
        let mut garbage = archive.clone();
        garbage[100..400].fill(0x41);
        let e = unpack(to.path(), &garbage[..], true).unwrap_err();
        assert!(e.to_string().contains("corrupt or truncated"), "{e}");
        assert_eq!(std::fs::read(to.path().join("keep")).unwrap(), b"mine");
    }

    /// The names at a volume's root, sorted.
    fn names(root: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A volume holding `old` and `older`, and a restore of an archive of `new` (a file)
    /// and `newdir/inner` committed (unpacked, synced, renamed ready) but not swapped: what
    /// a crash right after the commit leaves. Returns the token.
    fn committed(root: &Path) -> String {
        let from = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("new"), b"new data").unwrap();
        std::fs::create_dir(from.path().join("newdir")).unwrap();
        std::fs::write(from.path().join("newdir/inner"), b"inner").unwrap();
        std::fs::set_permissions(from.path(), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::fs::write(root.join("old"), b"old data").unwrap();
        std::fs::write(root.join("older"), b"older data").unwrap();
        let token = "4242".to_string();
        let scratch = root.join(format!("{SCRATCH_PREFIX}{token}"));
        std::fs::create_dir(&scratch).unwrap();
        let (_, meta) = unpack_into(&scratch, &archive_of(from.path())[..]).unwrap();
        commit(root, &scratch, &token, meta).unwrap();
        assert_eq!(
            names(root),
            [".tug-restore-ready-4242", "old", "older"],
            "the commit"
        );
        token
    }

    fn assert_restored(root: &Path) {
        assert_eq!(names(root), ["new", "newdir"]);
        assert_eq!(std::fs::read(root.join("new")).unwrap(), b"new data");
        assert_eq!(std::fs::read(root.join("newdir/inner")).unwrap(), b"inner");
        let mode = std::fs::metadata(root).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o751, "the archive's ./ mode on the root");
    }

    #[test]
    fn a_crash_while_unpacking_leaves_the_volume_as_it_was_after_recovery() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("keep"), b"mine").unwrap();
        let scratch = root.path().join(format!("{SCRATCH_PREFIX}77"));
        std::fs::create_dir_all(scratch.join("half")).unwrap();
        std::fs::write(scratch.join("half/file"), b"par").unwrap();
        let done = recover(root.path()).unwrap();
        assert_eq!(done, ["removed .tug-restore-77"]);
        assert_eq!(names(root.path()), ["keep"]);
        assert_eq!(std::fs::read(root.path().join("keep")).unwrap(), b"mine");
        // Nothing left: nothing to do.
        assert!(recover(root.path()).unwrap().is_empty());
    }

    #[test]
    fn a_crash_right_after_the_commit_is_rolled_forward() {
        let root = tempfile::tempdir().unwrap();
        committed(root.path());
        let done = recover(root.path()).unwrap();
        assert_eq!(
            done,
            ["rolled forward the restore 4242 (.tug-restore-ready-4242)"]
        );
        assert_restored(root.path());
    }

    #[test]
    fn a_crash_while_the_old_data_moves_aside_is_rolled_forward() {
        let root = tempfile::tempdir().unwrap();
        let token = committed(root.path());
        // One old entry moved aside, the other not yet.
        let aside = root.path().join(format!("{SCRATCH_PREFIX}{OLD}{token}"));
        std::fs::create_dir(&aside).unwrap();
        std::fs::rename(root.path().join("old"), aside.join("old")).unwrap();
        recover(root.path()).unwrap();
        assert_restored(root.path());
    }

    #[test]
    fn a_crash_while_the_new_data_moves_in_is_rolled_forward() {
        let root = tempfile::tempdir().unwrap();
        let token = committed(root.path());
        let aside = root.path().join(format!("{SCRATCH_PREFIX}{OLD}{token}"));
        std::fs::create_dir(&aside).unwrap();
        for name in ["old", "older"] {
            std::fs::rename(root.path().join(name), aside.join(name)).unwrap();
        }
        let ready = root.path().join(format!("{SCRATCH_PREFIX}{READY}{token}"));
        let swap = root.path().join(format!("{SCRATCH_PREFIX}{SWAP}{token}"));
        std::fs::rename(&ready, &swap).unwrap();
        // One new entry moved in, the other not yet.
        std::fs::rename(swap.join("new"), root.path().join("new")).unwrap();
        let done = recover(root.path()).unwrap();
        assert_eq!(
            done,
            ["rolled forward the restore 4242 (.tug-restore-swap-4242)"]
        );
        assert_restored(root.path());
    }

    #[test]
    fn a_crash_while_the_old_data_is_removed_is_cleaned() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("new"), b"new data").unwrap();
        let aside = root.path().join(format!("{SCRATCH_PREFIX}{OLD}99"));
        std::fs::create_dir_all(aside.join("d")).unwrap();
        std::fs::write(aside.join("d/old"), b"x").unwrap();
        recover(root.path()).unwrap();
        assert_eq!(names(root.path()), ["new"]);
    }

    #[test]
    fn a_restore_after_a_crash_finishes_the_interrupted_one_first() {
        // The next restore finds ready-T: it rolls it forward, then sees the volume holds
        // data (the interrupted restore's) and refuses without --force.
        let root = tempfile::tempdir().unwrap();
        committed(root.path());
        let from = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("other"), b"o").unwrap();
        let e = unpack(root.path(), &archive_of(from.path())[..], false).unwrap_err();
        assert!(
            matches!(e, ArchiveError::NotEmpty { ref first } if first == "new"),
            "{e}"
        );
        assert_restored(root.path());
    }

    #[test]
    fn links_inside_the_volume_are_told_from_those_that_leave() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc")));
        assert!(link_stays_inside(Path::new("a"), Path::new("./x/../y")));
    }
}
