//! Scheduler benchmark: 5,000 simulated nodes, 100,000 instances of mixed sizes and
//! constraints, placed one by one on one core through the full pipeline (filters, scorers,
//! pick, and the commit re-check). Prints placements per second and peak memory.
//!
//! cargo bench -p tugboat --bench scheduler [-- --nodes N --instances N --sample N --seed N]

use std::collections::BTreeMap;
use std::time::Instant;
use tugboat::model::Resources;
use tugboat::scheduler::{ClusterState, NodeState, PlacementRequest, Scheduler, SchedulerOptions};
use tugboat::spec::{
    AffinityRule, Constraint, ConstraintOperator, Cpu, Memory, Port, PortSpec, Protocol,
};
use tugboat::spec::{ScoringStrategy, ServiceSpec};

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;
const ZONES: [&str; 5] = ["east", "west", "north", "south", "central"];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn build_nodes(n: u64, rng: &mut Rng) -> Vec<NodeState> {
    (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), ZONES[(i % 5) as usize].to_string());
            labels.insert(
                "disk".to_string(),
                if rng.below(3) == 0 { "ssd" } else { "hdd" }.to_string(),
            );
            labels.insert(
                "arch".to_string(),
                if rng.below(10) == 0 { "arm64" } else { "amd64" }.to_string(),
            );
            if rng.below(20) == 0 {
                labels.insert("gpu".to_string(), "yes".to_string());
            }
            let cores = [8u64, 16, 32, 64][rng.below(4) as usize];
            let memory = cores * [2u64, 4, 8][rng.below(3) as usize] * GI;
            NodeState::new(
                &format!("node-{i:05}"),
                labels,
                Resources::new(cores * 1000, memory, 0),
            )
        })
        .collect()
}

/// A mix of services: sizes from tiny to large, some with constraints, node labels, spread,
/// anti-affinity, published ports, and every scoring strategy.
fn build_services(count: u64, rng: &mut Rng) -> Vec<(String, ServiceSpec)> {
    let sizes = [
        (100, 128 * MI),
        (250, 256 * MI),
        (500, 512 * MI),
        (1000, GI),
        (2000, 4 * GI),
        (4000, 8 * GI),
    ];
    (0..count)
        .map(|i| {
            let mut spec = ServiceSpec::new("bench:1");
            let (cpu, memory) = sizes[rng.below(sizes.len() as u64) as usize];
            spec.resources.requests.cpu = Some(Cpu(cpu));
            spec.resources.requests.memory = Some(Memory(memory));
            spec.placement.strategy = match rng.below(4) {
                0 => ScoringStrategy::Spread,
                1 => ScoringStrategy::Balanced,
                _ => ScoringStrategy::Binpack,
            };
            match rng.below(10) {
                0 => spec.placement.constraints.push(Constraint {
                    key: "zone".into(),
                    operator: ConstraintOperator::In,
                    values: vec![
                        ZONES[rng.below(5) as usize].into(),
                        ZONES[rng.below(5) as usize].into(),
                    ],
                }),
                1 => {
                    spec.placement
                        .node_labels
                        .insert("disk".into(), "ssd".into());
                }
                2 => spec.placement.constraints.push(Constraint {
                    key: "arch".into(),
                    operator: ConstraintOperator::NotIn,
                    values: vec!["arm64".into()],
                }),
                3 => spec.placement.spread = Some("zone".into()),
                4 => spec.placement.anti_affinity.push(AffinityRule {
                    service: format!("svc-{i}"),
                    required: true,
                }),
                5 => spec.ports.push(PortSpec {
                    container: Port(8080),
                    published: Some(Port(20000 + (i % 1000) as u16)),
                    protocol: Protocol::Tcp,
                    mode: Default::default(),
                }),
                6 if i > 0 => spec.placement.affinity.push(AffinityRule {
                    service: format!("svc-{}", i - 1),
                    required: false,
                }),
                _ => {}
            }
            (format!("svc-{i}"), spec)
        })
        .collect()
}

fn main() {
    let nodes = arg("--nodes", 5_000);
    let instances = arg("--instances", 100_000);
    let sample = arg(
        "--sample",
        SchedulerOptions::default().feasible_sample as u64,
    ) as usize;
    let mut rng = Rng(arg("--seed", 0x5eed_1234_abcd) | 1);
    let mut cluster = ClusterState::new(build_nodes(nodes, &mut rng));
    let services = build_services(instances / 100, &mut rng);
    let requests: Vec<PlacementRequest> = services
        .iter()
        .map(|(name, spec)| PlacementRequest::for_service(name, spec))
        .collect();
    // Instances in a shuffled service order, as a busy cluster would receive them.
    let order: Vec<usize> = (0..instances)
        .map(|_| rng.below(requests.len() as u64) as usize)
        .collect();
    let scheduler = Scheduler::new(SchedulerOptions {
        feasible_sample: sample,
    });

    let started = Instant::now();
    let mut placed = 0u64;
    let mut unplaceable = 0u64;
    let mut why = BTreeMap::<String, u64>::new();
    for &s in &order {
        match scheduler.place(&mut cluster, &requests[s]) {
            Ok(_) => placed += 1,
            Err(reason) => {
                unplaceable += 1;
                if why.len() < 5 {
                    *why.entry(reason.to_string()).or_default() += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let rate = instances as f64 / elapsed.as_secs_f64();
    let used: u64 = cluster.nodes.iter().map(|n| n.allocated.cpu_millis).sum();
    let capacity: u64 = cluster.nodes.iter().map(|n| n.capacity.cpu_millis).sum();
    println!(
        "nodes {nodes}, instances {instances}, services {}, feasible sample {sample}",
        requests.len()
    );
    println!(
        "placed {placed}, unplaceable {unplaceable}, in {:.3} s",
        elapsed.as_secs_f64()
    );
    println!("placements per second (one core, plan + commit re-check): {rate:.0}");
    println!(
        "cluster cpu reserved: {:.1}%",
        100.0 * used as f64 / capacity as f64
    );
    println!(
        "peak memory (VmHWM): {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
    for (reason, n) in why {
        println!("  e.g. unplaceable x{n}: {reason}");
    }
}
