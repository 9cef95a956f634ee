//! Volumes on this node (docs/volumes.md).
//!
//! A service mounts a volume by name. With no volume object of that name (the first form,
//! still the default) it is a directory `<agent-data-dir>/volumes/<name>` made on first use.
//! A volume object (`tugboat volume create`, a spec file's `volumes:`) picks a driver:
//! - `local`: the same directory; with a size, an ext4 image of that size
//!   (`volume-images/<name>.ext4`, sparse) on a loop device mounted there, so a writer gets
//!   ENOSPC at the size instead of filling the host's disk;
//! - `nfs`: a kernel NFS v4 mount at `volume-mounts/<name>`, made with mount(2);
//! - `exec`: a plugin executable that mounts it (the protocol is in docs/volumes.md).
//!
//! The agent keeps each object it used in `volume-objects/<name>.json` (an offline node
//! mounts from it), reports usage to the server when it changes, unmounts a volume no
//! instance here uses, and removes a volume's data once its object is deleted.
//! `tugboat volume ls|rm --local` list and remove the directories of a node by hand.

use std::path::{Path, PathBuf};
use tugboat_api::model::Instance;
use tugboat_api::spec::VolumeKind;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name}: not found under {searched}")]
    NotFound { name: String, searched: String },
    #[error("volume {name} is in use by instance {instance}; delete its service first")]
    InUse { name: String, instance: String },
    #[error("volume {name}: {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The agent data dirs a `--data-dir` may mean: itself, or `up`'s `<dir>/agent`.
fn agent_dirs(data_dir: &Path) -> [PathBuf; 2] {
    [data_dir.to_path_buf(), data_dir.join("agent")]
}

/// Named volumes on this node, with the instances that use them.
pub fn list(data_dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    for dir in agent_dirs(data_dir) {
        let Ok(entries) = std::fs::read_dir(dir.join("volumes")) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let users = users(&dir, &name);
            out.push((name, users));
        }
    }
    out.sort();
    out
}

/// Named volumes the instances under `agent_dir` mount: volume -> instance ids.
pub fn in_use(agent_dir: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut used = std::collections::BTreeMap::<String, Vec<String>>::new();
    let Ok(entries) = std::fs::read_dir(agent_dir.join("instances")) else {
        return used;
    };
    for i in entries
        .flatten()
        .filter_map(|e| super::monitor::read_json::<Instance>(&e.path().join("instance.json")))
    {
        for v in i
            .spec
            .volumes
            .iter()
            .filter(|v| v.kind == VolumeKind::Volume)
        {
            used.entry(v.source.clone()).or_default().push(i.id.clone());
        }
    }
    used
}

fn users(agent_dir: &Path, name: &str) -> Vec<String> {
    in_use(agent_dir).remove(name).unwrap_or_default()
}

/// Removes a named volume and its data, unless an instance on this node uses it.
pub fn remove(data_dir: &Path, name: &str) -> Result<PathBuf, VolumeError> {
    if !tugboat_api::spec::validate::is_dns_label(name) {
        return Err(VolumeError::NotFound {
            name: name.into(),
            searched: "(a volume name is a DNS label)".into(),
        });
    }
    for dir in agent_dirs(data_dir) {
        let path = dir.join("volumes").join(name);
        if !path.is_dir() {
            continue;
        }
        if let Some(instance) = users(&dir, name).into_iter().next() {
            return Err(VolumeError::InUse {
                name: name.into(),
                instance,
            });
        }
        std::fs::remove_dir_all(&path).map_err(|source| VolumeError::Io {
            name: name.into(),
            path: path.clone(),
            source,
        })?;
        return Ok(path);
    }
    Err(VolumeError::NotFound {
        name: name.into(),
        searched: agent_dirs(data_dir)
            .iter()
            .map(|d| d.join("volumes").display().to_string())
            .collect::<Vec<_>>()
            .join(" and "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::spec::{ServiceSpec, VolumeSpec};

    #[test]
    fn a_volume_in_use_is_kept_and_a_free_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::create_dir_all(agent.join("volumes/carts")).unwrap();
        std::fs::create_dir_all(agent.join("volumes/old")).unwrap();
        let mut spec = ServiceSpec::new("shop/cart:1");
        spec.volumes.push(VolumeSpec {
            kind: VolumeKind::Volume,
            source: "carts".into(),
            target: "/data".into(),
            read_only: false,
        });
        let now = 0;
        let mut instance: Instance = serde_json::from_value(serde_json::json!({
            "id": "cart-a-b", "service": "cart", "template_hash": "a",
            "spec": spec, "phase": "running", "created_at_ms": now
        }))
        .unwrap();
        instance.node = Some("n".into());
        std::fs::create_dir_all(agent.join("instances/cart-a-b")).unwrap();
        super::super::monitor::write_json(
            &agent.join("instances/cart-a-b/instance.json"),
            &instance,
        )
        .unwrap();
        assert_eq!(
            list(dir.path())[0],
            ("carts".to_string(), vec!["cart-a-b".to_string()])
        );
        let e = remove(dir.path(), "carts").unwrap_err().to_string();
        assert!(e.contains("in use by instance cart-a-b"), "{e}");
        remove(dir.path(), "old").unwrap();
        assert!(!agent.join("volumes/old").exists());
        assert!(remove(dir.path(), "old")
            .unwrap_err()
            .to_string()
            .contains("not found"));
    }
}
