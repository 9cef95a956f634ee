//! Scorers: among feasible nodes, which is best? Each gives 0.0 (worst) to 1.0 (best).

use super::cluster::{ClusterState, NodeState, PlacementRequest};
use tugboat_api::model::Resources;
use tugboat_api::spec::ScoringStrategy;

pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;
    /// Weight of this scorer for `request` (0: does not apply).
    fn weight(&self, request: &PlacementRequest) -> f64;
    fn score(&self, request: &PlacementRequest, node: &NodeState, cluster: &ClusterState) -> f64;
}

/// CPU and memory fractions of the node in use after placing the request.
fn fractions_after(request: &PlacementRequest, node: &NodeState) -> (f64, f64) {
    let mut used = node.allocated;
    used.add(&request.resources);
    let frac = |u: u64, c: u64| {
        if c == 0 {
            1.0
        } else {
            (u as f64 / c as f64).min(1.0)
        }
    };
    (
        frac(used.cpu_millis, node.capacity.cpu_millis),
        frac(used.memory_bytes, node.capacity.memory_bytes),
    )
}

fn strategy_weight(request: &PlacementRequest, strategy: ScoringStrategy) -> f64 {
    if request.placement.strategy == strategy && request.resources != Resources::default() {
        1.0
    } else {
        0.0
    }
}

/// Fullest node first: keeps whole nodes free for big instances.
pub struct BinPack;
impl Scorer for BinPack {
    fn name(&self) -> &'static str {
        "binpack"
    }
    fn weight(&self, request: &PlacementRequest) -> f64 {
        strategy_weight(request, ScoringStrategy::Binpack)
    }
    fn score(&self, request: &PlacementRequest, node: &NodeState, _: &ClusterState) -> f64 {
        let (cpu, memory) = fractions_after(request, node);
        (cpu + memory) / 2.0
    }
}

/// Emptiest node first: spreads load and failure.
pub struct LeastAllocated;
impl Scorer for LeastAllocated {
    fn name(&self) -> &'static str {
        "least-allocated"
    }
    fn weight(&self, request: &PlacementRequest) -> f64 {
        strategy_weight(request, ScoringStrategy::Spread)
    }
    fn score(&self, request: &PlacementRequest, node: &NodeState, _: &ClusterState) -> f64 {
        let (cpu, memory) = fractions_after(request, node);
        1.0 - (cpu + memory) / 2.0
    }
}

/// CPU and memory used in the same proportion, so neither is stranded.
pub struct Balanced;
impl Scorer for Balanced {
    fn name(&self) -> &'static str {
        "balanced"
    }
    fn weight(&self, request: &PlacementRequest) -> f64 {
        strategy_weight(request, ScoringStrategy::Balanced)
    }
    fn score(&self, request: &PlacementRequest, node: &NodeState, _: &ClusterState) -> f64 {
        let (cpu, memory) = fractions_after(request, node);
        1.0 - (cpu - memory).abs()
    }
}

/// Fewer instances of the same service in this node's value of the spread label.
pub struct LabelSpread;
impl Scorer for LabelSpread {
    fn name(&self) -> &'static str {
        "label-spread"
    }
    fn weight(&self, request: &PlacementRequest) -> f64 {
        if request.placement.spread.is_some() {
            4.0
        } else {
            0.0
        }
    }
    fn score(&self, request: &PlacementRequest, node: &NodeState, cluster: &ClusterState) -> f64 {
        let Some(key) = &request.placement.spread else {
            return 0.0;
        };
        let Some(value) = node.labels.get(key) else {
            return 0.0;
        };
        1.0 / (1.0 + f64::from(cluster.spread_count(&request.service, key, value)))
    }
}

/// Fewer instances of the same service on this node: replicas apart by default.
pub struct ServiceSpread;
impl Scorer for ServiceSpread {
    fn name(&self) -> &'static str {
        "service-spread"
    }
    fn weight(&self, _: &PlacementRequest) -> f64 {
        0.5
    }
    fn score(&self, request: &PlacementRequest, node: &NodeState, _: &ClusterState) -> f64 {
        1.0 / (1.0 + f64::from(node.services.get(&request.service).copied().unwrap_or(0)))
    }
}

/// Preferred (not required) affinity and anti-affinity.
pub struct PreferredAffinity;
impl Scorer for PreferredAffinity {
    fn name(&self) -> &'static str {
        "preferred-affinity"
    }
    fn weight(&self, request: &PlacementRequest) -> f64 {
        let p = &request.placement;
        let n = p
            .affinity
            .iter()
            .chain(&p.anti_affinity)
            .filter(|r| !r.required)
            .count();
        if n == 0 {
            0.0
        } else {
            2.0
        }
    }
    fn score(&self, request: &PlacementRequest, node: &NodeState, _: &ClusterState) -> f64 {
        let p = &request.placement;
        let mut met = 0usize;
        let mut total = 0usize;
        for rule in p.affinity.iter().filter(|r| !r.required) {
            total += 1;
            met += usize::from(node.runs(&rule.service));
        }
        for rule in p.anti_affinity.iter().filter(|r| !r.required) {
            total += 1;
            met += usize::from(!node.runs(&rule.service));
        }
        met as f64 / total.max(1) as f64
    }
}

pub fn default_scorers() -> Vec<Box<dyn Scorer>> {
    vec![
        Box::new(BinPack),
        Box::new(LeastAllocated),
        Box::new(Balanced),
        Box::new(LabelSpread),
        Box::new(ServiceSpread),
        Box::new(PreferredAffinity),
    ]
}
