//! Volume objects (docs/volumes.md): what a volume is (driver, size, options, access) is
//! stored; where a local one lives and how full each copy is are read from the nodes and
//! kept in memory, like instance usage: measurements do not go through the fsynced store.

use super::{ControlPlane, ControlPlaneError, Result};
use crate::objects::{self, Batch};
use std::collections::BTreeMap;
use tugboat_api::model::{now_ms, Instance, Node, ObjectKind, Volume, VOLUMES};
use tugboat_api::spec::{AccessMode, VolumeDriver, VolumeKind};
use tugboat_api::wire::{VolumeRequest, VolumeUsageReport};

/// Usage levels (percent of the size) that raise an event when a volume crosses them.
pub const USAGE_ALERTS: [u64; 2] = [80, 95];

fn volume_key(name: &str) -> String {
    format!("{VOLUMES}{name}")
}

fn bad(message: String) -> ControlPlaneError {
    ControlPlaneError::BadRequest(message)
}

/// The highest alert level `percent` reaches (0: none).
pub fn alert_level(percent: u64) -> u64 {
    USAGE_ALERTS
        .iter()
        .copied()
        .filter(|l| percent >= *l)
        .max()
        .unwrap_or(0)
}

impl ControlPlane {
    /// Makes a volume object. The same name with the same configuration is not an error (a
    /// spec file applied twice); with another configuration it is.
    pub async fn create_volume(&self, request: VolumeRequest) -> Result<Volume> {
        let mut batch = Batch::default();
        let volumes = BTreeMap::from([(request.name.clone(), request.config)]);
        self.apply_volumes(&mut batch, &volumes, now_ms()).await?;
        batch.commit(self.store()).await?;
        self.describe_volume(&request.name).await
    }

    /// A spec file's `volumes:` section, into the apply's transaction: new ones are made,
    /// the same ones are unchanged, a changed one is refused (its data would not follow).
    pub(crate) async fn apply_volumes(
        &self,
        batch: &mut Batch,
        volumes: &BTreeMap<String, tugboat_api::spec::VolumeConfig>,
        now: u64,
    ) -> Result<BTreeMap<String, String>> {
        let mut outcome = BTreeMap::new();
        let mut problems = vec![];
        for (name, config) in volumes {
            problems.extend(
                config
                    .check(name)
                    .into_iter()
                    .map(|p| format!("volumes.{name}.{p}")),
            );
        }
        if !problems.is_empty() {
            return Err(bad(problems.join("; ")));
        }
        for (name, config) in volumes {
            let key = volume_key(name);
            match objects::get::<Volume>(self.store(), &key).await? {
                Some(existing) if existing.object.config == *config => {
                    outcome.insert(name.clone(), "unchanged".into());
                }
                Some(_) => {
                    return Err(ControlPlaneError::Conflict(format!(
                        "volumes.{name}: volume {name} exists with another configuration; a \
                         volume's driver, size and options do not change: delete it first \
                         (tugboat volume rm {name})"
                    )))
                }
                None => {
                    let volume = Volume {
                        name: name.clone(),
                        size_bytes: config.size_bytes(),
                        node: config.node.clone(),
                        config: config.clone(),
                        created_ms: now,
                        usage: vec![],
                        users: vec![],
                    };
                    batch.put_if(key, 0, &volume);
                    self.event(
                        batch,
                        ObjectKind::Volume,
                        name,
                        "created",
                        format!(
                            "volume created (driver {}{})",
                            config.driver,
                            config
                                .size
                                .as_deref()
                                .map(|s| format!(", size {s}"))
                                .unwrap_or_default()
                        ),
                    );
                    outcome.insert(name.clone(), "created".into());
                }
            }
        }
        Ok(outcome)
    }

    /// Every volume object, as stored (no usage: see [`Self::describe_volume`]).
    pub async fn volume_objects(&self) -> Result<Vec<Volume>> {
        let (items, _) = objects::list::<Volume>(self.store(), VOLUMES).await?;
        Ok(items.into_iter().map(|v| v.object).collect())
    }

    pub async fn list_volumes(&self) -> Result<Vec<Volume>> {
        let (nodes, _) = objects::list::<Node>(self.store(), tugboat_api::model::NODES).await?;
        let nodes: Vec<Node> = nodes.into_iter().map(|v| v.object).collect();
        let instances = self.list_instances(None, None).await?.items;
        Ok(self
            .volume_objects()
            .await?
            .into_iter()
            .map(|v| self.volume_view(v, &nodes, &instances))
            .collect())
    }

    pub async fn describe_volume(&self, name: &str) -> Result<Volume> {
        self.list_volumes()
            .await?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ControlPlaneError::NotFound {
                kind: "volume",
                name: name.into(),
            })
    }

    /// A volume as the API shows it: where a local one lives, who mounts it, how full.
    fn volume_view(&self, mut volume: Volume, nodes: &[Node], instances: &[Instance]) -> Volume {
        let mounts = |i: &Instance| {
            i.spec
                .volumes
                .iter()
                .any(|v| v.kind == VolumeKind::Volume && v.source == volume.name)
        };
        volume.users = instances
            .iter()
            .filter(|i| i.node.is_some() && mounts(i))
            .map(|i| i.id.clone())
            .collect();
        if volume.config.driver == VolumeDriver::Local && volume.node.is_none() {
            volume.node = nodes
                .iter()
                .find(|n| n.volumes.contains(&volume.name))
                .map(|n| n.name.clone())
                .or_else(|| {
                    instances
                        .iter()
                        .filter(|i| i.holds_resources() && mounts(i))
                        .find_map(|i| i.node.clone())
                });
        }
        let usage = self.volume_usage.lock().unwrap_or_else(|p| p.into_inner());
        volume.usage = usage
            .iter()
            .filter(|((v, _), _)| *v == volume.name)
            .map(|(_, u)| u.clone())
            .collect();
        volume
    }

    /// Records the node a local volume's data was restored on, when it had none: its users
    /// are placed there from now on (`tugboat volume restore --node`).
    pub async fn pin_volume(&self, name: &str, node: &str) -> Result<()> {
        let key = volume_key(name);
        let Some(existing) = objects::get::<Volume>(self.store(), &key).await? else {
            return Err(ControlPlaneError::NotFound {
                kind: "volume",
                name: name.into(),
            });
        };
        if existing.object.node.is_some() {
            return Ok(());
        }
        let mut volume = existing.object;
        volume.node = Some(node.to_string());
        let mut batch = Batch::default();
        batch.put_if(key, existing.revision, &volume);
        self.event(
            &mut batch,
            ObjectKind::Volume,
            name,
            "restored",
            format!("restored from an archive on node {node}, where its users go from now on"),
        );
        batch.commit(self.store()).await?;
        Ok(())
    }

    /// Removes a volume object; refused while a service mounts it. The nodes remove their
    /// data (local) or call the plugin's `remove` (exec) when they see the object gone.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let key = volume_key(name);
        let Some(existing) = objects::get::<Volume>(self.store(), &key).await? else {
            return Err(ControlPlaneError::NotFound {
                kind: "volume",
                name: name.into(),
            });
        };
        let services = self.list_services().await?.items;
        if let Some(service) = services.iter().find(|s| {
            s.spec
                .volumes
                .iter()
                .any(|v| v.kind == VolumeKind::Volume && v.source == name)
        }) {
            return Err(ControlPlaneError::Conflict(format!(
                "volume {name} is mounted by service {}: delete the service, or change it to \
                 mount another volume, first",
                service.name
            )));
        }
        let mut batch = Batch::default();
        batch.compares.push(crate::store::Compare::ModRevision {
            key: key.clone(),
            revision: existing.revision,
        });
        batch.delete(key);
        self.event(
            &mut batch,
            ObjectKind::Volume,
            name,
            "deleted",
            "volume deleted; its nodes remove its data".into(),
        );
        batch.commit(self.store()).await?;
        self.volume_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(v, _), _| v != name);
        Ok(())
    }

    /// What the nodes last measured of their volumes (in memory), for `/metrics`.
    pub fn volume_usages(&self) -> Vec<tugboat_api::model::VolumeUsage> {
        let usage = self.volume_usage.lock().unwrap_or_else(|p| p.into_inner());
        usage.values().cloned().collect()
    }

    /// Keeps what node `node` measured of its volumes (in memory), and writes an event when
    /// a volume crosses 80% or 95% of its size.
    pub async fn report_volume_usage(&self, node: &str, report: VolumeUsageReport) -> Result<()> {
        let mut alerts = vec![];
        {
            let mut usage = self.volume_usage.lock().unwrap_or_else(|p| p.into_inner());
            usage.retain(|(_, n), _| n != node);
            for mut u in report.volumes {
                if u.node != node {
                    return Err(bad(format!(
                        "volumes: usage of volume {} names node {}, not {node}",
                        u.volume, u.node
                    )));
                }
                u.measured_ms = u.measured_ms.min(now_ms());
                usage.insert((u.volume.clone(), node.to_string()), u);
            }
            let mut levels = self.volume_alerts.lock().unwrap_or_else(|p| p.into_inner());
            levels.retain(|(v, n), _| n != node || usage.contains_key(&(v.clone(), n.clone())));
            for (key, u) in usage.iter().filter(|((_, n), _)| n == node) {
                let level = alert_level(u.percent());
                let before = levels.insert(key.clone(), level).unwrap_or(0);
                if level > before {
                    alerts.push((u.clone(), level));
                }
            }
        }
        if alerts.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (u, level) in alerts {
            self.event(
                &mut batch,
                ObjectKind::Volume,
                &u.volume,
                "usage",
                format!(
                    "volume {} on node {} is {}% full ({} of {} bytes; alert at {level}%)",
                    u.volume,
                    u.node,
                    u.percent(),
                    u.bytes_used,
                    u.bytes_total
                ),
            );
        }
        batch.commit(self.store()).await?;
        Ok(())
    }

    /// Volume objects by name, for the scheduler: which are shared (any node may mount them)
    /// and where a local one was asked to live.
    pub async fn volume_configs(&self) -> Result<BTreeMap<String, Volume>> {
        Ok(self
            .volume_objects()
            .await?
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect())
    }
}

/// Volumes any node may mount (multi-node-writer): the scheduler does not pin their users.
pub fn shared_volumes(volumes: &BTreeMap<String, Volume>) -> std::collections::HashSet<String> {
    volumes
        .values()
        .filter(|v| v.config.access_mode() == AccessMode::MultiNodeWriter)
        .map(|v| v.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::model::VolumeUsage;

    #[test]
    fn alerts_at_80_and_95_percent() {
        assert_eq!(alert_level(0), 0);
        assert_eq!(alert_level(79), 0);
        assert_eq!(alert_level(80), 80);
        assert_eq!(alert_level(94), 80);
        assert_eq!(alert_level(95), 95);
        assert_eq!(alert_level(100), 95);
    }

    #[test]
    fn usage_percent_of_a_volume() {
        let u = VolumeUsage {
            volume: "v".into(),
            node: "n".into(),
            bytes_used: 81,
            bytes_total: 100,
            inodes_used: 1,
            inodes_total: 10,
            state: "mounted".into(),
            measured_ms: 0,
        };
        assert_eq!(alert_level(u.percent()), 80);
    }
}
