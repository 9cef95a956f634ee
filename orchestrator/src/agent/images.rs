//! The agent's image step: find an image by reference and give an instance its rootfs.
//!
//! [`ImageSource`] is the seam: [`DirImages`] serves unpacked images from a directory (tests
//! and hosts without an image store), and the image store (tug-image) is the real one.

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
    /// The instance's root filesystem (made once, then the same path).
    fn prepare_rootfs(&self, image: &ResolvedImage, instance: &str) -> Result<PathBuf, ImageError>;
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
        })
    }

    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        _instance: &str,
    ) -> Result<PathBuf, ImageError> {
        Ok(self.dir_of(&image.reference).join("rootfs"))
    }

    fn remove_rootfs(&self, _instance: &str) -> Result<(), ImageError> {
        Ok(())
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
}
