//! The control plane's operations on typed objects: what the HTTP API calls, and what the
//! controllers share with it (store, scheduler, heartbeats, events).

pub mod access;
mod agents;
pub(crate) mod feed;
pub mod secrets;
mod volumes;
pub use agents::NodeScheduling;
pub use volumes::shared_volumes;
mod services;
mod views;

use crate::controllers::NodeTimers;
use crate::objects::{Batch, ObjectError};
use crate::scheduler::Scheduler;
use crate::store::{Compare, Revision, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tugboat_api::model::{Event, ObjectKind, EVENTS};
use tugboat_api::spec::SpecError;

/// Timers of the control plane. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub nodes: NodeTimers,
    /// Controllers run at least this often (and whenever the store changes).
    pub reconcile_interval: Duration,
    /// A failed instance is replaced this long after it failed, so a crash loop does not spin.
    pub replace_failed_after: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            nodes: NodeTimers::default(),
            reconcile_interval: Duration::from_secs(1),
            replace_failed_after: Duration::from_secs(5),
        }
    }
}

/// Events kept in the store; older ones are pruned.
pub const EVENTS_KEPT: usize = 2000;
/// Deletes per transaction when events are pruned: within etcd's default `--max-txn-ops`
/// (128), less the leader fence's compare.
pub const PRUNE_CHUNK: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} `{name}` already exists; use PUT to replace it")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("invalid spec: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<SpecError>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Object(#[from] ObjectError),
}

pub type Result<T> = std::result::Result<T, ControlPlaneError>;

pub struct ControlPlane {
    pub store: Arc<dyn Store>,
    pub scheduler: Scheduler,
    /// The scheduler's placement latency and pending reasons, for `/metrics`.
    pub scheduling: crate::scheduler::SchedulingMetrics,
    pub timers: Timers,
    /// Where services get their virtual addresses.
    pub service_range: ipnetwork::Ipv4Network,
    /// Last heartbeat per node, in memory only: heartbeats do not wear the disk.
    heartbeats: Mutex<HashMap<String, u64>>,
    /// Per node, the last time a peer's probe reached it (from the peers' heartbeats): a
    /// node the server cannot hear but its peers reach is not lost. In memory only.
    peer_seen: Mutex<HashMap<String, u64>>,
    /// Last usage reported per instance, in memory only: measurements are not durable
    /// state, and a store write per stats report was most of what the server wrote.
    usage: Mutex<HashMap<String, tugboat_api::model::InstanceStats>>,
    /// Last usage of each volume per node (volume, node), in memory only.
    volume_usage: Mutex<HashMap<(String, String), tugboat_api::model::VolumeUsage>>,
    /// The alert level (0, 80, 95) each (volume, node) last reached: one event per crossing.
    volume_alerts: Mutex<HashMap<(String, String), u64>>,
    /// Per autoscaled service, what its autoscaler remembers (in memory).
    pub(crate) autoscale: Mutex<HashMap<String, crate::controllers::autoscale::History>>,
    ids: Mutex<u64>,
    event_seq: AtomicU64,
    /// While this server leads on a shared store: the compare every controller write
    /// carries (the leader key still at the revision this server's campaign wrote it), so a
    /// deposed leader's late write fails. None on the embedded store: one server, no fence.
    leader_fence: Mutex<Option<Compare>>,
    role: Mutex<Role>,
    /// Host autoscaling (`--node-pools`): the pools and what their autoscaler remembers.
    pub node_pools: Option<Arc<crate::nodepools::NodePools>>,
    /// The agents' instance watches, fed from one store watch ([`feed`]).
    pub(crate) feed: Arc<feed::InstanceFeed>,
    /// What the controllers read: the cluster decoded once, kept current from a watch.
    pub(crate) cache: Arc<crate::controllers::cache::ObjectCache>,
}

/// What a server does on its store: the embedded store's server is always the leader; on
/// etcd one server leads (runs the controllers) and the others follow (serve the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        })
    }
}

/// Who writes: the API's writes need no leadership; the controllers' carry the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    Api,
    Controller,
}

impl ControlPlane {
    pub fn new(store: Arc<dyn Store>, scheduler: Scheduler, timers: Timers) -> ControlPlane {
        let seed = tugboat_api::model::now_ms()
            ^ (u64::from(std::process::id()) << 32)
            ^ 0x9e37_79b9_7f4a_7c15;
        ControlPlane {
            store,
            scheduler,
            scheduling: Default::default(),
            timers,
            service_range: tugboat_api::model::DEFAULT_SERVICE_RANGE
                .parse()
                .expect("the default service range parses"),
            heartbeats: Mutex::new(HashMap::new()),
            peer_seen: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            volume_usage: Mutex::new(HashMap::new()),
            volume_alerts: Mutex::new(HashMap::new()),
            autoscale: Mutex::new(HashMap::new()),
            ids: Mutex::new(seed | 1),
            event_seq: AtomicU64::new(0),
            leader_fence: Mutex::new(None),
            role: Mutex::new(Role::Leader),
            node_pools: None,
            feed: Arc::default(),
            cache: Arc::default(),
        }
    }

    /// This server's role (the election sets it; the embedded store's server leads).
    pub fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Become leader with `fence` on every controller write, or follower (`None`).
    pub(crate) fn set_leadership(&self, role: Role, fence: Option<Compare>) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = role;
        *self.leader_fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Commit a batch as `writer`: a controller's batch carries the leader fence, and a
    /// controller that is not the leader writes nothing (a conflict on the leader key).
    pub(crate) async fn commit_as(
        &self,
        writer: Writer,
        mut batch: Batch,
    ) -> std::result::Result<Option<Revision>, StoreError> {
        if writer == Writer::Controller && !batch.is_empty() {
            let fence = self
                .leader_fence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match (self.role(), fence) {
                (_, Some(fence)) => batch.compares.push(fence),
                (Role::Leader, None) => {}
                (Role::Follower, None) => {
                    return Err(StoreError::NotLeader {
                        key: crate::election::LEADER_KEY.into(),
                    })
                }
            }
        }
        match batch.commit(self.store()).await {
            Err(StoreError::Conflict { key, .. }) if key == crate::election::LEADER_KEY => {
                Err(StoreError::NotLeader { key })
            }
            other => other,
        }
    }

    /// Keeps an instance's latest usage (in memory).
    pub(crate) fn record_usage(&self, id: &str, stats: tugboat_api::model::InstanceStats) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), stats);
    }

    /// An instance as the API shows it: the stored record with its latest usage.
    pub(crate) fn with_usage(
        &self,
        mut instance: tugboat_api::model::Instance,
    ) -> tugboat_api::model::Instance {
        instance.stats = self
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&instance.id)
            .copied();
        instance
    }

    /// The latest usage of an instance.
    pub(crate) fn usage_of(&self, id: &str) -> Option<tugboat_api::model::InstanceStats> {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// The autoscaler's last decision for a service, in words.
    pub fn autoscale_status(&self, service: &str) -> Option<String> {
        self.autoscale
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .and_then(|h| h.last.clone())
    }

    /// Forgets the usage of instances that are gone (`live` are all that exist).
    pub(crate) fn prune_usage(&self, live: &std::collections::HashSet<&str>) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id.as_str()));
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// A fresh instance id: `<service>-<template>-<random>`.
    pub fn new_instance_id(&self, service: &str, template_hash: &str) -> String {
        let mut state = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        // xorshift64: ids need to be unique, not secret.
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = (0..5)
            .map(|i| alphabet[((x >> (i * 6)) % 36) as usize] as char)
            .collect();
        format!(
            "{service}-{}-{suffix}",
            &template_hash[..template_hash.len().min(5)]
        )
    }

    pub fn heartbeats(&self) -> HashMap<String, u64> {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One node's last heartbeat, without copying the map: every heartbeat reads it, and a
    /// copy of 5,000 nodes' entries per heartbeat was most of a busy server's time (malloc
    /// and free, in the control-plane benchmark's profile).
    pub fn heartbeat_of(&self, node: &str) -> Option<u64> {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
    }

    pub(crate) fn record_heartbeat(&self, node: &str, at_ms: u64) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.into(), at_ms);
    }

    pub(crate) fn forget_heartbeat(&self, node: &str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.peer_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// What this server heard from agents (for the relay to the leader).
    pub(crate) fn liveness(&self) -> crate::liveness::Relay {
        crate::liveness::Relay {
            server_now_ms: tugboat_api::model::now_ms(),
            heartbeats: self.heartbeats(),
            peer_seen: self.peer_seen(),
            usage: self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Merge what another server heard (its write arrived at `received_ms`): the later of
    /// each heartbeat, peer view and usage report wins.
    pub(crate) fn merge_liveness(&self, relay: &crate::liveness::Relay, received_ms: u64) {
        use crate::liveness::shifted;
        let later = |map: &Mutex<HashMap<String, u64>>, from: &HashMap<String, u64>| {
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            for (node, at) in from {
                let at = shifted(*at, relay, received_ms);
                let entry = map.entry(node.clone()).or_insert(at);
                *entry = (*entry).max(at);
            }
        };
        later(&self.heartbeats, &relay.heartbeats);
        later(&self.peer_seen, &relay.peer_seen);
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (id, stats) in &relay.usage {
            if usage.get(id).is_none_or(|known| known.at_ms < stats.at_ms) {
                usage.insert(id.clone(), *stats);
            }
        }
    }

    pub fn peer_seen(&self) -> HashMap<String, u64> {
        self.peer_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What a node's heartbeat says of its peers: each one's last answered probe, as a
    /// time on the server's clock (the report carries durations, so clocks may differ).
    pub(crate) fn record_peer_views(
        &self,
        observer: &str,
        beat: &tugboat_api::wire::Heartbeat,
        now_ms: u64,
    ) {
        let mut seen = self.peer_seen.lock().unwrap_or_else(|p| p.into_inner());
        for peer in &beat.peers {
            if peer.node == observer {
                continue;
            }
            let Some(ago) = peer.seen_ago_ms else {
                continue;
            };
            let at = now_ms.saturating_sub(ago);
            let entry = seen.entry(peer.node.clone()).or_insert(0);
            *entry = (*entry).max(at);
        }
    }

    /// Add an event to a batch.
    pub fn event(
        &self,
        batch: &mut Batch,
        kind: ObjectKind,
        name: &str,
        reason: &str,
        message: String,
    ) {
        let time_ms = tugboat_api::model::now_ms();
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            time_ms,
            kind,
            name: name.into(),
            reason: reason.into(),
            message,
        };
        batch.put(format!("{EVENTS}{time_ms:013}-{seq:08}"), &event);
    }

    /// Delete the oldest events beyond [`EVENTS_KEPT`], [`PRUNE_CHUNK`] to a transaction.
    pub async fn prune_events(&self) -> Result<()> {
        let listing = self.store.list(EVENTS).await?;
        if listing.items.len() <= EVENTS_KEPT {
            return Ok(());
        }
        // A few hundred operations per transaction: a burst of placements leaves tens of
        // thousands of events, and one transaction of them all is refused by etcd
        // (`--max-txn-ops`, "invalid argument"), so the events were never pruned.
        for chunk in listing.items[..listing.items.len() - EVENTS_KEPT].chunks(PRUNE_CHUNK) {
            let mut batch = Batch::default();
            for kv in chunk {
                batch.delete(kv.key.clone());
            }
            self.commit_as(Writer::Controller, batch).await?;
        }
        Ok(())
    }
}

/// The service name inside an instance id (`web-api-1a2b3-x9y8z` -> `web-api`).
pub fn service_of_instance(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, '-');
    let (_, _, service) = (parts.next()?, parts.next()?, parts.next()?);
    (!service.is_empty()).then_some(service)
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_ids_name_their_service() {
        let cp = super::ControlPlane::new(
            std::sync::Arc::new(crate::store::EmbeddedStore::in_memory()),
            Default::default(),
            Default::default(),
        );
        let a = cp.new_instance_id("web-api", "0123456789");
        let b = cp.new_instance_id("web-api", "0123456789");
        assert_ne!(a, b);
        assert!(a.starts_with("web-api-01234-"), "{a}");
        assert_eq!(super::service_of_instance(&a), Some("web-api"));
        assert_eq!(super::service_of_instance("nodash"), None);
    }

    #[tokio::test]
    async fn old_events_are_pruned_a_chunk_at_a_time() {
        use super::{EVENTS_KEPT, PRUNE_CHUNK};
        use crate::store::Store;
        let store = std::sync::Arc::new(crate::store::EmbeddedStore::in_memory());
        let cp = super::ControlPlane::new(store.clone(), Default::default(), Default::default());
        let mut batch = crate::objects::Batch::default();
        let extra = 2 * PRUNE_CHUNK + 7;
        for i in 0..EVENTS_KEPT + extra {
            cp.event(
                &mut batch,
                tugboat_api::model::ObjectKind::Node,
                "n1",
                "test",
                format!("event {i}"),
            );
        }
        batch.commit(store.as_ref()).await.unwrap();
        let before = store.current_revision().await.unwrap();
        cp.prune_events().await.unwrap();
        let left = store.list(tugboat_api::model::EVENTS).await.unwrap();
        assert_eq!(left.items.len(), EVENTS_KEPT);
        assert_eq!(
            left.revision - before,
            3,
            "{extra} deletes in 3 transactions"
        );
        let first: tugboat_api::model::Event =
            serde_json::from_slice(&left.items[0].value).unwrap();
        assert_eq!(first.message, format!("event {extra}"), "the oldest went");
    }

    #[tokio::test]
    async fn created_services_get_distinct_addresses_that_updates_keep() {
        use tugboat_api::spec::{ServiceSpec, SpecFile};
        let cp = super::ControlPlane::new(
            std::sync::Arc::new(crate::store::EmbeddedStore::in_memory()),
            Default::default(),
            Default::default(),
        );
        let file = |image: &str| SpecFile {
            services: ["web", "db"]
                .iter()
                .map(|n| (n.to_string(), ServiceSpec::new(image)))
                .collect(),
            volumes: Default::default(),
        };
        cp.apply(file("x:1")).await.unwrap();
        let one = cp
            .create_service("cache", ServiceSpec::new("c:1"))
            .await
            .unwrap();
        cp.apply(file("x:2")).await.unwrap();
        let addresses: Vec<_> = cp
            .list_services()
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| (s.name, s.address))
            .collect();
        let ip = |a: &str| Some(a.parse().unwrap());
        assert_eq!(
            addresses,
            [
                ("cache".to_string(), ip("10.89.0.3")),
                ("db".to_string(), ip("10.89.0.1")),
                ("web".to_string(), ip("10.89.0.2")),
            ]
        );
        assert_eq!(one.address, ip("10.89.0.3"));
    }

    #[tokio::test]
    async fn a_deposed_leaders_controller_writes_fail_and_api_writes_do_not() {
        use super::{ControlPlane, Role, Writer};
        use crate::election::LEADER_KEY;
        use crate::objects::Batch;
        use crate::store::{put, Compare, EmbeddedStore, Store, StoreError};
        use tugboat_api::spec::ServiceSpec;
        let store = std::sync::Arc::new(EmbeddedStore::in_memory());
        let cp = ControlPlane::new(store.clone(), Default::default(), Default::default());
        // Won the campaign at this revision of the leader key.
        let term = put(store.as_ref(), LEADER_KEY, b"me".to_vec())
            .await
            .unwrap();
        cp.set_leadership(
            Role::Leader,
            Some(Compare::ModRevision {
                key: LEADER_KEY.into(),
                revision: term,
            }),
        );
        let write = |key: &str| {
            let mut batch = Batch::default();
            batch.put(key.into(), &serde_json::json!({"k": key}));
            batch
        };
        cp.commit_as(Writer::Controller, write("/x/while-leading"))
            .await
            .unwrap();

        // Another server won a later term; this one has not noticed yet.
        put(store.as_ref(), LEADER_KEY, b"other".to_vec())
            .await
            .unwrap();
        let err = cp
            .commit_as(Writer::Controller, write("/x/late"))
            .await
            .unwrap_err();
        assert!(matches!(&err, StoreError::NotLeader { .. }), "{err}");
        assert!(store.get("/x/late").await.unwrap().is_none());
        // Its controllers create nothing; its API still serves writes.
        cp.create_service("web", ServiceSpec::new("app:1"))
            .await
            .unwrap();
        crate::controllers::runner::reconcile_once(&cp)
            .await
            .unwrap();
        assert!(store.list("/instances/").await.unwrap().items.is_empty());

        // A follower without a fence writes nothing as a controller either.
        cp.set_leadership(Role::Follower, None);
        assert!(cp
            .commit_as(Writer::Controller, write("/x/f"))
            .await
            .is_err());
        assert_eq!(cp.role(), Role::Follower);
    }
}
