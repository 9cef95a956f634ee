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
