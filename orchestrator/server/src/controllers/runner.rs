//! The controller loop: fetch, call the pure reconcilers and the scheduler, apply. Nothing
//! here decides anything; it only reads the store and writes back what was decided, with
//! compare-and-swap so a concurrent API write makes the write fail and the next pass redo it.

use super::node::{next_deadline_ms, reconcile_nodes, Liveness, NodeAction};
use super::service::{reconcile_service_draining, ServiceAction};
use crate::controlplane::{ControlPlane, ControlPlaneError};
use crate::objects::{self, Batch, Versioned};
use crate::scheduler::{choose_preemption, ClusterState, PlacementRequest, Preemption, Resident};
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tugboat_api::model::{
    node_key, now_ms, Instance, InstancePhase, Node, NodeStatus, ObjectKind, RolloutState, Service,
};
use tugboat_api::model::{service_key, SERVICES};

type Result<T> = std::result::Result<T, ControlPlaneError>;

/// Commit a batch with the leader fence; a conflict only means "someone changed it, next
/// pass" (or, on the leader key, that this server no longer leads: the election stops us).
async fn commit_or_retry_later(cp: &ControlPlane, batch: Batch) -> Result<bool> {
    match cp
        .commit_as(crate::controlplane::Writer::Controller, batch)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. } | StoreError::NotLeader { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn load(cp: &ControlPlane) -> Result<super::cache::Loaded> {
    Ok(cp.cache.load(cp.store()).await?)
}

/// One pass of every controller. Returns how long until a node's status can change if
/// nothing is heard meanwhile (none: no node is waiting on a grace).
pub async fn reconcile_once(cp: &ControlPlane) -> Result<Option<Duration>> {
    let now = now_ms();
    let (_, instances, nodes) = load(cp).await?;
    let next_node_deadline = reconcile_node_health(cp, &nodes, &instances, now).await?;
    let (services, instances, nodes) = load(cp).await?;
    let draining: std::collections::HashSet<String> = nodes
        .iter()
        .filter(|n| n.object.draining)
        .map(|n| n.object.name.clone())
        .collect();
    reconcile_services(cp, &services, &instances, &draining, now).await?;
    autoscale_services(cp, &services, &instances, now).await?;
    assign_service_addresses(cp).await?;
    schedule_pending(cp).await?;
    cp.prune_events().await?;
    Ok(next_node_deadline)
}

async fn reconcile_node_health(
    cp: &ControlPlane,
    nodes: &[Arc<Versioned<Node>>],
    instances: &[Arc<Versioned<Instance>>],
    now: u64,
) -> Result<Option<Duration>> {
    let plain_nodes: Vec<Node> = nodes.iter().map(|n| n.object.clone()).collect();
    let plain_instances: Vec<&Instance> = instances.iter().map(|i| &i.object).collect();
    let (heartbeats, peer_seen) = (cp.heartbeats(), cp.peer_seen());
    let live = Liveness {
        heartbeats: &heartbeats,
        peer_seen: &peer_seen,
    };
    let actions = reconcile_nodes(&plain_nodes, &live, &plain_instances, now, cp.timers.nodes);
    let next = next_deadline_ms(&plain_nodes, &live, now, cp.timers.nodes);
    let next = (next != u64::MAX).then(|| Duration::from_millis(next.saturating_sub(now).max(5)));
    for action in actions {
        let mut batch = Batch::default();
        match action {
            NodeAction::SetStatus {
                node,
                status,
                silent_ms,
            } => {
                let Some(current) = nodes.iter().find(|n| n.object.name == node) else {
                    continue;
                };
                let mut updated = current.object.clone();
                updated.status = status;
                updated.last_heartbeat_ms = now.saturating_sub(silent_ms);
                batch.put_if(node_key(&node), current.revision, &updated);
                let reason = match status {
                    NodeStatus::Ready => "ready",
                    NodeStatus::NotReady => "not-ready",
                    NodeStatus::Lost => "lost",
                };
                let message = match status {
                    NodeStatus::Ready => "heartbeats resumed".to_string(),
                    NodeStatus::NotReady => format!("no heartbeat for {silent_ms} ms"),
                    NodeStatus::Lost => format!(
                        "no heartbeat for {silent_ms} ms, and no peer reached it for {} ms",
                        cp.timers.nodes.lost_after_ms
                    ),
                };
                cp.event(&mut batch, ObjectKind::Node, &node, reason, message);
            }
            NodeAction::MarkLost { id, node, .. } => {
                let Some(current) = instances.iter().find(|i| i.object.id == id) else {
                    continue;
                };
                let mut updated = current.object.clone();
                updated.phase = InstancePhase::Lost;
                updated.ready = false;
                // When it was lost: its service's `reschedule.after_seconds` counts from here.
                updated.failed_at_ms = Some(now);
                updated.message = format!("node {node} lost");
                batch.put_if(updated.key(), current.revision, &updated);
                cp.event(
                    &mut batch,
                    ObjectKind::Instance,
                    &id,
                    "lost",
                    format!("node {node} was lost"),
                );
            }
        }
        commit_or_retry_later(cp, batch).await?;
    }
    Ok(next)
}

async fn reconcile_services(
    cp: &ControlPlane,
    services: &[Arc<Versioned<Service>>],
    instances: &[Arc<Versioned<Instance>>],
    draining: &std::collections::HashSet<String>,
    now: u64,
) -> Result<()> {
    let mut by_service: HashMap<&str, Vec<&Versioned<Instance>>> = HashMap::new();
    for instance in instances {
        by_service
            .entry(instance.object.service.as_str())
            .or_default()
            .push(instance);
    }
    // Instances whose service is gone.
    let mut orphans = Batch::default();
    for (name, list) in &by_service {
        if !services.iter().any(|s| s.object.name == *name) {
            for instance in list {
                orphans.delete(instance.object.key());
            }
        }
    }
    commit_or_retry_later(cp, orphans).await?;

    for service in services {
        let name = service.object.name.as_str();
        let mine = by_service.get(name).cloned().unwrap_or_default();
        let plain: Vec<&Instance> = mine.iter().map(|v| &v.object).collect();
        let actions = reconcile_service_draining(
            &service.object,
            &plain,
            now,
            cp.timers.replace_failed_after.as_millis() as u64,
            draining,
        );
        if actions.is_empty() {
            continue;
        }
        let mut updated = service.object.clone();
        let mut batch = Batch::default();
        // Slots: those of the instances that stay; a failed instance removed in this pass
        // hands its restarts and last exit to the replacement in its slot.
        let removed: std::collections::HashSet<&str> = actions
            .iter()
            .filter_map(|a| match a {
                ServiceAction::Delete { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let used: std::collections::BTreeSet<u32> = plain
            .iter()
            .filter(|i| !removed.contains(i.id.as_str()))
            .map(|i| i.slot)
            .collect();
        let carried: HashMap<u32, &Instance> = plain
            .iter()
            .filter(|i| removed.contains(i.id.as_str()) && i.phase == InstancePhase::Failed)
            .map(|i| (i.slot, *i))
            .collect();
        let mut slots = super::service::free_slots(&used);
        for action in actions {
            match action {
                ServiceAction::Create { count } => {
                    let hash = updated.rollout.template_hash.clone();
                    for _ in 0..count {
                        let slot = slots.next().unwrap_or_default();
                        let before = carried.get(&slot);
                        let instance = Instance {
                            id: cp.new_instance_id(name, &hash),
                            service: name.into(),
                            template_hash: hash.clone(),
                            spec: updated.spec.clone(),
                            node: None,
                            phase: InstancePhase::Pending,
                            ready: false,
                            pending_reason: None,
                            created_at_ms: now,
                            ready_since_ms: None,
                            message: String::new(),
                            exit_code: None,
                            restarts: before.map_or(0, |b| b.restarts),
                            failed_at_ms: None,
                            stats: None,
                            address: None,
                            slot,
                            carried_restarts: before.map_or(0, |b| b.restarts),
                            last_exit: before.and_then(|b| b.last_exit.clone()),
                            crash_looping: false,
                        };
                        batch.put_if(instance.key(), 0, &instance);
                    }
                    cp.event(
                        &mut batch,
                        ObjectKind::Service,
                        name,
                        "instances-created",
                        format!("created {count} instance(s)"),
                    );
                }
                ServiceAction::Delete { id, reason } => {
                    if let Some(instance) = mine.iter().find(|i| i.object.id == id) {
                        batch.delete(instance.object.key());
                        cp.event(
                            &mut batch,
                            ObjectKind::Service,
                            name,
                            "instance-removed",
                            format!("removed {id}: {reason}"),
                        );
                    }
                }
                ServiceAction::Progress { at_ms } => updated.rollout.last_progress_ms = at_ms,
                ServiceAction::Complete => {
                    updated.rollout.state = RolloutState::Complete;
                    cp.event(
                        &mut batch,
                        ObjectKind::Service,
                        name,
                        "rollout-complete",
                        format!("template {} rolled out", updated.rollout.template_hash),
                    );
                }
                ServiceAction::RollBack { reason } => {
                    if updated.roll_back(&reason, now) {
                        cp.event(&mut batch, ObjectKind::Service, name, "rolled-back", reason);
                    }
                }
            }
        }
        if updated != service.object {
            batch.put_if(service_key(name), service.revision, &updated);
        } else {
            // The decisions were made on this revision of the service: keep them tied to it.
            batch.compares.push(crate::store::Compare::ModRevision {
                key: service_key(name),
                revision: service.revision,
            });
        }
        commit_or_retry_later(cp, batch).await?;
    }
    Ok(())
}

/// Gives every service without one its virtual address (each write compare-and-swapped).
async fn assign_service_addresses(cp: &ControlPlane) -> Result<()> {
    let (services, _) = objects::list::<Service>(cp.store(), SERVICES).await?;
    let plain: Vec<Service> = services.iter().map(|s| s.object.clone()).collect();
    for (name, address) in super::addresses::assign(cp.service_range, &plain) {
        let Some(current) = services.iter().find(|s| s.object.name == name) else {
            continue;
        };
        let mut updated = current.object.clone();
        updated.address = Some(address);
        let mut batch = Batch::default();
        batch.put_if(service_key(&name), current.revision, &updated);
        commit_or_retry_later(cp, batch).await?;
    }
    Ok(())
}

/// Place pending instances: plan against a snapshot, then commit each plan against freshly
/// read state with the same fit code, and write it with compare-and-swap. Highest priority
/// first; one that fits nowhere may preempt instances of strictly lower priority
/// ([`preempt_for`]).
pub async fn schedule_pending(cp: &ControlPlane) -> Result<()> {
    let (_, instances, nodes) = load(cp).await?;
    let mut pending: Vec<&Versioned<Instance>> = instances
        .iter()
        .map(|i| i.as_ref())
        .filter(|i| i.object.phase == InstancePhase::Pending)
        .collect();
    cp.scheduling
        .keep_only(pending.iter().map(|i| i.object.id.as_str()));
    if pending.is_empty() {
        return Ok(());
    }
    pending.sort_by_key(|i| {
        (
            std::cmp::Reverse(i.object.spec.priority),
            i.object.created_at_ms,
            i.object.id.clone(),
        )
    });
    let node_list: Vec<Node> = nodes.iter().map(|n| n.object.clone()).collect();
    let placed: Vec<&Instance> = instances.iter().map(|i| &i.object).collect();
    let volumes = cp.volume_configs().await?;
    let mut snapshot = ClusterState::from_store_with_volumes(&node_list, &placed, &volumes);
    let mut requests: HashMap<String, Arc<PlacementRequest>> = HashMap::new();
    let mut plans = vec![];
    for instance in &pending {
        let request = requests
            .entry(instance.object.template_hash.clone())
            .or_insert_with(|| {
                Arc::new(PlacementRequest::for_service(
                    &instance.object.service,
                    &instance.object.spec,
                ))
            });
        plans.push(
            cp.scheduler
                .place(&mut snapshot, request)
                .map_err(|why| (why.kind(), why.to_string())),
        );
    }

    // The applier: current state, same fit code.
    let (_, instances_now, nodes_now) = load(cp).await?;
    let node_list: Vec<Node> = nodes_now.iter().map(|n| n.object.clone()).collect();
    let placed: Vec<&Instance> = instances_now.iter().map(|i| &i.object).collect();
    let mut live = ClusterState::from_store_with_volumes(&node_list, &placed, &volumes);
    // What preemption may evict: instances holding resources now. Those placed in this pass
    // are never victims (they come first by priority, so none is lower than a later one).
    let mut residents: Vec<(Resident, &Versioned<Instance>)> = instances_now
        .iter()
        .map(|i| i.as_ref())
        .filter(|i| i.object.holds_resources())
        .filter_map(|i| {
            let node_index = live.node_index(i.object.node.as_deref()?)?;
            let request = requests
                .entry(i.object.template_hash.clone())
                .or_insert_with(|| {
                    Arc::new(PlacementRequest::for_service(
                        &i.object.service,
                        &i.object.spec,
                    ))
                })
                .clone();
            Some((
                Resident {
                    id: i.object.id.clone(),
                    node_index,
                    request,
                },
                i,
            ))
        })
        .collect();
    let mut writes = PlacementWrites::default();
    for (instance, plan) in pending.into_iter().zip(plans) {
        let mut updated = instance.object.clone();
        let mut batch = Batch::default();
        let request = requests[&instance.object.template_hash].clone();
        match plan {
            Ok(placement) => {
                let Some(index) = live.node_index(&placement.node) else {
                    continue;
                };
                if let Err(why) = cp.scheduler.commit(&mut live, &request, index) {
                    // Stale plan: leave it pending; the next pass plans again.
                    updated.pending_reason = Some(format!(
                        "placement on {} refused at commit: {why}",
                        placement.node
                    ));
                } else {
                    updated.node = Some(placement.node.clone());
                    updated.phase = InstancePhase::Scheduled;
                    updated.pending_reason = None;
                    cp.event(
                        &mut batch,
                        ObjectKind::Instance,
                        &updated.id,
                        "scheduled",
                        format!("placed on {}", placement.node),
                    );
                }
            }
            Err((kind, why)) => {
                let residents_now: Vec<Resident> =
                    residents.iter().map(|(r, _)| r.clone()).collect();
                if let Some(preemption) =
                    choose_preemption(&cp.scheduler, &live, &request, &residents_now)
                {
                    // Preemption reads and writes the store itself: placements first.
                    writes.flush(cp).await?;
                    if preempt_for(cp, &mut live, instance, &request, &preemption, &residents)
                        .await?
                    {
                        residents.retain(|(r, _)| !preemption.victims.contains(&r.id));
                    }
                    continue;
                }
                let why = still_pending(updated.pending_reason.as_deref(), &why);
                let kind = if why.starts_with(PREEMPTED_BY) {
                    "preempted"
                } else {
                    kind
                };
                cp.scheduling.unplaceable(&updated.id, kind);
                if updated.pending_reason.as_deref() != Some(why.as_str()) {
                    cp.event(
                        &mut batch,
                        ObjectKind::Instance,
                        &updated.id,
                        "unschedulable",
                        why.clone(),
                    );
                }
                updated.pending_reason = Some(why);
            }
        }
        if updated != instance.object {
            batch.put_if(updated.key(), instance.revision, &updated);
            let placed = updated
                .node
                .is_some()
                .then(|| (updated.id.clone(), updated.created_at_ms));
            writes.push(cp, batch, placed).await?;
        }
    }
    writes.flush(cp).await
}

/// The scheduler's writes, committed [`PlacementWrites::CHUNK`] instances at a time: one
/// store commit (one fsync, one etcd transaction) for many placements instead of one each.
/// A chunk that conflicts (an instance changed meanwhile) is written by none of its
/// instances: they are still pending, and the next pass, which comes at once after any
/// change, places them again on fresh state.
#[derive(Default)]
struct PlacementWrites {
    batch: Batch,
    placed: Vec<(String, u64)>,
    instances: usize,
}

impl PlacementWrites {
    /// Instances per commit: each brings a compare and two puts (the instance, its event),
    /// within etcd's default limit of 128 operations per transaction.
    const CHUNK: usize = 32;

    async fn push(
        &mut self,
        cp: &ControlPlane,
        batch: Batch,
        placed: Option<(String, u64)>,
    ) -> Result<()> {
        self.batch.compares.extend(batch.compares);
        self.batch.operations.extend(batch.operations);
        self.placed.extend(placed);
        self.instances += 1;
        if self.instances >= Self::CHUNK {
            self.flush(cp).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, cp: &ControlPlane) -> Result<()> {
        let PlacementWrites { batch, placed, .. } = std::mem::take(self);
        if commit_or_retry_later(cp, batch).await? {
            for (id, created_at_ms) in placed {
                // Timed once written: a placement that lost a race is made again later.
                cp.scheduling.placed(&id, created_at_ms);
            }
        }
        Ok(())
    }
}

/// The pending reason of an instance that is still unplaceable: an instance that was
/// preempted keeps saying so (`preempted by web/ID; 1 node: not enough memory ...`).
fn still_pending(previous: Option<&str>, why: &str) -> String {
    match previous.filter(|p| p.starts_with(PREEMPTED_BY)) {
        Some(p) => {
            let by = p.split_once("; ").map_or(p, |(by, _)| by);
            format!("{by}; {why}")
        }
        None => why.to_string(),
    }
}

const PREEMPTED_BY: &str = "preempted by ";

/// Evict the victims and place `instance` in one transaction, compared against the revisions
/// the decision was made on. Each victim is deleted (its agent stops it as any removed
/// instance: its `stop.signal`, then SIGKILL after its own `stop.grace_seconds`) and a pending
/// copy takes its slot, template and restarts, with the reason `preempted by SERVICE/ID`, so
/// the scheduler places it again when there is room. Returns whether it was written.
async fn preempt_for(
    cp: &ControlPlane,
    live: &mut ClusterState,
    instance: &Versioned<Instance>,
    request: &PlacementRequest,
    preemption: &Preemption,
    residents: &[(Resident, &Versioned<Instance>)],
) -> Result<bool> {
    let now = now_ms();
    let mut trial = live.clone();
    let victims: Vec<&(Resident, &Versioned<Instance>)> = residents
        .iter()
        .filter(|(r, _)| preemption.victims.contains(&r.id))
        .collect();
    for (resident, _) in &victims {
        trial.release(&resident.request, resident.node_index);
    }
    // The same fit code as every placement.
    if cp
        .scheduler
        .commit(&mut trial, request, preemption.node_index)
        .is_err()
    {
        return Ok(false);
    }
    let by = format!("{}/{}", instance.object.service, instance.object.id);
    let mut batch = Batch::default();
    let mut names = vec![];
    for (_, victim) in &victims {
        let old = &victim.object;
        batch.compares.push(crate::store::Compare::ModRevision {
            key: old.key(),
            revision: victim.revision,
        });
        batch.delete(old.key());
        let copy = Instance {
            id: cp.new_instance_id(&old.service, &old.template_hash),
            node: None,
            phase: InstancePhase::Pending,
            ready: false,
            pending_reason: Some(format!("{PREEMPTED_BY}{by}")),
            created_at_ms: now,
            ready_since_ms: None,
            message: String::new(),
            exit_code: None,
            failed_at_ms: None,
            stats: None,
            address: None,
            carried_restarts: old.restarts,
            crash_looping: false,
            ..old.clone()
        };
        batch.put_if(copy.key(), 0, &copy);
        let what = format!(
            "preempted by {by} (priority {} over {}) on node {}; {} takes its place, pending",
            request.priority, old.spec.priority, preemption.node, copy.id
        );
        cp.event(
            &mut batch,
            ObjectKind::Instance,
            &old.id,
            "preempted",
            what.clone(),
        );
        cp.event(
            &mut batch,
            ObjectKind::Instance,
            &copy.id,
            "preempted",
            what,
        );
        names.push(format!("{}/{}", old.service, old.id));
    }
    let mut placed = instance.object.clone();
    placed.node = Some(preemption.node.clone());
    placed.phase = InstancePhase::Scheduled;
    placed.pending_reason = None;
    batch.put_if(placed.key(), instance.revision, &placed);
    cp.event(
        &mut batch,
        ObjectKind::Instance,
        &placed.id,
        "preempting",
        format!(
            "fits nowhere: evicting {} (lower priority) on node {}",
            names.join(", "),
            preemption.node
        ),
    );
    cp.event(
        &mut batch,
        ObjectKind::Instance,
        &placed.id,
        "scheduled",
        format!("placed on {}", preemption.node),
    );
    if commit_or_retry_later(cp, batch).await? {
        cp.scheduling.placed(&placed.id, placed.created_at_ms);
        *live = trial;
        return Ok(true);
    }
    Ok(false)
}

/// Run the controllers until `shutdown` turns true: on every store change (at most every
/// few ms) and at least every `reconcile_interval`.
pub async fn run_controllers(cp: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    let interval = cp.timers.reconcile_interval;
    if let Err(e) = cp.seed_heartbeats().await {
        eprintln!("tugboat: controllers: cannot read nodes: {e}");
    }
    loop {
        let mut watcher = match cp.store.watch("/", 0).await {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("tugboat: controllers: cannot watch the store: {e}");
                None
            }
        };
        // A node's grace ends on time, not on the next periodic pass.
        let began = std::time::Instant::now();
        let outcome = reconcile_once(&cp).await;
        // Under a stream of changes, a pass waits as long as the last one took: the
        // controllers take at most half the server's time, the API the rest.
        let pace = Duration::from_millis(5).max(began.elapsed()).min(interval);
        let wait = match outcome {
            Ok(deadline) => deadline.map_or(interval, |d| d.min(interval)),
            Err(e) => {
                eprintln!("tugboat: controllers: {e}");
                interval
            }
        };
        if let Some(pools) = &cp.node_pools {
            if let Err(e) = crate::nodepools::runner::pass(&cp, pools).await {
                eprintln!("tugboat: node pools: {e}");
            }
        }
        // Any change but the followers' liveness relays (merged in memory, not reconciled)
        // and the servers' own records.
        let changed = async {
            match watcher.as_mut() {
                Some(w) => loop {
                    match w.next().await {
                        Ok(events)
                            if events.iter().all(|e| {
                                e.kv.key.starts_with(crate::liveness::LIVENESS)
                                    || e.kv.key.starts_with(crate::servers::SERVERS)
                            }) => {}
                        _ => break,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed => tokio::time::sleep(pace).await,
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// The autoscalers: for each autoscaled service, the decision from its instances' latest
/// usage (in memory, from the agents' reports); a change of replicas is an event with its
/// numbers, and the service controller makes it so on its next pass.
async fn autoscale_services(
    cp: &ControlPlane,
    services: &[Arc<Versioned<Service>>],
    instances: &[Arc<Versioned<Instance>>],
    now: u64,
) -> Result<()> {
    use super::autoscale::{self, decide};
    let mut decisions = vec![];
    {
        let mut histories = cp.autoscale.lock().unwrap_or_else(|p| p.into_inner());
        histories.retain(|name, _| {
            services
                .iter()
                .any(|s| &s.object.name == name && s.object.spec.autoscale.is_some())
        });
        for service in services {
            let spec = &service.object.spec;
            let Some(autoscale) = &spec.autoscale else {
                continue;
            };
            let observed = autoscale::observe(
                cp,
                &service.object,
                instances.iter().map(|i| &i.object),
                now,
            );
            let history = histories.entry(service.object.name.clone()).or_default();
            if let Some(d) = decide(
                autoscale,
                &spec.resources.requests,
                spec.replicas,
                &observed,
                history,
                now,
            ) {
                history.last = Some(d.reason.clone());
                decisions.push((service.object.name.clone(), d));
            }
        }
    }
    for (name, d) in decisions {
        match cp.autoscale_to(&name, d.replicas, &d.reason).await {
            Ok(_) | Err(ControlPlaneError::NotFound { .. }) => {}
            Err(ControlPlaneError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
