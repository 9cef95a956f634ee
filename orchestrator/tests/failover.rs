//! Root test of a cluster that heals in seconds: three "hosts" (network namespaces of the
//! test's own, each with a veth on a bridge in a fourth: the LAN, 192.168.214.0/24 inside
//! those namespaces only). Host a runs `tugboat server` (default LAN timers) and agent a;
//! hosts b and c run agents b and c. A 6-replica service is spread 2/2/2, and a service
//! pinned to c with `reschedule: {replace: false}` runs one instance there. A client on a
//! sends 20 requests/s to the service address with a 2 s timeout throughout.
//!
//! 1. c's link flaps for 2 s: c is never declared lost and nothing is replaced.
//! 2. c dies (its link cut and its agent killed): the 6 replicas are ready again on a and b
//!    within seconds, the pinned instance is kept for c (lost, not replaced), and requests
//!    keep being answered: none started after a cut fails. A request whose connection to
//!    one of c's instances was already open when the link went (in flight at the cut, at
//!    most a few at 20/s) is lost as on any system; those are counted and printed apart.
//! 3. While c is away, a second pinned service gets a new template. c returns (link up,
//!    agent started again): its replaced copies are stopped, the pinned instance runs on
//!    under its old id, the changed one is rolled out on c (the server's newer desired state
//!    wins), and nothing runs twice.
//!
//! Prints `failover: N/N replicas ready X.X s after node loss, F failed requests` (read by
//! bench/failover/run.sh). The machine's root network namespace is never changed.

mod host;

use host::{instances, shop_images, wait_for, Lan, TestHost};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tugboat::model::{Instance, InstancePhase, NodeStatus};

const START: Duration = Duration::from_secs(120);
/// How long before a cut a request may have started and still be in flight at it: the
/// service answers in a few milliseconds on this LAN.
const IN_FLIGHT: Duration = Duration::from_millis(100);
const REPLICAS: usize = 6;

const SPEC: &str = "\
services:
  web:
    image: shop/catalog:1
    replicas: 6
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
    placement:
      anti_affinity: [{service: web, required: false}]
  device:
    image: shop/catalog:1
    replicas: 1
    stop: {grace_seconds: 1}
    reschedule: {replace: false}
    placement:
      constraints:
        - {key: host, operator: In, values: [c]}
  sensor:
    image: shop/catalog:1
    replicas: 1
    env: {VERSION: \"1\"}
    stop: {grace_seconds: 1}
    reschedule: {replace: false}
    placement:
      constraints:
        - {key: host, operator: In, values: [c]}
";

/// The join token and the CA's hash the agents join with (the server's, once it started).
static JOIN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

fn agent_args(host: &TestHost, node: &str, n: u8) -> Vec<String> {
    let image = shop_images().join("oci/shop-catalog").display().to_string();
    let address = format!("192.168.214.{n}");
    let (token, hash) = JOIN.get().expect("the server made a join token");
    #[rustfmt::skip]
    let args = [
        "agent", "--addr", "192.168.214.1:7480", "--join-token", token, "--ca-hash", hash,
        "--data-dir", &host.dir.join("agent").display().to_string(),
        "--node", node, "--subnet", &format!("10.88.{n}.0/24"), "--address", &address,
        "--api-listen", &format!("{address}:7481"), "--label", &format!("host={node}"),
        "--import", &image,
    ];
    args.iter().map(|s| s.to_string()).collect()
}

fn start_agent(host: &mut TestHost, node: &str, n: u8) {
    let args = agent_args(host, node, n);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host.spawn(&format!("agent-{node}"), &args);
}

fn ready(i: &Instance) -> bool {
    i.phase == InstancePhase::Running && i.ready
}

fn node_status(a: &TestHost, name: &str) -> Option<NodeStatus> {
    let nodes = a.api(|c| async move { c.nodes().await.map(|l| l.items).unwrap_or_default() });
    nodes.into_iter().find(|n| n.name == name).map(|n| n.status)
}

fn show(hosts: &[&TestHost]) -> String {
    let mut out =
        tugboat::output::instances_table(&instances(hosts[0]), tugboat::model::now_ms(), false);
    for h in hosts {
        out.push_str(&format!("--- {}:\n{}", h.netns, h.output.lock().unwrap()));
    }
    out
}

/// Seconds since the test started, for the record of what failed when.
fn clock() -> String {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    format!(
        "{:.1}s",
        STARTED.get_or_init(Instant::now).elapsed().as_secs_f64()
    )
}

/// One GET with a 2 s bound on the whole exchange: Ok(elapsed) or Err(why).
fn timed_get(target: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let limit = Duration::from_secs(2);
    let addr: std::net::SocketAddr = target.parse().unwrap();
    let mut conn =
        std::net::TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let left = limit
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    conn.set_read_timeout(Some(left)).unwrap();
    write!(conn, "GET /healthz HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            answer.lines().next().unwrap_or("none")
        ));
    }
    let took = started.elapsed();
    if took > limit {
        return Err(format!("took {took:?}"));
    }
    Ok(took)
}

/// A failed request: when it started, and what failed, with the test's clock.
type Failure = (Instant, String);

/// Requests at 20/s from host a until stopped: (failed with why, slower than 1 s).
struct Client {
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Vec<Failure>>>,
    slow: Arc<Mutex<usize>>,
    sent: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(host: &TestHost, target: String) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(vec![]));
        let slow = Arc::new(Mutex::new(0));
        let sent = Arc::new(Mutex::new(0));
        let ns = std::fs::File::open(format!("/run/netns/{}", host.netns)).unwrap();
        let (s, f, sl, se) = (stop.clone(), failed.clone(), slow.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns of this thread only, on a namespace fd it holds open.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut workers = vec![];
            let mut next = Instant::now();
            while !s.load(Ordering::SeqCst) {
                // Each request on its own thread: a slow one does not delay the next.
                let (target, f, sl, se) = (target.clone(), f.clone(), sl.clone(), se.clone());
                let ns = ns.try_clone().unwrap();
                workers.push(std::thread::spawn(move || {
                    // SAFETY: as above, this thread only.
                    assert_eq!(
                        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                        0
                    );
                    *se.lock().unwrap() += 1;
                    let started = Instant::now();
                    match timed_get(&target) {
                        Ok(took) if took > Duration::from_secs(1) => *sl.lock().unwrap() += 1,
                        Ok(_) => {}
                        Err(e) => f
                            .lock()
                            .unwrap()
                            .push((started, format!("{}: {e}", clock()))),
                    }
                }));
                workers.retain(|w| !w.is_finished());
                next += Duration::from_millis(50);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Client {
            stop,
            failed,
            slow,
            sent,
            thread: Some(thread),
        }
    }

    /// (sent, failed, slow) so far.
    fn counts(&self) -> (usize, Vec<Failure>, usize) {
        (
            *self.sent.lock().unwrap(),
            self.failed.lock().unwrap().clone(),
            *self.slow.lock().unwrap(),
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_lost_node_s_replicas_are_ready_elsewhere_in_seconds_and_nothing_runs_twice_on_return() {
    skip_unless_possible!("failover");
    let mut a = TestHost::new();
    let mut b = TestHost::new();
    let mut c = TestHost::new();
    let lan = Lan::new(&[
        ("a", &a, "192.168.214.1/24"),
        ("b", &b, "192.168.214.2/24"),
        ("c", &c, "192.168.214.3/24"),
    ]);
    let server_dir = a.dir.join("server").display().to_string();
    #[rustfmt::skip]
    // Over TLS, the nodes joined with a join token and certificates that live 30 s: the
    // faults below run across several renewals of every certificate.
    a.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--data-dir", &server_dir,
                        "--node-cert-lifetime", "30s", "--server-cert-lifetime", "30s"]);
    a.wait_for_output("server: tugboat server listening", START);
    let _ = JOIN.set(host::join_token(&a, "failover test"));
    start_agent(&mut a, "a", 1);
    start_agent(&mut b, "b", 2);
    start_agent(&mut c, "c", 3);
    wait_for(
        "nodes a, b and c registered",
        START,
        || a.api(|c| async move { c.nodes().await.map(|l| l.items.len()).unwrap_or(0) }) == 3,
        || show(&[&a, &b, &c]),
    );
    let spec = tugboat::spec::parse_spec_file("failover.yaml", SPEC, &|_| false).unwrap();
    a.api(|c| async move { c.apply(&spec).await.map(|_| ()) })
        .expect("apply");
    let web_on = |list: &[Instance], node: &str| {
        list.iter()
            .filter(|i| i.service == "web" && i.node.as_deref() == Some(node) && ready(i))
            .count()
    };
    wait_for(
        "web spread 2/2/2 and ready, device running on c",
        START,
        || {
            let list = instances(&a);
            ["a", "b", "c"].iter().all(|n| web_on(&list, n) == 2)
                && ["device", "sensor"].iter().all(|s| {
                    list.iter()
                        .any(|i| i.service == *s && i.phase == InstancePhase::Running)
                })
        },
        || show(&[&a, &b, &c]),
    );
    let vip = a
        .api(|c| async move { c.services().await })
        .expect("services")
        .items
        .into_iter()
        .find(|s| s.name == "web")
        .and_then(|s| s.address)
        .expect("web has its address");
    let before: Vec<String> = instances(&a).into_iter().map(|i| i.id).collect();
    let device_id = instances(&a)
        .into_iter()
        .find(|i| i.service == "device")
        .unwrap()
        .id;
    // a's kernel balances over the six endpoints before the client starts.
    wait_for(
        "six web endpoints in a's services",
        START,
        || {
            tugboat::agent::services::programmed_endpoints(&a.dir.join("agent"), "tugboat", "web")
                .is_some_and(|e| e.len() == REPLICAS)
        },
        || show(&[&a, &b, &c]),
    );
    // The address answers before the client starts counting.
    let target = format!("{vip}:80");
    wait_for(
        "web to answer at its address on a",
        START,
        || {
            let t = target.clone();
            a.in_netns(move || timed_get(&t).is_ok())
        },
        || show(&[&a, &b, &c]),
    );
    println!("{}: client starts", clock());
    let client = Client::start(&a, target);
    std::thread::sleep(Duration::from_secs(2));

    // 1. A flap: c's link down for 2 s. Not lost; nothing replaced.
    println!("{}: c's link down for 2 s", clock());
    // Each cut: from just before the link goes (a request answered in milliseconds is in
    // flight only if it started that close) to when it is gone.
    let mut cuts = vec![];
    let cut = Instant::now() - IN_FLIGHT;
    lan.set_link("c", false);
    cuts.push(cut..Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    lan.set_link("c", true);
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert_ne!(
            node_status(&a, "c"),
            Some(NodeStatus::Lost),
            "a 2 s flap made c lost\n{}",
            show(&[&a, &b, &c])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_flap: Vec<String> = instances(&a).into_iter().map(|i| i.id).collect();
    assert_eq!(before, after_flap, "instances replaced after a 2 s flap");
    wait_for(
        "c ready again after the flap",
        START,
        || node_status(&a, "c") == Some(NodeStatus::Ready),
        || show(&[&a, &b, &c]),
    );

    // 2. c dies: link cut, agent killed (its containers run on, unreachable).
    let (sent_before, failed_before, _) = client.counts();
    println!("{}: c dies", clock());
    let cut = Instant::now() - IN_FLIGHT;
    lan.set_link("c", false);
    cuts.push(cut..Instant::now());
    c.kill_spawned("agent-c");
    let died = Instant::now();
    let mut healed = None;
    wait_for(
        "6 web replicas ready on a and b",
        START,
        || {
            let list = instances(&a);
            let done = web_on(&list, "a") + web_on(&list, "b") == REPLICAS;
            if done && healed.is_none() {
                healed = Some(died.elapsed());
            }
            done
        },
        || show(&[&a, &b, &c]),
    );
    let healed = healed.unwrap();
    // Keep the client going a little: the last dead endpoints leave the services.
    std::thread::sleep(Duration::from_secs(2));
    let (sent, failed, slow) = client.counts();
    drop(client);
    let failed_now = failed.len() - failed_before.len();
    println!(
        "failover: {REPLICAS}/{REPLICAS} replicas ready {:.1} s after node loss, {failed_now} failed requests",
        healed.as_secs_f64()
    );
    let (in_flight, after): (Vec<&Failure>, Vec<&Failure>) = failed
        .iter()
        .partition(|(started, _)| cuts.iter().any(|cut| cut.contains(started)));
    let words = |list: &[&Failure]| list.iter().map(|(_, why)| why.clone()).collect::<Vec<_>>();
    println!(
        "  ({} requests during the loss, {slow} slower than 1 s; failures: {:?}, of which in flight at a cut: {:?})",
        sent - sent_before,
        words(&failed[failed_before.len()..].iter().collect::<Vec<_>>()),
        words(&in_flight),
    );
    assert!(
        after.is_empty() && in_flight.len() <= 2 * cuts.len(),
        "{} of {sent} requests failed ({} in flight at a cut): {:?}\n{}",
        failed.len(),
        in_flight.len(),
        words(&failed.iter().collect::<Vec<_>>()),
        show(&[&a, &b, &c])
    );
    assert_eq!(node_status(&a, "c"), Some(NodeStatus::Lost));
    // The pinned instance waits for its node: lost, not replaced.
    let list = instances(&a);
    let device: Vec<&Instance> = list.iter().filter(|i| i.service == "device").collect();
    assert!(
        device.len() == 1 && device[0].id == device_id && device[0].phase == InstancePhase::Lost,
        "{device:?}"
    );

    // 3. While c is away, sensor's template changes; then c returns: its replaced web
    // copies stop, the device instance runs on, sensor is rolled out on c.
    let old_sensor = list
        .iter()
        .find(|i| i.service == "sensor")
        .map(|i| (i.id.clone(), i.template_hash.clone()))
        .unwrap();
    let changed = tugboat::spec::parse_spec_file(
        "failover.yaml",
        &SPEC.replace("VERSION: \"1\"", "VERSION: \"2\""),
        &|_| true,
    )
    .unwrap();
    a.api(|c| async move { c.apply(&changed).await.map(|_| ()) })
        .expect("apply the changed template");
    lan.set_link("c", true);
    start_agent(&mut c, "c", 3);
    let web_ids: Vec<String> = list
        .iter()
        .filter(|i| i.service == "web")
        .map(|i| i.id.clone())
        .collect();
    wait_for(
        "c back: device running under its old id, sensor's new template rolled out on c, nothing else there",
        START,
        || {
            let list = instances(&a);
            let local = c
                .instance_dirs()
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>();
            let sensor: Vec<&Instance> = list.iter().filter(|i| i.service == "sensor").collect();
            let sensor_done = sensor.len() == 1
                && sensor[0].template_hash != old_sensor.1
                && sensor[0].phase == InstancePhase::Running
                && sensor[0].node.as_deref() == Some("c");
            let mut want = vec![device_id.clone()];
            if let Some(s) = sensor.first() {
                want.push(s.id.clone());
            }
            let mut local = local;
            local.sort();
            want.sort();
            sensor_done
                && local == want
                && !local.contains(&old_sensor.0)
                && list.iter().any(|i| {
                    i.id == device_id
                        && i.phase == InstancePhase::Running
                        && i.node.as_deref() == Some("c")
                })
        },
        || show(&[&a, &b, &c]),
    );
    let list = instances(&a);
    let web: Vec<String> = list
        .iter()
        .filter(|i| i.service == "web")
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(web, web_ids, "web changed when c returned");
    let running: usize = [&a, &b, &c].iter().map(|h| h.instance_dirs().len()).sum();
    assert_eq!(running, REPLICAS + 2, "{}", show(&[&a, &b, &c]));

    // Clean up through the API: every instance stopped by its agent.
    a.api(|c| async move {
        for s in ["web", "device", "sensor"] {
            let _ = c
                .call::<serde_json::Value>(
                    reqwest::Method::DELETE,
                    &format!("/v1/services/{s}"),
                    None,
                )
                .await;
        }
    });
    wait_for(
        "every instance stopped",
        START,
        || [&a, &b, &c].iter().all(|h| h.instance_dirs().is_empty()),
        || show(&[&a, &b, &c]),
    );
    drop(lan);
}
