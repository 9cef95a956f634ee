//! Control-plane benchmark, end to end: real `tugboat server` processes (the embedded store,
//! or a 3-member etcd with 3 servers), thousands of simulated agents in this process that
//! register, heartbeat, long-poll their node's instances and acknowledge each one running,
//! and services applied through the HTTP API. A placement counts when its agent has
//! acknowledged it: the time is from the first apply to the last acknowledgement.
//!
//! Also measured: the p99 latency of the API calls the agents and the client make (applies,
//! heartbeats, status reports; not the long polls), each server's peak RSS (VmHWM), and with
//! etcd, a leader failover: kill -9 of the leader, then the time until a service scaled up
//! through another server has its new instance placed and acknowledged.
//!
//! cargo bench -p tugboat --bench controlplane -- --tugboat target/release/tugboat
//!     [--nodes 5000] [--instances 100000] [--per-service 500] [--store embedded|etcd|both]
//! (bench/controlplane/run.sh builds the release binary and prints the summary line.)

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::model::{InstancePhase, Resources};
use tugboat::spec::{Cpu, Memory, ServiceSpec};
use tugboat::wire::{InstanceStatusReport, NodeRegistration, ReportedPhase, ServerRole, WatchKind};

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Raise this process's open-file limit to its hard limit: every simulated node holds a
/// connection.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_etcd(dir: &Path) -> (Vec<Proc>, String) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut members = vec![];
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log"))).unwrap();
        let child = Command::new("etcd")
            .arg(format!("--name=m{i}"))
            .arg(format!(
                "--data-dir={}",
                dir.join(format!("m{i}")).display()
            ))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!(
                "--initial-cluster-token=bench-{}",
                std::process::id()
            ))
            .arg("--initial-cluster-state=new")
            // Room for 100,000 instances and their history.
            .arg("--quota-backend-bytes=8589934592")
            // As docs/etcd.md asks: a service's instances are created in one transaction.
            .arg("--max-txn-ops=10000")
            .arg("--max-request-bytes=8388608")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian's etcd-server)");
        members.push(Proc {
            child,
            name: format!("etcd m{i}"),
        });
    }
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    (members, endpoints)
}

fn start_server(tugboat: &Path, dir: &Path, n: usize, store: &[String]) -> (Proc, String) {
    let port = free_port();
    let data = dir.join(format!("server{n}"));
    std::fs::create_dir_all(&data).unwrap();
    let log = std::fs::File::create(dir.join(format!("server{n}.log"))).unwrap();
    let child = Command::new(tugboat)
        .arg("--data-dir")
        .arg(&data)
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--insecure-plain-http", "--insecure-no-auth"])
        // 5,000 nodes heartbeating every 0.5 s would be 10,000 requests/s: the edge
        // profile's 5 s is what a cluster this size runs with (Nomad scales its heartbeat
        // TTL with the node count to the same end).
        .args(["--profile", "edge"])
        .args(store)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tugboat server runs");
    (
        Proc {
            child,
            name: format!("server {n}"),
        },
        format!("127.0.0.1:{port}"),
    )
}

async fn wait_until_answering(addr: &str, what: &str, log: &Path) {
    let client = ApiClient::new(addr, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.servers().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} at {addr} never answered; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until every etcd member reports itself healthy (a server started before that
/// gives up on its store).
async fn wait_for_etcd(endpoints: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for endpoint in endpoints.split(',') {
        loop {
            let healthy = match http.get(format!("{endpoint}/health")).send().await {
                Ok(response) => response.text().await.unwrap_or_default().contains("true"),
                Err(_) => false,
            };
            if healthy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {endpoint} never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Latencies of the API calls (microseconds), and the acknowledgements.
#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u32>>,
    acked: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
    errors: AtomicU64,
}

impl Tally {
    fn timed<T, E>(&self, started: Instant, result: Result<T, E>) -> Result<T, E> {
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.latencies_us.lock().unwrap().push(us);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
    fn p99_ms(&self) -> f64 {
        let mut all = self.latencies_us.lock().unwrap().clone();
        if all.is_empty() {
            return 0.0;
        }
        all.sort_unstable();
        all[(all.len() * 99 / 100).min(all.len() - 1)] as f64 / 1000.0
    }
}

/// One simulated node: register, then heartbeat, long-poll its instances and acknowledge
/// each scheduled one as running and ready (as the real agent's loop does, without
/// containers). The client's address list is rotated per node, spreading nodes over servers.
async fn simulated_node(client: ApiClient, node: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let heartbeat_every = Duration::from_secs(5);
    let mut next_heartbeat = Instant::now() + heartbeat_every;
    let mut reported: HashSet<String> = HashSet::new();
    let mut from = 0;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_heartbeat {
            let started = Instant::now();
            let _ = tally.timed(started, client.heartbeat(&node, &Default::default()).await);
            next_heartbeat = Instant::now() + heartbeat_every;
        }
        let mut assigned = vec![];
        if from == 0 {
            match client.assigned_instances(&node).await {
                Ok(list) => {
                    from = list.revision + 1;
                    assigned = list.items;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        } else {
            // Wake for the next heartbeat, as the agent's own loop does.
            let wait = next_heartbeat
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            match client
                .watch(WatchKind::Instances, from, wait, Some(&node))
                .await
            {
                Ok(batch) => {
                    from = batch.revision + 1;
                    for change in batch.changes {
                        if let Ok(instance) =
                            serde_json::from_value::<tugboat::model::Instance>(change.object)
                        {
                            assigned.push(instance);
                        }
                    }
                }
                Err(e) if e.status() == Some(410) => from = 0,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        for instance in assigned {
            if instance.phase != InstancePhase::Scheduled
                || instance.node.as_deref() != Some(node.as_str())
                || reported.contains(&instance.id)
            {
                continue;
            }
            let report = InstanceStatusReport {
                node: node.clone(),
                phase: ReportedPhase::Running,
                ready: true,
                message: "started".into(),
                exit_code: None,
                restarts: 0,
                stats: None,
                address: None,
                last_exit: None,
                crash_looping: false,
            };
            let started = Instant::now();
            if tally
                .timed(started, client.report_status(&instance.id, &report).await)
                .is_ok()
            {
                reported.insert(instance.id);
                tally.acked.fetch_add(1, Ordering::Relaxed);
                *tally.last_ack.lock().unwrap() = Some(Instant::now());
            }
        }
    }
}

fn rotated(addrs: &[String], by: usize) -> String {
    (0..addrs.len())
        .map(|i| addrs[(i + by) % addrs.len()].clone())
        .collect::<Vec<_>>()
        .join(",")
}

struct RunResult {
    placements_per_s: f64,
    seconds: f64,
    p99_ms: f64,
    errors: u64,
    rss_mib: Vec<f64>,
    failover_s: Option<f64>,
}

async fn run(
    label: &str,
    dir: &Path,
    servers: &mut [(Proc, String)],
    nodes: u64,
    instances: u64,
    per_service: u64,
    failover: bool,
) -> RunResult {
    let addrs: Vec<String> = servers.iter().map(|(_, a)| a.clone()).collect();
    for (n, (proc, addr)) in servers.iter().enumerate() {
        let log = dir.join(format!(
            "server{}.log",
            if servers.len() == 1 { 0 } else { n + 1 }
        ));
        wait_until_answering(addr, &proc.name, &log).await;
    }
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Register the nodes (64 at a time), then start their loops.
    let started = Instant::now();
    let clients: Vec<ApiClient> = (0..addrs.len())
        .map(|i| ApiClient::new(&rotated(&addrs, i), None))
        .collect();
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    for chunk in names.chunks(64) {
        let mut joins = vec![];
        for name in chunk {
            let client = clients[joins.len() % clients.len()].clone();
            let registration = NodeRegistration {
                name: name.clone(),
                labels: BTreeMap::from([("zone".into(), format!("z{}", name.len() % 5))]),
                capacity: Resources::new(16_000, 32 * GI, 0),
                address: Some("127.0.0.1".into()),
                subnet: None,
                volumes: vec![],
                agent_url: None,
                runtimes: vec![],
            };
            joins.push(tokio::spawn(async move {
                client.register_node(&registration).await
            }));
        }
        for join in joins {
            join.await.unwrap().expect("a node registers");
        }
    }
    eprintln!(
        "{label}: {nodes} nodes registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut tasks = vec![];
    for (i, name) in names.iter().enumerate() {
        tasks.push(tokio::spawn(simulated_node(
            clients[i % clients.len()].clone(),
            name.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Apply the services, 8 at a time.
    let services = instances.div_ceil(per_service);
    let apply_started = Instant::now();
    let mut left = instances;
    let mut joins = vec![];
    for s in 0..services {
        let replicas = left.min(per_service);
        left -= replicas;
        let mut spec = ServiceSpec::new("bench:1");
        spec.replicas = replicas as u32;
        spec.resources.requests.cpu = Some(Cpu(100));
        spec.resources.requests.memory = Some(Memory(128 * MI));
        let client = clients[s as usize % clients.len()].clone();
        let tally = tally.clone();
        joins.push(tokio::spawn(async move {
            let started = Instant::now();
            tally
                .timed(
                    started,
                    client.create_service(&format!("svc-{s:04}"), &spec).await,
                )
                .expect("a service is created");
        }));
        if joins.len() == 8 {
            for join in joins.drain(..) {
                join.await.unwrap();
            }
        }
    }
    for join in joins {
        join.await.unwrap();
    }
    eprintln!(
        "{label}: {services} services applied in {:.1} s",
        apply_started.elapsed().as_secs_f64()
    );
    let deadline = apply_started + Duration::from_secs(1800);
    let mut last_report = Instant::now();
    while tally.acked.load(Ordering::Relaxed) < instances {
        assert!(
            Instant::now() < deadline,
            "{label}: only {} of {instances} instances acknowledged after 30 min",
            tally.acked.load(Ordering::Relaxed)
        );
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "{label}: {} acknowledged after {:.0} s",
                tally.acked.load(Ordering::Relaxed),
                apply_started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = tally.last_ack.lock().unwrap().expect("acknowledged");
    let seconds = last.duration_since(apply_started).as_secs_f64();
    let rss_mib = servers.iter().map(|(p, _)| p.peak_rss_mib()).collect();

    let failover_s = if failover {
        Some(leader_failover(label, servers, &tally, instances).await)
    } else {
        None
    };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    RunResult {
        placements_per_s: instances as f64 / seconds,
        seconds,
        p99_ms: tally.p99_ms(),
        errors: tally.errors.load(Ordering::Relaxed),
        rss_mib,
        failover_s,
    }
}

/// kill -9 of the leader; then, through a surviving server, one more replica of a service:
/// the time from the kill until that instance is acknowledged by its agent (a new leader
/// has taken the lease, scheduled it, and the node has heard of it).
async fn leader_failover(
    label: &str,
    servers: &mut [(Proc, String)],
    tally: &Tally,
    instances: u64,
) -> f64 {
    let probe = ApiClient::new(&servers[0].1, None);
    let list = probe.servers().await.expect("the servers list");
    let leader = list
        .iter()
        .find(|s| s.role == ServerRole::Leader)
        .map(|s| s.api_url.clone())
        .expect("a leader");
    let index = servers
        .iter()
        .position(|(_, a)| leader.ends_with(a.as_str()))
        .expect("the leader is one of ours");
    let survivor = servers[(index + 1) % servers.len()].1.clone();
    let client = ApiClient::new(&survivor, None);
    let service = client.describe_service("svc-0000").await.expect("svc-0000");
    let replicas = service.service.spec.replicas + 1;
    let killed = Instant::now();
    servers[index].0.kill();
    eprintln!("{label}: killed the leader ({})", servers[index].0.name);
    let mut scaled = false;
    while !scaled {
        scaled = client.scale("svc-0000", replicas).await.is_ok();
        if !scaled {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no scale after the kill"
        );
    }
    while tally.acked.load(Ordering::Relaxed) < instances + 1 {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "{label}: no new leader placed the new instance within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    raise_nofile();
    let tugboat =
        PathBuf::from(arg("--tugboat").unwrap_or_else(|| "target/release/tugboat".into()));
    assert!(
        tugboat.is_file(),
        "no tugboat binary at {}: build it (cargo build --release -p tugboat) or pass --tugboat",
        tugboat.display()
    );
    let nodes = num("--nodes", 5_000);
    let instances = num("--instances", 100_000);
    let per_service = num("--per-service", 500);
    let which = arg("--store").unwrap_or_else(|| "both".into());
    let dir = tempfile::Builder::new()
        .prefix("tugboat-bench-controlplane-")
        .tempdir()
        .unwrap();
    println!(
        "bench/controlplane: {nodes} nodes, {instances} instances ({per_service} per service), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut embedded = None;
    if which == "embedded" || which == "both" {
        let mut servers = vec![start_server(&tugboat, dir.path(), 0, &[])];
        let result = run(
            "embedded",
            dir.path(),
            &mut servers,
            nodes,
            instances,
            per_service,
            false,
        )
        .await;
        println!(
            "embedded store, 1 server: {:.0} placements/s end to end ({instances} in {:.1} s), API p99 {:.1} ms, {} failed calls, server RSS {:.0} MiB",
            result.placements_per_s, result.seconds, result.p99_ms, result.errors, result.rss_mib[0]
        );
        embedded = Some(result);
    }
    let mut etcd = None;
    if which == "etcd" || which == "both" {
        let (members, endpoints) = start_etcd(dir.path());
        wait_for_etcd(&endpoints).await;
        let store = vec![
            "--store".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            endpoints,
        ];
        let mut servers: Vec<(Proc, String)> = (1..=3)
            .map(|n| start_server(&tugboat, dir.path(), n, &store))
            .collect();
        let result = run(
            "etcd",
            dir.path(),
            &mut servers,
            nodes,
            instances,
            per_service,
            true,
        )
        .await;
        println!(
            "etcd (3 members), 3 servers: {:.0} placements/s end to end ({instances} in {:.1} s), API p99 {:.1} ms, {} failed calls, servers' RSS {} MiB, leader failover {:.1} s",
            result.placements_per_s,
            result.seconds,
            result.p99_ms,
            result.errors,
            result.rss_mib.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join("/"),
            result.failover_s.unwrap_or(0.0)
        );
        drop(servers);
        drop(members);
        etcd = Some(result);
    }
    let fmt = |r: &Option<RunResult>| {
        r.as_ref()
            .map_or("-".to_string(), |r| format!("{:.0}", r.placements_per_s))
    };
    let failover = etcd
        .as_ref()
        .and_then(|r| r.failover_s)
        .map_or("-".to_string(), |s| format!("{s:.1}"));
    println!(
        "controlplane: embedded {} placements/s end to end, etcd {} placements/s, leader failover {failover} s",
        fmt(&embedded),
        fmt(&etcd)
    );
    if std::env::var_os("TUG_BENCH_KEEP").is_some() {
        // The servers' and etcd's logs, for what a figure does not say.
        eprintln!("bench/controlplane: logs kept in {}", dir.keep().display());
    }
}
