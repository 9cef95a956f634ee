//! Filters: can this node take this instance at all? Cheap ones first.

use super::cluster::{ClusterState, NodeState, PlacementRequest};
use std::fmt;
use tugboat_api::spec::{human_bytes, human_cpu, Constraint, ConstraintOperator, Protocol};

/// Why a node cannot take an instance. Equal reasons are grouped in "why pending".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    NotReady,
    Cordoned,
    /// Millicores the instance needs, and the most a node had free (the largest over the
    /// nodes grouped under this reason).
    NotEnoughCpu {
        need: u64,
        free: u64,
    },
    /// Bytes.
    NotEnoughMemory {
        need: u64,
        free: u64,
    },
    NotEnoughPids {
        need: u64,
        free: u64,
    },
    LabelMismatch {
        key: String,
        value: String,
    },
    ConstraintUnmet(String),
    PortInUse {
        port: u16,
        protocol: Protocol,
    },
    AffinityUnmet {
        service: String,
    },
    AntiAffinity {
        service: String,
    },
    VolumeElsewhere {
        volume: String,
        node: String,
    },
    /// The node holding a local volume is not ready (or not registered): its users wait.
    VolumeNodeDown {
        volume: String,
        node: String,
    },
    RuntimeMissing {
        runtime: String,
    },
}

impl Rejection {
    /// The reason with its numbers taken out, so nodes short of the same thing group
    /// together; and the node's free amount, if it has one.
    pub fn grouped(&self) -> (Rejection, Option<u64>) {
        match self {
            Rejection::NotEnoughCpu { need, free } => (
                Rejection::NotEnoughCpu {
                    need: *need,
                    free: 0,
                },
                Some(*free),
            ),
            Rejection::NotEnoughMemory { need, free } => (
                Rejection::NotEnoughMemory {
                    need: *need,
                    free: 0,
                },
                Some(*free),
            ),
            Rejection::NotEnoughPids { need, free } => (
                Rejection::NotEnoughPids {
                    need: *need,
                    free: 0,
                },
                Some(*free),
            ),
            other => (other.clone(), None),
        }
    }

    /// The grouped reason with the largest free amount put back.
    pub fn with_free(self, largest: u64) -> Rejection {
        match self {
            Rejection::NotEnoughCpu { need, .. } => Rejection::NotEnoughCpu {
                need,
                free: largest,
            },
            Rejection::NotEnoughMemory { need, .. } => Rejection::NotEnoughMemory {
                need,
                free: largest,
            },
            Rejection::NotEnoughPids { need, .. } => Rejection::NotEnoughPids {
                need,
                free: largest,
            },
            other => other,
        }
    }
}

impl Rejection {
    /// The reason's kind, without its numbers: a label for `/metrics`.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NotReady => "node_not_ready",
            Rejection::Cordoned => "cordoned",
            Rejection::NotEnoughCpu { .. } => "cpu",
            Rejection::NotEnoughMemory { .. } => "memory",
            Rejection::NotEnoughPids { .. } => "pids",
            Rejection::LabelMismatch { .. } => "label",
            Rejection::ConstraintUnmet(_) => "constraint",
            Rejection::PortInUse { .. } => "host_port",
            Rejection::AffinityUnmet { .. } => "affinity",
            Rejection::AntiAffinity { .. } => "anti_affinity",
            Rejection::VolumeElsewhere { .. } => "volume_elsewhere",
            Rejection::VolumeNodeDown { .. } => "volume_node_down",
            Rejection::RuntimeMissing { .. } => "runtime",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady => write!(f, "not ready"),
            Rejection::Cordoned => write!(f, "cordoned"),
            Rejection::NotEnoughCpu { need, free } => write!(
                f,
                "not enough cpu (needs {}, largest free {})",
                human_cpu(*need),
                human_cpu(*free)
            ),
            Rejection::NotEnoughMemory { need, free } => write!(
                f,
                "not enough memory (needs {}, largest free {})",
                human_bytes(*need),
                human_bytes(*free)
            ),
            Rejection::NotEnoughPids { need, free } => {
                write!(f, "not enough pids (needs {need}, largest free {free})")
            }
            Rejection::LabelMismatch { key, value } => write!(f, "label {key}={value} missing"),
            Rejection::ConstraintUnmet(c) => write!(f, "constraint {c}"),
            Rejection::PortInUse { port, protocol } => {
                write!(
                    f,
                    "host port {port}/{} in use",
                    if *protocol == Protocol::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    }
                )
            }
            Rejection::AffinityUnmet { service } => {
                write!(f, "no instance of `{service}` (affinity)")
            }
            Rejection::AntiAffinity { service } => write!(f, "runs `{service}` (anti-affinity)"),
            Rejection::VolumeElsewhere { volume, node } => {
                write!(f, "volume `{volume}` is on node {node}")
            }
            Rejection::VolumeNodeDown { volume, node } => write!(
                f,
                "local volume `{volume}` is on node {node}, which is not ready: its users wait \
                 for it (or restore a snapshot of it elsewhere)"
            ),
            Rejection::RuntimeMissing { runtime } => write!(f, "no runtime {runtime}"),
        }
    }
}

/// One feasibility check.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        cluster: &ClusterState,
    ) -> Result<(), Rejection>;
}

pub struct NodeReady;
impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "node-ready"
    }
    fn check(
        &self,
        _: &PlacementRequest,
        node: &NodeState,
        _: &ClusterState,
    ) -> Result<(), Rejection> {
        if !node.ready {
            Err(Rejection::NotReady)
        } else if node.cordoned {
            Err(Rejection::Cordoned)
        } else {
            Ok(())
        }
    }
}

pub struct ResourcesFit;
impl Filter for ResourcesFit {
    fn name(&self) -> &'static str {
        "resources-fit"
    }
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        _: &ClusterState,
    ) -> Result<(), Rejection> {
        let (need, used, cap) = (&request.resources, &node.allocated, &node.capacity);
        if used.memory_bytes + need.memory_bytes > cap.memory_bytes {
            return Err(Rejection::NotEnoughMemory {
                need: need.memory_bytes,
                free: cap.memory_bytes.saturating_sub(used.memory_bytes),
            });
        }
        if used.cpu_millis + need.cpu_millis > cap.cpu_millis {
            return Err(Rejection::NotEnoughCpu {
                need: need.cpu_millis,
                free: cap.cpu_millis.saturating_sub(used.cpu_millis),
            });
        }
        // A node that reports no pid limit (0) has no pid accounting.
        if cap.pids > 0 && used.pids + need.pids > cap.pids {
            return Err(Rejection::NotEnoughPids {
                need: need.pids,
                free: cap.pids.saturating_sub(used.pids),
            });
        }
        Ok(())
    }
}

pub struct LabelsMatch;
impl Filter for LabelsMatch {
    fn name(&self) -> &'static str {
        "labels-and-constraints"
    }
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        _: &ClusterState,
    ) -> Result<(), Rejection> {
        for (key, value) in &request.placement.node_labels {
            if node.labels.get(key) != Some(value) {
                return Err(Rejection::LabelMismatch {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        for constraint in &request.placement.constraints {
            if !constraint_holds(constraint, node) {
                return Err(Rejection::ConstraintUnmet(constraint.to_string()));
            }
        }
        Ok(())
    }
}

pub fn constraint_holds(constraint: &Constraint, node: &NodeState) -> bool {
    let value = node.labels.get(&constraint.key);
    match constraint.operator {
        ConstraintOperator::In => value.is_some_and(|v| constraint.values.contains(v)),
        ConstraintOperator::NotIn => value.is_none_or(|v| !constraint.values.contains(v)),
        ConstraintOperator::Exists => value.is_some(),
        ConstraintOperator::DoesNotExist => value.is_none(),
    }
}

pub struct PortsFree;
impl Filter for PortsFree {
    fn name(&self) -> &'static str {
        "ports-free"
    }
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        _: &ClusterState,
    ) -> Result<(), Rejection> {
        for &(protocol, port) in &request.host_ports {
            if node.host_ports.contains(&(protocol, port)) {
                return Err(Rejection::PortInUse { port, protocol });
            }
        }
        Ok(())
    }
}

/// Required affinity and anti-affinity between services, at node scope.
pub struct ServiceAffinity;
impl Filter for ServiceAffinity {
    fn name(&self) -> &'static str {
        "service-affinity"
    }
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        _: &ClusterState,
    ) -> Result<(), Rejection> {
        for rule in request.placement.affinity.iter().filter(|r| r.required) {
            if !node.runs(&rule.service) {
                return Err(Rejection::AffinityUnmet {
                    service: rule.service.clone(),
                });
            }
        }
        for rule in request
            .placement
            .anti_affinity
            .iter()
            .filter(|r| r.required)
        {
            if node.runs(&rule.service) {
                return Err(Rejection::AntiAffinity {
                    service: rule.service.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A named read-write volume lives on one node: instances using it go there.
pub struct VolumeAvailable;
impl Filter for VolumeAvailable {
    fn name(&self) -> &'static str {
        "volume-available"
    }
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        cluster: &ClusterState,
    ) -> Result<(), Rejection> {
        for volume in &request.named_volumes {
            if cluster.shared_volumes.contains(volume) {
                continue;
            }
            if let Some(home) = cluster.homeless_volumes.get(volume) {
                return Err(Rejection::VolumeNodeDown {
                    volume: volume.clone(),
                    node: home.clone(),
                });
            }
            if let Some(&at) = cluster.volume_nodes.get(volume) {
                let holder = &cluster.nodes[at];
                if !holder.ready {
                    return Err(Rejection::VolumeNodeDown {
                        volume: volume.clone(),
                        node: holder.name.clone(),
                    });
                }
                if holder.name != node.name {
                    return Err(Rejection::VolumeElsewhere {
                        volume: volume.clone(),
                        node: holder.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The default pipeline, cheapest first.
pub fn default_filters() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(NodeReady),
        Box::new(RuntimeAvailable),
        Box::new(ResourcesFit),
        Box::new(LabelsMatch),
        Box::new(PortsFree),
        Box::new(ServiceAffinity),
        Box::new(VolumeAvailable),
    ]
}

/// The node has the OCI runtime the service names (`runtime: runc`).
pub struct RuntimeAvailable;
impl Filter for RuntimeAvailable {
    fn name(&self) -> &'static str {
        "runtime"
    }
    fn check(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        _: &ClusterState,
    ) -> Result<(), Rejection> {
        match &request.runtime {
            Some(runtime) if !node.runtimes.contains(runtime) => Err(Rejection::RuntimeMissing {
                runtime: runtime.clone(),
            }),
            _ => Ok(()),
        }
    }
}
