//! Host autoscaling through a provider (issue 17): node pools whose nodes an external
//! program adds and removes. [`decide`] is the pure decision (how many nodes to add to which
//! pool, which node to drain, which drained node to remove), [`provider`] the call of the
//! program (async, with a timeout), [`runner`] the pass the controllers run: fetch, decide,
//! act, with failures as events and a back-off per pool.
//!
//! Pools come from `tugboat server --node-pools FILE` (docs/nodepools.md). A
//! node belongs to pool P when it carries the label `tugboat.pool=P`: the provider is given
//! the labels (that one included) and capacity its node must have.

pub mod decide;
pub mod provider;
pub mod runner;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tugboat_api::model::Resources;
use tugboat_api::spec::{Cpu, Memory};

/// The label that says which pool a node belongs to.
pub const POOL_LABEL: &str = "tugboat.pool";

/// The file `--node-pools` names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsConfig {
    /// Instances pending this long that a pool's node would take cause an add.
    #[serde(default = "default_pending")]
    pub pending_seconds: f64,
    /// A pool node under the utilization threshold this long is drained and removed.
    #[serde(default = "default_cool_down")]
    pub scale_down_seconds: f64,
    /// Percent of the node's capacity its instances request (cpu or memory, the larger).
    #[serde(default = "default_utilization")]
    pub scale_down_utilization: f64,
    /// Longest a provider call may take; then it is killed and counts as failed.
    #[serde(default = "default_timeout")]
    pub provider_timeout_seconds: f64,
    /// A node the provider added that has not registered within this is given up: its
    /// `remove` is called and it no longer counts.
    #[serde(default = "default_join")]
    pub join_timeout_seconds: f64,
    /// First wait after a failed call; doubled per failure, up to 5 minutes.
    #[serde(default = "default_backoff")]
    pub retry_seconds: f64,
    pub pools: Vec<NodePool>,
}

fn default_pending() -> f64 {
    10.0
}
fn default_cool_down() -> f64 {
    600.0
}
fn default_utilization() -> f64 {
    50.0
}
fn default_timeout() -> f64 {
    120.0
}
fn default_join() -> f64 {
    300.0
}
fn default_backoff() -> f64 {
    5.0
}

/// One pool: bounds, what its nodes look like, and who makes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePool {
    pub name: String,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// Called as `PROVIDER add POOL` (prints the new node's name) and `PROVIDER remove POOL
    /// NODE`.
    pub provider: PathBuf,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: PoolCapacity,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolCapacity {
    pub cpu: Cpu,
    pub memory: Memory,
    #[serde(default)]
    pub pids: u64,
}

impl NodePool {
    /// The labels a node of this pool has: the configured ones and `tugboat.pool`.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(POOL_LABEL.into(), self.name.clone());
        labels
    }
    pub fn capacity(&self) -> Resources {
        Resources::new(
            self.capacity.cpu.0,
            self.capacity.memory.0,
            self.capacity.pids,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolsConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl PoolsConfig {
    pub fn load(path: &Path) -> Result<PoolsConfig, PoolsConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| PoolsConfigError::Read {
            path: path.into(),
            source,
        })?;
        PoolsConfig::parse(&text).map_err(|message| PoolsConfigError::Invalid {
            path: path.into(),
            message,
        })
    }

    /// YAML (or JSON); errors name the field (`pools[0].max: ...`) and, from YAML, the line.
    pub fn parse(text: &str) -> Result<PoolsConfig, String> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: PoolsConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let line = e
                .inner()
                .location()
                .map(|l| format!("line {}: ", l.line()))
                .unwrap_or_default();
            format!("{line}{}: {}", e.path(), e.inner())
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if !tugboat_api::spec::validate::is_dns_label(&pool.name) {
                return Err(format!(
                    "pools[{i}].name: `{}` is not a DNS label",
                    pool.name
                ));
            }
            if !names.insert(pool.name.as_str()) {
                return Err(format!("pools[{i}].name: `{}` is named twice", pool.name));
            }
            if pool.min > pool.max {
                return Err(format!(
                    "pools[{i}]: min {} is above max {}",
                    pool.min, pool.max
                ));
            }
            if pool.capacity.cpu.0 == 0 || pool.capacity.memory.0 == 0 {
                return Err(format!("pools[{i}].capacity: needs cpu and memory above 0"));
            }
        }
        for (field, v) in [
            ("pending_seconds", self.pending_seconds),
            ("scale_down_seconds", self.scale_down_seconds),
            ("provider_timeout_seconds", self.provider_timeout_seconds),
            ("join_timeout_seconds", self.join_timeout_seconds),
            ("retry_seconds", self.retry_seconds),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{field}: {v} is not a number of seconds"));
            }
        }
        if !(0.0..=100.0).contains(&self.scale_down_utilization) {
            return Err(format!(
                "scale_down_utilization: {} is not a percentage",
                self.scale_down_utilization
            ));
        }
        Ok(())
    }

    pub(crate) fn ms(seconds: f64) -> u64 {
        (seconds * 1000.0) as u64
    }
}

/// The pools and what the autoscaler remembers between passes (in memory: after a restart
/// it starts over; nodes keep their pool label, so they are counted again at once).
pub struct NodePools {
    pub config: PoolsConfig,
    pub(crate) state: Mutex<runner::PoolsState>,
}

impl NodePools {
    pub fn new(config: PoolsConfig) -> NodePools {
        NodePools {
            config,
            state: Mutex::new(runner::PoolsState::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pools_file_parses_and_bad_ones_name_the_field() {
        let config = PoolsConfig::parse(
            "pending_seconds: 1\npools:\n  - name: burst\n    max: 3\n    provider: /bin/p\n    labels: {disk: ssd}\n    capacity: {cpu: 2, memory: 2Gi}\n",
        )
        .unwrap();
        assert_eq!(config.pools[0].capacity(), Resources::new(2000, 2 << 30, 0));
        assert_eq!(config.pools[0].node_labels()[POOL_LABEL], "burst");
        assert_eq!(config.scale_down_seconds, 600.0);
        let e = PoolsConfig::parse(
            "pools:\n  - name: burst\n    max: 3\n    provider: /bin/p\n    capacity: {cpu: 2, memory: lots}\n",
        )
        .unwrap_err();
        assert!(e.contains("pools[0].capacity.memory"), "{e}");
        let e = PoolsConfig::parse(
            "pools:\n  - name: burst\n    min: 4\n    max: 3\n    provider: /bin/p\n    capacity: {cpu: 2, memory: 1Gi}\n",
        )
        .unwrap_err();
        assert_eq!(e, "pools[0]: min 4 is above max 3");
    }
}
