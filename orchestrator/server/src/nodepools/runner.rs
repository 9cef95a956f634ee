//! One pass of the host autoscaler, run by the controllers (so only on the leader): fetch
//! nodes and instances, bring the in-memory state up to date, [`decide`], act. Provider calls
//! run as tasks of their own (a slow provider never holds up the controllers); each failure
//! is an event and puts its pool in a back-off (doubled per failure, up to 5 minutes).

use super::decide::{decide, Inputs, Memory, PoolAction, PoolView, Waiting};
use super::{provider, NodePools, PoolsConfig, POOL_LABEL};
use crate::controlplane::{ControlPlane, ControlPlaneError, NodeScheduling, Writer};
use crate::objects::{self, Batch};
use crate::scheduler::{ClusterState, PlacementRequest, Resident};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tugboat_api::model::{now_ms, Instance, InstancePhase, Node, ObjectKind, INSTANCES, NODES};

/// What the autoscaler remembers, per pool, between passes.
#[derive(Debug, Default)]
pub struct PoolsState {
    memory: Memory,
    pools: HashMap<String, PoolRun>,
}

#[derive(Debug, Default)]
struct PoolRun {
    adds_running: u32,
    /// Added by the provider, not registered yet: (name, when added).
    awaiting: Vec<(String, u64)>,
    /// Nodes it drains to remove.
    leaving: BTreeSet<String>,
    removes_running: BTreeSet<String>,
    failures: u32,
    retry_at_ms: u64,
}

impl PoolRun {
    fn failed(&mut self, config: &PoolsConfig, now: u64) -> u64 {
        self.failures += 1;
        let base = PoolsConfig::ms(config.retry_seconds).max(1);
        let wait = base
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(300_000);
        self.retry_at_ms = now + wait;
        wait
    }
}

/// The pool's events are named `pool/NAME` (kind node).
fn pool_event_name(pool: &str) -> String {
    format!("pool/{pool}")
}

async fn event(cp: &ControlPlane, name: &str, reason: &str, message: String) {
    let mut batch = Batch::default();
    cp.event(&mut batch, ObjectKind::Node, name, reason, message);
    if let Err(e) = cp.commit_as(Writer::Controller, batch).await {
        eprintln!("tugboat: node pools: cannot record an event: {e}");
    }
}

pub async fn pass(cp: &Arc<ControlPlane>, pools: &Arc<NodePools>) -> Result<(), ControlPlaneError> {
    let now = now_ms();
    let (nodes, _) = objects::list::<Node>(cp.store(), NODES).await?;
    let (instances, _) = objects::list::<Instance>(cp.store(), INSTANCES).await?;
    let volumes = cp.volume_configs().await?;
    let nodes: Vec<Node> = nodes.into_iter().map(|n| n.object).collect();
    let instances: Vec<Instance> = instances.into_iter().map(|i| i.object).collect();
    let config = &pools.config;
    let join_timeout = PoolsConfig::ms(config.join_timeout_seconds);

    let mut given_up = vec![];
    let (views, actions) = {
        let mut state = pools.state.lock().unwrap_or_else(|p| p.into_inner());
        let PoolsState {
            memory,
            pools: runs,
        } = &mut *state;
        let mut views = HashMap::new();
        for pool in &config.pools {
            let run = runs.entry(pool.name.clone()).or_default();
            let members: Vec<String> = nodes
                .iter()
                .filter(|n| n.labels.get(POOL_LABEL) == Some(&pool.name))
                .map(|n| n.name.clone())
                .collect();
            run.awaiting.retain(|(name, since)| {
                if members.contains(name) {
                    return false;
                }
                if now.saturating_sub(*since) > join_timeout {
                    given_up.push((pool.name.clone(), name.clone()));
                    return false;
                }
                true
            });
            run.leaving
                .retain(|n| members.contains(n) || run.removes_running.contains(n));
            views.insert(
                pool.name.clone(),
                PoolView {
                    members,
                    adding: run.adds_running + run.awaiting.len() as u32,
                    leaving: run.leaving.union(&run.removes_running).cloned().collect(),
                },
            );
        }
        let cluster = ClusterState::from_store_with_volumes(&nodes, &instances, &volumes);
        let mut requests: HashMap<String, Arc<PlacementRequest>> = HashMap::new();
        let mut request_of = |i: &Instance| {
            requests
                .entry(i.template_hash.clone())
                .or_insert_with(|| Arc::new(PlacementRequest::for_service(&i.service, &i.spec)))
                .clone()
        };
        let residents: Vec<Resident> = instances
            .iter()
            .filter(|i| i.holds_resources())
            .filter_map(|i| {
                Some(Resident {
                    id: i.id.clone(),
                    node_index: cluster.node_index(i.node.as_deref()?)?,
                    request: request_of(i),
                })
            })
            .collect();
        let pending: Vec<Waiting> = instances
            .iter()
            .filter(|i| i.phase == InstancePhase::Pending)
            .map(|i| Waiting {
                request: (*request_of(i)).clone(),
                since_ms: i.created_at_ms,
            })
            .collect();
        let actions = decide(
            &Inputs {
                config,
                scheduler: &cp.scheduler,
                cluster: &cluster,
                residents: &residents,
                pending: &pending,
                views: &views,
                now_ms: now,
            },
            memory,
        );
        (views, actions)
    };

    for (pool, node) in given_up {
        event(
            cp,
            &pool_event_name(&pool),
            "node-not-registered",
            format!(
                "node {node} from the provider did not register within {} s: removing it",
                config.join_timeout_seconds
            ),
        )
        .await;
        spawn_remove(cp, pools, &pool, &node, false);
    }

    for action in actions {
        let pool_name = match &action {
            PoolAction::Add { pool, .. }
            | PoolAction::Drain { pool, .. }
            | PoolAction::Remove { pool, .. } => pool.clone(),
        };
        let backing_off = {
            let state = pools.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .pools
                .get(&pool_name)
                .is_some_and(|r| r.retry_at_ms > now)
        };
        match action {
            PoolAction::Add { pool, count } => {
                if backing_off {
                    continue;
                }
                let v = &views[&pool];
                event(
                    cp,
                    &pool_event_name(&pool),
                    "scale-up",
                    format!(
                        "adding {count} node(s) for instances pending over {} s ({} in the pool, {} on the way)",
                        config.pending_seconds,
                        v.members.len(),
                        v.adding
                    ),
                )
                .await;
                for _ in 0..count {
                    spawn_add(cp, pools, &pool);
                }
            }
            PoolAction::Drain { pool, node } => {
                let utilization = {
                    let state = pools.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.memory.under_since.get(&node).copied()
                };
                match cp.set_node_schedule(&node, NodeScheduling::Drain).await {
                    Ok(_) => {
                        pools
                            .state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .pools
                            .entry(pool.clone())
                            .or_default()
                            .leaving
                            .insert(node.clone());
                        event(
                            cp,
                            &node,
                            "scale-down",
                            format!(
                                "pool {pool}: under {}% of its capacity requested for {} s (since {} ms); draining it to remove it",
                                config.scale_down_utilization,
                                config.scale_down_seconds,
                                utilization.unwrap_or(now)
                            ),
                        )
                        .await;
                    }
                    Err(e) => eprintln!("tugboat: node pools: drain {node}: {e}"),
                }
            }
            PoolAction::Remove { pool, node } => {
                if backing_off {
                    continue;
                }
                spawn_remove(cp, pools, &pool, &node, true);
            }
        }
    }
    Ok(())
}

fn spawn_add(cp: &Arc<ControlPlane>, pools: &Arc<NodePools>, pool_name: &str) {
    let Some(pool) = pools
        .config
        .pools
        .iter()
        .find(|p| p.name == pool_name)
        .cloned()
    else {
        return;
    };
    pools
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pools
        .entry(pool.name.clone())
        .or_default()
        .adds_running += 1;
    let (cp, pools) = (cp.clone(), pools.clone());
    let timeout = Duration::from_millis(PoolsConfig::ms(pools.config.provider_timeout_seconds));
    tokio::spawn(async move {
        let result = provider::add(&pool, timeout).await;
        let now = now_ms();
        let retry = {
            let mut state = pools.state.lock().unwrap_or_else(|p| p.into_inner());
            let run = state.pools.entry(pool.name.clone()).or_default();
            run.adds_running -= 1;
            match &result {
                Ok(node) => {
                    run.failures = 0;
                    run.awaiting.push((node.clone(), now));
                    None
                }
                Err(_) => Some(run.failed(&pools.config, now)),
            }
        };
        let name = pool_event_name(&pool.name);
        match (result, retry) {
            (Ok(node), _) => {
                event(
                    &cp,
                    &name,
                    "node-added",
                    format!("the provider added node {node}; waiting for it to register"),
                )
                .await
            }
            (Err(e), retry) => {
                event(
                    &cp,
                    &name,
                    "provider-failed",
                    format!("{e}; next try in {} ms", retry.unwrap_or(0)),
                )
                .await
            }
        }
    });
}

/// `PROVIDER remove POOL NODE`, then (when `registered`) the node is deleted from the store.
fn spawn_remove(
    cp: &Arc<ControlPlane>,
    pools: &Arc<NodePools>,
    pool_name: &str,
    node: &str,
    registered: bool,
) {
    let Some(pool) = pools
        .config
        .pools
        .iter()
        .find(|p| p.name == pool_name)
        .cloned()
    else {
        return;
    };
    {
        let mut state = pools.state.lock().unwrap_or_else(|p| p.into_inner());
        let run = state.pools.entry(pool.name.clone()).or_default();
        if !run.removes_running.insert(node.to_string()) {
            return;
        }
    }
    let (cp, pools, node) = (cp.clone(), pools.clone(), node.to_string());
    let timeout = Duration::from_millis(PoolsConfig::ms(pools.config.provider_timeout_seconds));
    tokio::spawn(async move {
        let result = provider::remove(&pool, &node, timeout).await;
        let now = now_ms();
        let deleted = match &result {
            Ok(()) if registered => match cp.delete_node(&node).await {
                Ok(()) | Err(ControlPlaneError::NotFound { .. }) => true,
                Err(e) => {
                    eprintln!("tugboat: node pools: delete node {node}: {e}");
                    false
                }
            },
            Ok(()) => true,
            Err(_) => false,
        };
        let retry = {
            let mut state = pools.state.lock().unwrap_or_else(|p| p.into_inner());
            let run = state.pools.entry(pool.name.clone()).or_default();
            run.removes_running.remove(&node);
            if deleted {
                run.failures = 0;
                run.leaving.remove(&node);
                None
            } else {
                Some(run.failed(&pools.config, now))
            }
        };
        let name = pool_event_name(&pool.name);
        match result {
            Ok(()) if deleted => {
                event(
                    &cp,
                    &name,
                    "node-removed",
                    format!("the provider removed node {node}"),
                )
                .await
            }
            Ok(()) => {}
            Err(e) => {
                event(
                    &cp,
                    &name,
                    "provider-failed",
                    format!("{e}; next try in {} ms", retry.unwrap_or(0)),
                )
                .await
            }
        }
    });
}
