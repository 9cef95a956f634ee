//! The OCI (and Docker schema 2) documents the store reads, as plain serde types: the
//! fields the store uses, unknown ones ignored.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Error;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Whether `mt` is a layer tarball this store can unpack.
pub fn is_layer_media_type(mt: &str) -> bool {
    mt.is_empty()
        || mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}

pub fn is_index_media_type(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next()?.to_string();
        let architecture = it.next()?.to_string();
        let variant = it.next().map(str::to_string);
        if it.next().is_some() || os.is_empty() || architecture.is_empty() {
            return None;
        }
        Some(Platform {
            architecture,
            os,
            variant,
        })
    }

    /// Whether an index entry for `other` runs here. A missing variant on either side
    /// matches (arm64 images rarely carry `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// The `config` object of an image configuration (Docker's capitalised field names).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageConfiguration {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// The kind of a manifest-ish document, from its media type or, lacking one, its shape.
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

pub fn parse_document(what: &str, data: &[u8]) -> Result<Document, Error> {
    let invalid = |reason: String| Error::InvalidDocument {
        what: "manifest",
        name: what.to_string(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let is_index = is_index_media_type(mt) || (mt.is_empty() && v.get("manifests").is_some());
    if is_index {
        serde_json::from_value(v)
            .map(Document::Index)
            .map_err(|e| invalid(format!("bad image index: {e}")))
    } else if mt.is_empty() || mt == MT_OCI_MANIFEST || mt == MT_DOCKER_MANIFEST {
        serde_json::from_value(v)
            .map(Document::Manifest)
            .map_err(|e| invalid(format!("bad image manifest: {e}")))
    } else {
        Err(Error::UnsupportedMediaType {
            digest: what.to_string(),
            media_type: mt.to_string(),
        })
    }
}

/// Pick the manifest for `want` from an index.
pub fn choose_platform<'a>(
    reference: &str,
    index: &'a Index,
    want: &Platform,
) -> Result<&'a Descriptor, Error> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .ok_or_else(|| Error::NoMatchingPlatform {
            reference: reference.to_string(),
            platform: want.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: MT_DOCKER_MANIFEST.into(),
            digest: Digest::sha256_of(&[n]),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn platform_choice() {
        let index = Index {
            schema_version: 2,
            media_type: Some(MT_DOCKER_LIST.into()),
            manifests: vec![
                desc("unknown", None, 0),
                desc("amd64", None, 1),
                desc("arm", Some("v6"), 2),
                desc("arm", Some("v7"), 3),
                desc("arm64", Some("v8"), 4),
            ],
        };
        let pick = |p: &str| {
            choose_platform("r", &index, &Platform::parse(p).unwrap()).map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64").unwrap(), Digest::sha256_of(&[1]));
        assert_eq!(pick("linux/arm/v7").unwrap(), Digest::sha256_of(&[3]));
        // No variant asked: the first arm entry; arm64 without a variant matches v8.
        assert_eq!(pick("linux/arm").unwrap(), Digest::sha256_of(&[2]));
        assert_eq!(pick("linux/arm64").unwrap(), Digest::sha256_of(&[4]));
        match pick("linux/s390x") {
            Err(Error::NoMatchingPlatform { available, .. }) => {
                assert!(available.contains("linux/arm/v7"), "{available}")
            }
            other => panic!("{other:?}"),
        }
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
    }

    #[test]
    fn documents_by_media_type_or_shape() {
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(matches!(parse_document("x", list), Ok(Document::Index(_))));
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_document("x", bare_index),
            Ok(Document::Index(_))
        ));
        let d = Digest::sha256_of(b"c");
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{MT_DOCKER_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_document("x", manifest.as_bytes()),
            Ok(Document::Manifest(_))
        ));
        let helm = br#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart.v1"}"#;
        assert!(matches!(
            parse_document("x", helm),
            Err(Error::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            parse_document("x", b"not json"),
            Err(Error::InvalidDocument { .. })
        ));
    }
}
