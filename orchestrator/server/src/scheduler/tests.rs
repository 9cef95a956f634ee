//! The scheduler against hand-built clusters: every filter, every scorer, and "why pending".

use super::*;
use std::collections::BTreeMap;
use tugboat_api::model::Resources;
use tugboat_api::spec::{
    AffinityRule, Constraint, ConstraintOperator, Cpu, Memory, Port, PortSpec, Protocol,
    ScoringStrategy,
};
use tugboat_api::spec::{ServiceSpec, VolumeKind, VolumeSpec};

const GI: u64 = 1 << 30;

fn node(name: &str, cpu: u64, mem_gi: u64, labels: &[(&str, &str)]) -> NodeState {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NodeState::new(name, labels, Resources::new(cpu * 1000, mem_gi * GI, 0))
}

fn spec(cpu_millis: u64, mem_gi: u64) -> ServiceSpec {
    let mut s = ServiceSpec::new("app:1");
    s.resources.requests.cpu = Some(Cpu(cpu_millis));
    s.resources.requests.memory = Some(Memory(mem_gi * GI));
    s
}

fn request(service: &str, s: &ServiceSpec) -> PlacementRequest {
    PlacementRequest::for_service(service, s)
}

fn all_nodes() -> Scheduler {
    Scheduler::new(SchedulerOptions { feasible_sample: 0 })
}

#[test]
fn resources_fit_and_the_commit_check_prevents_overcommit() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![node("a", 4, 4, &[])]);
    let req = request("web", &spec(1000, 3));
    let stale = cluster.clone();
    scheduler.place(&mut cluster, &req).unwrap();
    // A plan from the stale snapshot still says yes; the commit, on current state, says no.
    let plan = scheduler.plan(&stale, &req).unwrap();
    assert_eq!(
        scheduler.commit(&mut cluster, &req, plan.node_index),
        Err(Rejection::NotEnoughMemory {
            need: 3 * GI,
            free: GI
        })
    );
    assert_eq!(cluster.nodes[0].allocated.memory_bytes, 3 * GI);
    let cpu_hog = request("cpu", &spec(5000, 0));
    assert_eq!(
        scheduler.plan(&cluster, &cpu_hog).unwrap_err().to_string(),
        "1 node: not enough cpu (needs 5, largest free 3)"
    );
}

#[test]
fn why_pending_groups_nodes_by_reason() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![
        node("a", 8, 1, &[("zone", "east")]),
        node("b", 8, 1, &[("zone", "west")]),
        node("c", 8, 1, &[("zone", "west")]),
        node("d", 8, 16, &[("zone", "west")]),
    ]);
    cluster.nodes[3].ready = false;
    let mut s = spec(500, 2);
    s.placement.constraints = vec![Constraint {
        key: "zone".into(),
        operator: ConstraintOperator::In,
        values: vec!["east".into()],
    }];
    let why = scheduler.plan(&cluster, &request("db", &s)).unwrap_err();
    // Every filter a node fails counts: a has the zone but too little memory; b and c lack
    // both; d is not ready and in the wrong zone.
    assert_eq!(
        why.to_string(),
        "3 nodes: not enough memory (needs 2Gi, largest free 1Gi); 3 nodes: constraint zone=east; 1 node: not ready"
    );
    s.resources.requests.memory = Some(Memory(GI / 2));
    let why = scheduler.plan(&cluster, &request("db", &s)).unwrap();
    assert_eq!(why.node, "a");
    cluster.nodes[0]
        .labels
        .insert("zone".into(), "north".into());
    let why = scheduler.plan(&cluster, &request("db", &s)).unwrap_err();
    assert_eq!(
        why.to_string(),
        "4 nodes: constraint zone=east; 1 node: not ready"
    );
    assert_eq!(
        scheduler
            .plan(&ClusterState::default(), &request("db", &s))
            .unwrap_err()
            .to_string(),
        "no nodes are registered"
    );
}

#[test]
fn node_labels_and_every_constraint_operator() {
    let scheduler = all_nodes();
    let cluster = ClusterState::new(vec![
        node("gpu", 8, 8, &[("gpu", "a100"), ("arch", "x86")]),
        node("arm", 8, 8, &[("arch", "arm")]),
    ]);
    let pick = |s: &ServiceSpec| {
        scheduler
            .plan(&cluster, &request("x", s))
            .map(|p| p.node)
            .map_err(|e| e.to_string())
    };
    let mut s = spec(100, 1);
    s.placement.node_labels.insert("arch".into(), "arm".into());
    assert_eq!(pick(&s), Ok("arm".into()));
    s.placement
        .node_labels
        .insert("arch".into(), "riscv".into());
    assert_eq!(pick(&s), Err("2 nodes: label arch=riscv missing".into()));
    let c = |key: &str, operator, values: &[&str]| Constraint {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    for (constraint, expected) in [
        (c("gpu", ConstraintOperator::Exists, &[]), "gpu"),
        (c("gpu", ConstraintOperator::DoesNotExist, &[]), "arm"),
        (c("arch", ConstraintOperator::NotIn, &["x86"]), "arm"),
        (c("arch", ConstraintOperator::In, &["x86", "ppc"]), "gpu"),
    ] {
        let mut s = spec(100, 1);
        s.placement.constraints = vec![constraint.clone()];
        assert_eq!(pick(&s), Ok(expected.to_string()), "{constraint}");
    }
}

#[test]
fn published_ports_are_exclusive_per_node_and_protocol() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![node("a", 8, 8, &[])]);
    let mut s = spec(100, 1);
    s.ports = vec![PortSpec {
        container: Port(80),
        published: Some(Port(8080)),
        protocol: Protocol::Tcp,
        mode: Default::default(),
    }];
    scheduler.place(&mut cluster, &request("web", &s)).unwrap();
    let why = scheduler.plan(&cluster, &request("web", &s)).unwrap_err();
    assert_eq!(why.to_string(), "1 node: host port 8080/tcp in use");
    s.ports[0].protocol = Protocol::Udp;
    assert!(scheduler.plan(&cluster, &request("web", &s)).is_ok());
}

#[test]
fn required_affinity_and_anti_affinity() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![node("a", 8, 8, &[]), node("b", 8, 8, &[])]);
    let db = spec(100, 1);
    let mut web = spec(100, 1);
    web.placement.affinity = vec![AffinityRule {
        service: "db".into(),
        required: true,
    }];
    assert_eq!(
        scheduler
            .plan(&cluster, &request("web", &web))
            .unwrap_err()
            .to_string(),
        "2 nodes: no instance of `db` (affinity)"
    );
    let db_at = scheduler
        .place(&mut cluster, &request("db", &db))
        .unwrap()
        .node;
    assert_eq!(
        scheduler
            .plan(&cluster, &request("web", &web))
            .unwrap()
            .node,
        db_at
    );
    // One replica per node: anti-affinity with itself.
    let mut one_per_node = spec(100, 1);
    one_per_node.placement.anti_affinity = vec![AffinityRule {
        service: "cache".into(),
        required: true,
    }];
    let req = request("cache", &one_per_node);
    let first = scheduler.place(&mut cluster, &req).unwrap().node;
    let second = scheduler.place(&mut cluster, &req).unwrap().node;
    assert_ne!(first, second);
    assert_eq!(
        scheduler.plan(&cluster, &req).unwrap_err().to_string(),
        "2 nodes: runs `cache` (anti-affinity)"
    );
}

#[test]
fn a_named_volume_pins_its_users_to_its_node() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![node("a", 8, 8, &[]), node("b", 8, 8, &[])]);
    let mut s = spec(100, 1);
    s.volumes = vec![VolumeSpec {
        kind: VolumeKind::Volume,
        source: "pgdata".into(),
        target: "/data".into(),
        read_only: false,
    }];
    let req = request("db", &s);
    let at = scheduler.place(&mut cluster, &req).unwrap().node;
    for _ in 0..3 {
        assert_eq!(scheduler.place(&mut cluster, &req).unwrap().node, at);
    }
    let other = if at == "a" { 1 } else { 0 };
    assert_eq!(
        scheduler.commit(&mut cluster, &req, other),
        Err(Rejection::VolumeElsewhere {
            volume: "pgdata".into(),
            node: at
        })
    );
}

fn volume_object(
    name: &str,
    config: tugboat_api::spec::VolumeConfig,
) -> tugboat_api::model::Volume {
    tugboat_api::model::Volume {
        name: name.into(),
        size_bytes: config.size_bytes(),
        node: config.node.clone(),
        config,
        created_ms: 0,
        usage: vec![],
        users: vec![],
    }
}

fn mounting(volume: &str) -> ServiceSpec {
    let mut s = spec(100, 1);
    s.volumes = vec![VolumeSpec {
        kind: VolumeKind::Volume,
        source: volume.into(),
        target: "/data".into(),
        read_only: false,
    }];
    s
}

#[test]
fn a_shared_volume_pins_nobody_and_a_local_one_made_for_a_node_waits_for_it() {
    use tugboat_api::model::{Instance, Node, NodeStatus};
    use tugboat_api::spec::{VolumeConfig, VolumeDriver};
    let scheduler = all_nodes();
    let stored = |name: &str, ready: bool, volumes: &[&str]| {
        Node {
        status: if ready {
            NodeStatus::Ready
        } else {
            NodeStatus::NotReady
        },
        volumes: volumes.iter().map(|v| v.to_string()).collect(),
        ..serde_json::from_value(serde_json::json!({
            "name": name, "capacity": {"cpu_millis": 8000, "memory_bytes": 8u64 << 30, "pids": 10000},
            "status": "ready", "registered_at_ms": 0
        }))
        .unwrap()
    }
    };
    let nfs = VolumeConfig {
        driver: VolumeDriver::Nfs,
        options: [("server", "192.0.2.1"), ("path", "/srv")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        ..Default::default()
    };
    let home = VolumeConfig {
        node: Some("b".into()),
        ..Default::default()
    };
    let gone = VolumeConfig {
        node: Some("z".into()),
        ..Default::default()
    };
    let volumes: std::collections::BTreeMap<_, _> = [
        ("orders", volume_object("orders", nfs)),
        ("carts", volume_object("carts", home)),
        ("old", volume_object("old", gone)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // "orders" also exists as a directory on a (the node reports it): shared wins.
    let nodes = [stored("a", true, &["orders"]), stored("b", true, &[])];
    let mut cluster = ClusterState::from_store_with_volumes::<Instance>(&nodes, &[], &volumes);
    let orders = request("orders", &mounting("orders"));
    for i in 0..2 {
        scheduler.commit(&mut cluster, &orders, i).unwrap();
    }
    let carts = request("cart", &mounting("carts"));
    assert_eq!(scheduler.place(&mut cluster, &carts).unwrap().node, "b");
    assert_eq!(
        scheduler.commit(&mut cluster, &carts, 0),
        Err(Rejection::VolumeElsewhere {
            volume: "carts".into(),
            node: "b".into()
        })
    );
    let old = request("old", &mounting("old"));
    let why = scheduler.place(&mut cluster, &old).unwrap_err().to_string();
    assert!(
        why.contains("local volume `old` is on node z, which is not ready"),
        "{why}"
    );
    // Its node down: the volume's users wait, with the reason.
    let nodes = [stored("a", true, &[]), stored("b", false, &[])];
    let mut cluster = ClusterState::from_store_with_volumes::<Instance>(&nodes, &[], &volumes);
    let why = scheduler
        .place(&mut cluster, &carts)
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("local volume `carts` is on node b, which is not ready"),
        "{why}"
    );
}

#[test]
fn binpack_fills_the_fuller_node_and_spread_the_emptier() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![node("a", 8, 8, &[]), node("b", 8, 8, &[])]);
    cluster.reserve(&request("other", &spec(4000, 4)), 1);
    let mut s = spec(1000, 1);
    assert_eq!(
        scheduler.plan(&cluster, &request("x", &s)).unwrap().node,
        "b"
    );
    s.placement.strategy = ScoringStrategy::Spread;
    assert_eq!(
        scheduler.plan(&cluster, &request("x", &s)).unwrap().node,
        "a"
    );
}

#[test]
fn balanced_prefers_the_node_whose_cpu_and_memory_even_out() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![
        node("cpu-heavy", 8, 8, &[]),
        node("mem-heavy", 8, 8, &[]),
    ]);
    cluster.reserve(&request("o", &spec(6000, 1)), 0);
    cluster.reserve(&request("o", &spec(1000, 6)), 1);
    let mut s = spec(0, 4);
    s.resources.requests.cpu = Some(Cpu(100));
    s.placement.strategy = ScoringStrategy::Balanced;
    // A memory-hungry instance evens out the CPU-heavy node.
    assert_eq!(
        scheduler.plan(&cluster, &request("x", &s)).unwrap().node,
        "cpu-heavy"
    );
}

#[test]
fn spread_across_a_label_evens_out_zones() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![
        node("e1", 64, 64, &[("zone", "east")]),
        node("e2", 64, 64, &[("zone", "east")]),
        node("w1", 64, 64, &[("zone", "west")]),
    ]);
    let mut s = spec(100, 1);
    s.placement.spread = Some("zone".into());
    let req = request("web", &s);
    let mut per_zone = BTreeMap::<String, u32>::new();
    for _ in 0..6 {
        let at = scheduler.place(&mut cluster, &req).unwrap();
        *per_zone
            .entry(cluster.nodes[at.node_index].labels["zone"].clone())
            .or_default() += 1;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([("east".into(), 3), ("west".into(), 3)])
    );
}

#[test]
fn replicas_spread_over_nodes_and_preferred_affinity_attracts() {
    let scheduler = all_nodes();
    let mut cluster = ClusterState::new(vec![node("a", 64, 64, &[]), node("b", 64, 64, &[])]);
    // Without resources, binpack does not apply; service spread puts replicas apart.
    let plain = ServiceSpec::new("x");
    let first = scheduler
        .place(&mut cluster, &request("web", &plain))
        .unwrap()
        .node;
    let second = scheduler
        .place(&mut cluster, &request("web", &plain))
        .unwrap()
        .node;
    assert_ne!(first, second);
    let mut cache = ServiceSpec::new("x");
    scheduler
        .place(&mut cluster, &request("db", &plain))
        .unwrap();
    let db_at = cluster
        .nodes
        .iter()
        .find(|n| n.runs("db"))
        .unwrap()
        .name
        .clone();
    cache.placement.affinity = vec![AffinityRule {
        service: "db".into(),
        required: false,
    }];
    assert_eq!(
        scheduler
            .plan(&cluster, &request("cache", &cache))
            .unwrap()
            .node,
        db_at
    );
    cache.placement.affinity.clear();
    cache.placement.anti_affinity = vec![AffinityRule {
        service: "db".into(),
        required: false,
    }];
    assert_ne!(
        scheduler
            .plan(&cluster, &request("cache", &cache))
            .unwrap()
            .node,
        db_at
    );
}

#[test]
fn sampling_still_finds_the_one_feasible_node() {
    let scheduler = Scheduler::new(SchedulerOptions { feasible_sample: 2 });
    let mut nodes: Vec<NodeState> = (0..50).map(|i| node(&format!("n{i}"), 1, 1, &[])).collect();
    nodes.push(node("big", 64, 64, &[]));
    let cluster = ClusterState::new(nodes);
    assert_eq!(
        scheduler
            .plan(&cluster, &request("x", &spec(8000, 8)))
            .unwrap()
            .node,
        "big"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn request_strategy() -> impl Strategy<Value = (String, ServiceSpec)> {
        (
            0u64..4,
            0u64..3000,
            0u64..4,
            prop::option::of(8000u16..8003),
            prop::bool::ANY,
        )
            .prop_map(|(service, cpu, mem_gi, port, one_per_node)| {
                let name = format!("s{service}");
                let mut s = spec(cpu, mem_gi);
                if let Some(port) = port {
                    s.ports = vec![PortSpec {
                        container: Port(80),
                        published: Some(Port(port)),
                        protocol: Protocol::Tcp,
                        mode: Default::default(),
                    }];
                }
                if one_per_node {
                    s.placement.anti_affinity = vec![AffinityRule {
                        service: name.clone(),
                        required: true,
                    }];
                }
                (name, s)
            })
    }

    proptest! {
        /// Plans made on a stale snapshot, committed on the live state that already took other
        /// placements: whatever the commit accepts never overcommits a node, never doubles a
        /// host port, never breaks a required anti-affinity.
        #[test]
        fn committed_placements_never_overcommit(
            capacities in prop::collection::vec((1u64..8, 1u64..16), 1..8),
            early in prop::collection::vec(request_strategy(), 0..20),
            late in prop::collection::vec(request_strategy(), 0..40),
        ) {
            let scheduler = all_nodes();
            let nodes: Vec<NodeState> = capacities.iter().enumerate().map(|(i, (c, m))| node(&format!("n{i}"), *c, *m, &[])).collect();
            let mut live = ClusterState::new(nodes);
            let mut snapshot = live.clone();
            let mut accepted: Vec<(usize, PlacementRequest)> = vec![];
            for (name, s) in &early {
                let req = request(name, s);
                if let Ok(p) = scheduler.place(&mut live, &req) {
                    accepted.push((p.node_index, req));
                }
            }
            for (name, s) in &late {
                let req = request(name, s);
                if let Ok(plan) = scheduler.place(&mut snapshot, &req) {
                    if scheduler.commit(&mut live, &req, plan.node_index).is_ok() {
                        accepted.push((plan.node_index, req));
                    }
                }
            }
            for (i, n) in live.nodes.iter().enumerate() {
                let mine: Vec<&PlacementRequest> = accepted.iter().filter(|(at, _)| *at == i).map(|(_, r)| r).collect();
                let cpu: u64 = mine.iter().map(|r| r.resources.cpu_millis).sum();
                let memory: u64 = mine.iter().map(|r| r.resources.memory_bytes).sum();
                prop_assert!(cpu <= n.capacity.cpu_millis && memory <= n.capacity.memory_bytes, "node {} overcommitted", n.name);
                let mut ports = HashMap::new();
                for port in mine.iter().flat_map(|r| r.host_ports.iter()) {
                    *ports.entry(*port).or_insert(0) += 1;
                }
                prop_assert!(ports.values().all(|n| *n == 1), "a host port twice on {}", n.name);
                // Anti-affinity binds the instance that has the rule, at the time it is placed.
                for (k, r) in mine.iter().enumerate().filter(|(_, r)| !r.placement.anti_affinity.is_empty()) {
                    let before = mine[..k].iter().filter(|o| o.service == r.service).count();
                    prop_assert_eq!(before, 0, "anti-affinity broken on {}", n.name);
                }
            }
        }
    }
}

#[test]
fn a_named_runtime_goes_only_to_nodes_that_have_it() {
    let scheduler = all_nodes();
    let mut with_runc = node("b", 4, 4, &[]);
    with_runc.runtimes.insert("runc".into());
    let mut cluster = ClusterState::new(vec![node("a", 4, 4, &[]), with_runc]);
    let mut s = spec(100, 0);
    s.runtime = Some("runc".into());
    let placed = scheduler.place(&mut cluster, &request("r", &s)).unwrap();
    assert_eq!(cluster.nodes[placed.node_index].name, "b");
    s.runtime = Some("runsc".into());
    assert_eq!(
        scheduler
            .plan(&cluster, &request("g", &s))
            .unwrap_err()
            .to_string(),
        "2 nodes: no runtime runsc"
    );
    // tug is everywhere, and a path is the agent's to check.
    for r in ["tug", "/opt/kata/bin/kata-runtime"] {
        s.runtime = Some(r.into());
        assert!(scheduler.plan(&cluster, &request("t", &s)).is_ok(), "{r}");
    }
}
