//! Import from files: an OCI image layout directory, an oci-archive (a tar of a layout) and
//! a docker-archive (`docker save`, `skopeo copy ... docker-archive:`), each optionally
//! gzip- or zstd-compressed. Archives are read once, front to back: every blob goes
//! straight into the content store (verified against its name where the name is a digest),
//! and the small index files are kept in memory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::content::MAX_DOCUMENT;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Descriptor, Document, Index, Manifest, Platform};
use crate::reference::Reference;
use crate::store::{Image, ImageStore};
use crate::unpack::{self, clean_entry_path, Compression, MAX_EXTENSION_HEADER};

/// Choices for an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Platform to choose from image indexes; default: this host's.
    pub platform: Option<Platform>,
    /// Reference to give the image when the file names none (or to override its name).
    pub name: Option<String>,
}

/// Where the blobs of an import come from.
enum Source<'a> {
    /// An OCI layout directory: copy (and verify) blobs from `blobs/<alg>/<hex>`.
    Layout(&'a Path),
    /// An archive already streamed into the content store.
    Stored,
}

impl ImageStore {
    /// Import every image in an OCI layout dir, an oci-archive or a docker-archive.
    pub fn import(&self, path: &Path) -> Result<Vec<Image>> {
        self.import_with(path, &ImportOptions::default())
    }

    /// [`ImageStore::import`] with a platform and a name.
    pub fn import_with(&self, path: &Path, opts: &ImportOptions) -> Result<Vec<Image>> {
        let _g = self.shared_lock()?;
        let meta = fs::metadata(path).at(path)?;
        if meta.is_dir() {
            let index_path = path.join("index.json");
            let data = read_small(&index_path)?;
            let index = parse_index(&index_path, &data)?;
            return self.import_index(&Source::Layout(path), &index, path, opts);
        }
        self.import_archive(path, opts)
    }

    fn fetch(&self, source: &Source<'_>, desc: &Descriptor) -> Result<()> {
        match source {
            Source::Layout(dir) => {
                if self.content.has(&desc.digest) {
                    return Ok(());
                }
                let p = dir
                    .join("blobs")
                    .join(desc.digest.algorithm().as_str())
                    .join(desc.digest.hex());
                let f = File::open(&p).map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Error::BlobMissing {
                            digest: desc.digest.to_string(),
                        }
                    } else {
                        Error::io(&p, e)
                    }
                })?;
                self.content.put_verified(&desc.digest, Some(desc.size), f)
            }
            Source::Stored => {
                if self.content.has(&desc.digest) {
                    Ok(())
                } else {
                    Err(Error::BlobMissing {
                        digest: desc.digest.to_string(),
                    })
                }
            }
        }
    }

    fn import_index(
        &self,
        source: &Source<'_>,
        index: &Index,
        path: &Path,
        opts: &ImportOptions,
    ) -> Result<Vec<Image>> {
        let want = opts.platform.clone().unwrap_or_else(Platform::host);
        let mut images = Vec::new();
        // Entries with a platform that does not match are skipped; an index with only
        // non-matching platforms is an error.
        let any_platform = index.manifests.iter().any(|d| d.platform.is_some());
        let mut entries: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_none_or(|p| want.matches(p)))
            .collect();
        if entries.is_empty() && any_platform {
            oci::choose_platform(&path.display().to_string(), index, &want)?;
        }
        if entries.len() > 1 && opts.name.is_some() {
            entries.truncate(1);
        }
        for desc in entries {
            let name = match &opts.name {
                Some(n) => Some(Reference::parse(n)?),
                None => name_from_annotations(desc, path),
            };
            self.fetch(source, desc)?;
            let data = self.content.read_document(&desc.digest)?;
            let (manifest_digest, index_digest) =
                match oci::parse_document(&desc.digest.to_string(), &data)? {
                    Document::Manifest(_) => (desc.digest.clone(), None),
                    Document::Index(inner) => {
                        let chosen = oci::choose_platform(
                            &name
                                .as_ref()
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| desc.digest.to_string()),
                            &inner,
                            &want,
                        )?;
                        self.fetch(source, chosen)?;
                        (chosen.digest.clone(), Some(desc.digest.clone()))
                    }
                };
            let m = self.content.read_document(&manifest_digest)?;
            let Document::Manifest(manifest) =
                oci::parse_document(&manifest_digest.to_string(), &m)?
            else {
                return Err(Error::InvalidDocument {
                    what: "manifest",
                    name: manifest_digest.to_string(),
                    reason: "an index inside an index inside an index".into(),
                });
            };
            self.fetch(source, &manifest.config)?;
            let config = self.content.read_document(&manifest.config.digest)?;
            let diff_ids: Vec<Digest> = serde_json::from_slice::<oci::ImageConfiguration>(&config)
                .map(|c| c.rootfs.diff_ids)
                .unwrap_or_default();
            for (i, l) in manifest.layers.iter().enumerate() {
                // A layer already unpacked needs no blob: nothing is copied twice.
                if diff_ids.get(i).is_some_and(|d| self.layer_path(d).is_dir()) {
                    continue;
                }
                self.fetch(source, l)?;
            }
            images.push(self.commit_image(
                name.as_ref(),
                &manifest_digest,
                index_digest.as_ref(),
            )?);
        }
        Ok(images)
    }

    fn import_archive(&self, path: &Path, opts: &ImportOptions) -> Result<Vec<Image>> {
        let file = File::open(path).at(path)?;
        let name = format!("archive {}", path.display());
        let stream_err = |source: io::Error| Error::TarStream {
            layer: name.clone(),
            source,
        };
        let plain = unpack::decompress(file).map_err(stream_err)?;
        let mut archive = tar::Archive::new(plain);
        let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
        // Files that are not named by digest (docker-archive): name -> (digest, size).
        let mut files: HashMap<PathBuf, (Digest, u64)> = HashMap::new();
        let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        for entry in archive.entries().map_err(stream_err)?.raw(true) {
            let mut entry = entry.map_err(stream_err)?;
            let kind = entry.header().entry_type();
            let size = entry.header().entry_size().map_err(stream_err)?;
            let refuse = |p: &[u8], reason: String| Error::TarEntry {
                layer: name.clone(),
                entry: String::from_utf8_lossy(p).into_owned(),
                reason,
            };
            match kind {
                tar::EntryType::GNULongName | tar::EntryType::XHeader => {
                    if size > MAX_EXTENSION_HEADER {
                        return Err(refuse(
                            &entry.path_bytes(),
                            format!("extension header of {size} bytes is too large"),
                        ));
                    }
                    let mut data = Vec::new();
                    (&mut entry)
                        .take(size)
                        .read_to_end(&mut data)
                        .map_err(stream_err)?;
                    if kind == tar::EntryType::GNULongName {
                        while data.last() == Some(&0) {
                            data.pop();
                        }
                        long_name = Some(data);
                    } else {
                        pax_path = tar::PaxExtensions::new(&data)
                            .filter_map(|e| e.ok())
                            .find(|e| e.key_bytes() == b"path")
                            .map(|e| e.value_bytes().to_vec());
                    }
                    continue;
                }
                tar::EntryType::GNULongLink | tar::EntryType::XGlobalHeader => {
                    if size > MAX_EXTENSION_HEADER {
                        return Err(refuse(
                            &entry.path_bytes(),
                            "extension header too large".into(),
                        ));
                    }
                    io::copy(&mut entry, &mut io::sink()).map_err(stream_err)?;
                    continue;
                }
                _ => {}
            }
            let raw = pax_path
                .take()
                .or(long_name.take())
                .unwrap_or_else(|| entry.path_bytes().into_owned());
            let rel = clean_entry_path(&raw).map_err(|r| refuse(&raw, r))?;
            if kind == tar::EntryType::Symlink {
                // docker save links repeated layers: `a/layer.tar -> ../b/layer.tar`.
                if let Some(t) = entry.link_name_bytes() {
                    let base = rel.parent().unwrap_or(Path::new(""));
                    if let Some(target) = join_inside(base, &t) {
                        links.insert(rel, target);
                    }
                }
                continue;
            }
            if !kind.is_file() && kind != tar::EntryType::Continuous {
                continue;
            }
            let rel_s = rel.to_string_lossy().into_owned();
            match rel_s.as_str() {
                "index.json" | "manifest.json" | "oci-layout" | "repositories" => {
                    if size > MAX_DOCUMENT {
                        return Err(refuse(&raw, format!("larger than {MAX_DOCUMENT} bytes")));
                    }
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(stream_err)?;
                    docs.insert(rel_s, data);
                    continue;
                }
                _ => {}
            }
            let blob_digest = rel_s
                .strip_prefix("blobs/")
                .and_then(|r| r.split_once('/'))
                .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok());
            match blob_digest {
                Some(d) => {
                    self.content.put_verified(&d, Some(size), &mut entry)?;
                    io::copy(&mut entry, &mut io::sink()).map_err(stream_err)?;
                    files.insert(rel, (d, size));
                }
                None => {
                    let mut w = self.content.writer_unverified()?;
                    io::copy(&mut entry, &mut w).map_err(stream_err)?;
                    let (d, n) = w.commit()?;
                    files.insert(rel, (d, n));
                }
            }
        }

        if let Some(data) = docs.get("index.json") {
            let index = parse_index(path, data)?;
            return self.import_index(&Source::Stored, &index, path, opts);
        }
        let Some(data) = docs.get("manifest.json") else {
            return Err(Error::InvalidDocument {
                what: "archive",
                name: path.display().to_string(),
                reason: "neither index.json (oci-archive) nor manifest.json (docker-archive) found"
                    .into(),
            });
        };
        self.import_docker(path, data, &files, &links, opts)
    }

    fn import_docker(
        &self,
        path: &Path,
        data: &[u8],
        files: &HashMap<PathBuf, (Digest, u64)>,
        links: &HashMap<PathBuf, PathBuf>,
        opts: &ImportOptions,
    ) -> Result<Vec<Image>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let invalid = |reason: String| Error::InvalidDocument {
            what: "docker-archive manifest.json in",
            name: path.display().to_string(),
            reason,
        };
        let entries: Vec<Entry> =
            serde_json::from_slice(data).map_err(|e| invalid(e.to_string()))?;
        let find = |name: &str| -> Result<(Digest, u64)> {
            let mut p = clean_entry_path(name.as_bytes()).map_err(&invalid)?;
            for _ in 0..8 {
                match links.get(&p) {
                    Some(t) => p = t.clone(),
                    None => break,
                }
            }
            files
                .get(&p)
                .cloned()
                .ok_or_else(|| invalid(format!("{name:?} is not in the archive")))
        };
        let mut images = Vec::new();
        for e in entries {
            let (config_digest, config_size) = find(&e.config)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let (d, size) = find(l)?;
                let mut head = [0u8; 8];
                let n = self.content.open_blob(&d)?.read(&mut head).unwrap_or(0);
                let media_type = match Compression::detect(&head[..n]) {
                    Compression::None => oci::MT_OCI_LAYER,
                    Compression::Gzip => oci::MT_OCI_LAYER_GZIP,
                    Compression::Zstd => oci::MT_OCI_LAYER_ZSTD,
                };
                layers.push(Descriptor {
                    media_type: media_type.to_string(),
                    digest: d,
                    size,
                    platform: None,
                    annotations: Default::default(),
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(oci::MT_OCI_MANIFEST.to_string()),
                config: Descriptor {
                    media_type: oci::MT_OCI_CONFIG.to_string(),
                    digest: config_digest,
                    size: config_size,
                    platform: None,
                    annotations: Default::default(),
                },
                layers,
            };
            let manifest_digest = self
                .content
                .put_bytes(&serde_json::to_vec(&manifest).expect("manifest serialises"))?;
            let names: Vec<Option<Reference>> = match (&opts.name, &e.repo_tags) {
                (Some(n), _) => vec![Some(Reference::parse(n)?)],
                (None, Some(tags)) if !tags.is_empty() => tags
                    .iter()
                    .map(|t| Reference::parse(t).map(Some))
                    .collect::<Result<_>>()?,
                _ => vec![None],
            };
            for n in names {
                images.push(self.commit_image(n.as_ref(), &manifest_digest, None)?);
            }
        }
        Ok(images)
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)
        .at(path)?
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut data)
        .at(path)?;
    if data.len() as u64 > MAX_DOCUMENT {
        return Err(Error::InvalidDocument {
            what: "file",
            name: path.display().to_string(),
            reason: format!("larger than {MAX_DOCUMENT} bytes"),
        });
    }
    Ok(data)
}

fn parse_index(path: &Path, data: &[u8]) -> Result<Index> {
    serde_json::from_slice(data).map_err(|e| Error::InvalidDocument {
        what: "OCI layout index.json in",
        name: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// `base/link`, cleaned, if it stays inside the archive.
fn join_inside(base: &Path, link: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut out: Vec<&std::ffi::OsStr> = base.iter().collect();
    for comp in Path::new(std::ffi::OsStr::from_bytes(link)).components() {
        match comp {
            std::path::Component::Normal(c) => out.push(c),
            std::path::Component::ParentDir => {
                out.pop()?;
            }
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out.iter().collect())
}

/// The name an index entry gives its image: a full reference in
/// `io.containerd.image.name` or `org.opencontainers.image.ref.name`, or a bare tag in the
/// latter, which is then put on a name made from the file or directory name.
fn name_from_annotations(desc: &Descriptor, path: &Path) -> Option<Reference> {
    if let Some(n) = desc.annotations.get(oci::ANNOTATION_CONTAINERD_NAME) {
        if let Ok(r) = Reference::parse(n) {
            return Some(r);
        }
    }
    let n = desc.annotations.get(oci::ANNOTATION_REF_NAME)?;
    if n.contains('/') || n.contains(':') {
        return Reference::parse(n).ok();
    }
    let stem = path.file_stem()?.to_string_lossy().to_lowercase();
    let stem = stem
        .trim_end_matches(".tar")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>();
    let stem = stem.trim_matches('-');
    Reference::parse(&format!("localhost/{stem}:{n}")).ok()
}
