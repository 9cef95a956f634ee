//! The service reconciler: desired service, its instances and the time in; actions out.
//!
//! One algorithm covers create, scale up and down, replacing dead instances and rolling
//! updates: instances of the current template are "new", others "old". New ones are created
//! while the total stays within replicas + max_surge; old ones are removed while the ready
//! count stays at least replicas - max_unavailable. A new instance that fails, or no new
//! instance getting ready within the progress deadline, rolls back to the previous template.

use tugboat_api::model::{Instance, InstancePhase, RolloutState, Service};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAction {
    /// Create `count` instances of the service's current template.
    Create {
        count: u32,
    },
    Delete {
        id: String,
        reason: String,
    },
    /// The rollout made progress (a new instance got ready at this time).
    Progress {
        at_ms: u64,
    },
    /// The rollout is done: every instance runs the current template and is ready.
    Complete,
    /// Restore the previous template (the loop rewrites the spec; the next pass rolls).
    RollBack {
        reason: String,
    },
}

fn is_dead(i: &Instance) -> bool {
    matches!(i.phase, InstancePhase::Failed | InstancePhase::Lost)
}

fn is_ready(i: &Instance) -> bool {
    i.phase == InstancePhase::Running && i.ready
}

/// The slots no instance in `used` holds, lowest first: a replacement takes the slot its
/// failed predecessor left.
pub fn free_slots(used: &std::collections::BTreeSet<u32>) -> impl Iterator<Item = u32> + '_ {
    (0u32..).filter(|s| !used.contains(s))
}

/// Order in which to remove instances: the least useful first.
fn removal_order(a: &&Instance, b: &&Instance) -> std::cmp::Ordering {
    let rank = |i: &Instance| match i.phase {
        InstancePhase::Pending => 0,
        InstancePhase::Scheduled => 1,
        _ if !i.ready => 2,
        _ => 3,
    };
    rank(a)
        .cmp(&rank(b))
        .then(b.created_at_ms.cmp(&a.created_at_ms))
        .then(a.id.cmp(&b.id))
}

/// `replace_failed_after_ms`: a failed instance keeps its slot this long before it is removed
/// and replaced (a crash loop is paced, not spun).
pub fn reconcile_service(
    service: &Service,
    instances: &[Instance],
    now_ms: u64,
    replace_failed_after_ms: u64,
) -> Vec<ServiceAction> {
    reconcile_service_draining(
        service,
        instances,
        now_ms,
        replace_failed_after_ms,
        &Default::default(),
    )
}

/// As [`reconcile_service`], with instances on `draining` nodes moved away like instances
/// of an older template: a replacement first (within `update.max_surge`), then the
/// drained copy, never below `replicas - update.max_unavailable` ready.
pub fn reconcile_service_draining<I: std::borrow::Borrow<Instance>>(
    service: &Service,
    instances: &[I],
    now_ms: u64,
    replace_failed_after_ms: u64,
    draining: &std::collections::HashSet<String>,
) -> Vec<ServiceAction> {
    // Owned instances (tests) or the controllers' shared ones alike, never copied.
    let instances: Vec<&Instance> = instances.iter().map(I::borrow).collect();
    let drained = |i: &Instance| i.node.as_ref().is_some_and(|n| draining.contains(n));
    let mut actions = vec![];
    let cooling = |i: &Instance| {
        i.phase == InstancePhase::Failed
            && i.failed_at_ms
                .is_some_and(|at| now_ms < at.saturating_add(replace_failed_after_ms))
    };
    let spec = &service.spec;
    let current = service.rollout.template_hash.as_str();
    let replicas = spec.replicas as usize;
    let (surge, unavailable) = spec.update.bounds(spec.replicas);
    let (surge, unavailable) = (surge as usize, unavailable as usize);

    let policy = spec.reschedule;
    // A lost instance waits for its node while the policy says so: it holds its slot (no
    // replacement), like a cooling failed one.
    let waiting = |i: &Instance| {
        i.phase == InstancePhase::Lost
            && (!policy.replace
                || i.failed_at_ms.is_some_and(|at| {
                    now_ms < at.saturating_add(u64::from(policy.after_seconds) * 1000)
                }))
    };
    let holding = |i: &Instance| cooling(i) || waiting(i);
    let ready_now = instances.iter().filter(|i| is_ready(i)).count();
    for dead in instances.iter().filter(|i| is_dead(i) && !holding(i)) {
        // A lost instance being replaced stays on record until the replicas are ready
        // without it: should its node return first, it runs on (and the replacement that is
        // not ready yet goes); the node stops its copy only once it was replaced.
        if dead.phase == InstancePhase::Lost && ready_now < replicas {
            continue;
        }
        let reason = match dead.phase {
            InstancePhase::Lost => format!(
                "node {} was lost and the instance was replaced",
                dead.node.as_deref().unwrap_or("?")
            ),
            _ => format!(
                "failed: {}",
                if dead.message.is_empty() {
                    "no message"
                } else {
                    &dead.message
                }
            ),
        };
        actions.push(ServiceAction::Delete {
            id: dead.id.clone(),
            reason,
        });
    }

    if service.rollout.state == RolloutState::Progressing && !service.history.is_empty() {
        let failed_new = instances
            .iter()
            .find(|i| i.template_hash == current && i.phase == InstancePhase::Failed);
        let deadline_ms = u64::from(spec.update.progress_deadline_seconds) * 1000;
        let stalled = now_ms.saturating_sub(service.rollout.last_progress_ms) > deadline_ms;
        let reason = match (failed_new, stalled) {
            (Some(i), _) => Some(format!("new instance {} failed: {}", i.id, i.message)),
            (None, true) => Some(format!(
                "no new instance became ready within {}s",
                spec.update.progress_deadline_seconds
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            actions.push(ServiceAction::RollBack { reason });
            return actions;
        }
    }

    // Cooling failed and waiting lost instances hold their slot (no replacement yet) but are
    // not available.
    let alive: Vec<&Instance> = instances
        .iter()
        .copied()
        .filter(|i| !is_dead(i) || holding(i))
        .collect();
    let mut new: Vec<&Instance> = alive
        .iter()
        .copied()
        .filter(|i| i.template_hash == current && !drained(i))
        .collect();
    let mut old: Vec<&Instance> = alive
        .iter()
        .copied()
        .filter(|i| i.template_hash != current || drained(i))
        .collect();
    let mut total = alive.len();
    let mut available = alive.iter().filter(|i| is_ready(i)).count();
    let min_available = replicas.saturating_sub(unavailable);

    if new.len() < replicas {
        let room = (replicas + surge).saturating_sub(total);
        let count = (replicas - new.len()).min(room);
        if count > 0 {
            actions.push(ServiceAction::Create {
                count: count as u32,
            });
            total += count;
        }
    } else if new.len() > replicas {
        new.sort_by(removal_order);
        for extra in &new[..new.len() - replicas] {
            actions.push(ServiceAction::Delete {
                id: extra.id.clone(),
                reason: "scaled down".into(),
            });
            total -= 1;
        }
    }

    old.sort_by(removal_order);
    for instance in &old {
        if is_ready(instance) {
            if available <= min_available {
                break;
            }
            available -= 1;
        }
        actions.push(ServiceAction::Delete {
            id: instance.id.clone(),
            reason: if instance.template_hash == current {
                format!(
                    "moved off draining node {}",
                    instance.node.as_deref().unwrap_or("?")
                )
            } else {
                "replaced by the new template".into()
            },
        });
        total -= 1;
    }
    let _ = total;

    if service.rollout.state != RolloutState::Complete {
        let newest_ready = new
            .iter()
            .filter(|i| is_ready(i))
            .filter_map(|i| i.ready_since_ms)
            .max();
        if let Some(at) = newest_ready.filter(|at| *at > service.rollout.last_progress_ms) {
            actions.push(ServiceAction::Progress { at_ms: at });
        }
        let ready_new = new.iter().filter(|i| is_ready(i)).count();
        if service.rollout.state == RolloutState::Progressing
            && old.is_empty()
            && ready_new == replicas
            && new.len() == replicas
        {
            actions.push(ServiceAction::Complete);
        }
    }
    actions
}

#[cfg(test)]
mod slot_tests {
    #[test]
    fn free_slots_fill_the_gaps_first() {
        let used = [0, 2, 3].into_iter().collect();
        let free: Vec<u32> = super::free_slots(&used).take(3).collect();
        assert_eq!(free, vec![1, 4, 5]);
    }
}
