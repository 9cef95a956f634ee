//! The scheduler: a pipeline of filters (can this node take it?), then scorers (how good is
//! it?), then the pick. Placements are planned against a snapshot and committed through
//! [`Scheduler::commit`], which runs the very same filters against the current state, so a
//! plan made from stale data can never overcommit a node.

pub mod cluster;
pub mod filters;
pub mod preempt;
pub mod scorers;
#[cfg(test)]
mod tests;

pub use cluster::{ClusterState, NodeState, PlacementRequest};
pub use filters::{Filter, Rejection};
pub use preempt::{choose_preemption, Preemption, Resident};
pub use scorers::Scorer;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Stop looking after this many feasible nodes and pick the best of them (0: look at all).
    /// Like Nomad's and kube-scheduler's sampling: good placements at a bounded cost.
    pub feasible_sample: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            feasible_sample: 100,
        }
    }
}

/// Where an instance goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub node_index: usize,
    pub node: String,
    pub score: f64,
}

/// No node can take the instance; the reasons, grouped by how many nodes gave each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    /// (number of nodes, reason), most common first.
    pub reasons: Vec<(usize, Rejection)>,
}

impl Unplaceable {
    /// The most common reason's kind ([`Rejection::kind`]); `no_nodes` with none.
    pub fn kind(&self) -> &'static str {
        self.reasons
            .first()
            .map_or("no_nodes", |(_, why)| why.kind())
    }
}

/// What the scheduler's passes saw, for `/metrics`: how long instances waited to be placed,
/// and why the pending ones are.
pub struct SchedulingMetrics {
    /// From an instance's creation to its placement on a node.
    pub placement_latency: prometheus_client::metrics::histogram::Histogram,
    /// Per pending instance, the kind of its reason at the last pass.
    pending: std::sync::Mutex<std::collections::HashMap<String, &'static str>>,
}

impl Default for SchedulingMetrics {
    fn default() -> Self {
        SchedulingMetrics {
            // 10 ms to ~5.5 min.
            placement_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 16),
            ),
            pending: Default::default(),
        }
    }
}

impl SchedulingMetrics {
    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, &'static str>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id`, made at `created_at_ms`, was placed now.
    pub fn placed(&self, id: &str, created_at_ms: u64) {
        self.pending().remove(id);
        let waited = tugboat_api::model::now_ms().saturating_sub(created_at_ms);
        self.placement_latency.observe(waited as f64 / 1000.0);
    }

    /// `id` stays pending, for a reason of this kind.
    pub fn unplaceable(&self, id: &str, kind: &'static str) {
        self.pending().insert(id.to_string(), kind);
    }

    /// A scheduling pass starts with these pending instances: the others (placed, or
    /// deleted) are forgotten, so the map holds no more than what is pending now.
    pub fn keep_only<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let ids: std::collections::HashSet<&str> = ids.collect();
        self.pending().retain(|id, _| ids.contains(id.as_str()));
    }

    /// The pending instances by the kind of their reason, as the last pass saw them.
    pub fn pending_by_reason(&self) -> BTreeMap<&'static str, i64> {
        let mut counts = BTreeMap::new();
        for kind in self.pending().values() {
            *counts.entry(*kind).or_insert(0) += 1;
        }
        counts
    }
}

impl fmt::Display for Unplaceable {
    /// "3 nodes: not enough memory; 1 node: constraint zone=east"
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return f.write_str("no nodes are registered");
        }
        let parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(n, why)| format!("{n} node{}: {why}", if *n == 1 { "" } else { "s" }))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

pub struct Scheduler {
    filters: Vec<Box<dyn Filter>>,
    scorers: Vec<Box<dyn Scorer>>,
    options: SchedulerOptions,
    /// Where the next search starts, so equal nodes share the load.
    cursor: AtomicUsize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new(SchedulerOptions::default())
    }
}

impl Scheduler {
    pub fn new(options: SchedulerOptions) -> Scheduler {
        Scheduler::with_pipeline(
            filters::default_filters(),
            scorers::default_scorers(),
            options,
        )
    }

    pub fn with_pipeline(
        filters: Vec<Box<dyn Filter>>,
        scorers: Vec<Box<dyn Scorer>>,
        options: SchedulerOptions,
    ) -> Scheduler {
        Scheduler {
            filters,
            scorers,
            options,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The fit check: used by planning and by commit alike.
    pub fn feasible(
        &self,
        request: &PlacementRequest,
        node: &NodeState,
        cluster: &ClusterState,
    ) -> Result<(), Rejection> {
        self.filters
            .iter()
            .try_for_each(|f| f.check(request, node, cluster))
    }

    /// Choose a node for `request` without changing anything.
    pub fn plan(
        &self,
        cluster: &ClusterState,
        request: &PlacementRequest,
    ) -> Result<Placement, Unplaceable> {
        let n = cluster.nodes.len();
        let scorers: Vec<(f64, &dyn Scorer)> = self
            .scorers
            .iter()
            .map(|s| (s.weight(request), s.as_ref()))
            .filter(|(w, _)| *w > 0.0)
            .collect();
        let sample = if self.options.feasible_sample == 0 {
            n
        } else {
            self.options.feasible_sample
        };
        let start = if n == 0 {
            0
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed) % n
        };
        let mut best: Option<(usize, f64)> = None;
        let mut feasible = 0usize;
        for offset in 0..n {
            let i = (start + offset) % n;
            let node = &cluster.nodes[i];
            if self.feasible(request, node, cluster).is_err() {
                continue;
            }
            let score: f64 = scorers
                .iter()
                .map(|(w, s)| w * s.score(request, node, cluster))
                .sum();
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
            }
            feasible += 1;
            if feasible >= sample {
                break;
            }
        }
        match best {
            Some((i, score)) => Ok(Placement {
                node_index: i,
                node: cluster.nodes[i].name.clone(),
                score,
            }),
            None => Err(self.explain(cluster, request)),
        }
    }

    /// Why no node fits: every filter each node fails (not only the first), grouped, with
    /// the largest free amount for the resources short everywhere.
    pub fn explain(&self, cluster: &ClusterState, request: &PlacementRequest) -> Unplaceable {
        let mut counts: BTreeMap<Rejection, (usize, u64)> = BTreeMap::new();
        for node in &cluster.nodes {
            for filter in &self.filters {
                if let Err(why) = filter.check(request, node, cluster) {
                    let (group, free) = why.grouped();
                    let entry = counts.entry(group).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.max(free.unwrap_or(0));
                }
            }
        }
        let mut reasons: Vec<(usize, Rejection)> = counts
            .into_iter()
            .map(|(why, (n, free))| (n, why.with_free(free)))
            .collect();
        reasons.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Unplaceable { reasons }
    }

    /// Re-check a planned placement against the current state and reserve it.
    pub fn commit(
        &self,
        cluster: &mut ClusterState,
        request: &PlacementRequest,
        node_index: usize,
    ) -> Result<(), Rejection> {
        self.feasible(request, &cluster.nodes[node_index], cluster)?;
        cluster.reserve(request, node_index);
        Ok(())
    }

    /// Plan and commit in one step.
    pub fn place(
        &self,
        cluster: &mut ClusterState,
        request: &PlacementRequest,
    ) -> Result<Placement, Unplaceable> {
        let placement = self.plan(cluster, request)?;
        self.commit(cluster, request, placement.node_index)
            .expect("a plan on the current state passes its own fit check");
        Ok(placement)
    }
}
