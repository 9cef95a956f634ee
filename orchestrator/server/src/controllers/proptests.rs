//! Property tests of the pure reconcilers.

use super::node::{
    next_deadline_ms, reconcile_nodes, status_after, Liveness, NodeAction, NodeTimers,
};
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
        slot: 0,
        carried_restarts: 0,
        last_exit: None,
        crash_looping: false,
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
                    failed: false,
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
        // Dead instances go, but a lost one stays on record until the replicas are ready
        // without it (its node may return first).
        let ready_now = instances.iter().filter(|i| ready(i)).count();
        for i in instances.iter().filter(|i| !alive(i) && !cooling(i)) {
            let kept_for_its_node = i.phase == InstancePhase::Lost && ready_now < spec.replicas as usize;
            prop_assert_eq!(unique.contains(i.id.as_str()), !kept_for_its_node, "dead instance {}", i.id);
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
        silences in prop::collection::vec((0u64..200, prop::option::of(0u64..200)), 1..6),
        placements in prop::collection::vec((0usize..6, phase()), 0..15),
    ) {
        let timers = NodeTimers { heartbeat_every_ms: 10, not_ready_after_ms: 50, lost_after_ms: 100 };
        let now = 1_000;
        let nodes: Vec<Node> = silences.iter().enumerate().map(|(n, _)| test_node(&format!("n{n}"))).collect();
        let heartbeats: HashMap<String, u64> = silences.iter().enumerate().map(|(n, (s, _))| (format!("n{n}"), now - s)).collect();
        let peer_seen: HashMap<String, u64> = silences.iter().enumerate().filter_map(|(n, (_, p))| p.map(|p| (format!("n{n}"), now - p))).collect();
        let live = Liveness { heartbeats: &heartbeats, peer_seen: &peer_seen };
        let instances: Vec<Instance> = placements.iter().enumerate().map(|(k, (n, phase))| {
            let mut i = instance(k, NEW, *phase, true, 0);
            i.node = Some(format!("n{n}"));
            i
        }).collect();
        let actions = reconcile_nodes(&nodes, &live, &instances, now, timers);
        // Nobody heard within the not-ready grace: the server is the one cut off.
        let full_disruption = silences.iter().all(|(s, _)| *s > timers.not_ready_after_ms);
        let expected_of = |(s, p): (u64, Option<u64>)| {
            let status = status_after(s, p.map_or(s, |p| p.min(s)), timers);
            if status == NodeStatus::Lost && full_disruption { NodeStatus::NotReady } else { status }
        };
        for (n, silence) in silences.iter().enumerate() {
            let expected = expected_of(*silence);
            let changed = actions.iter().any(|a| matches!(a, NodeAction::SetStatus { node, status, .. } if *node == format!("n{n}") && *status == expected));
            prop_assert_eq!(changed, expected != NodeStatus::Ready);
        }
        for i in &instances {
            let node = i.node.clone().unwrap();
            let idx: usize = node[1..].parse().unwrap();
            let node_lost = silences.get(idx).is_none_or(|s| expected_of(*s) == NodeStatus::Lost);
            let marked = actions.iter().any(|a| matches!(a, NodeAction::MarkLost { id, .. } if *id == i.id));
            prop_assert_eq!(marked, node_lost && alive(i), "instance {} on {}", i.id, node);
        }
        // Until the next deadline nothing changes; at it, something may.
        let next = next_deadline_ms(&nodes, &live, now, timers);
        prop_assert!(next > now);
    }
}

fn test_node(name: &str) -> Node {
    Node {
        runtimes: vec![],
        name: name.into(),
        labels: Default::default(),
        capacity: Resources::default(),
        address: None,
        subnet: None,
        status: NodeStatus::Ready,
        registered_at_ms: 0,
        last_heartbeat_ms: 0,
        volumes: vec![],
        agent_url: None,
        heartbeat_every_ms: 0,
        cordoned: false,
        draining: false,
    }
}

const LAN: NodeTimers = NodeTimers::LAN;

#[test]
fn a_node_the_server_cannot_hear_but_a_peer_reaches_is_not_ready_not_lost() {
    let nodes = vec![test_node("a"), test_node("b")];
    let now = 100_000;
    let heartbeats = HashMap::from([("a".to_string(), now - 10_000), ("b".to_string(), now)]);
    let peer_seen = HashMap::from([("a".to_string(), now - 200)]);
    let live = Liveness {
        heartbeats: &heartbeats,
        peer_seen: &peer_seen,
    };
    let mut i = instance(1, NEW, InstancePhase::Running, true, 0);
    i.node = Some("a".into());
    let actions = reconcile_nodes(&nodes, &live, &[i.clone()], now, LAN);
    assert_eq!(
        actions,
        vec![NodeAction::SetStatus {
            node: "a".into(),
            status: NodeStatus::NotReady,
            silent_ms: 10_000
        }]
    );
    // The peer stops reaching it too: lost, and its instance with it.
    let peer_seen = HashMap::from([("a".to_string(), now - 3_001)]);
    let live = Liveness {
        heartbeats: &heartbeats,
        peer_seen: &peer_seen,
    };
    let actions = reconcile_nodes(&nodes, &live, &[i], now, LAN);
    assert!(
        actions.contains(&NodeAction::SetStatus {
            node: "a".into(),
            status: NodeStatus::Lost,
            silent_ms: 10_000
        }),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, NodeAction::MarkLost { id, .. } if id == "i1")),
        "{actions:?}"
    );
}

#[test]
fn when_no_node_is_heard_the_server_declares_none_lost() {
    let nodes = vec![test_node("a"), test_node("b")];
    let now = 100_000;
    let heartbeats = HashMap::from([
        ("a".to_string(), now - 10_000),
        ("b".to_string(), now - 9_000),
    ]);
    let peer_seen = HashMap::new();
    let live = Liveness {
        heartbeats: &heartbeats,
        peer_seen: &peer_seen,
    };
    let actions = reconcile_nodes::<Instance>(&nodes, &live, &[], now, LAN);
    assert!(
        actions.iter().all(|a| matches!(
            a,
            NodeAction::SetStatus {
                status: NodeStatus::NotReady,
                ..
            }
        )),
        "{actions:?}"
    );
    assert_eq!(actions.len(), 2);
}

#[test]
fn the_next_deadline_is_when_the_quietest_node_crosses_a_grace() {
    let nodes = vec![test_node("a"), test_node("b")];
    let now = 100_000;
    let heartbeats = HashMap::from([("a".to_string(), now - 1_000), ("b".to_string(), now - 100)]);
    let peer_seen = HashMap::new();
    let live = Liveness {
        heartbeats: &heartbeats,
        peer_seen: &peer_seen,
    };
    // a is not ready 501 ms from now (1.5 s grace).
    assert_eq!(next_deadline_ms(&nodes, &live, now, LAN), now + 501);
}

#[test]
fn timers_that_cannot_work_are_refused_by_name() {
    assert!(NodeTimers::LAN.check().is_ok() && NodeTimers::EDGE.check().is_ok());
    let bad = NodeTimers {
        heartbeat_every_ms: 1_000,
        not_ready_after_ms: 1_500,
        lost_after_ms: 3_000,
    };
    assert!(bad.check().unwrap_err().contains("--node-not-ready-after"));
    let bad = NodeTimers {
        heartbeat_every_ms: 500,
        not_ready_after_ms: 1_500,
        lost_after_ms: 1_000,
    };
    assert!(bad.check().unwrap_err().contains("--node-lost-after"));
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
        failed: false,
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

fn two_replicas_one_lost(
    reschedule: tugboat_api::spec::RescheduleSpec,
) -> (Service, Vec<Instance>) {
    let mut spec = ServiceSpec::new("x");
    spec.replicas = 2;
    spec.reschedule = reschedule;
    let mut service = Service::new("web", spec, 0);
    service.rollout.template_hash = NEW.into();
    service.rollout.state = RolloutState::Complete;
    let mut lost = instance(1, NEW, InstancePhase::Lost, false, 0);
    lost.failed_at_ms = Some(1_000);
    (
        service,
        vec![instance(0, NEW, InstancePhase::Running, true, 0), lost],
    )
}

#[test]
fn a_lost_instance_is_replaced_at_once_and_kept_on_record_until_the_replacement_is_ready() {
    let (service, mut instances) = two_replicas_one_lost(Default::default());
    assert_eq!(
        reconcile_service(&service, &instances, 1_001, 0),
        vec![ServiceAction::Create { count: 1 }]
    );
    // The replacement runs but is not ready: the lost one stays (its node may come back).
    instances.push(instance(2, NEW, InstancePhase::Running, false, 1_001));
    assert_eq!(reconcile_service(&service, &instances, 1_002, 0), vec![]);
    // Ready: now the lost one goes, and its node will stop its copy on return.
    instances[2] = instance(2, NEW, InstancePhase::Running, true, 1_001);
    let actions = reconcile_service(&service, &instances, 1_003, 0);
    assert!(
        matches!(&actions[..], [ServiceAction::Delete { id, reason }] if id == "i1" && reason.contains("replaced")),
        "{actions:?}"
    );
}

#[test]
fn a_lost_instance_whose_node_returns_first_runs_on_and_the_unready_replacement_goes() {
    let (service, mut instances) = two_replicas_one_lost(Default::default());
    instances.push(instance(2, NEW, InstancePhase::Scheduled, false, 1_001));
    // The node is back: its agent reported the instance running and ready again.
    instances[1] = instance(1, NEW, InstancePhase::Running, true, 0);
    let actions = reconcile_service(&service, &instances, 1_002, 0);
    assert!(
        matches!(&actions[..], [ServiceAction::Delete { id, reason }] if id == "i2" && reason == "scaled down"),
        "{actions:?}"
    );
}

#[test]
fn reschedule_after_and_replace_false_hold_the_lost_instance_s_slot() {
    let policy = |replace, after_seconds| tugboat_api::spec::RescheduleSpec {
        replace,
        after_seconds,
    };
    let (service, instances) = two_replicas_one_lost(policy(true, 30));
    assert_eq!(reconcile_service(&service, &instances, 30_999, 0), vec![]);
    assert_eq!(
        reconcile_service(&service, &instances, 31_000, 0),
        vec![ServiceAction::Create { count: 1 }]
    );
    let (service, instances) = two_replicas_one_lost(policy(false, 0));
    assert_eq!(
        reconcile_service(&service, &instances, 10_000_000, 0),
        vec![]
    );
}
