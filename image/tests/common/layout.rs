//! Builds OCI image layouts for tests, with the same crates the store uses. Shared by the
//! unit tests (through `#[path]`) and the integration tests.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One entry of a test layer.
pub enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// An uncompressed layer tarball of `items`.
pub fn layer_tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match item {
            Item::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Item::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Write a blob into the layout at `dir`, returning (digest, size).
pub fn write_blob(dir: &Path, data: &[u8]) -> (String, u64) {
    let d = sha256(data);
    let p = dir.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(&d["sha256:".len()..]), data).unwrap();
    (d, data.len() as u64)
}

/// How a test image is made.
pub struct ImageSpec<'a> {
    /// Uncompressed layer tarballs, lowest first.
    pub layers: Vec<Vec<u8>>,
    /// "gzip", "zstd" or "none".
    pub compression: &'a str,
    /// org.opencontainers.image.ref.name
    pub ref_name: &'a str,
    pub cmd: Vec<&'a str>,
    pub env: Vec<&'a str>,
    /// Replace the diff ids in the config (to test mismatches).
    pub diff_ids: Option<Vec<String>>,
}

impl Default for ImageSpec<'_> {
    fn default() -> Self {
        ImageSpec {
            layers: Vec::new(),
            compression: "gzip",
            ref_name: "latest",
            cmd: vec!["/bin/sh"],
            env: vec!["PATH=/bin"],
            diff_ids: None,
        }
    }
}

/// Write an OCI layout with one image at `dir` (adding to an existing index.json).
/// Returns the manifest digest.
pub fn write_layout(dir: &Path, spec: &ImageSpec<'_>) -> String {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in &spec.layers {
        diff_ids.push(sha256(l));
        let (blob, mt) = match spec.compression {
            "gzip" => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
            "zstd" => (zstd(l), "application/vnd.oci.image.layer.v1.tar+zstd"),
            _ => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        let (d, size) = write_blob(dir, &blob);
        layer_descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": tug_arch(),
        "os": "linux",
        "config": {
            "Cmd": spec.cmd,
            "Env": spec.env,
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"test": "yes"},
        },
        "rootfs": {"type": "layers", "diff_ids": spec.diff_ids.clone().unwrap_or(diff_ids)},
    });
    let (cd, cs) = write_blob(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = write_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = fs::read(&index_path)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": spec.ref_name},
        }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

pub fn tug_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI layout whose `tag` names an image index with two platforms: this host's arch
/// and `other`. Each image has one layer holding a file `platform` with its arch.
/// Returns the host image's manifest digest.
pub fn write_platform_index(dir: &Path, tag: &str) -> String {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut entries = Vec::new();
    let mut host_digest = String::new();
    for arch in [tug_arch(), "other"] {
        let tar = layer_tar(&[Item::File("platform", arch.as_bytes(), 0o644)]);
        let (ld, ls) = write_blob(dir, &gzip(&tar));
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        });
        let (cd, cs) = write_blob(dir, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}],
        });
        let (md, ms) = write_blob(dir, &serde_json::to_vec(&manifest).unwrap());
        if arch == tug_arch() {
            host_digest = md.clone();
        }
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let (idx, isz) = write_blob(dir, &serde_json::to_vec(&index).unwrap());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": idx, "size": isz,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    host_digest
}
