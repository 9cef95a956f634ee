//! The agent's image step: find an image by reference and give an instance its rootfs.
//!
//! [`ImageSource`] is the seam: [`StoreImages`] is the image store (tug-image: OCI layouts and
//! archives imported, registry pulls, an overlay rootfs per instance with its own writable
//! layer); [`DirImages`] serves unpacked images from a directory (a test double).

use std::path::{Path, PathBuf};

/// What the agent needs from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageDefaults {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// A resolved image: its digest (or other stable id) and config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub reference: String,
    pub id: String,
    pub defaults: ImageDefaults,
    /// The store's record, when it came from the image store.
    pub stored: Option<tug_image::Image>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference} not found{}", if .hint.is_empty() { String::new() } else { format!(": {}", .hint) })]
    NotFound { reference: String, hint: String },
    #[error("image {reference}: {message}")]
    Broken { reference: String, message: String },
    #[error("rootfs of instance {instance}: {message}")]
    Rootfs { instance: String, message: String },
}

/// Images as the agent uses them. Every call is idempotent.
pub trait ImageSource: Send + Sync {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError>;
    /// The instance's root filesystem (made once, then the same path); `mapped`: for a
    /// container in a user namespace of its own (idmapped layers, see tug-image).
    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        instance: &str,
        mapped: Option<&tug_image::Mapped<'_>>,
    ) -> Result<PathBuf, ImageError>;
    fn remove_rootfs(&self, instance: &str) -> Result<(), ImageError>;
}

/// Unpacked images in a directory: `<root>/<name>/<tag>/rootfs/` and an optional
/// `<root>/<name>/<tag>/config.json` ([`ImageDefaults`]). Instances share the rootfs
/// (no per-instance writable layer): for tests and for trying things out.
pub struct DirImages {
    root: PathBuf,
}

impl DirImages {
    pub fn new(root: &Path) -> DirImages {
        DirImages { root: root.into() }
    }

    fn dir_of(&self, reference: &str) -> PathBuf {
        let (name, tag) = match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (reference, "latest"),
        };
        self.root.join(name.replace('/', "_")).join(tag)
    }
}

impl ImageSource for DirImages {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let dir = self.dir_of(reference);
        if !dir.join("rootfs").is_dir() {
            return Err(ImageError::NotFound {
                reference: reference.into(),
                hint: format!("no unpacked image at {}", dir.display()),
            });
        }
        let config = dir.join("config.json");
        let defaults = match std::fs::read(&config) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Broken {
                reference: reference.into(),
                message: format!("{}: {e}", config.display()),
            })?,
            Err(_) => ImageDefaults::default(),
        };
        Ok(ResolvedImage {
            reference: reference.into(),
            id: dir.display().to_string(),
            defaults,
            stored: None,
        })
    }

    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        instance: &str,
        mapped: Option<&tug_image::Mapped<'_>>,
    ) -> Result<PathBuf, ImageError> {
        if mapped.is_some() {
            return Err(ImageError::Rootfs {
                instance: instance.into(),
                message: "security.user_namespace needs the image store (this agent runs with --images, whose rootfs all instances share)".into(),
            });
        }
        Ok(self.dir_of(&image.reference).join("rootfs"))
    }

    fn remove_rootfs(&self, _instance: &str) -> Result<(), ImageError> {
        Ok(())
    }
}

/// The image store: `<data-dir>/images` and `<data-dir>/rootfs` (tug-image).
pub struct StoreImages {
    store: tug_image::ImageStore,
    /// Pulls run on this runtime (the agent's steps call in from blocking threads).
    handle: tokio::runtime::Handle,
}

impl StoreImages {
    /// Opens the store under `data_dir`. Must be called inside a tokio runtime.
    pub fn open(data_dir: &Path) -> Result<StoreImages, ImageError> {
        let store = tug_image::ImageStore::open(data_dir).map_err(|e| ImageError::Broken {
            reference: "(store)".into(),
            message: format!("image store under {}: {e}", data_dir.display()),
        })?;
        Ok(StoreImages {
            store,
            handle: tokio::runtime::Handle::current(),
        })
    }

    pub fn store(&self) -> &tug_image::ImageStore {
        &self.store
    }

    /// Imports an OCI layout directory or archive; returns the references imported.
    pub fn import(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        self.store
            .import(path)
            .map(|images| images.into_iter().map(|i| i.reference).collect())
            .map_err(|e| ImageError::Broken {
                reference: path.display().to_string(),
                message: e.to_string(),
            })
    }
}

/// The agent's image source: the store under `data_dir`, or unpacked images in
/// `unpacked_dir` when one is given. `import` (OCI layouts or archives) go into the store
/// first.
pub fn open_source(
    data_dir: &Path,
    unpacked_dir: Option<&Path>,
    import: &[PathBuf],
) -> Result<std::sync::Arc<dyn ImageSource>, ImageError> {
    if let Some(dir) = unpacked_dir {
        return Ok(std::sync::Arc::new(DirImages::new(dir)));
    }
    let store = StoreImages::open(data_dir)?;
    for path in import {
        for reference in store.import(path)? {
            eprintln!("imported {reference} from {}", path.display());
        }
    }
    Ok(std::sync::Arc::new(store))
}

/// Does the reference name a registry host (`host.domain/...`, `host:port/...`,
/// `localhost/...`)? Only those are pulled by the agent; short names must be imported.
fn names_a_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((host, _)) => host.contains('.') || host.contains(':') || host == "localhost",
        None => false,
    }
}

impl ImageSource for StoreImages {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let found = match self.store.resolve(reference) {
            Ok(image) => Ok(image),
            Err(tug_image::Error::NotFound { .. }) if names_a_registry(reference) => self
                .handle
                .block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(120),
                        self.store
                            .pull(reference, &tug_image::PullOptions::default()),
                    )
                    .await
                })
                .map_err(|_| ImageError::NotFound {
                    reference: reference.into(),
                    hint: "pull timed out after 120s".into(),
                })?
                .map_err(|e| ImageError::NotFound {
                    reference: reference.into(),
                    hint: format!("not in the local store and the pull failed: {e}"),
                }),
            Err(tug_image::Error::NotFound { .. }) => Err(ImageError::NotFound {
                reference: reference.into(),
                hint: "not in the local image store (tugboat image import or pull it first)".into(),
            }),
            Err(e) => Err(ImageError::Broken {
                reference: reference.into(),
                message: e.to_string(),
            }),
        }?;
        let c = &found.config;
        Ok(ResolvedImage {
            reference: reference.into(),
            id: found.digest.clone(),
            defaults: ImageDefaults {
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
            },
            stored: Some(found),
        })
    }

    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        instance: &str,
        mapped: Option<&tug_image::Mapped<'_>>,
    ) -> Result<PathBuf, ImageError> {
        let stored = match &image.stored {
            Some(s) => s.clone(),
            None => self
                .resolve(&image.reference)?
                .stored
                .expect("the store sets it"),
        };
        self.store
            .prepare_rootfs_mapped(&stored, instance, mapped)
            .map(|r| r.path)
            .map_err(|e| ImageError::Rootfs {
                instance: instance.into(),
                message: e.to_string(),
            })
    }

    fn remove_rootfs(&self, instance: &str) -> Result<(), ImageError> {
        self.store
            .remove_rootfs(instance)
            .map_err(|e| ImageError::Rootfs {
                instance: instance.into(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let images = DirImages::new(dir.path());
        let e = images.resolve("shop/nothing:1").unwrap_err().to_string();
        assert!(e.contains("image shop/nothing:1 not found"), "{e}");
        std::fs::create_dir_all(dir.path().join("shop_web/1/rootfs")).unwrap();
        std::fs::write(
            dir.path().join("shop_web/1/config.json"),
            r#"{"cmd": ["httpd"], "env": ["A=1"]}"#,
        )
        .unwrap();
        let image = images.resolve("shop/web:1").unwrap();
        assert_eq!(image.defaults.cmd, ["httpd"]);
    }

    #[test]
    fn only_references_with_a_registry_are_pulled() {
        assert!(names_a_registry("ghcr.io/org/app:1"));
        assert!(names_a_registry("127.0.0.1:5000/app"));
        assert!(names_a_registry("localhost/app"));
        assert!(!names_a_registry("shop/front:1"));
        assert!(!names_a_registry("busybox"));
    }
}
