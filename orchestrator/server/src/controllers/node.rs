//! The node reconciler: nodes, their last heartbeats, their instances and the time in;
//! status changes and lost instances out.

use std::collections::HashMap;
use tugboat_api::model::{Instance, InstancePhase, Node, NodeStatus};

/// How long a node may be silent before it is not ready, and before it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimers {
    pub not_ready_after_ms: u64,
    pub lost_after_ms: u64,
}

impl Default for NodeTimers {
    fn default() -> Self {
        NodeTimers {
            not_ready_after_ms: 15_000,
            lost_after_ms: 60_000,
        }
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

/// Status for a node silent for `silent_ms`.
pub fn status_after(silent_ms: u64, timers: NodeTimers) -> NodeStatus {
    if silent_ms > timers.lost_after_ms {
        NodeStatus::Lost
    } else if silent_ms > timers.not_ready_after_ms {
        NodeStatus::NotReady
    } else {
        NodeStatus::Ready
    }
}

pub fn reconcile_nodes(
    nodes: &[Node],
    heartbeats: &HashMap<String, u64>,
    instances: &[Instance],
    now_ms: u64,
    timers: NodeTimers,
) -> Vec<NodeAction> {
    let mut actions = vec![];
    let mut lost = std::collections::HashSet::new();
    let known: std::collections::HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    for node in nodes {
        let last = heartbeats
            .get(&node.name)
            .copied()
            .unwrap_or(0)
            .max(node.last_heartbeat_ms)
            .max(node.registered_at_ms);
        let silent_ms = now_ms.saturating_sub(last);
        let status = status_after(silent_ms, timers);
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
    for instance in instances {
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
