//! Root test of network policy across two hosts (issue 18): two "hosts" are network
//! namespaces of the test's own on a LAN of its own (192.168.215.0/24, inside those
//! namespaces only). Host a runs `tugboat server` and agent a (10.88.1.0/24), host b agent
//! b (10.88.2.0/24). Service `api` (on b) lets in only service `client` (on a); service
//! `other` (on a) is refused, for TCP (the instance's httpd) and UDP (an echo socket the
//! test binds inside the api instance's network namespace). Then the rule changes to
//! `other` (applied without restarting anything), and the api instance moves to a (a new
//! instance, a new address): its allowance goes with it. Its health probes (from its node)
//! keep it ready throughout. The server runs with `--default-deny-ingress`: `client`, which
//! has no rules, takes no connection from `other` either (but its probes pass). The
//! machine's root network namespace is never changed.

mod host;

use host::{instances, shop_images, wait_for, Lan, TestHost};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tugboat::model::{Instance, InstancePhase};

const START: Duration = Duration::from_secs(120);
const SERVER: &str = "192.168.215.1:7480";
const UDP_PORT: u16 = 5353;

fn spec(allowed: &str, api_on: &str) -> String {
    format!(
        "\
services:
  api:
    image: shop/catalog:1
    replicas: 1
    ports:
      - {{container: 80}}
    health:
      readiness: {{http: {{port: 80, path: /healthz}}, interval_seconds: 1, failure_threshold: 1}}
    stop: {{grace_seconds: 1}}
    placement:
      constraints:
        - {{key: host, operator: In, values: [{api_on}]}}
    network:
      ingress:
        - from: {{service: {allowed}}}
  client:
    image: shop/catalog:1
    replicas: 1
    health:
      readiness: {{http: {{port: 80, path: /healthz}}, interval_seconds: 1, failure_threshold: 1}}
    stop: {{grace_seconds: 1}}
    placement:
      constraints:
        - {{key: host, operator: In, values: [a]}}
  other:
    image: shop/catalog:1
    replicas: 1
    stop: {{grace_seconds: 1}}
    placement:
      constraints:
        - {{key: host, operator: In, values: [a]}}
"
    )
}

fn agent_args(host: &TestHost, node: &str, n: u8) -> Vec<String> {
    let image = shop_images().join("oci/shop-catalog").display().to_string();
    let address = format!("192.168.215.{n}");
    #[rustfmt::skip]
    let args = [
        "agent", "--insecure-no-auth", "--addr", &format!("http://{SERVER}"),
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

fn running(list: &[Instance], service: &str) -> Option<Instance> {
    list.iter()
        .find(|i| i.service == service && i.phase == InstancePhase::Running && i.ready)
        .filter(|i| i.address.is_some())
        .cloned()
}

fn address(i: &Instance) -> Ipv4Addr {
    i.address.as_deref().unwrap().parse().unwrap()
}

/// The network namespace of an instance (kept by its agent under its data dir).
fn netns_of(hosts: &[&TestHost], i: &Instance) -> PathBuf {
    hosts
        .iter()
        .map(|h| h.dir.join("agent/instances").join(&i.id).join("netns"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no network namespace for {}", i.id))
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn inside<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns of this thread only, on a namespace fd it holds open.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// A GET of /healthz from inside `ns`, bounded to 2 s.
fn tcp(ns: &Path, to: Ipv4Addr) -> Result<(), String> {
    inside(ns, move || {
        let addr = SocketAddrV4::new(to, 80).into();
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(c, "GET /healthz HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("answer {answer:?}"))
        }
    })
}

/// One datagram from a fresh socket inside `ns` to the echo socket: answered within 1 s?
fn udp(ns: &Path, to: Ipv4Addr) -> Result<(), String> {
    inside(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.send_to(b"ping", SocketAddrV4::new(to, UDP_PORT))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A UDP echo socket inside an instance's namespace. Stops on drop.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &Path) -> UdpEcho {
        let sock = inside(ns, || {
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_PORT)).unwrap()
        });
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn apply(a: &TestHost, text: &str) {
    let file = tugboat::spec::parse_spec_file("policy.yaml", text, &|_| false).unwrap();
    a.api(|c| async move { c.apply(&file).await.map(|_| ()) })
        .expect("apply");
}

fn show(a: &TestHost, b: &TestHost) -> String {
    let table = tugboat::output::instances_table(&instances(a), tugboat::model::now_ms(), false);
    format!(
        "{table}\n--- A said:\n{}--- B said:\n{}",
        a.output.lock().unwrap(),
        b.output.lock().unwrap()
    )
}

/// Both protocols from `from` to `to`, as (tcp ok, udp ok).
fn both(from: &Path, to: Ipv4Addr) -> (bool, bool) {
    (tcp(from, to).is_ok(), udp(from, to).is_ok())
}

#[test]
fn ingress_rules_hold_across_nodes_change_live_and_follow_a_moved_instance() {
    skip_unless_possible!("network policy across two hosts");
    let mut a = TestHost::new();
    let mut b = TestHost::new();
    let _lan = Lan::new(&[("a", &a, "192.168.215.1/24"), ("b", &b, "192.168.215.2/24")]);
    let server_dir = a.dir.join("server").display().to_string();
    #[rustfmt::skip]
    a.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--insecure-no-auth",
                        "--insecure-plain-http", "--default-deny-ingress",
                        "--data-dir", &server_dir]);
    a.wait_for_output("server: tugboat server listening", START);
    start_agent(&mut a, "a", 1);
    start_agent(&mut b, "b", 2);
    wait_for(
        "nodes a and b registered",
        START,
        || a.api(|c| async move { c.nodes().await.map(|l| l.items.len()).unwrap_or(0) }) == 2,
        || show(&a, &b),
    );
    apply(&a, &spec("client", "b"));
    let mut found = (None, None, None);
    wait_for(
        "api on b, client and other on a, all ready",
        START,
        || {
            let list = instances(&a);
            found = (
                running(&list, "api"),
                running(&list, "client"),
                running(&list, "other"),
            );
            found.0.is_some() && found.1.is_some() && found.2.is_some()
        },
        || show(&a, &b),
    );
    let (api, client, other) = (found.0.unwrap(), found.1.unwrap(), found.2.unwrap());
    assert_eq!(api.node.as_deref(), Some("b"));
    let hosts = [&a, &b];
    let (client_ns, other_ns) = (netns_of(&hosts, &client), netns_of(&hosts, &other));
    let mut echo = UdpEcho::start(&netns_of(&hosts, &api));
    let api_at = address(&api);

    // 1. Across nodes: the client passes, the other is refused, TCP and UDP.
    wait_for(
        "client reaches api (tcp and udp), other is refused",
        START,
        || both(&client_ns, api_at) == (true, true) && both(&other_ns, api_at) == (false, false),
        || {
            format!(
                "client {:?}/{:?}, other {:?}/{:?}\n{}",
                tcp(&client_ns, api_at),
                udp(&client_ns, api_at),
                tcp(&other_ns, api_at),
                udp(&other_ns, api_at),
                show(&a, &b)
            )
        },
    );
    let refused = tcp(&other_ns, api_at).unwrap_err();
    assert!(
        refused.contains("refused"),
        "a reset, not a timeout: {refused}"
    );
    // The cluster denies by default: the client has no rules, so the other (on the same
    // node) is refused by it too; its readiness probes (from its node) still pass.
    let client_at = address(&client);
    wait_for(
        "other refused by the client (default deny)",
        START,
        || tcp(&other_ns, client_at).is_err(),
        || show(&a, &b),
    );

    // 2. The rule changes: applied by the nodes, nothing restarted.
    let started = Instant::now();
    apply(&a, &spec("other", "b"));
    wait_for(
        "other reaches api, client is refused",
        START,
        || both(&other_ns, api_at) == (true, true) && both(&client_ns, api_at) == (false, false),
        || show(&a, &b),
    );
    eprintln!(
        "policy: a rule change applied on the nodes {:.1} s after apply",
        started.elapsed().as_secs_f64()
    );
    let list = instances(&a);
    for i in [&api, &client, &other] {
        let now = list.iter().find(|n| n.id == i.id).expect("still there");
        assert_eq!(now.restarts, 0, "{} restarted", i.id);
        assert!(
            now.ready,
            "{} is ready (its probes come from its node)",
            i.id
        );
    }
    assert_eq!(list.len(), 3, "no instance replaced: {list:?}");

    // 3. The api moves to a (a new instance, a new address): its allowance goes with it,
    // and the other (now on the same node as it) still passes; the client does not.
    apply(&a, &spec("other", "a"));
    let mut moved = None;
    wait_for(
        "api moved to a",
        START,
        || {
            moved = running(&instances(&a), "api").filter(|i| i.node.as_deref() == Some("a"));
            moved.is_some()
        },
        || show(&a, &b),
    );
    let moved = moved.unwrap();
    drop(echo);
    echo = UdpEcho::start(&netns_of(&hosts, &moved));
    let moved_at = address(&moved);
    let started = Instant::now();
    wait_for(
        "other reaches the moved api, client is refused",
        START,
        || {
            both(&other_ns, moved_at) == (true, true)
                && both(&client_ns, moved_at) == (false, false)
        },
        || show(&a, &b),
    );
    eprintln!(
        "policy: the moved instance was guarded {:.1} s after it was ready",
        started.elapsed().as_secs_f64()
    );
    drop(echo);

    // describe service shows the rules and whom they resolve to.
    let d = a
        .api(|c| async move { c.describe_service("api").await })
        .expect("describe");
    let services = a
        .api(|c| async move { c.services().await })
        .expect("services")
        .items;
    let text = tugboat::output::network_text(&d.service.spec, &services, &instances(&a), false);
    assert!(
        text.contains("from service other") && text.contains(&other.id),
        "{text}"
    );
}
