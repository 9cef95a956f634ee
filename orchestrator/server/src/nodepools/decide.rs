//! The pure decision of the host autoscaler: the pools' state, the cluster as the scheduler
//! sees it and the pending instances in; the adds, drains and removals out. It uses the
//! scheduler itself (the same filters) to ask "would a node of this pool take it?" and "would
//! this node's instances fit elsewhere?".

use super::{NodePool, PoolsConfig};
use crate::scheduler::{ClusterState, NodeState, PlacementRequest, Resident, Scheduler};
use std::collections::{BTreeSet, HashMap};

/// What the runner knows of one pool this pass.
#[derive(Debug, Clone, Default)]
pub struct PoolView {
    /// Registered nodes that carry the pool's label.
    pub members: Vec<String>,
    /// Nodes on their way: `add` calls running, and added nodes not registered yet.
    pub adding: u32,
    /// Members the autoscaler is draining or removing (they take nothing new and do not
    /// count toward min).
    pub leaving: BTreeSet<String>,
}

/// An instance waiting for a node, and since when.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub request: PlacementRequest,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// Call `add` this many times.
    Add { pool: String, count: u32 },
    /// Cordon the node and move its instances away (replacements first).
    Drain { pool: String, node: String },
    /// The node is drained and empty: call `remove`, then forget the node.
    Remove { pool: String, node: String },
}

/// Since when each pool node has been under the utilization threshold.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub under_since: HashMap<String, u64>,
}

pub struct Inputs<'a> {
    pub config: &'a PoolsConfig,
    pub scheduler: &'a Scheduler,
    /// Every registered node with what is reserved on it.
    pub cluster: &'a ClusterState,
    /// Instances holding resources, by node, for the drain simulation.
    pub residents: &'a [Resident],
    pub pending: &'a [Waiting],
    /// By pool name; a pool with no entry has no members and nothing in flight.
    pub views: &'a HashMap<String, PoolView>,
    pub now_ms: u64,
}

fn template(pool: &NodePool, n: usize) -> NodeState {
    NodeState::new(
        &format!("{}+new{n}", pool.name),
        pool.node_labels(),
        pool.capacity(),
    )
}

/// Requested share of a node: the larger of cpu and memory, in percent.
pub fn utilization(node: &NodeState) -> f64 {
    let share = |used: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            used as f64 * 100.0 / cap as f64
        }
    };
    share(node.allocated.cpu_millis, node.capacity.cpu_millis).max(share(
        node.allocated.memory_bytes,
        node.capacity.memory_bytes,
    ))
}

pub fn decide(inputs: &Inputs, memory: &mut Memory) -> Vec<PoolAction> {
    let config = inputs.config;
    let empty = PoolView::default();
    let view = |pool: &NodePool| inputs.views.get(&pool.name).unwrap_or(&empty);
    let mut actions = vec![];

    // Scale up: simulate the long-pending instances on the cluster as it will be (nodes on
    // their way included); one that fits nowhere gets a new node of the first pool whose
    // template takes it, and later ones may share that node.
    let mut sim = inputs.cluster.clone();
    for pool in &config.pools {
        for k in 0..view(pool).adding {
            sim.add_node(template(pool, 1_000_000 + k as usize));
        }
    }
    let delay = PoolsConfig::ms(config.pending_seconds);
    let mut waiting: Vec<&Waiting> = inputs
        .pending
        .iter()
        .filter(|w| w.since_ms.saturating_add(delay) <= inputs.now_ms)
        .collect();
    waiting.sort_by_key(|w| std::cmp::Reverse(w.request.priority));
    let mut adds: HashMap<&str, u32> = HashMap::new();
    for w in waiting {
        if inputs.scheduler.place(&mut sim, &w.request).is_ok() {
            continue;
        }
        for pool in &config.pools {
            let v = view(pool);
            let planned = adds.get(pool.name.as_str()).copied().unwrap_or(0);
            let total = (v.members.len() - v.leaving.len().min(v.members.len())) as u32
                + v.adding
                + planned;
            if total >= pool.max {
                continue;
            }
            let node = template(pool, planned as usize);
            if inputs.scheduler.feasible(&w.request, &node, &sim).is_ok() {
                sim.add_node(node);
                let i = sim.nodes.len() - 1;
                inputs
                    .scheduler
                    .commit(&mut sim, &w.request, i)
                    .expect("checked feasible on this very state");
                *adds.entry(pool.name.as_str()).or_default() += 1;
                break;
            }
        }
    }
    for pool in &config.pools {
        let v = view(pool);
        let staying = (v.members.len() - v.leaving.len().min(v.members.len())) as u32;
        let planned = adds.get(pool.name.as_str()).copied().unwrap_or(0);
        let below_min = pool.min.saturating_sub(staying + v.adding + planned);
        let count = planned + below_min;
        if count > 0 {
            actions.push(PoolAction::Add {
                pool: pool.name.clone(),
                count,
            });
        }
    }
    let growing = !actions.is_empty() || config.pools.iter().any(|p| view(p).adding > 0);

    // Removals: drained, empty nodes the autoscaler is taking away.
    for pool in &config.pools {
        for node in &view(pool).leaving {
            let Some(i) = inputs.cluster.node_index(node) else {
                continue;
            };
            if !inputs.residents.iter().any(|r| r.node_index == i) {
                actions.push(PoolAction::Remove {
                    pool: pool.name.clone(),
                    node: node.clone(),
                });
            }
        }
    }

    // Scale down: one node per pool at a time, the emptiest of those under the threshold
    // for the whole cool-down, never below min, never while growing, and only when its
    // instances fit on the other nodes.
    let cool_down = PoolsConfig::ms(config.scale_down_seconds);
    let mut members_seen = std::collections::HashSet::new();
    for pool in &config.pools {
        let v = view(pool);
        let mut candidates = vec![];
        for name in &v.members {
            members_seen.insert(name.clone());
            let Some(i) = inputs.cluster.node_index(name) else {
                continue;
            };
            let node = &inputs.cluster.nodes[i];
            if v.leaving.contains(name) || !node.ready {
                memory.under_since.remove(name);
                continue;
            }
            let used = utilization(node);
            if used < config.scale_down_utilization {
                let since = *memory
                    .under_since
                    .entry(name.clone())
                    .or_insert(inputs.now_ms);
                if inputs.now_ms.saturating_sub(since) >= cool_down {
                    candidates.push((used, name.clone(), i));
                }
            } else {
                memory.under_since.remove(name);
            }
        }
        let staying = v.members.len() - v.leaving.len().min(v.members.len());
        if growing || !v.leaving.is_empty() || staying as u32 <= pool.min {
            continue;
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        if let Some((_, name, _)) = candidates
            .into_iter()
            .find(|(_, _, i)| fits_elsewhere(inputs, *i))
        {
            actions.push(PoolAction::Drain {
                pool: pool.name.clone(),
                node: name,
            });
        }
    }
    memory.under_since.retain(|n, _| members_seen.contains(n));
    actions
}

/// Would the instances on node `i` all find room on the other nodes?
fn fits_elsewhere(inputs: &Inputs, i: usize) -> bool {
    let mut sim = inputs.cluster.clone();
    let mine: Vec<&Resident> = inputs
        .residents
        .iter()
        .filter(|r| r.node_index == i)
        .collect();
    for r in &mine {
        sim.release(&r.request, i);
    }
    sim.nodes[i].cordoned = true;
    mine.iter()
        .all(|r| inputs.scheduler.place(&mut sim, &r.request).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::SchedulerOptions;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::sync::Arc;
    use tugboat_api::model::Resources;
    use tugboat_api::spec::{Memory as Mem, Priority, ServiceSpec};

    const GI: u64 = 1 << 30;

    fn pool(name: &str, min: u32, max: u32, mem_gi: u64, labels: &[(&str, &str)]) -> NodePool {
        NodePool {
            name: name.into(),
            min,
            max,
            provider: PathBuf::from("/bin/true"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: super::super::PoolCapacity {
                cpu: tugboat_api::spec::Cpu(4000),
                memory: Mem(mem_gi * GI),
                pids: 0,
            },
        }
    }

    fn config(pools: Vec<NodePool>) -> PoolsConfig {
        PoolsConfig {
            pending_seconds: 1.0,
            scale_down_seconds: 10.0,
            scale_down_utilization: 50.0,
            provider_timeout_seconds: 5.0,
            join_timeout_seconds: 60.0,
            retry_seconds: 1.0,
            pools,
        }
    }

    fn request(service: &str, mem_gi: u64, label: Option<(&str, &str)>) -> PlacementRequest {
        let mut spec = ServiceSpec::new("app:1");
        spec.resources.requests.memory = Some(Mem(mem_gi * GI));
        if let Some((k, v)) = label {
            spec.placement.node_labels.insert(k.into(), v.into());
        }
        spec.priority = Priority::NORMAL;
        PlacementRequest::for_service(service, &spec)
    }

    fn scheduler() -> Scheduler {
        Scheduler::new(SchedulerOptions { feasible_sample: 0 })
    }

    fn member(pool: &NodePool, name: &str) -> NodeState {
        NodeState::new(name, pool.node_labels(), pool.capacity())
    }

    #[test]
    fn pending_instances_add_as_many_nodes_as_they_need_and_only_from_a_pool_that_fits() {
        let config = config(vec![
            pool("gpu", 0, 5, 4, &[("gpu", "yes")]),
            pool("burst", 0, 2, 4, &[]),
        ]);
        let cluster = ClusterState::new(vec![]);
        // Five of 2 GiB: two per 4 GiB node; burst's max is 2, gpu takes the rest? No: the
        // plain ones fit gpu nodes too (no label asked), gpu comes first in the file.
        let pending: Vec<Waiting> = (0..5)
            .map(|k| Waiting {
                request: request(&format!("s{k}"), 2, Some(("gpu", "yes"))),
                since_ms: 0,
            })
            .chain([Waiting {
                request: request("huge", 64, None),
                since_ms: 0,
            }])
            .collect();
        let views = HashMap::new();
        let s = scheduler();
        let inputs = Inputs {
            config: &config,
            scheduler: &s,
            cluster: &cluster,
            residents: &[],
            pending: &pending,
            views: &views,
            now_ms: 5_000,
        };
        let actions = decide(&inputs, &mut Memory::default());
        assert_eq!(
            actions,
            vec![PoolAction::Add {
                pool: "gpu".into(),
                count: 3
            }]
        );
        // Too young: nothing yet.
        let inputs = Inputs {
            now_ms: 500,
            ..inputs
        };
        assert!(decide(&inputs, &mut Memory::default()).is_empty());
    }

    #[test]
    fn an_idle_node_is_drained_after_the_cool_down_then_removed_when_empty() {
        let p = pool("burst", 0, 3, 4, &[]);
        let config = config(vec![p.clone()]);
        let mut cluster = ClusterState::new(vec![
            NodeState::new("base", Default::default(), Resources::new(4000, 8 * GI, 0)),
            member(&p, "burst-1"),
        ]);
        let r = Arc::new(request("web", 1, None));
        let s = scheduler();
        s.commit(&mut cluster, &r, 1).unwrap();
        let residents = vec![Resident {
            id: "web-1".into(),
            node_index: 1,
            request: r.clone(),
        }];
        let mut views = HashMap::new();
        views.insert(
            "burst".to_string(),
            PoolView {
                members: vec!["burst-1".into()],
                ..Default::default()
            },
        );
        let mut memory = Memory::default();
        let at = |now_ms,
                  views: &HashMap<String, PoolView>,
                  residents: &[Resident],
                  memory: &mut Memory| {
            decide(
                &Inputs {
                    config: &config,
                    scheduler: &s,
                    cluster: &cluster,
                    residents,
                    pending: &[],
                    views,
                    now_ms,
                },
                memory,
            )
        };
        assert!(at(0, &views, &residents, &mut memory).is_empty());
        assert!(at(9_999, &views, &residents, &mut memory).is_empty());
        let drain = PoolAction::Drain {
            pool: "burst".into(),
            node: "burst-1".into(),
        };
        assert_eq!(at(10_000, &views, &residents, &mut memory), vec![drain]);
        views
            .get_mut("burst")
            .unwrap()
            .leaving
            .insert("burst-1".into());
        // Still holds an instance: wait.
        assert!(at(11_000, &views, &residents, &mut memory).is_empty());
        assert_eq!(
            at(12_000, &views, &[], &mut memory),
            vec![PoolAction::Remove {
                pool: "burst".into(),
                node: "burst-1".into()
            }]
        );
    }

    /// Pools (min, max); members or adds per pool; pending (GiB, since); now.
    type Case = (Vec<(u32, u32)>, Vec<u32>, Vec<(u64, u64)>, u64);

    fn arb_case() -> impl Strategy<Value = Case> {
        (
            // Pools: (min, max), each 4 GiB.
            proptest::collection::vec((0u32..3, 0u32..5), 1..3),
            // Members and in-flight adds per pool.
            proptest::collection::vec(0u32..4, 3),
            // Pending: (GiB, pending since).
            proptest::collection::vec((1u64..6, 0u64..3_000), 0..12),
            1_000u64..30_000,
        )
    }

    proptest! {
        /// Never more than max (members and nodes on their way included), never below min,
        /// adds only when some pending instance fits a pool node and fits nowhere now, and
        /// never a drain while growing.
        #[test]
        fn pools_stay_in_bounds_and_add_only_what_helps((pools, counts, pending, now) in arb_case()) {
            let pools: Vec<NodePool> = pools
                .iter()
                .enumerate()
                .map(|(k, (min, max))| {
                    let max = (*max).max(*min);
                    pool(&format!("p{k}"), *min, max, 4, &[])
                })
                .collect();
            let config = config(pools.clone());
            let mut nodes = vec![];
            let mut views = HashMap::new();
            for (k, p) in pools.iter().enumerate() {
                let members = counts[k].min(p.max);
                let adding = counts[(k + 1) % 3].min(p.max - members);
                let names: Vec<String> = (0..members).map(|m| format!("{}-{m}", p.name)).collect();
                nodes.extend(names.iter().map(|n| member(p, n)));
                views.insert(p.name.clone(), PoolView { members: names, adding, leaving: BTreeSet::new() });
            }
            let cluster = ClusterState::new(nodes);
            let waiting: Vec<Waiting> = pending
                .iter()
                .enumerate()
                .map(|(k, (gi, since))| Waiting { request: request(&format!("s{k}"), *gi, None), since_ms: *since })
                .collect();
            let s = scheduler();
            let inputs = Inputs {
                config: &config,
                scheduler: &s,
                cluster: &cluster,
                residents: &[],
                pending: &waiting,
                views: &views,
                now_ms: now,
            };
            let actions = decide(&inputs, &mut Memory::default());
            let added: u32 = actions.iter().map(|a| match a { PoolAction::Add { count, .. } => *count, _ => 0 }).sum();
            for p in &pools {
                let v = &views[&p.name];
                let count: u32 = actions.iter().map(|a| match a {
                    PoolAction::Add { pool, count } if *pool == p.name => *count,
                    _ => 0,
                }).sum();
                let total = v.members.len() as u32 + v.adding + count;
                prop_assert!(total <= p.max, "{} > max {}", total, p.max);
                prop_assert!(total >= p.min.min(p.max));
            }
            let below_min: u32 = pools.iter().map(|p| {
                let v = &views[&p.name];
                p.min.saturating_sub(v.members.len() as u32 + v.adding)
            }).sum();
            // Adds beyond min need an old enough instance that a 4 GiB node would take.
            if added > below_min {
                prop_assert!(waiting.iter().any(|w| w.since_ms + 1_000 <= now
                    && w.request.resources.memory_bytes <= 4 * GI));
            }
            // No more adds for size than instances that need them.
            prop_assert!(added <= below_min + waiting.len() as u32);
            if added > 0 {
                let drained = actions.iter().any(|a| matches!(a, PoolAction::Drain { .. }));
                prop_assert!(!drained);
            }
        }

        /// A drain never takes a pool below min, never a node over the threshold, never one
        /// whose instances would not fit elsewhere, and at most one per pool.
        #[test]
        fn drains_are_safe(
            loads in proptest::collection::vec(proptest::collection::vec(1u64..3, 0..3), 1..5),
            min in 0u32..3,
            base_gi in 0u64..6,
        ) {
            let p = pool("burst", min, 10, 4, &[]);
            let config = config(vec![p.clone()]);
            let s = scheduler();
            let mut nodes = vec![NodeState::new("base", Default::default(), Resources::new(4000, base_gi * GI + 1, 0))];
            let names: Vec<String> = (0..loads.len()).map(|k| format!("burst-{k}")).collect();
            nodes.extend(names.iter().map(|n| member(&p, n)));
            let mut cluster = ClusterState::new(nodes);
            let mut residents = vec![];
            for (k, load) in loads.iter().enumerate() {
                for (j, gi) in load.iter().enumerate() {
                    let r = Arc::new(request(&format!("s{k}x{j}"), *gi, None));
                    if s.commit(&mut cluster, &r, k + 1).is_ok() {
                        residents.push(Resident { id: format!("{k}-{j}"), node_index: k + 1, request: r });
                    }
                }
            }
            let mut views = HashMap::new();
            views.insert("burst".to_string(), PoolView { members: names.clone(), ..Default::default() });
            let mut memory = Memory::default();
            let mut run = |now_ms| decide(&Inputs {
                config: &config, scheduler: &s, cluster: &cluster, residents: &residents,
                pending: &[], views: &views, now_ms,
            }, &mut memory);
            let first = run(0);
            let drained = first.iter().any(|a| matches!(a, PoolAction::Drain { .. }));
            prop_assert!(!drained);
            let actions = run(10_000);
            let drains: Vec<&String> = actions.iter().filter_map(|a| match a {
                PoolAction::Drain { node, .. } => Some(node),
                _ => None,
            }).collect();
            prop_assert!(drains.len() <= 1);
            if let Some(node) = drains.first() {
                prop_assert!(names.len() as u32 > min);
                let i = cluster.node_index(node).unwrap();
                prop_assert!(utilization(&cluster.nodes[i]) < 50.0);
                let inputs = Inputs { config: &config, scheduler: &s, cluster: &cluster, residents: &residents, pending: &[], views: &views, now_ms: 0 };
                prop_assert!(fits_elsewhere(&inputs, i));
            }
        }
    }
}
