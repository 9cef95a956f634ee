//! Preemption: when an instance fits on no node, which instances of strictly lower priority
//! to evict, and on which node, so that it fits. A pure function over the scheduler's view
//! ([`ClusterState`]) and the instances placed on it; it decides with the scheduler's own
//! filters ([`Scheduler::feasible`]), so "it fits once they are gone" means the same thing here
//! as at placement and at commit.
//!
//! Per node, as Kubernetes' default preemption does: take off every instance of lower
//! priority (of another service); if the pending one still does not fit, the node is out.
//! Otherwise give back ("reprieve") the candidates one at a time, highest priority first and,
//! within one priority, smallest first, keeping each that still lets it fit; the rest are the
//! victims. No victim could be spared (the set is minimal by inclusion); finding the smallest
//! set over all subsets is a knapsack problem, and this one is what Kubernetes settles for too.
//! Among nodes: fewest victims, then the lowest highest victim priority, then the lowest sum.

use super::{ClusterState, PlacementRequest, Scheduler};
use std::sync::Arc;
use tugboat_api::spec::Priority;

/// An instance that holds resources on a node and could be evicted.
#[derive(Debug, Clone)]
pub struct Resident {
    pub id: String,
    pub node_index: usize,
    pub request: Arc<PlacementRequest>,
}

/// Evict `victims` (ids) from `node`, then place the pending instance there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub node_index: usize,
    pub node: String,
    pub victims: Vec<String>,
}

/// Which instances to evict, and where, so that `request` fits; None when evicting every
/// instance of lower priority on a node would not make it fit on any node.
pub fn choose_preemption(
    scheduler: &Scheduler,
    cluster: &ClusterState,
    request: &PlacementRequest,
    residents: &[Resident],
) -> Option<Preemption> {
    // One working copy: candidates are released and reserved back, which are exact inverses
    // for everything the filters read.
    let mut trial = cluster.clone();
    let mut best: Option<(Rank, Vec<&Resident>)> = None;
    for i in 0..cluster.nodes.len() {
        let mut candidates: Vec<&Resident> = residents
            .iter()
            .filter(|r| {
                r.node_index == i
                    && r.request.priority < request.priority
                    && r.request.service != request.service
            })
            .collect();
        if candidates.is_empty() {
            continue;
        }
        // Reprieve order: highest priority first, then the smallest.
        candidates.sort_by(|a, b| {
            b.request
                .priority
                .cmp(&a.request.priority)
                .then_with(|| size(&a.request).cmp(&size(&b.request)))
                .then_with(|| a.id.cmp(&b.id))
        });
        for c in &candidates {
            trial.release(&c.request, i);
        }
        if scheduler
            .feasible(request, &trial.nodes[i], &trial)
            .is_err()
        {
            for c in &candidates {
                trial.reserve(&c.request, i);
            }
            continue;
        }
        let mut victims = vec![];
        for c in candidates {
            trial.reserve(&c.request, i);
            if scheduler
                .feasible(request, &trial.nodes[i], &trial)
                .is_err()
            {
                trial.release(&c.request, i);
                victims.push(c);
            }
        }
        for v in &victims {
            trial.reserve(&v.request, i);
        }
        let rank = (
            victims.len(),
            victims
                .iter()
                .map(|v| v.request.priority)
                .max()
                .unwrap_or(Priority(0)),
            victims
                .iter()
                .map(|v| u64::from(v.request.priority.0))
                .sum(),
            i,
        );
        if best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, victims));
        }
    }
    best.map(|((.., i), victims)| Preemption {
        node_index: i,
        node: cluster.nodes[i].name.clone(),
        victims: victims.into_iter().map(|v| v.id.clone()).collect(),
    })
}

/// Fewer victims, then a lower highest victim priority, then a lower sum; then the node.
type Rank = (usize, Priority, u64, usize);

fn size(request: &PlacementRequest) -> (u64, u64, u64) {
    let r = &request.resources;
    (r.memory_bytes, r.cpu_millis, r.pids)
}

#[cfg(test)]
mod tests {
    use super::super::{NodeState, SchedulerOptions};
    use super::*;
    use proptest::prelude::*;
    use tugboat_api::model::Resources;
    use tugboat_api::spec::{Cpu, Memory, ServiceSpec};

    const MI: u64 = 1 << 20;

    fn request(service: &str, mem_mi: u64, cpu: u64, priority: Priority) -> PlacementRequest {
        let mut spec = ServiceSpec::new("app:1");
        spec.resources.requests.memory = Some(Memory(mem_mi * MI));
        spec.resources.requests.cpu = Some(Cpu(cpu));
        spec.priority = priority;
        PlacementRequest::for_service(service, &spec)
    }

    /// Nodes of 1 GiB and 1 core, with residents placed through the scheduler's own commit.
    fn cluster(
        residents: &[(usize, PlacementRequest)],
        nodes: usize,
    ) -> (ClusterState, Vec<Resident>) {
        let mut cluster = ClusterState::new(
            (0..nodes)
                .map(|n| {
                    NodeState::new(
                        &format!("n{n}"),
                        Default::default(),
                        Resources::new(1000, 1024 * MI, 0),
                    )
                })
                .collect(),
        );
        let mut placed = vec![];
        for (k, (node, req)) in residents.iter().enumerate() {
            if Scheduler::default()
                .commit(&mut cluster, req, *node)
                .is_ok()
            {
                placed.push(Resident {
                    id: format!("{}-{k}", req.service),
                    node_index: *node,
                    request: Arc::new(req.clone()),
                });
            }
        }
        (cluster, placed)
    }

    fn without(cluster: &ClusterState, residents: &[Resident], ids: &[&String]) -> ClusterState {
        let mut c = cluster.clone();
        for r in residents.iter().filter(|r| ids.contains(&&r.id)) {
            c.release(&r.request, r.node_index);
        }
        c
    }

    #[test]
    fn evicts_the_fewest_lowest_and_never_an_equal() {
        let scheduler = Scheduler::new(SchedulerOptions { feasible_sample: 0 });
        let (c, residents) = cluster(
            &[
                // n0: two small lows. n1: one big low.
                (0, request("a", 400, 100, Priority::LOW)),
                (0, request("b", 400, 100, Priority::LOW)),
                (1, request("c", 900, 100, Priority::LOW)),
            ],
            2,
        );
        let high = request("web", 700, 100, Priority::HIGH);
        let p = choose_preemption(&scheduler, &c, &high, &residents).unwrap();
        assert_eq!(
            (p.node.as_str(), p.victims),
            ("n1", vec!["c-2".to_string()])
        );
        // An equal priority evicts nothing.
        let low = request("web", 700, 100, Priority::LOW);
        assert_eq!(choose_preemption(&scheduler, &c, &low, &residents), None);
    }

    #[test]
    fn within_a_node_the_lowest_priority_goes_first() {
        let scheduler = Scheduler::new(SchedulerOptions { feasible_sample: 0 });
        let (c, residents) = cluster(
            &[
                (0, request("a", 500, 100, Priority::NORMAL)),
                (0, request("b", 500, 100, Priority::LOW)),
            ],
            1,
        );
        let high = request("web", 500, 100, Priority::HIGH);
        let p = choose_preemption(&scheduler, &c, &high, &residents).unwrap();
        assert_eq!(p.victims, vec!["b-1".to_string()]);
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::LOW),
            Just(Priority::NORMAL),
            Just(Priority::HIGH),
            (0u32..4000).prop_map(Priority)
        ]
    }

    fn resident() -> impl Strategy<Value = (usize, PlacementRequest)> {
        (0usize..3, 1u64..600, 0u64..600, priority(), 0u8..4)
            .prop_map(|(node, mem, cpu, p, s)| (node, request(&format!("s{s}"), mem, cpu, p)))
    }

    proptest! {
        /// Never an equal or higher priority, only on the chosen node; the result fits with
        /// the same filters; no victim could be spared; and None only when no node could be
        /// made to fit by evicting everything of lower priority there.
        #[test]
        fn preemption_is_safe_minimal_and_fits(
            placed in proptest::collection::vec(resident(), 0..14),
            mem in 1u64..1024,
            cpu in 0u64..1000,
            p in priority(),
        ) {
            let scheduler = Scheduler::new(SchedulerOptions { feasible_sample: 0 });
            let (c, residents) = cluster(&placed, 3);
            let pending = request("pending", mem, cpu, p);
            // Preemption is only asked for when nothing fits as things are.
            prop_assume!(scheduler.plan(&c, &pending).is_err());
            match choose_preemption(&scheduler, &c, &pending, &residents) {
                Some(pre) => {
                    prop_assert!(!pre.victims.is_empty());
                    let victims: Vec<&Resident> = residents
                        .iter()
                        .filter(|r| pre.victims.contains(&r.id))
                        .collect();
                    prop_assert_eq!(victims.len(), pre.victims.len());
                    for v in &victims {
                        prop_assert!(v.request.priority < p);
                        prop_assert_eq!(v.node_index, pre.node_index);
                    }
                    let ids: Vec<&String> = pre.victims.iter().collect();
                    let after = without(&c, &residents, &ids);
                    prop_assert!(scheduler
                        .feasible(&pending, &after.nodes[pre.node_index], &after)
                        .is_ok());
                    for spared in &ids {
                        let rest: Vec<&String> =
                            ids.iter().copied().filter(|v| v != spared).collect();
                        let c2 = without(&c, &residents, &rest);
                        prop_assert!(
                            scheduler.feasible(&pending, &c2.nodes[pre.node_index], &c2).is_err(),
                            "{} could have been spared", spared
                        );
                    }
                }
                None => {
                    for i in 0..c.nodes.len() {
                        let lower: Vec<&String> = residents
                            .iter()
                            .filter(|r| r.node_index == i && r.request.priority < p)
                            .map(|r| &r.id)
                            .collect();
                        let after = without(&c, &residents, &lower);
                        prop_assert!(
                            lower.is_empty()
                                || scheduler.feasible(&pending, &after.nodes[i], &after).is_err()
                        );
                    }
                }
            }
        }
    }
}
