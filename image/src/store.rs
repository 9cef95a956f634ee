//! The image store: named references over the content store, shared unpacked layers,
//! garbage collection, and the per-instance overlay rootfs (in `rootfs.rs`).
//!
//! Layout under `<data_dir>/images`:
//! ```text
//! blobs/<alg>/<hex>   verified blobs (manifests, configs, layer tarballs)
//! layers/<alg>/<hex>  one unpacked layer per diff id, shared by every image that has it
//! refs.json           reference -> manifest digest
//! lock                shared by writers (pull, import, prepare_rootfs), exclusive for GC
//! refs.lock           exclusive while refs.json is rewritten
//! locks/              per-digest locks: one writer per blob or layer at a time
//! tmp/                temp files and dirs; whatever is here is incomplete
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::content::{temp_path, ContentStore};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::lock::{self, LockGuard};
use crate::oci::{self, Document, ImageConfiguration, Manifest};
use crate::reference::Reference;
use crate::rootfs::{Mounter, NixMounter};
use crate::unpack;

/// The run defaults an image gives; a service spec may override each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `PORT/PROTO`, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    fn from_configuration(c: &ImageConfiguration) -> ImageConfig {
        let rc = c.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: rc.entrypoint.unwrap_or_default(),
            cmd: rc.cmd.unwrap_or_default(),
            env: rc.env.unwrap_or_default(),
            working_dir: non_empty(rc.working_dir),
            user: non_empty(rc.user),
            exposed_ports: rc.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: rc.labels.unwrap_or_default(),
        }
    }
}

/// An image in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The normalised reference (`docker.io/library/busybox:latest`), or the manifest
    /// digest for an image imported without a name.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

/// An instance's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The merged overlay directory: the bundle's `root.path`.
    pub path: PathBuf,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// References removed.
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    /// Bytes of blobs removed (unpacked layers not counted).
    pub blob_bytes: u64,
}

/// Everything `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDetails {
    pub reference: String,
    pub digest: String,
    pub config_digest: String,
    pub os: String,
    pub architecture: String,
    pub created: Option<String>,
    pub config: ImageConfig,
    pub layers: Vec<LayerDetails>,
    pub stored_at: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerDetails {
    pub blob: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    pub digest: Digest,
    /// The index the manifest was chosen from, kept with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    #[serde(default)]
    pub stored_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Refs {
    pub images: BTreeMap<String, RefRecord>,
}

/// The image store of one host.
pub struct ImageStore {
    pub(crate) data_dir: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) content: ContentStore,
    pub(crate) mounter: Box<dyn Mounter + Send + Sync>,
    pub(crate) keep_layer_blobs: bool,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

/// A manifest with its config, read from the content store.
pub(crate) struct Loaded {
    pub manifest: Manifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
}

impl ImageStore {
    /// Open (creating) the store under `data_dir/images`.
    pub fn open(data_dir: &Path) -> Result<ImageStore> {
        Self::open_with_mounter(data_dir, Box::new(NixMounter))
    }

    /// Open with another [`Mounter`] (a recording fake in tests).
    pub fn open_with_mounter(
        data_dir: &Path,
        mounter: Box<dyn Mounter + Send + Sync>,
    ) -> Result<ImageStore> {
        // Absolute and without symlinks: mount points are compared with mountinfo's.
        fs::create_dir_all(data_dir).at(data_dir)?;
        let data_dir = &fs::canonicalize(data_dir).at(data_dir)?;
        let root = data_dir.join("images");
        let content = ContentStore::open(&root)?;
        for d in ["layers/sha256", "layers/sha512"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        let rootfs = data_dir.join("rootfs");
        fs::create_dir_all(&rootfs).at(&rootfs)?;
        let store = ImageStore {
            data_dir: data_dir.to_path_buf(),
            root,
            content,
            mounter,
            keep_layer_blobs: true,
        };
        store.clean_tmp_if_idle()?;
        Ok(store)
    }

    /// Whether layer blobs (the compressed tarballs) stay in the store once unpacked
    /// (default: yes). Without them a host with little flash stores each layer once, as
    /// its unpacked directory; a pull still verifies every blob on the way through, and
    /// nothing is downloaded again while the layer directory exists.
    pub fn keep_layer_blobs(mut self, keep: bool) -> Self {
        self.keep_layer_blobs = keep;
        self
    }

    /// Delete what interrupted writes left in `tmp/`, if no one is writing now.
    fn clean_tmp_if_idle(&self) -> Result<()> {
        let Some(_g) = lock::try_exclusive(&self.root.join("lock"))? else {
            return Ok(());
        };
        self.clear_tmp()
    }

    pub(crate) fn clear_tmp(&self) -> Result<()> {
        let tmp = self.content.tmp_dir();
        for ent in fs::read_dir(&tmp).at(&tmp)? {
            let p = ent.at(&tmp)?.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.at(&p)?;
        }
        Ok(())
    }

    /// The content store (blobs by digest), for reading. Writes belong to pull and
    /// import, which hold the store lock that keeps garbage collection out meanwhile.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub(crate) fn shared_lock(&self) -> Result<LockGuard> {
        lock::shared(&self.root.join("lock"))
    }

    pub(crate) fn exclusive_lock(&self) -> Result<LockGuard> {
        lock::exclusive(&self.root.join("lock"))
    }

    pub(crate) fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(diff_id.algorithm().as_str())
            .join(diff_id.hex())
    }

    // ---- refs ----

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    pub(crate) fn read_refs(&self) -> Result<Refs> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::InvalidDocument {
                what: "reference list",
                name: p.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Refs::default()),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// Change refs.json under its lock, written to a temp file and renamed.
    pub(crate) fn update_refs<T>(&self, f: impl FnOnce(&mut Refs) -> T) -> Result<T> {
        let _g = lock::exclusive(&self.root.join("refs.lock"))?;
        let mut refs = self.read_refs()?;
        let out = f(&mut refs);
        write_atomic(
            &self.refs_path(),
            &serde_json::to_vec_pretty(&refs).expect("refs serialise"),
            // Not tmp/: garbage collection empties that, and this runs outside its lock.
            &self.root,
        )?;
        Ok(out)
    }

    // ---- reading images ----

    pub(crate) fn load_manifest(&self, digest: &Digest) -> Result<Loaded> {
        let data = self.content.read_document(digest)?;
        let manifest = match oci::parse_document(&digest.to_string(), &data)? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(Error::InvalidDocument {
                    what: "manifest",
                    name: digest.to_string(),
                    reason: "is an image index, not a manifest".into(),
                })
            }
        };
        let config_digest = manifest.config.digest.clone();
        let config_data = self.content.read_document(&config_digest)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_data).map_err(|e| Error::InvalidDocument {
                what: "image config",
                name: config_digest.to_string(),
                reason: e.to_string(),
            })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::InvalidDocument {
                what: "image config",
                name: config_digest.to_string(),
                reason: format!(
                    "{} diff ids for {} layers in manifest {digest}",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        for l in &manifest.layers {
            if !oci::is_layer_media_type(&l.media_type) {
                return Err(Error::UnsupportedMediaType {
                    digest: l.digest.to_string(),
                    media_type: l.media_type.clone(),
                });
            }
        }
        Ok(Loaded {
            manifest,
            config_digest,
            config,
        })
    }

    /// Unpack one layer from its blob unless its directory exists. The blob must be in
    /// the content store. Safe to call from several threads or processes at once.
    pub(crate) fn ensure_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<PathBuf> {
        let dest = self.layer_path(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let _g = self.content.lock_digest("layer", diff_id)?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = temp_path(&self.content.tmp_dir(), "layer");
        fs::create_dir(&tmp).at(&tmp)?;
        let cleanup = RemoveOnDrop(Some(tmp.clone()));
        let file = self.content.open_blob(blob)?;
        let unpacked = unpack::unpack_layer(file, &tmp, &format!("layer {blob}"))?;
        if &unpacked.diff_id != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed layer {blob} (diff id)"),
                expected: diff_id.to_string(),
                actual: unpacked.diff_id.to_string(),
            });
        }
        unpack::sync_filesystem(&tmp)?;
        fs::rename(&tmp, &dest).at(&dest)?;
        cleanup.disarm();
        Ok(dest)
    }

    /// Unpack every layer of a manifest (in parallel) and return their directories.
    pub(crate) fn ensure_layers(&self, loaded: &Loaded) -> Result<Vec<PathBuf>> {
        let pairs: Vec<(&Digest, &Digest)> = loaded
            .manifest
            .layers
            .iter()
            .map(|l| &l.digest)
            .zip(loaded.config.rootfs.diff_ids.iter())
            .collect();
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<PathBuf>>>> =
            pairs.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..workers.min(pairs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= pairs.len() {
                        break;
                    }
                    let r = self.ensure_layer(pairs[i].0, pairs[i].1);
                    *results[i].lock().unwrap() = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| m.into_inner().unwrap().expect("every layer visited"))
            .collect()
    }

    fn image_from(&self, reference: String, digest: &Digest) -> Result<Image> {
        let loaded = self.load_manifest(digest)?;
        let layers = self.ensure_layers(&loaded)?;
        Ok(Image {
            reference,
            digest: digest.to_string(),
            config: ImageConfig::from_configuration(&loaded.config),
            layers,
        })
    }

    /// Record `reference` (or, with none, the digest itself) for a manifest whose blobs
    /// are all in the content store, unpack its layers and return the image. The caller
    /// holds the shared store lock.
    pub(crate) fn commit_image(
        &self,
        reference: Option<&Reference>,
        manifest: &Digest,
        index: Option<&Digest>,
    ) -> Result<Image> {
        let name = match reference {
            Some(r) => r.to_string(),
            None => manifest.to_string(),
        };
        let image = self.image_from(name.clone(), manifest)?;
        if !self.keep_layer_blobs {
            // Every layer is unpacked now; nothing needs their blobs (a concurrent import
            // of another image with the same layer finds the layer dir and skips the blob).
            for l in &self.load_manifest(manifest)?.manifest.layers {
                self.content.remove(&l.digest)?;
            }
        }
        let record = RefRecord {
            digest: manifest.clone(),
            index: index.cloned(),
            stored_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.update_refs(|refs| {
            refs.images.insert(name, record);
        })?;
        Ok(image)
    }

    /// Find the stored reference for `reference`: a name (normalised as Docker does), a
    /// full manifest digest, or a unique prefix of one (at least 12 hex digits).
    pub(crate) fn lookup(&self, refs: &Refs, reference: &str) -> Result<(String, RefRecord)> {
        let not_found = || Error::NotFound {
            reference: reference.to_string(),
        };
        if let Some(r) = refs.images.get(reference) {
            return Ok((reference.to_string(), r.clone()));
        }
        let by_digest = |d: &str| {
            refs.images
                .iter()
                .find(|(_, r)| r.digest.to_string() == d)
                .map(|(k, r)| (k.clone(), r.clone()))
        };
        if reference.parse::<Digest>().is_ok() {
            return by_digest(reference).ok_or_else(not_found);
        }
        let is_hex = reference.len() >= 12 && reference.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex {
            let hits: HashSet<String> = refs
                .images
                .values()
                .filter(|r| r.digest.hex().starts_with(reference))
                .map(|r| r.digest.to_string())
                .collect();
            if hits.len() == 1 {
                return by_digest(hits.iter().next().unwrap()).ok_or_else(not_found);
            }
        }
        let parsed = Reference::parse(reference)?;
        if let Some(r) = refs.images.get(&parsed.to_string()) {
            return Ok((parsed.to_string(), r.clone()));
        }
        if let Some(d) = &parsed.digest {
            // name@digest: any record of that repository with that digest.
            let repo = parsed.repository();
            if let Some((k, r)) = refs.images.iter().find(|(k, r)| {
                &r.digest == d && Reference::parse(k).is_ok_and(|p| p.repository() == repo)
            }) {
                return Ok((k.clone(), r.clone()));
            }
        }
        Err(not_found())
    }

    /// A local image by reference (no network). `NotFound` names the reference.
    pub fn resolve(&self, reference: &str) -> Result<Image> {
        let refs = self.read_refs()?;
        let (name, record) = self.lookup(&refs, reference)?;
        let _g = self.shared_lock()?;
        self.image_from(name, &record.digest)
    }

    /// Every local image, by reference.
    pub fn list(&self) -> Result<Vec<Image>> {
        let refs = self.read_refs()?;
        let _g = self.shared_lock()?;
        refs.images
            .iter()
            .map(|(name, r)| self.image_from(name.clone(), &r.digest))
            .collect()
    }

    /// Details of a local image, for `inspect`.
    pub fn inspect(&self, reference: &str) -> Result<ImageDetails> {
        let refs = self.read_refs()?;
        let (name, record) = self.lookup(&refs, reference)?;
        let loaded = self.load_manifest(&record.digest)?;
        let layers = loaded
            .manifest
            .layers
            .iter()
            .zip(&loaded.config.rootfs.diff_ids)
            .map(|(l, d)| LayerDetails {
                blob: l.digest.to_string(),
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id: d.to_string(),
                path: self.layer_path(d),
            })
            .collect();
        Ok(ImageDetails {
            reference: name,
            digest: record.digest.to_string(),
            config_digest: loaded.config_digest.to_string(),
            os: loaded.config.os.clone(),
            architecture: loaded.config.architecture.clone(),
            created: loaded.config.created.clone(),
            config: ImageConfig::from_configuration(&loaded.config),
            layers,
            stored_at: record.stored_at,
        })
    }
}

/// Write `data` to `path` through a temp file in `tmp_dir` and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8], tmp_dir: &Path) -> Result<()> {
    use std::io::Write;
    let tmp = temp_path(tmp_dir, "write");
    let mut f = fs::File::create(&tmp).at(&tmp)?;
    let r = f.write_all(data).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Removes a temp directory unless disarmed.
pub(crate) struct RemoveOnDrop(pub Option<PathBuf>);

impl RemoveOnDrop {
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}
