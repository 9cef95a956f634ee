//! The objects the control plane stores: services, instances, nodes and events.

use crate::spec::{Protocol, ServiceSpec, VolumeKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Store key prefixes; an etcd backend would put these under a cluster prefix.
pub const SERVICES: &str = "/services/";
pub const INSTANCES: &str = "/instances/";
pub const NODES: &str = "/nodes/";
pub const EVENTS: &str = "/events/";
pub const VOLUMES: &str = "/volumes/";

/// Where services get their virtual addresses unless configured otherwise (server and
/// agents must agree).
pub const DEFAULT_SERVICE_RANGE: &str = "10.89.0.0/24";

pub fn service_key(name: &str) -> String {
    format!("{SERVICES}{name}")
}
pub fn instance_key(service: &str, id: &str) -> String {
    format!("{INSTANCES}{service}/{id}")
}
pub fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}

/// Milliseconds since the Unix epoch: the controllers' clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// CPU, memory and pids: what a node has and what instances reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

impl Resources {
    pub fn new(cpu_millis: u64, memory_bytes: u64, pids: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
            pids,
        }
    }
    pub fn add(&mut self, other: &Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.pids += other.pids;
    }
    pub fn sub(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.saturating_sub(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.pids = self.pids.saturating_sub(other.pids);
    }
    /// What a service's instances reserve: its requests (limits when no request is given).
    pub fn requested_by(spec: &ServiceSpec) -> Resources {
        let r = &spec.resources;
        Resources {
            cpu_millis: r.requests.cpu.or(r.limits.cpu).map_or(0, |c| c.0),
            memory_bytes: r.requests.memory.or(r.limits.memory).map_or(0, |m| m.0),
            pids: u64::from(r.requests.pids.or(r.limits.pids).unwrap_or(0)),
        }
    }
}

/// A service as stored: the spec plus what the controllers keep about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub spec: ServiceSpec,
    /// Raised on every change of the spec (scale included).
    pub generation: u64,
    pub created_at_ms: u64,
    /// Earlier templates, newest last, for `rollout undo` and automatic rollback.
    #[serde(default)]
    pub history: Vec<TemplateRevision>,
    #[serde(default)]
    pub rollout: Rollout,
    /// Its virtual address, the same on every node: given by the service controller from
    /// the service range, kept for the service's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRevision {
    pub template_hash: String,
    pub spec: ServiceSpec,
    /// Its rollout failed and was rolled back: `rollout undo` passes over it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// Templates kept per service.
pub const HISTORY_LIMIT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    #[default]
    Complete,
    Progressing,
    /// The rollout failed and the previous template was restored.
    RolledBack,
}

impl RolloutState {
    /// The one spelling, as in the API: `complete`, `progressing`, `rolled-back`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutState::Complete => "complete",
            RolloutState::Progressing => "progressing",
            RolloutState::RolledBack => "rolled-back",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rollout {
    pub state: RolloutState,
    /// The template being rolled out (or restored).
    pub template_hash: String,
    pub started_at_ms: u64,
    /// Last time a new instance became ready; the progress deadline counts from here.
    pub last_progress_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Service {
    pub fn new(name: &str, spec: ServiceSpec, now_ms: u64) -> Service {
        let hash = spec.template_hash();
        Service {
            name: name.into(),
            spec,
            generation: 1,
            created_at_ms: now_ms,
            history: vec![],
            rollout: Rollout {
                state: RolloutState::Progressing,
                template_hash: hash,
                started_at_ms: now_ms,
                last_progress_ms: now_ms,
                message: String::new(),
            },
            address: None,
        }
    }

    /// Replace the spec. A new template starts a rollout and keeps the old one in history.
    pub fn replace_spec(&mut self, spec: ServiceSpec, now_ms: u64) {
        let old_hash = self.spec.template_hash();
        let new_hash = spec.template_hash();
        if old_hash != new_hash {
            self.history
                .retain(|t| t.template_hash != old_hash && t.template_hash != new_hash);
            self.history.push(TemplateRevision {
                template_hash: old_hash,
                spec: self.spec.clone(),
                failed: false,
            });
            if self.history.len() > HISTORY_LIMIT {
                self.history.remove(0);
            }
            self.rollout = Rollout {
                state: RolloutState::Progressing,
                template_hash: new_hash,
                started_at_ms: now_ms,
                last_progress_ms: now_ms,
                message: String::new(),
            };
        }
        self.spec = spec;
        self.generation += 1;
    }

    /// A failed rollout: swap back to the last good template (keeping the replica count).
    /// The failed template goes to history marked failed: `rollout undo` passes over it.
    pub fn roll_back(&mut self, reason: &str, now_ms: u64) -> bool {
        let Some(at) = self.history.iter().rposition(|t| !t.failed) else {
            return false;
        };
        let previous = self.history.remove(at);
        let failed = std::mem::replace(&mut self.spec, previous.spec);
        self.spec.replicas = failed.replicas;
        self.history.push(TemplateRevision {
            template_hash: failed.template_hash(),
            spec: failed,
            failed: true,
        });
        self.generation += 1;
        self.rollout = Rollout {
            state: RolloutState::RolledBack,
            template_hash: previous.template_hash,
            started_at_ms: now_ms,
            last_progress_ms: now_ms,
            message: format!("rolled back: {reason}"),
        };
        true
    }

    /// The last good template before the current one, with the current replica count, for
    /// `rollout undo`: templates whose rollout failed are passed over.
    pub fn previous_spec(&self) -> Option<ServiceSpec> {
        let current = self.spec.template_hash();
        let mut spec = self
            .history
            .iter()
            .rev()
            .find(|t| !t.failed && t.template_hash != current)?
            .spec
            .clone();
        spec.replicas = self.spec.replicas;
        Some(spec)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstancePhase {
    /// Waiting for a node.
    Pending,
    /// Assigned to a node; the agent has not reported it running yet.
    Scheduled,
    Running,
    /// The agent gave up on it (after its restart policy).
    Failed,
    /// Its node was lost.
    Lost,
}

/// One running copy of a service's template, on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub template_hash: String,
    /// The template it runs (replicas unused): the agent needs nothing else.
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub phase: InstancePhase,
    #[serde(default)]
    pub ready: bool,
    /// Why it is not placed, per node class, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub restarts: u32,
    /// When the agent reported it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at_ms: Option<u64>,
    /// Resource use as last reported by its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<InstanceStats>,
    /// Its container address on its node, as last reported by the agent: where other
    /// nodes' service proxies send its share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its place among its service's instances (0, 1, ...): a replacement of a failed
    /// instance takes the failed one's slot, and with it its restart count.
    #[serde(default)]
    pub slot: u32,
    /// Restarts of the earlier instances of its slot (replaced after they failed), so a crash
    /// loop stays visible in `restarts` across replacements.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub carried_restarts: u32,
    /// How its container (or the slot's previous instance) last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
    /// It keeps exiting soon after it starts and waits out a growing back-off between runs
    /// (Kubernetes' CrashLoopBackOff).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crash_looping: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a container ended, as its agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Exit code (128 + n when killed by signal n); none when it never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// In one word: `OOMKilled`, `Error`, `Completed`, `Killed`, `LivenessFailed`,
    /// `StartFailed`.
    pub reason: String,
    /// In words: `OOMKilled: memory limit 32Mi`, `exited with code 1`, ...
    pub message: String,
    pub at_ms: u64,
}

/// What an instance uses, from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// CPU used over the last interval, in millicores.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    pub at_ms: u64,
}

impl Instance {
    pub fn key(&self) -> String {
        instance_key(&self.service, &self.id)
    }
    /// Host ports it holds on its node.
    pub fn published_ports(&self) -> impl Iterator<Item = (Protocol, u16)> + '_ {
        self.spec
            .ports
            .iter()
            .filter_map(|p| p.host_port().map(|h| (p.protocol, h)))
    }
    pub fn named_volumes(&self) -> impl Iterator<Item = &str> + '_ {
        self.spec
            .volumes
            .iter()
            .filter(|v| v.kind == VolumeKind::Volume)
            .map(|v| v.source.as_str())
    }
    /// Holds resources on a node (placed and not finished).
    pub fn holds_resources(&self) -> bool {
        self.node.is_some()
            && matches!(
                self.phase,
                InstancePhase::Scheduled | InstancePhase::Running
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    Ready,
    /// Missed heartbeats for longer than the not-ready grace: no new placements.
    NotReady,
    /// Silent past the lost grace: its instances are replaced elsewhere.
    Lost,
}

/// A host with an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its container subnet: other nodes route it via `address`. No two live nodes share
    /// addresses of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ipnetwork::Ipv4Network>,
    pub status: NodeStatus,
    pub registered_at_ms: u64,
    /// Last heartbeat seen by the server (kept in memory; stored on status changes only).
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    /// Named volumes that exist on this node.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The OCI runtimes the node has (empty: a node of an earlier version, `tug` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<String>,
    /// The agent's own API (instance logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    /// How often the server wants this node's heartbeats (its timer profile decides; 0:
    /// the agent's own setting).
    #[serde(default)]
    pub heartbeat_every_ms: u64,
    /// Cordoned: nothing new is placed here (`tugboat node cordon`); what runs stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// Draining: cordoned, and its instances are moved to other nodes, replacement first
    /// (`tugboat node drain`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// Something that happened, for `describe` and `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: u64,
    pub kind: ObjectKind,
    pub name: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Service,
    Instance,
    Node,
    Volume,
}

/// A volume object (`tugboat volume create`, a spec file's `volumes:`): the desired volume,
/// and where a local one lives. Its usage is a measurement: kept in the server's memory and
/// added when it is read, never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub config: crate::spec::VolumeConfig,
    /// The size in bytes (from `config.size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// local: the node that holds the data (set when its first user is placed, or by
    /// `config.node`). Its users are placed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub created_ms: u64,
    /// Latest usage per node that mounts it (in memory only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<VolumeUsage>,
    /// Instances that mount it (filled in when it is read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// How full a volume is, as a node measured it (statvfs of its mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsage {
    pub volume: String,
    pub node: String,
    pub bytes_used: u64,
    pub bytes_total: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
    /// `mounted`, or what went wrong making it (`nfs server 10.0.0.9 did not answer in 5 s`).
    pub state: String,
    pub measured_ms: u64,
}

impl VolumeUsage {
    /// Percent of the size used (0 when unknown).
    pub fn percent(&self) -> u64 {
        (self.bytes_used.saturating_mul(100))
            .checked_div(self.bytes_total)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec::new(image)
    }

    #[test]
    fn undo_after_an_automatic_rollback_goes_back_to_the_last_good_template() {
        let mut service = Service::new("web", spec("web:1"), 0);
        service.replace_spec(spec("web:2"), 1);
        service.replace_spec(spec("web:3"), 2);
        assert!(service.roll_back("web:3 never got ready", 3));
        assert_eq!(service.spec.image, "web:2");
        assert_eq!(service.rollout.state.to_string(), "rolled-back");
        // Not web:3 again (it failed), and not web:2 (it runs): web:1.
        assert_eq!(service.previous_spec().unwrap().image, "web:1");
        // With only the failed one before it, there is nothing to go back to.
        let mut service = Service::new("web", spec("web:1"), 0);
        service.replace_spec(spec("web:2"), 1);
        assert!(service.roll_back("bad", 2));
        assert_eq!(service.previous_spec(), None);
        // A second failure rolls back to the good template, not to the first failure.
        service.replace_spec(spec("web:3"), 3);
        assert!(service.roll_back("bad too", 4));
        assert_eq!(service.spec.image, "web:1");
    }
}
