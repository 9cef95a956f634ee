//! Property tests of the pure reconcilers.

use super::node::{reconcile_nodes, status_after, NodeAction, NodeTimers};
use super::service::{reconcile_service, ServiceAction};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use tugboat_api::model::{
    Instance, InstancePhase, Node, NodeStatus, Resources, RolloutState, Service, TemplateRevision,
};
use tugboat_api::spec::{ServiceSpec, UpdateCount};

const NEW: &str = "new";
const OLD: &str = "old";

fn phase() -> impl Strategy<Value = InstancePhase> {
    prop_oneof![
        1 => Just(InstancePhase::Pending),
        1 => Just(InstancePhase::Scheduled),
        4 => Just(InstancePhase::Running),
        1 => Just(InstancePhase::Failed),
        1 => Just(InstancePhase::Lost),
    ]
}

fn instance(n: usize, template: &str, phase: InstancePhase, ready: bool, created: u64) -> Instance {
    Instance {
        id: format!("i{n}"),
        service: "web".into(),
        template_hash: template.into(),
        spec: ServiceSpec::new("x"),
        node: Some("n1".into()),
        phase,
        ready: ready && phase == InstancePhase::Running,
        pending_reason: None,
        created_at_ms: created,
        ready_since_ms: (ready && phase == InstancePhase::Running).then_some(created),
        message: String::new(),
        exit_code: None,
        restarts: 0,
        failed_at_ms: (phase == InstancePhase::Failed).then_some(0),
        stats: None,
        address: None,
    }
}

fn instances() -> impl Strategy<Value = Vec<Instance>> {
    prop::collection::vec(
        (prop::bool::ANY, phase(), prop::bool::ANY, 0u64..1000),
        0..12,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(n, (is_new, phase, ready, created))| {
                instance(n, if is_new { NEW } else { OLD }, phase, ready, created)
            })
            .collect()
    })
}

fn service() -> impl Strategy<Value = Service> {
    (0u32..8, 0u32..3, 0u32..3, prop::bool::ANY, prop::bool::ANY).prop_filter_map(
        "surge and unavailable both 0",
        |(replicas, surge, unavailable, has_history, progressing)| {
            if surge == 0 && unavailable == 0 {
                return None;
            }
            let mut spec = ServiceSpec::new("x");
            spec.replicas = replicas;
            // Absolute or percentage, both exercised.
            spec.update.max_surge = if surge == 2 {
                UpdateCount::Percent(30)
            } else {
                UpdateCount::Absolute(surge)
            };
            spec.update.max_unavailable = if unavailable == 2 {
                UpdateCount::Percent(50)
            } else {
                UpdateCount::Absolute(unavailable)
            };
            spec.update.progress_deadline_seconds = 1000;
            let mut service = Service::new("web", spec.clone(), 0);
            service.rollout.template_hash = NEW.into();
            service.rollout.state = if progressing {
                RolloutState::Progressing
            } else {
                RolloutState::Complete
            };
            if has_history {
                service.history.push(TemplateRevision {
                    template_hash: OLD.into(),
                    spec,
                });
            }
            Some(service)
        },
    )
}

fn alive(i: &Instance) -> bool {
    !matches!(i.phase, InstancePhase::Failed | InstancePhase::Lost)
}
fn ready(i: &Instance) -> bool {
    i.phase == InstancePhase::Running && i.ready
}

proptest! {
    #[test]
    fn one_pass_respects_surge_and_availability(service in service(), instances in instances(), delay in 0u64..20) {
        let now = 10;
        let actions = reconcile_service(&service, &instances, now, delay);
        let cooling = |i: &Instance| i.phase == InstancePhase::Failed && now < delay;
        let spec = &service.spec;
        let deleted: Vec<&str> = actions.iter().filter_map(|a| match a { ServiceAction::Delete { id, .. } => Some(id.as_str()), _ => None }).collect();
        let unique: HashSet<&str> = deleted.iter().copied().collect();
        prop_assert_eq!(unique.len(), deleted.len(), "an instance deleted twice");
        for i in instances.iter().filter(|i| !alive(i) && !cooling(i)) {
            prop_assert!(unique.contains(i.id.as_str()), "dead instance {} kept", i.id);
        }
        let rolled_back = actions.iter().any(|a| matches!(a, ServiceAction::RollBack { .. }));
        let failed_new = instances.iter().any(|i| i.template_hash == NEW && i.phase == InstancePhase::Failed);
        let should_roll_back = service.rollout.state == RolloutState::Progressing && !service.history.is_empty() && failed_new;
        prop_assert_eq!(rolled_back, should_roll_back);
        if rolled_back {
            let creates = actions.iter().any(|a| matches!(a, ServiceAction::Create { .. }));
            prop_assert!(!creates, "created while rolling back");
            return Ok(());
        }
        // A failed instance that is cooling down still holds its slot.
        let alive_before = instances.iter().filter(|i| alive(i) || cooling(i)).count();
        let created_any = actions.iter().any(|a| matches!(a, ServiceAction::Create { .. }));
        let cooling_new = instances.iter().filter(|i| cooling(i) && i.template_hash == NEW).count();
        let alive_new = instances.iter().filter(|i| alive(i) && i.template_hash == NEW).count();
        prop_assert!(!created_any || alive_new + cooling_new < spec.replicas as usize, "replaced a cooling instance early");
        let created: u32 = actions.iter().map(|a| match a { ServiceAction::Create { count } => *count, _ => 0 }).sum();
        let (surge, unavailable) = spec.update.bounds(spec.replicas);
        let ceiling = (spec.replicas + surge) as usize;
        prop_assert!(created == 0 || alive_before + created as usize <= ceiling, "created {created} over {alive_before} alive, ceiling {ceiling}");
        let ready_before = instances.iter().filter(|i| alive(i) && ready(i)).count();
        let ready_after = instances.iter().filter(|i| alive(i) && ready(i) && !unique.contains(i.id.as_str())).count();
        let floor = (spec.replicas.saturating_sub(unavailable) as usize).min(ready_before);
        // Scale-down of surplus new instances may go below the floor only when there are more than replicas.
        let new_alive = instances.iter().filter(|i| alive(i) && i.template_hash == NEW).count();
        if new_alive <= spec.replicas as usize {
            prop_assert!(ready_after >= floor, "ready {ready_before} -> {ready_after}, floor {floor}");
        }
    }

    #[test]
    fn repeated_passes_converge_within_bounds(service in service(), instances in instances()) {
        let mut service = service;
        let mut instances = instances;
        let mut next_id = 100;
        let spec = service.spec.clone();
        let ceiling = instances.iter().filter(|i| alive(i)).count().max((spec.replicas + spec.update.bounds(spec.replicas).0) as usize);
        for step in 0..60u64 {
            let now = 10 + step;
            let actions = reconcile_service(&service, &instances, now, 0);
            for action in actions {
                match action {
                    ServiceAction::Create { count } => {
                        for _ in 0..count {
                            instances.push(instance(next_id, &service.rollout.template_hash.clone(), InstancePhase::Pending, false, now));
                            next_id += 1;
                        }
                    }
                    ServiceAction::Delete { id, .. } => instances.retain(|i| i.id != id),
                    ServiceAction::RollBack { .. } => {
                        service.rollout.template_hash = OLD.into();
                        service.rollout.state = RolloutState::RolledBack;
                        service.history.clear();
                    }
                    ServiceAction::Progress { at_ms } => service.rollout.last_progress_ms = at_ms,
                    ServiceAction::Complete => service.rollout.state = RolloutState::Complete,
                }
            }
            prop_assert!(instances.iter().filter(|i| alive(i)).count() <= ceiling, "step {step}: over the surge ceiling");
            // The world: what was starting a step ago now runs and is ready.
            for i in instances.iter_mut().filter(|i| alive(i) && !ready(i)) {
                i.phase = InstancePhase::Running;
                i.ready = true;
                i.ready_since_ms = Some(now);
            }
        }
        let current = service.rollout.template_hash.clone();
        prop_assert_eq!(instances.len(), spec.replicas as usize, "instances: {:?}", instances);
        prop_assert!(instances.iter().all(|i| i.template_hash == current && ready(i)));
        prop_assert_ne!(service.rollout.state, RolloutState::Progressing);
    }

    #[test]
    fn node_status_follows_silence_and_lost_nodes_release_instances(
        silences in prop::collection::vec(0u64..200, 1..6),
        placements in prop::collection::vec((0usize..6, phase()), 0..15),
    ) {
        let timers = NodeTimers { not_ready_after_ms: 50, lost_after_ms: 100 };
        let now = 1_000;
        let nodes: Vec<Node> = silences.iter().enumerate().map(|(n, _)| Node {
            name: format!("n{n}"),
            labels: Default::default(),
            capacity: Resources::default(),
            address: None,
            subnet: None,
            status: NodeStatus::Ready,
            registered_at_ms: 0,
            last_heartbeat_ms: 0,
            volumes: vec![],
            agent_url: None,
        }).collect();
        let heartbeats: HashMap<String, u64> = silences.iter().enumerate().map(|(n, s)| (format!("n{n}"), now - s)).collect();
        let instances: Vec<Instance> = placements.iter().enumerate().map(|(k, (n, phase))| {
            let mut i = instance(k, NEW, *phase, true, 0);
            i.node = Some(format!("n{n}"));
            i
        }).collect();
        let actions = reconcile_nodes(&nodes, &heartbeats, &instances, now, timers);
        for (n, silence) in silences.iter().enumerate() {
            let expected = status_after(*silence, timers);
            let changed = actions.iter().any(|a| matches!(a, NodeAction::SetStatus { node, status, .. } if *node == format!("n{n}") && *status == expected));
            prop_assert_eq!(changed, expected != NodeStatus::Ready);
        }
        for i in &instances {
            let node = i.node.clone().unwrap();
            let idx: usize = node[1..].parse().unwrap();
            let node_lost = silences.get(idx).is_none_or(|s| status_after(*s, timers) == NodeStatus::Lost);
            let marked = actions.iter().any(|a| matches!(a, NodeAction::MarkLost { id, .. } if *id == i.id));
            prop_assert_eq!(marked, node_lost && alive(i), "instance {} on {}", i.id, node);
        }
    }
}

#[test]
fn a_failed_instance_is_replaced_only_after_its_delay() {
    let mut spec = ServiceSpec::new("x");
    spec.replicas = 2;
    let mut service = Service::new("web", spec, 0);
    service.rollout.template_hash = NEW.into();
    service.rollout.state = RolloutState::Complete;
    let mut failed = instance(1, NEW, InstancePhase::Failed, false, 0);
    failed.failed_at_ms = Some(1_000);
    let instances = vec![instance(0, NEW, InstancePhase::Running, true, 0), failed];
    assert_eq!(
        reconcile_service(&service, &instances, 5_999, 5_000),
        vec![]
    );
    let actions = reconcile_service(&service, &instances, 6_000, 5_000);
    assert!(
        matches!(&actions[..], [ServiceAction::Delete { id, .. }, ServiceAction::Create { count: 1 }] if id == "i1"),
        "{actions:?}"
    );
}

#[test]
fn a_stalled_rollout_rolls_back_after_its_deadline() {
    let mut spec = ServiceSpec::new("x");
    spec.update.progress_deadline_seconds = 5;
    let mut service = Service::new("web", spec.clone(), 0);
    service.rollout.template_hash = NEW.into();
    service.history.push(TemplateRevision {
        template_hash: OLD.into(),
        spec,
    });
    let instances = vec![
        instance(1, OLD, InstancePhase::Running, true, 0),
        instance(2, NEW, InstancePhase::Running, false, 0),
    ];
    assert!(!reconcile_service(&service, &instances, 5_000, 0)
        .iter()
        .any(|a| matches!(a, ServiceAction::RollBack { .. })));
    let actions = reconcile_service(&service, &instances, 5_001, 0);
    assert!(
        matches!(&actions[..], [ServiceAction::RollBack { reason }] if reason.contains("within 5s")),
        "{actions:?}"
    );
}
