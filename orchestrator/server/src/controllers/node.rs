//! The node reconciler: nodes, their last heartbeats, their instances and the time in;
//! status changes and lost instances out.

use std::collections::HashMap;
use tugboat_api::model::{Instance, InstancePhase, Node, NodeStatus};

/// How often nodes heartbeat, how long one may be silent before it is not ready (nothing new
/// is placed on it), and how long before it is lost (its instances are replaced elsewhere).
/// A server setting (`tugboat server --profile lan|edge`, or each timer by its flag); the
/// agents take the heartbeat interval from the server when they register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimers {
    pub heartbeat_every_ms: u64,
    pub not_ready_after_ms: u64,
    pub lost_after_ms: u64,
}

impl NodeTimers {
    /// A LAN: a heartbeat every 0.5 s, not ready after 1.5 s, lost after 3 s without the
    /// server or any peer reaching it. A link down for 2 s stays below the lost grace
    /// (2 s + one heartbeat interval), and a node's death is acted on about 3 s later.
    pub const LAN: NodeTimers = NodeTimers {
        heartbeat_every_ms: 500,
        not_ready_after_ms: 1_500,
        lost_after_ms: 3_000,
    };
    /// Slow or metered links (cellular, satellite): a heartbeat every 5 s, not ready after
    /// 15 s, lost after 60 s.
    pub const EDGE: NodeTimers = NodeTimers {
        heartbeat_every_ms: 5_000,
        not_ready_after_ms: 15_000,
        lost_after_ms: 60_000,
    };

    pub fn profile(name: &str) -> Option<NodeTimers> {
        match name {
            "lan" => Some(Self::LAN),
            "edge" => Some(Self::EDGE),
            _ => None,
        }
    }

    /// Timers that cannot work: a grace shorter than two heartbeats would call a healthy
    /// node late, and lost before not-ready skips the state where nothing new is placed.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat_every_ms == 0 {
            return Err("--heartbeat-every must be more than 0".into());
        }
        if self.not_ready_after_ms < 2 * self.heartbeat_every_ms {
            return Err(format!(
                "--node-not-ready-after ({} ms) must be at least two heartbeats (--heartbeat-every {} ms)",
                self.not_ready_after_ms, self.heartbeat_every_ms
            ));
        }
        if self.lost_after_ms < self.not_ready_after_ms {
            return Err(format!(
                "--node-lost-after ({} ms) must not be shorter than --node-not-ready-after ({} ms)",
                self.lost_after_ms, self.not_ready_after_ms
            ));
        }
        Ok(())
    }
}

impl Default for NodeTimers {
    fn default() -> Self {
        Self::LAN
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    SetStatus {
        node: String,
        status: NodeStatus,
        silent_ms: u64,
    },
    /// The instance's node is lost: mark it, so its service replaces it elsewhere.
    MarkLost {
        service: String,
        id: String,
        node: String,
    },
}

/// Status for a node the server has not heard for `silent_ms`, and that neither the server
/// nor any peer has reached for `unreached_ms` (at most `silent_ms`).
pub fn status_after(silent_ms: u64, unreached_ms: u64, timers: NodeTimers) -> NodeStatus {
    if unreached_ms > timers.lost_after_ms {
        NodeStatus::Lost
    } else if silent_ms > timers.not_ready_after_ms {
        NodeStatus::NotReady
    } else {
        NodeStatus::Ready
    }
}

/// What the server knows of a node's liveness: its last heartbeat (`heartbeats`) and the
/// last time a peer's probe reached it (`peer_seen`, from the peers' heartbeats).
pub struct Liveness<'a> {
    pub heartbeats: &'a HashMap<String, u64>,
    pub peer_seen: &'a HashMap<String, u64>,
}

impl Liveness<'_> {
    /// (ms since the server heard it, ms since anyone reached it).
    fn silences(&self, node: &Node, now_ms: u64) -> (u64, u64) {
        let heard = self
            .heartbeats
            .get(&node.name)
            .copied()
            .unwrap_or(0)
            .max(node.last_heartbeat_ms)
            .max(node.registered_at_ms);
        let reached = heard.max(self.peer_seen.get(&node.name).copied().unwrap_or(0));
        (now_ms.saturating_sub(heard), now_ms.saturating_sub(reached))
    }
}

/// When the next status change can happen if nothing is heard meanwhile (for the
/// controllers' timer: a node is declared lost on time, not on the next periodic pass).
pub fn next_deadline_ms(nodes: &[Node], live: &Liveness, now_ms: u64, timers: NodeTimers) -> u64 {
    let mut next = u64::MAX;
    for node in nodes {
        let (silent, unreached) = live.silences(node, now_ms);
        for (elapsed, grace) in [
            (silent, timers.not_ready_after_ms),
            (unreached, timers.lost_after_ms),
        ] {
            if elapsed <= grace {
                next = next.min(now_ms + (grace - elapsed) + 1);
            }
        }
    }
    next
}

/// Node statuses and lost instances. A node is not ready when the server has not heard it
/// for the not-ready grace, and lost when neither the server nor any peer has reached it for
/// the lost grace. When no node at all has been heard within the not-ready grace, the
/// server is the one cut off (or it was stalled): nothing is declared lost, as Kubernetes'
/// node lifecycle controller stops evicting in a full disruption.
pub fn reconcile_nodes<I: std::borrow::Borrow<Instance>>(
    nodes: &[Node],
    live: &Liveness,
    instances: &[I],
    now_ms: u64,
    timers: NodeTimers,
) -> Vec<NodeAction> {
    let mut actions = vec![];
    let mut lost = std::collections::HashSet::new();
    let known: std::collections::HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let full_disruption = !nodes.is_empty()
        && nodes
            .iter()
            .all(|n| live.silences(n, now_ms).0 > timers.not_ready_after_ms);
    for node in nodes {
        let (silent_ms, unreached_ms) = live.silences(node, now_ms);
        let mut status = status_after(silent_ms, unreached_ms, timers);
        if status == NodeStatus::Lost && full_disruption && node.status != NodeStatus::Lost {
            status = NodeStatus::NotReady;
        }
        if status != node.status {
            actions.push(NodeAction::SetStatus {
                node: node.name.clone(),
                status,
                silent_ms,
            });
        }
        if status == NodeStatus::Lost {
            lost.insert(node.name.as_str());
        }
    }
    for instance in instances.iter().map(I::borrow) {
        let Some(node) = instance.node.as_deref() else {
            continue;
        };
        let on_lost = lost.contains(node) || !known.contains(node);
        if on_lost && !matches!(instance.phase, InstancePhase::Lost | InstancePhase::Failed) {
            actions.push(NodeAction::MarkLost {
                service: instance.service.clone(),
                id: instance.id.clone(),
                node: node.into(),
            });
        }
    }
    actions
}
