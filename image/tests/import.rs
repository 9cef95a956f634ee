//! Import of each archive kind, made by skopeo from a layout built here: oci-archive,
//! docker-archive, and a gzip-compressed docker-archive; broken archives leave nothing.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::layout::gzip;
use common::tools::{busybox_layout, run, tool};
use tug_image::{Error, ImageStore, ImportOptions};

fn skopeo_copy(from: String, to: String) {
    run(Command::new(tool("skopeo"))
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(from)
        .arg(to));
}

fn dir_entries(p: &Path) -> usize {
    fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn import_each_archive_kind() {
    let work = tempfile::Builder::new().prefix("tugimg").tempdir().unwrap();
    let layout = work.path().join("layout");
    let manifest = busybox_layout(&layout);
    let oci_archive = work.path().join("bb-oci.tar");
    let docker_archive = work.path().join("bb-docker.tar");
    skopeo_copy(
        format!("oci:{}:latest", layout.display()),
        format!("oci-archive:{}:localhost/bb:oci", oci_archive.display()),
    );
    skopeo_copy(
        format!("oci:{}:latest", layout.display()),
        format!(
            "docker-archive:{}:localhost/bb:docker",
            docker_archive.display()
        ),
    );
    let docker_gz = work.path().join("bb-docker.tar.gz");
    fs::write(&docker_gz, gzip(&fs::read(&docker_archive).unwrap())).unwrap();

    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap();

    let from_oci = store.import(&oci_archive).unwrap();
    assert_eq!(from_oci.len(), 1);
    assert_eq!(from_oci[0].reference, "localhost/bb:oci");
    assert_eq!(from_oci[0].digest, manifest);
    assert!(from_oci[0].layers[0].join("bin/busybox").is_file());

    let from_docker = store.import(&docker_archive).unwrap();
    assert_eq!(from_docker.len(), 1);
    assert_eq!(from_docker[0].reference, "localhost/bb:docker");
    // Same layers (by diff id), shared with the OCI import.
    assert_eq!(from_docker[0].layers, from_oci[0].layers);
    assert_eq!(from_docker[0].config.cmd, vec!["/bin/busybox", "true"]);

    let from_gz = store
        .import_with(
            &docker_gz,
            &ImportOptions {
                name: Some("localhost/bb:gz".into()),
                ..ImportOptions::default()
            },
        )
        .unwrap();
    assert_eq!(from_gz[0].reference, "localhost/bb:gz");
    assert_eq!(from_gz[0].digest, from_docker[0].digest);

    let from_dir = store.import(&layout).unwrap();
    assert_eq!(from_dir[0].reference, "localhost/layout:latest");

    let names: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(
        names,
        vec![
            "localhost/bb:docker",
            "localhost/bb:gz",
            "localhost/bb:oci",
            "localhost/layout:latest"
        ]
    );
    assert_eq!(dir_entries(&data.join("images/layers/sha256")), 2);
    assert_eq!(dir_entries(&data.join("images/tmp")), 0);
}

#[test]
fn broken_archives_leave_nothing() {
    let work = tempfile::Builder::new().prefix("tugimg").tempdir().unwrap();
    let layout = work.path().join("layout");
    busybox_layout(&layout);
    let archive = work.path().join("bb.tar");
    skopeo_copy(
        format!("oci:{}:latest", layout.display()),
        format!("oci-archive:{}:localhost/bb:1", archive.display()),
    );
    let bytes = fs::read(&archive).unwrap();
    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap();

    // Cut in the middle: a stream error, no image, no temp files.
    let cut = work.path().join("cut.tar");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = store.import(&cut).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TarStream { .. } | Error::SizeMismatch { .. } | Error::InvalidDocument { .. }
        ),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(dir_entries(&data.join("images/tmp")), 0);
    assert_eq!(dir_entries(&data.join("images/layers/sha256")), 0);

    // A blob whose bytes do not match its name: refused, not stored.
    // Flip a byte in the middle of the largest blob (the busybox layer).
    let mut tampered = bytes.clone();
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut biggest = (0u64, 0u64);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.size() > biggest.1 {
            biggest = (e.raw_file_position(), e.size());
        }
    }
    let mid = (biggest.0 + biggest.1 / 2) as usize;
    tampered[mid] ^= 0x55;
    let bad = work.path().join("tampered.tar");
    fs::write(&bad, &tampered).unwrap();
    let err = store.import(&bad).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(dir_entries(&data.join("images/tmp")), 0);

    // Not an archive of images at all.
    let junk = work.path().join("junk.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "hello.txt", &b"hi"[..]).unwrap();
    fs::write(&junk, b.into_inner().unwrap()).unwrap();
    let err = store.import(&junk).unwrap_err();
    assert!(matches!(err, Error::InvalidDocument { .. }), "{err}");
    assert!(err.to_string().contains("junk.tar"), "{err}");
}

/// The layout old `docker save` writes: `<id>/layer.tar` per layer, a repeated layer as a
/// symlink to the first copy, `<config>.json`, `manifest.json` and `repositories`.
#[test]
fn legacy_docker_save_with_a_linked_layer() {
    use common::layout::{layer_tar, sha256, Item};
    let layer = layer_tar(&[Item::File("hello", b"hi", 0o644)]);
    let d = sha256(&layer);
    let config = serde_json::json!({
        "architecture": common::layout::tug_arch(), "os": "linux",
        "config": {"Entrypoint": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [d, d]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::json!([{
        "Config": "cfg.json",
        "RepoTags": ["legacy/app:7"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("aaa/VERSION", b"1.0");
    add("aaa/layer.tar", &layer);
    add("cfg.json", &config);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", br#"{"legacy/app":{"7":"aaa"}}"#);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
        .unwrap();
    let archive = b.into_inner().unwrap();

    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("saved.tar");
    fs::write(&path, archive).unwrap();
    let store = ImageStore::open(&work.path().join("data")).unwrap();
    let imgs = store.import(&path).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].reference, "docker.io/legacy/app:7");
    assert_eq!(imgs[0].layers.len(), 2);
    assert_eq!(imgs[0].layers[0], imgs[0].layers[1]);
    assert_eq!(imgs[0].config.entrypoint, vec!["/hello"]);
    assert_eq!(fs::read(imgs[0].layers[0].join("hello")).unwrap(), b"hi");
    assert_eq!(store.resolve("legacy/app:7").unwrap(), imgs[0]);

    if !nix::unistd::geteuid().is_root() {
        common::tools::skip("legacy_docker_save_with_a_linked_layer (mount part): needs root");
        return;
    }
    // The repeated layer is one lower dir of the overlay.
    let rootfs = store.prepare_rootfs(&imgs[0], "legacy").unwrap();
    let hello = fs::read(rootfs.path.join("hello"));
    store.remove_rootfs("legacy").unwrap();
    assert_eq!(hello.unwrap(), b"hi");
}
