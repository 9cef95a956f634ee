//! Unpacking tests: the tar-slip corpus (built entry by entry with the `tar` crate, writing
//! header bytes directly where the crate's own checks would refuse), whiteouts, links,
//! devices, xattrs, compression, truncation and huge headers.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::*;

#[path = "../tests/common/layout.rs"]
mod layout;
use layout::{gzip, layer_tar, sha256, zstd, Item};

/// Said straight to stderr: libtest captures `eprintln!` of passing tests.
fn skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {what}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A header whose name and link name bytes are written as given, unchecked.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &[u8],
    link: &[u8],
    data: &[u8],
) {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1);
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn tar_slip_corpus_is_refused_entry_by_entry() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    let out_abs = outside.to_str().unwrap().as_bytes().to_vec();
    let secret_abs = format!("{}/secret", outside.display()).into_bytes();
    use tar::EntryType as T;

    // (name, archive, the entry that must be named in the error)
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot file",
            tar_of(|b| raw_entry(b, T::Regular, b"../evil", b"", b"x")),
            "../evil",
        ),
        (
            "dot-dot in the middle",
            tar_of(|b| raw_entry(b, T::Regular, b"a/../../evil", b"", b"x")),
            "a/../../evil",
        ),
        (
            "dot-dot directory",
            tar_of(|b| raw_entry(b, T::Directory, b"../evildir/", b"", b"")),
            "../evildir/",
        ),
        (
            "write through an absolute symlink",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"link", &out_abs, b"");
                raw_entry(b, T::Regular, b"link/evil", b"", b"x");
            }),
            "link/evil",
        ),
        (
            "write through a relative symlink out",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"up", b"../outside", b"");
                raw_entry(b, T::Regular, b"up/evil", b"", b"x");
            }),
            "up/evil",
        ),
        (
            "symlink to / used as a path",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"root", b"/", b"");
                raw_entry(b, T::Regular, b"root/tmp/evil", b"", b"x");
            }),
            "root/tmp/evil",
        ),
        (
            "directory through a symlink",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"d", &out_abs, b"");
                raw_entry(b, T::Directory, b"d/sub/", b"", b"");
            }),
            "d/sub/",
        ),
        (
            "hard link with dot-dot",
            tar_of(|b| raw_entry(b, T::Link, b"hl", b"../outside/secret", b"")),
            "hl",
        ),
        (
            "hard link to an absolute path outside the layer",
            tar_of(|b| raw_entry(b, T::Link, b"hl", &secret_abs, b"")),
            "hl",
        ),
        (
            "hard link through a symlink",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"s", &out_abs, b"");
                raw_entry(b, T::Link, b"hl", b"s/secret", b"");
            }),
            "hl",
        ),
        (
            "whiteout with dot-dot",
            tar_of(|b| raw_entry(b, T::Regular, b"../.wh.secret", b"", b"")),
            "../.wh.secret",
        ),
        (
            "whiteout of dot-dot (would remove the layer's parent)",
            tar_of(|b| raw_entry(b, T::Regular, b".wh..", b"", b"")),
            ".wh..",
        ),
        (
            "whiteout of an empty name",
            tar_of(|b| raw_entry(b, T::Regular, b"etc/.wh.", b"", b"")),
            "etc/.wh.",
        ),
        (
            "whiteout through a symlink",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"s", &out_abs, b"");
                raw_entry(b, T::Regular, b"s/.wh.secret", b"", b"");
            }),
            "s/.wh.secret",
        ),
        (
            "opaque marker through a symlink",
            tar_of(|b| {
                raw_entry(b, T::Symlink, b"s", &out_abs, b"");
                raw_entry(b, T::Regular, b"s/.wh..wh..opq", b"", b"");
            }),
            "s/.wh..wh..opq",
        ),
        (
            "file under a regular file",
            tar_of(|b| {
                raw_entry(b, T::Regular, b"f", b"", b"x");
                raw_entry(b, T::Regular, b"f/evil", b"", b"x");
            }),
            "f/evil",
        ),
        (
            "huge GNU long name",
            tar_of(|b| {
                let big = vec![b'a'; (MAX_EXTENSION_HEADER + 1) as usize];
                raw_entry(b, T::GNULongName, b"././@LongLink", b"", &big);
                raw_entry(b, T::Regular, b"short", b"", b"x");
            }),
            "././@LongLink",
        ),
        (
            "huge PAX header",
            tar_of(|b| {
                let big = vec![b'a'; (MAX_EXTENSION_HEADER + 1) as usize];
                raw_entry(b, T::XHeader, b"PaxHeader/x", b"", &big);
                raw_entry(b, T::Regular, b"x", b"", b"x");
            }),
            "PaxHeader/x",
        ),
        (
            "PAX path with dot-dot",
            tar_of(|b| {
                let rec = b"23 path=../../pax-evil\n";
                raw_entry(b, T::XHeader, b"PaxHeader/x", b"", rec);
                raw_entry(b, T::Regular, b"harmless", b"", b"x");
            }),
            "../../pax-evil",
        ),
        (
            "GNU sparse file (its data would be written unexpanded)",
            tar_of(|b| raw_entry(b, T::GNUSparse, b"sparse", b"", b"")),
            "sparse",
        ),
        (
            "PAX sparse file",
            tar_of(|b| {
                let rec = b"22 GNU.sparse.major=1\n";
                raw_entry(b, T::XHeader, b"PaxHeader/s", b"", rec);
                raw_entry(b, T::Regular, b"s", b"", b"");
            }),
            "s",
        ),
        (
            "GNU long name with dot-dot",
            tar_of(|b| {
                raw_entry(
                    b,
                    T::GNULongName,
                    b"././@LongLink",
                    b"",
                    b"../../long-evil\0",
                );
                raw_entry(b, T::Regular, b"harmless", b"", b"x");
            }),
            "../../long-evil",
        ),
    ];
    for (what, archive, entry) in corpus {
        let target = work.path().join("target");
        fs::create_dir(&target).unwrap();
        let err = unpack_layer(&archive[..], &target, "test-layer").expect_err(what);
        match &err {
            Error::TarEntry {
                entry: e, layer, ..
            } => {
                assert_eq!(e, entry, "{what}: {err}");
                assert_eq!(layer, "test-layer");
            }
            other => panic!("{what}: wrong error {other}"),
        }
        assert_eq!(
            tree(&outside),
            vec!["secret".to_string()],
            "{what}: outside changed"
        );
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep", "{what}");
        assert!(!work.path().join("evil").exists(), "{what}");
        assert!(!work.path().join("pax-evil").exists(), "{what}");
        fs::remove_dir_all(&target).unwrap();
    }
}

#[test]
fn symlink_in_the_way_is_replaced_not_followed() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("victim");
    fs::write(&outside, b"keep").unwrap();
    let target = work.path().join("t");
    fs::create_dir(&target).unwrap();
    let archive = tar_of(|b| {
        raw_entry(
            b,
            tar::EntryType::Symlink,
            b"f",
            outside.to_str().unwrap().as_bytes(),
            b"",
        );
        raw_entry(b, tar::EntryType::Regular, b"f", b"", b"new");
    });
    unpack_layer(&archive[..], &target, "l").unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"keep");
    assert_eq!(fs::read(target.join("f")).unwrap(), b"new");
    assert!(fs::symlink_metadata(target.join("f")).unwrap().is_file());
}

#[test]
fn unpacks_files_links_and_modes_with_every_compression() {
    let tarball = layer_tar(&[
        Item::Dir("bin"),
        Item::File("bin/tool", b"#!/bin/sh\n", 0o755),
        Item::Symlink("bin/sh", "tool"),
        Item::Symlink("abs", "/etc/passwd"),
        Item::Hardlink("bin/tool2", "bin/tool"),
        Item::File("./etc/conf", b"a=1", 0o600),
    ]);
    for (name, blob) in [
        ("plain", tarball.clone()),
        ("gzip", gzip(&tarball)),
        ("zstd", zstd(&tarball)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_layer(&blob[..], dir.path(), name).unwrap();
        assert_eq!(r.diff_id.to_string(), sha256(&tarball), "{name}");
        assert_eq!(r.entries, 6);
        let tool = dir.path().join("bin/tool");
        assert_eq!(fs::read(&tool).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::metadata(&tool).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::metadata(dir.path().join("etc/conf")).unwrap().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::read_link(dir.path().join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::metadata(dir.path().join("bin/tool2")).unwrap().ino(),
            fs::metadata(&tool).unwrap().ino()
        );
        assert_eq!(fs::metadata(&tool).unwrap().mtime(), 1_700_000_000);
    }
}

#[test]
fn truncated_tarballs_are_errors() {
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let tarball = layer_tar(&[Item::File("big", &big, 0o644)]);
    for (name, blob) in [
        ("plain", tarball.clone()),
        ("gzip", gzip(&tarball)),
        ("zstd", zstd(&tarball)),
    ] {
        let cut = &blob[..blob.len() / 2];
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(cut, dir.path(), name).expect_err(name);
        assert!(matches!(err, Error::TarStream { .. }), "{name}: {err}");
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !is_root() {
        skip("whiteouts_become_overlay_whiteouts: needs root (mknod 0:0, trusted xattrs)");
        return;
    }
    let tarball = layer_tar(&[
        Item::Dir("etc"),
        Item::File("etc/.wh.removed", b"", 0o644),
        Item::Dir("var/cache"),
        Item::File("var/cache/.wh..wh..opq", b"", 0o644),
        Item::File("var/cache/new", b"n", 0o644),
        Item::File(".wh..wh.plnk", b"", 0o644),
    ]);
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&tarball[..], dir.path(), "l").unwrap();
    let w = fs::symlink_metadata(dir.path().join("etc/removed")).unwrap();
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert!(!dir.path().join("etc/.wh.removed").exists());
    assert_eq!(
        get_xattr(&dir.path().join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
    assert!(dir.path().join("var/cache/new").exists());
    assert!(!dir.path().join(".wh..wh.plnk").exists());
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid strings and buffer.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

#[test]
fn devices_owners_and_xattrs() {
    if !is_root() {
        skip("devices_owners_and_xattrs: needs root (mknod, chown, trusted xattrs)");
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_mode(0o666);
    h.set_size(0);
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_mode(0o600);
    h.set_size(0);
    b.append_data(&mut h, "run/fifo", &[][..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.trusted.tugtest", &b"v1"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_size(2);
    b.append_data(&mut h, "bin/suid", &b"hi"[..]).unwrap();
    let tarball = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&tarball[..], dir.path(), "l").unwrap();
    let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(fs::symlink_metadata(dir.path().join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let suid = fs::metadata(dir.path().join("bin/suid")).unwrap();
    assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!(
        get_xattr(&dir.path().join("bin/suid"), "trusted.tugtest").as_deref(),
        Some(&b"v1"[..])
    );
}
