//! Volume objects as written: `tugboat volume create` and a spec file's `volumes:` section
//! (docs/volumes.md). A service mounts one by name (`{type: volume, source: NAME}`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where a volume's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeDriver {
    /// A directory on one node, or with a size an ext4 image loop-mounted there.
    #[default]
    Local,
    /// A kernel NFS (v4) mount, the same data from every node.
    Nfs,
    /// An executable plugin (`options.plugin`) speaking the protocol in docs/volumes.md.
    Exec,
}

impl VolumeDriver {
    pub const NAMES: &'static str = "local, nfs, exec";

    pub fn parse(text: &str) -> Result<VolumeDriver, String> {
        match text {
            "local" => Ok(VolumeDriver::Local),
            "nfs" => Ok(VolumeDriver::Nfs),
            "exec" => Ok(VolumeDriver::Exec),
            other => Err(format!(
                "driver: unknown volume driver `{other}`: expected one of {}",
                Self::NAMES
            )),
        }
    }

    /// The data is reachable from any node (the scheduler need not pin its users).
    pub fn is_shared(self) -> bool {
        !matches!(self, VolumeDriver::Local)
    }
}

impl fmt::Display for VolumeDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VolumeDriver::Local => "local",
            VolumeDriver::Nfs => "nfs",
            VolumeDriver::Exec => "exec",
        })
    }
}

/// Who may write at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessMode {
    /// Instances on one node at a time write it (a block device, a local directory).
    SingleNodeWriter,
    /// Instances on any number of nodes write it (NFS).
    MultiNodeWriter,
}

impl AccessMode {
    pub fn parse(text: &str) -> Result<AccessMode, String> {
        match text {
            "single-node-writer" => Ok(AccessMode::SingleNodeWriter),
            "multi-node-writer" => Ok(AccessMode::MultiNodeWriter),
            other => Err(format!(
                "access: unknown access mode `{other}`: expected single-node-writer or multi-node-writer"
            )),
        }
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessMode::SingleNodeWriter => "single-node-writer",
            AccessMode::MultiNodeWriter => "multi-node-writer",
        })
    }
}

/// A volume as a spec file writes it (`volumes: {NAME: {driver, size, options, access}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    #[serde(default)]
    pub driver: VolumeDriver,
    /// `1Gi`, `500Mi`: a limit the driver enforces (local: an ext4 image of that size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Driver options: nfs `server`, `path`, `timeout_seconds`, `mount_options`; exec
    /// `plugin`; anything else an exec plugin understands.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Default: what the driver allows (local and exec: single-node-writer; nfs:
    /// multi-node-writer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessMode>,
    /// local: the node the volume is made on (default: the node its first user is placed on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The smallest sized volume: an ext4 image needs room for its journal and tables.
pub const MIN_VOLUME_BYTES: u64 = 8 << 20;

/// A volume size: a number with a unit (`Ki`, `Mi`, `Gi`, `Ti`, `k`, `M`, `G`, `T`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "size: `{text}` has no unit: write e.g. `{t}Mi` or `{t}Gi`"
        ));
    }
    let bytes = super::units::Memory::parse(t)
        .map_err(|e| format!("size: {e}"))?
        .0;
    if bytes < MIN_VOLUME_BYTES {
        return Err(format!("size: `{text}` is below the smallest volume, 8Mi"));
    }
    Ok(bytes)
}

impl VolumeConfig {
    /// The access mode in force: the one asked for, else the driver's.
    pub fn access_mode(&self) -> AccessMode {
        self.access.unwrap_or(match self.driver {
            VolumeDriver::Nfs => AccessMode::MultiNodeWriter,
            VolumeDriver::Local | VolumeDriver::Exec => AccessMode::SingleNodeWriter,
        })
    }

    /// The size in bytes, when one is set and valid.
    pub fn size_bytes(&self) -> Option<u64> {
        self.size.as_deref().and_then(|s| parse_size(s).ok())
    }

    /// Every problem, each naming its field.
    pub fn check(&self, name: &str) -> Vec<String> {
        let mut problems = vec![];
        if !super::validate::is_dns_label(name) {
            problems.push(format!(
                "name: `{name}` is not a valid volume name (a DNS label)"
            ));
        }
        if let Some(size) = &self.size {
            if let Err(e) = parse_size(size) {
                problems.push(e);
            }
        }
        let option = |key: &str| self.options.get(key).filter(|v| !v.is_empty());
        match self.driver {
            VolumeDriver::Local => {
                if let Some(key) = self.options.keys().next() {
                    problems.push(format!("options.{key}: the local driver takes no options"));
                }
                if self.access == Some(AccessMode::MultiNodeWriter) {
                    problems.push(
                        "access: a local volume lives on one node: multi-node-writer is not possible"
                            .into(),
                    );
                }
            }
            VolumeDriver::Nfs => {
                match option("server") {
                    None => problems.push(
                        "options.server: an nfs volume needs the server's IPv4 address".into(),
                    ),
                    Some(s) if s.parse::<std::net::Ipv4Addr>().is_err() => problems.push(format!(
                        "options.server: `{s}` is not an IPv4 address (the kernel mount takes an address, not a name)"
                    )),
                    Some(_) => {}
                }
                match option("path") {
                    Some(p) if p.starts_with('/') => {}
                    _ => problems.push(
                        "options.path: an nfs volume needs the export's absolute path".into(),
                    ),
                }
                if let Some(t) = option("timeout_seconds") {
                    if !t.parse::<u64>().is_ok_and(|n| (1..=600).contains(&n)) {
                        problems.push(format!(
                            "options.timeout_seconds: `{t}` is not a whole number of seconds from 1 to 600"
                        ));
                    }
                }
                for key in self.options.keys() {
                    if !["server", "path", "timeout_seconds", "mount_options"]
                        .contains(&key.as_str())
                    {
                        problems.push(format!(
                            "options.{key}: unknown nfs option; known: server, path, timeout_seconds, mount_options"
                        ));
                    }
                }
                if self.node.is_some() {
                    problems.push("node: an nfs volume is on every node".into());
                }
            }
            VolumeDriver::Exec => match option("plugin") {
                Some(p) if p.starts_with('/') => {}
                _ => problems.push(
                    "options.plugin: an exec volume needs the plugin executable's absolute path"
                        .into(),
                ),
            },
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_needs_a_unit_and_a_driver_a_known_name() {
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("64Mi").unwrap(), 64 << 20);
        let e = parse_size("1024").unwrap_err();
        assert!(e.contains("`1024` has no unit"), "{e}");
        assert!(parse_size("1Zi").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1Mi").unwrap_err().contains("smallest"));
        let e = VolumeDriver::parse("ceph").unwrap_err();
        assert!(e.contains("unknown volume driver `ceph`"), "{e}");
    }

    #[test]
    fn each_driver_checks_its_own_options() {
        let nfs = VolumeConfig {
            driver: VolumeDriver::Nfs,
            options: [("server".to_string(), "nfs.local".to_string())].into(),
            ..Default::default()
        };
        let problems = nfs.check("orders");
        assert!(
            problems.iter().any(|p| p.contains("not an IPv4")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("options.path")),
            "{problems:?}"
        );
        assert_eq!(nfs.access_mode(), AccessMode::MultiNodeWriter);
        let local = VolumeConfig {
            size: Some("1Gi".into()),
            ..Default::default()
        };
        assert!(local.check("orders").is_empty());
        assert_eq!(local.access_mode(), AccessMode::SingleNodeWriter);
        assert!(!local.check("Bad_Name").is_empty());
        let exec = VolumeConfig {
            driver: VolumeDriver::Exec,
            ..Default::default()
        };
        assert!(exec.check("x")[0].starts_with("options.plugin"));
    }
}
