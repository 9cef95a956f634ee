//! The built image: its config and manifest, into the image store (by importing an OCI
//! layout of it, the store's own verified path) and optionally into an OCI layout
//! directory or an oci-archive (`--output`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tug_image::{Digest, ImageStore};

use crate::builder::Stage;
use crate::error::{BuildError, IoContext};
use crate::layer::BuildDirs;

/// The manifest of a built stage, with its documents stored as blobs of ours.
pub struct Built {
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
}

/// Write the image config and manifest of `stage`.
pub fn documents(stage: &Stage, dirs: &BuildDirs) -> Result<Built, BuildError> {
    let mut config = match &stage.base_config {
        Value::Object(o) => o.clone(),
        _ => Default::default(),
    };
    let mut run = match config.get("config") {
        Some(Value::Object(o)) => o.clone(),
        _ => Default::default(),
    };
    stage.defaults.write_into(&mut run);
    config.insert("config".into(), Value::Object(run));
    let diff_ids: Vec<String> = stage.layers.iter().map(|l| l.diff_id.to_string()).collect();
    config.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    config.insert("history".into(), json!(stage.history));
    match &stage.created {
        Some(c) => config.insert("created".into(), json!(c)),
        None => config.remove("created"),
    };
    let host = tug_image::Platform::host();
    config
        .entry("architecture")
        .or_insert_with(|| json!(host.architecture));
    config.entry("os").or_insert_with(|| json!(host.os));
    let config_bytes = serde_json::to_vec(&Value::Object(config)).expect("json");
    let config_digest = dirs.put_blob(&config_bytes)?;
    let layers: Vec<Value> = stage
        .layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.blob.to_string(), "size": l.size}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": tug_image::oci::MT_OCI_MANIFEST,
        "config": {
            "mediaType": tug_image::oci::MT_OCI_CONFIG,
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
    let manifest_digest = dirs.put_blob(&manifest_bytes)?;
    Ok(Built {
        manifest: manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config: config_digest,
    })
}

fn index(built: &Built, name: Option<&str>) -> Value {
    let mut desc = json!({
        "mediaType": tug_image::oci::MT_OCI_MANIFEST,
        "digest": built.manifest.to_string(),
        "size": built.manifest_size,
    });
    if let Some(n) = name {
        desc["annotations"] = json!({ tug_image::oci::ANNOTATION_REF_NAME: n });
    }
    json!({"schemaVersion": 2, "manifests": [desc]})
}

/// Where each blob of the image is: ours, or the store's (base image layers).
fn blob_sources(
    stage: &Stage,
    built: &Built,
    dirs: &BuildDirs,
    store: &ImageStore,
) -> Vec<(Digest, PathBuf)> {
    let mut out = vec![
        (built.manifest.clone(), dirs.blob_path(&built.manifest)),
        (built.config.clone(), dirs.blob_path(&built.config)),
    ];
    for l in &stage.layers {
        let ours = dirs.blob_path(&l.blob);
        let path = if ours.is_file() {
            ours
        } else {
            store.content().path(&l.blob)
        };
        out.push((l.blob.clone(), path));
    }
    out
}

/// Record the image in the store under each tag (or by digest alone).
pub fn to_store(
    stage: &Stage,
    built: &Built,
    dirs: &BuildDirs,
    store: &ImageStore,
    tags: &[String],
) -> Result<Vec<String>, BuildError> {
    let layout = dirs.scratch_dir("layout")?;
    let blobs = layout.0.join("blobs/sha256");
    fs::create_dir_all(&blobs).at(&blobs)?;
    for (d, src) in blob_sources(stage, built, dirs, store) {
        // Base layers the store already has need no copy: import skips them.
        if src.starts_with(&dirs.root) {
            let dst = blobs.join(d.hex());
            if !dst.exists() {
                fs::hard_link(&src, &dst)
                    .or_else(|_| fs::copy(&src, &dst).map(|_| ()))
                    .at(&dst)?;
            }
        }
    }
    let layout_file = layout.0.join("oci-layout");
    fs::write(&layout_file, r#"{"imageLayoutVersion":"1.0.0"}"#).at(&layout_file)?;
    let index_file = layout.0.join("index.json");
    fs::write(
        &index_file,
        serde_json::to_vec(&index(built, None)).expect("json"),
    )
    .at(&index_file)?;
    let mut names = Vec::new();
    if tags.is_empty() {
        for img in store.import(&layout.0)? {
            names.push(img.reference);
        }
    }
    for t in tags {
        let opts = tug_image::ImportOptions {
            name: Some(t.clone()),
            ..Default::default()
        };
        for img in store.import_with(&layout.0, &opts)? {
            names.push(img.reference);
        }
    }
    Ok(names)
}

/// Write the image as an OCI layout directory, or an oci-archive when `path` ends in `.tar`.
pub fn to_oci(
    stage: &Stage,
    built: &Built,
    dirs: &BuildDirs,
    store: &ImageStore,
    name: Option<&str>,
    path: &Path,
) -> Result<(), BuildError> {
    let blobs = blob_sources(stage, built, dirs, store);
    let index = serde_json::to_vec(&index(built, name)).expect("json");
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let archive = path.extension().is_some_and(|e| e == "tar");
    if archive {
        let tmp = path.with_extension("tar.partial");
        let result = (|| -> Result<(), BuildError> {
            let f = fs::File::create(&tmp).at(&tmp)?;
            let mut t = tar::Builder::new(f);
            let mut add = |name: &str, data: &mut dyn std::io::Read, size: u64| {
                let mut h = tar::Header::new_gnu();
                h.set_size(size);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                t.append_data(&mut h, name, data).at(&tmp)
            };
            add("oci-layout", &mut &layout[..], layout.len() as u64)?;
            add("index.json", &mut &index[..], index.len() as u64)?;
            for (d, src) in &blobs {
                let mut f = fs::File::open(src).at(src)?;
                let size = f.metadata().at(src)?.len();
                add(&format!("blobs/sha256/{}", d.hex()), &mut f, size)?;
            }
            t.into_inner().at(&tmp)?.sync_all().at(&tmp)?;
            fs::rename(&tmp, path).at(path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        return result;
    }
    let b = path.join("blobs/sha256");
    fs::create_dir_all(&b).at(&b)?;
    for (d, src) in &blobs {
        let dst = b.join(d.hex());
        if !dst.exists() {
            fs::copy(src, &dst).at(&dst)?;
        }
    }
    fs::write(path.join("oci-layout"), layout).at(path)?;
    fs::write(path.join("index.json"), index).at(path)?;
    Ok(())
}
