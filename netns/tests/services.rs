//! Services balanced by nftables, with real namespaces: a host with a bridge, three
//! containers (two endpoints and a client) and a second host ("remote") wired to it. The
//! endpoints run tiny TCP and UDP servers (threads whose sockets were made inside the
//! container namespaces) that answer with their name. Needs root; skips otherwise.

mod common;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{sa, Ns, RootWatch};
use tug_netns::rtnl::Rtnl;
use tug_netns::{
    AttachRequest, Frontend, Network, NetworkConfig, NetworkError, Protocol, ServiceKey,
    ServiceSpec,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);

/// A server inside a namespace answering every TCP connection and UDP datagram with its
/// name (TCP: a line, then echoes lines back). Stops on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Ns, name: &str, port: u16) -> Server {
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let (tcp, udp) = ns.run(move || {
            (
                TcpListener::bind(bind).expect("tcp bind"),
                UdpSocket::bind(bind).expect("udp bind"),
            )
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let n1 = name.to_string();
        let n2 = name.to_string();
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((s, _)) => {
                        let n = n1.clone();
                        std::thread::spawn(move || serve_tcp(s, &n));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(n2.as_bytes(), peer);
                }
            }
        });
        Server {
            stop,
            threads: vec![t1, t2],
        }
    }
}

fn serve_tcp(s: TcpStream, name: &str) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = s.try_clone().unwrap();
    if w.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if w.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects `n` times to `target` from inside `ns`; the names that answered.
fn tcp_names(ns: &Ns, target: SocketAddrV4, n: usize) -> io::Result<Vec<String>> {
    ns.run(move || {
        (0..n)
            .map(|i| {
                let s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("connection {i} to {target}: {e}"))
                    })?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line.trim().to_string())
            })
            .collect()
    })
}

/// Sends one datagram from a fresh socket (a new conntrack entry) per try; the names.
fn udp_names(ns: &Ns, target: SocketAddrV4, n: usize) -> io::Result<Vec<String>> {
    ns.run(move || {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.send_to(b"hi", target)?;
                let mut buf = [0u8; 64];
                let (len, _) = s.recv_from(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
            })
            .collect()
    })
}

fn distinct(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn vip(port: u16) -> Frontend {
    Frontend::Virtual { address: VIP, port }
}

struct World {
    _data: tempfile::TempDir,
    cfg: NetworkConfig,
    host: Ns,
    remote: Ns,
    c1: Ns,
    c2: Ns,
    client: Ns,
    watch: RootWatch,
}

impl World {
    fn new() -> World {
        let watch = RootWatch::new();
        let data = tempfile::tempdir().unwrap();
        let host = Ns::new("svchost");
        let remote = Ns::new("svcremote");
        common::wire(
            &host,
            "uplink",
            "192.168.77.1/24",
            &remote,
            "uplink",
            "192.168.77.2/24",
        );
        // The other node routes the service range and this node's containers here.
        remote.ip(&["route", "add", "10.89.0.0/24", "via", "192.168.77.1"]);
        remote.ip(&["route", "add", "10.88.0.0/24", "via", "192.168.77.1"]);
        let cfg = NetworkConfig::new("s1", "10.88.0.0/24".parse().unwrap(), data.path());
        let w = World {
            _data: data,
            cfg,
            host,
            remote,
            c1: Ns::new("svcc1"),
            c2: Ns::new("svcc2"),
            client: Ns::new("svccl"),
            watch,
        };
        for (id, ns) in [("c1", &w.c1), ("c2", &w.c2), ("client", &w.client)] {
            let req = AttachRequest::new(id, ns.reference());
            w.net(move |net| async move { net.attach(&req).await.map(|_| ()) })
                .unwrap();
        }
        w
    }

    /// Runs `f` with the network opened in the host namespace.
    fn net<T, F, Fut>(&self, f: F) -> Result<T, NetworkError>
    where
        T: Send + 'static,
        F: FnOnce(Network) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, NetworkError>>,
    {
        let cfg = self.cfg.clone();
        self.host
            .block_on(move || async move { f(Network::open(cfg).await?).await })
    }

    fn set(&self, spec: ServiceSpec) -> Result<(), NetworkError> {
        self.net(move |net| async move { net.set_service(&spec).await })
    }

    fn tables(&self) -> Vec<String> {
        self.host
            .block_on(|| async { Rtnl::current().unwrap().nft_tables(2).unwrap() })
    }

    fn teardown(self) {
        let cfg = self.cfg.clone();
        self.host
            .block_on(move || async move { Network::open(cfg).await?.teardown().await })
            .expect("teardown");
        assert!(self.tables().is_empty(), "{:?}", self.tables());
        assert!(!self.host.addresses().contains("10.89.0."));
        self.watch.check();
    }
}

fn eps(list: &[&str]) -> Vec<SocketAddrV4> {
    list.iter().map(|s| sa(s)).collect()
}

#[test]
fn tcp_service_balances_from_containers_host_and_other_node_and_follows_endpoint_changes() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    let _s2 = Server::start(&w.c2, "c2", 8080);
    let spec = ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080", "10.88.0.3:8080"]),
    );
    w.set(spec).unwrap();
    assert!(w.tables().contains(&"tug-svc-s1".to_string()));
    assert!(w.host.addresses().contains("10.89.0.1/32"));

    let target = SocketAddrV4::new(VIP, 80);
    let from_client = tcp_names(&w.client, target, 40).unwrap();
    assert_eq!(
        distinct(from_client),
        ["c1", "c2"],
        "a container reaches both"
    );
    let from_host = tcp_names(&w.host, target, 40).unwrap();
    assert_eq!(distinct(from_host), ["c1", "c2"], "the host reaches both");
    let from_remote = tcp_names(&w.remote, target, 40).unwrap();
    assert_eq!(
        distinct(from_remote),
        ["c1", "c2"],
        "another node reaches both"
    );
    // Hairpin: c1 reaching its own service, sometimes picked itself.
    let hairpin = tcp_names(&w.c1, target, 40).unwrap();
    assert_eq!(
        distinct(hairpin),
        ["c1", "c2"],
        "an endpoint reaches itself"
    );

    // An established connection to c2, kept across the endpoint change.
    let kept = w.client.run(move || {
        let mut found = None;
        for _ in 0..64 {
            let s = TcpStream::connect(target).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim() == "c2" {
                found = Some((s, r));
                break;
            }
        }
        found.expect("one of 64 connections reaches c2")
    });
    let started = Instant::now();
    w.set(ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080"]),
    ))
    .unwrap();
    eprintln!(
        "endpoint change (open + set_service) took {:?}",
        started.elapsed()
    );
    let after = tcp_names(&w.client, target, 30).unwrap();
    assert_eq!(
        distinct(after),
        ["c1"],
        "a removed endpoint takes no new connection"
    );
    let (mut s, mut r) = kept;
    s.write_all(b"still there\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line, "still there\n",
        "the established connection continues"
    );
    drop((s, r));

    // Removing the service takes the address away; the client is refused or unreachable.
    let key = ServiceKey {
        frontend: vip(80),
        protocol: Protocol::Tcp,
    };
    let removed = w
        .net(move |net| async move { net.remove_service(&key).await })
        .unwrap();
    assert!(removed);
    assert!(!w.host.addresses().contains("10.89.0.1/32"));
    assert!(tcp_names(&w.client, target, 1).is_err());
    let again = w
        .net(move |net| async move { net.remove_service(&key).await })
        .unwrap();
    assert!(!again, "removing twice says there was nothing");
    w.teardown();
}

#[test]
fn udp_service_reaches_both_endpoints_and_ingress_host_port_balances() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 5353);
    let _s2 = Server::start(&w.c2, "c2", 5353);
    let both = eps(&["10.88.0.2:5353", "10.88.0.3:5353"]);
    w.set(ServiceSpec::new(vip(53), Protocol::Udp, both.clone()))
        .unwrap();
    let target = SocketAddrV4::new(VIP, 53);
    assert_eq!(
        distinct(udp_names(&w.client, target, 40).unwrap()),
        ["c1", "c2"]
    );
    assert_eq!(
        distinct(udp_names(&w.c2, target, 40).unwrap()),
        ["c1", "c2"]
    );
    assert_eq!(
        distinct(udp_names(&w.host, target, 40).unwrap()),
        ["c1", "c2"]
    );

    // An ingress host port: every local address of the node, from the other node too.
    w.set(ServiceSpec::new(
        Frontend::HostPort { port: 30053 },
        Protocol::Tcp,
        eps(&["10.88.0.2:5353", "10.88.0.3:5353"]),
    ))
    .unwrap();
    let names = tcp_names(&w.remote, sa("192.168.77.1:30053"), 40).unwrap();
    assert_eq!(distinct(names), ["c1", "c2"]);
    let names = tcp_names(&w.host, sa("127.0.0.1:30053"), 20).unwrap();
    assert_eq!(distinct(names), ["c1", "c2"], "the host on 127.0.0.1");
    w.teardown();
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    need_root!();
    let w = World::new();
    w.set(ServiceSpec::new(vip(80), Protocol::Tcp, vec![]))
        .unwrap();
    let started = Instant::now();
    let err = tcp_names(&w.client, SocketAddrV4::new(VIP, 80), 1).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    w.teardown();
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_endpoint_until_it_is_removed() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    let _s2 = Server::start(&w.c2, "c2", 8080);
    let mut spec = ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080", "10.88.0.3:8080"]),
    );
    spec.affinity_secs = Some(60);
    w.set(spec.clone()).unwrap();
    let target = SocketAddrV4::new(VIP, 80);
    let names = distinct(tcp_names(&w.client, target, 20).unwrap());
    assert_eq!(names.len(), 1, "one client, one endpoint: {names:?}");
    // Other clients are spread independently (the host and the remote node).
    let first = names[0].clone();
    // The chosen endpoint goes: the client moves to the other one, and stays there.
    let other = if first == "c1" {
        "10.88.0.3:8080"
    } else {
        "10.88.0.2:8080"
    };
    spec.endpoints = eps(&[other]);
    w.set(spec.clone()).unwrap();
    let moved = distinct(tcp_names(&w.client, target, 10).unwrap());
    assert_eq!(moved.len(), 1);
    assert_ne!(moved[0], first);
    // Affinity off again: its set goes.
    spec.affinity_secs = None;
    spec.endpoints = eps(&["10.88.0.2:8080", "10.88.0.3:8080"]);
    w.set(spec).unwrap();
    assert_eq!(
        distinct(tcp_names(&w.client, target, 40).unwrap()),
        ["c1", "c2"]
    );
    w.teardown();
}

#[test]
fn bad_service_is_refused_with_its_address_and_changes_nothing() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    w.set(ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080"]),
    ))
    .unwrap();
    let err = w
        .set(ServiceSpec::new(
            vip(81),
            Protocol::Tcp,
            eps(&["10.88.0.2:8080", "10.88.0.2:8080"]),
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("10.89.0.1:81 (tcp): endpoint 10.88.0.2:8080 is listed twice"),
        "{err}"
    );
    let err = w
        .set(ServiceSpec::new(
            Frontend::Virtual {
                address: Ipv4Addr::new(10, 88, 0, 200),
                port: 80,
            },
            Protocol::Tcp,
            vec![],
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("inside the container subnet"),
        "{err}"
    );
    let list = w.net(|net| async move { net.services() }).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        distinct(tcp_names(&w.client, SocketAddrV4::new(VIP, 80), 5).unwrap()),
        ["c1"]
    );
    w.teardown();
}

#[test]
fn services_come_back_after_the_table_is_lost_and_survive_reopening() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    w.set(ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080"]),
    ))
    .unwrap();
    // Someone flushes our table (nft flush ruleset, a firewall reload).
    w.host.block_on(|| async {
        use tug_netns::nft::{Batch, Op, FAMILY_IPV4};
        use tug_netns::ops::NetOps;
        let mut b = Batch::new(FAMILY_IPV4);
        b.push(Op::DelTable("tug-svc-s1".into()));
        Rtnl::current().unwrap().nft(&b).await.unwrap();
    });
    assert!(tcp_names(&w.client, SocketAddrV4::new(VIP, 80), 1).is_err());
    // The next change notices and rebuilds everything, not only what it changed.
    let _s2 = Server::start(&w.c2, "c2", 9090);
    w.set(ServiceSpec::new(
        vip(90),
        Protocol::Tcp,
        eps(&["10.88.0.3:9090"]),
    ))
    .unwrap();
    assert_eq!(
        tcp_names(&w.client, SocketAddrV4::new(VIP, 80), 3).unwrap(),
        ["c1", "c1", "c1"]
    );
    assert_eq!(
        tcp_names(&w.client, SocketAddrV4::new(VIP, 90), 1).unwrap(),
        ["c2"]
    );
    // Reopening (an agent restart) keeps them, from the record.
    let list = w.net(|net| async move { net.services() }).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        tcp_names(&w.client, SocketAddrV4::new(VIP, 90), 1).unwrap(),
        ["c2"]
    );
    w.teardown();
}

#[test]
fn a_connection_whose_endpoint_never_answered_is_balanced_again_at_its_retransmission() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    // The other node's answers to this node go nowhere: to a client, it is a dead node.
    w.remote
        .ip(&["route", "add", "blackhole", "192.168.77.1/32"]);
    w.remote
        .ip(&["route", "replace", "blackhole", "10.88.0.0/24"]);
    let target = SocketAddrV4::new(VIP, 80);
    let cfg = w.cfg.clone();
    let client_ns = std::fs::File::open(w.client.path()).unwrap();
    // One network, opened once, as the agent holds it (opening it again rebuilds the NAT
    // table, which happens to drop NAT bindings: not what is tested here).
    let (answer, took) = w.host.block_on(move || async move {
        let net = Network::open(cfg).await.unwrap();
        let to = |ep: &str| ServiceSpec::new(vip(80), Protocol::Tcp, eps(&[ep]));
        net.set_service(&to("192.168.77.2:8080")).await.unwrap();
        let client = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns of this thread only, on a namespace fd it holds open.
            assert_eq!(
                unsafe { libc::setns(client_ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let started = Instant::now();
            let answer = TcpStream::connect_timeout(&target.into(), Duration::from_millis(2500))
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut line = String::new();
                    BufReader::new(s).read_line(&mut line)?;
                    Ok(line.trim().to_string())
                });
            (answer, started.elapsed())
        });
        // The SYN is on its way to nowhere; then the dead endpoint is replaced.
        tokio::time::sleep(Duration::from_millis(300)).await;
        net.set_service(&to("10.88.0.2:8080")).await.unwrap();
        client.join().unwrap()
    });
    // Without the deletion of its conntrack entry the retransmitted SYN would follow the
    // first one to the dead node and the connection fail.
    assert_eq!(answer.unwrap(), "c1", "after {took:?}");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    w.teardown();
}

/// How many clients the VIP:80 service's affinity map remembers.
fn affinity_entries(w: &World) -> usize {
    w.host.block_on(|| async {
        Rtnl::current()
            .unwrap()
            .nft_element_count("tug-svc-s1", "svc-10.89.0.1-80-tcp-aff")
            .unwrap()
    })
}

#[test]
fn opening_the_network_again_leaves_a_matching_services_table_alone() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    let _s2 = Server::start(&w.c2, "c2", 8080);
    let mut spec = ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080", "10.88.0.3:8080"]),
    );
    spec.affinity_secs = Some(60);
    w.set(spec).unwrap();
    let target = SocketAddrV4::new(VIP, 80);
    // The client's affinity entry lives in the kernel's table: a rebuilt table loses it.
    let first = tcp_names(&w.client, target, 1).unwrap();
    assert_eq!(affinity_entries(&w), 1);
    w.net(|_net| async { Ok(()) }).unwrap();
    assert_eq!(
        affinity_entries(&w),
        1,
        "opening the network again rebuilt the services table"
    );
    assert_eq!(
        tcp_names(&w.client, target, 5).unwrap(),
        vec![first[0].clone(); 5]
    );
    // A table that no longer matches its record (deleted by hand) is rebuilt on open.
    w.host.run(|| {
        std::process::Command::new("nft")
            .args(["delete", "table", "ip", "tug-svc-s1"])
            .status()
            .unwrap()
    });
    assert!(tcp_names(&w.client, target, 1).is_err());
    w.net(|_net| async { Ok(()) }).unwrap();
    assert_eq!(tcp_names(&w.client, target, 3).unwrap().len(), 3);
    w.teardown();
}

#[test]
fn conntrack_lists_the_connections_its_events_told_of() {
    need_root!();
    let w = World::new();
    let _s1 = Server::start(&w.c1, "c1", 8080);
    w.set(ServiceSpec::new(
        vip(80),
        Protocol::Tcp,
        eps(&["10.88.0.2:8080"]),
    ))
    .unwrap();
    // The agent's reader of events, and its dump after a loss, in the node's namespace.
    let mut events = w.host.run(|| tug_netns::nft::ConnEvents::open().unwrap());
    let target = SocketAddrV4::new(VIP, 80);
    assert_eq!(tcp_names(&w.client, target, 1).unwrap(), ["c1"]);
    let mut told = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while told.is_none() && Instant::now() < deadline {
        let mut batch = vec![];
        events.read(&mut batch).unwrap();
        told = batch.into_iter().find_map(|e| match e {
            tug_netns::nft::ConnEvent::New {
                id, destination, ..
            } if destination == target => Some(id),
            _ => None,
        });
    }
    let id = told.expect("conntrack told of the connection to the service");
    // Closed by now, but its entry lives on (TCP's close timeouts): listed.
    let ids = w.host.run(|| {
        tug_netns::nft::Socket::open()
            .unwrap()
            .connection_ids()
            .unwrap()
    });
    assert!(ids.contains(&id), "{id} not in {ids:?}");
    w.teardown();
}
