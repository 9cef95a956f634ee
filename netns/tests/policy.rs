//! Network policy in nftables, with real namespaces: a host with a bridge, a server
//! container and two clients on it, and a second host ("remote") wired to it. The server
//! answers TCP and UDP with its name. Needs root; skips otherwise.

mod common;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Ns, RootWatch};
use tug_netns::ops::NetOps;
use tug_netns::rtnl::Rtnl;
use tug_netns::{
    AttachRequest, Frontend, InstancePolicy, Network, NetworkConfig, NetworkError, Peers, Policy,
    PolicyRule, Protocol, ServiceSpec,
};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 2);
const GOOD: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 3);
const BAD: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 4);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 89, 7, 1);

/// Answers TCP connections (its name, then echoes lines) and UDP datagrams (its name) on
/// two ports. Stops on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Ns, ports: &[u16]) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        for &port in ports {
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
            let (s1, s2) = (stop.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !s1.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((s, _)) => {
                            std::thread::spawn(move || serve_tcp(s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !s2.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(b"server", peer);
                    }
                }
            }));
        }
        Server { stop, threads }
    }
}

fn serve_tcp(s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = s.try_clone().unwrap();
    if w.write_all(b"server\n").is_err() {
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

/// One TCP connection from inside `ns`: Ok when the server answered.
fn tcp(ns: &Ns, target: SocketAddrV4) -> io::Result<()> {
    ns.run(move || {
        let s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        if line.trim() == "server" {
            Ok(())
        } else {
            Err(io::Error::other(format!("answer {line:?}")))
        }
    })
}

/// One UDP datagram from a fresh socket (a new conntrack entry): Ok when answered.
fn udp(ns: &Ns, target: SocketAddrV4) -> io::Result<()> {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.send_to(b"hi", target)?;
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).map(|_| ())
    })
}

/// Both protocols pass (true) or both are refused (false); panics on a mix.
fn reaches(ns: &Ns, target: SocketAddrV4) -> bool {
    let (t, u) = (tcp(ns, target), udp(ns, target));
    assert_eq!(
        t.is_ok(),
        u.is_ok(),
        "tcp {t:?} and udp {u:?} to {target} disagree"
    );
    if let Err(e) = &t {
        // A refusal is a reset, not a timeout: the reject rule answers. Through a service
        // address the packet is dropped (see tug_netns::policy).
        if *target.ip() != VIP {
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        }
    }
    t.is_ok()
}

struct World {
    _data: tempfile::TempDir,
    cfg: NetworkConfig,
    host: Ns,
    remote: Ns,
    server: Ns,
    good: Ns,
    bad: Ns,
    watch: RootWatch,
}

impl World {
    fn new() -> World {
        let watch = RootWatch::new();
        let data = tempfile::tempdir().unwrap();
        let host = Ns::new("polhost");
        let remote = Ns::new("polremote");
        common::wire(
            &host,
            "uplink",
            "192.168.78.1/24",
            &remote,
            "uplink",
            "192.168.78.2/24",
        );
        remote.ip(&["route", "add", "10.88.7.0/24", "via", "192.168.78.1"]);
        remote.ip(&["route", "add", "10.89.7.0/24", "via", "192.168.78.1"]);
        let mut cfg = NetworkConfig::new("p1", "10.88.7.0/24".parse().unwrap(), data.path());
        // The remote "node" keeps its address on the way in and out.
        cfg.masquerade = false;
        let w = World {
            _data: data,
            cfg,
            host,
            remote,
            server: Ns::new("polsrv"),
            good: Ns::new("polgood"),
            bad: Ns::new("polbad"),
            watch,
        };
        for (id, ns, ip) in [
            ("server", &w.server, SERVER),
            ("good", &w.good, GOOD),
            ("bad", &w.bad, BAD),
        ] {
            let mut req = AttachRequest::new(id, ns.reference());
            req.ip = Some(ip);
            w.net(move |net| async move { net.attach(&req).await.map(|_| ()) })
                .unwrap();
        }
        w
    }

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

    fn set(&self, p: &Policy) -> Result<(), NetworkError> {
        let p = p.clone();
        self.net(move |net| async move { net.set_policy(&p).await })
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
        self.watch.check();
    }
}

fn at(a: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(a, port)
}

/// The server lets in the group `service/client` and the remote range on port 8080 only.
fn policy(clients: &[Ipv4Addr]) -> Policy {
    let mut groups = BTreeMap::new();
    groups.insert(
        "service/client".to_string(),
        clients.iter().copied().collect(),
    );
    Policy {
        groups,
        nodes: Default::default(),
        instances: vec![InstancePolicy {
            address: SERVER,
            ingress: Some(vec![
                PolicyRule {
                    peers: Peers::Group("service/client".into()),
                    ports: vec![],
                },
                PolicyRule {
                    peers: Peers::Cidr("192.168.78.0/24".parse().unwrap()),
                    ports: vec![8080],
                },
            ]),
            egress: None,
        }],
    }
}

#[test]
fn ingress_allows_only_what_a_rule_names_for_tcp_and_udp_also_through_a_service_address() {
    need_root!();
    let w = World::new();
    let _srv = Server::start(&w.server, &[8080, 9090]);
    let vip = ServiceSpec::new(
        Frontend::Virtual {
            address: VIP,
            port: 80,
        },
        Protocol::Tcp,
        vec![at(SERVER, 8080)],
    );
    let vip_udp = ServiceSpec {
        protocol: Protocol::Udp,
        ..vip.clone()
    };
    w.net(move |net| async move {
        net.set_service(&vip).await?;
        net.set_service(&vip_udp).await
    })
    .unwrap();

    // No policy: everyone.
    assert!(reaches(&w.bad, at(SERVER, 8080)));
    assert!(reaches(&w.good, at(SERVER, 8080)));

    w.set(&policy(&[GOOD])).unwrap();
    assert!(w.tables().contains(&"tug-pol-p1".to_string()));
    assert!(reaches(&w.good, at(SERVER, 8080)), "the group is let in");
    assert!(reaches(&w.good, at(SERVER, 9090)), "on every port");
    assert!(!reaches(&w.bad, at(SERVER, 8080)), "others are refused");
    // Matched after DNAT, on the instance the service address led to.
    assert!(reaches(&w.good, at(VIP, 80)), "through the service address");
    assert!(!reaches(&w.bad, at(VIP, 80)), "refused through it too");
    // A range on one port.
    assert!(
        reaches(&w.remote, at(SERVER, 8080)),
        "the range on its port"
    );
    assert!(!reaches(&w.remote, at(SERVER, 9090)), "not on another");
    // The node itself (health probes) always.
    assert!(reaches(&w.host, at(SERVER, 9090)), "the node's own traffic");

    // A connection made before a change keeps going.
    let kept = w.good.run(|| {
        let s = TcpStream::connect(at(SERVER, 9090)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        (s, r)
    });

    // Membership: bad joins the group, good leaves it (element changes only).
    let started = Instant::now();
    w.set(&policy(&[BAD])).unwrap();
    eprintln!(
        "membership change (open + set_policy) took {:?}",
        started.elapsed()
    );
    assert!(reaches(&w.bad, at(SERVER, 8080)), "a new member is let in");
    assert!(!reaches(&w.good, at(SERVER, 8080)), "a former one is not");
    let (mut s, mut r) = kept;
    s.write_all(b"still there\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line, "still there\n",
        "the established connection continues"
    );
    drop((s, r));

    // The record says what is programmed; the table survives a reopen as it is.
    let recorded = tug_netns::network::recorded_policy(&w.cfg.data_dir, "p1");
    assert_eq!(recorded, policy(&[BAD]));

    // No instance with policy: everyone again.
    w.set(&Policy::default()).unwrap();
    assert!(reaches(&w.good, at(SERVER, 8080)));
    w.teardown();
}

#[test]
fn egress_limits_where_an_instance_connects_to_the_node_and_beyond_and_nodes_are_trusted() {
    need_root!();
    let w = World::new();
    let _srv = Server::start(&w.server, &[8080]);
    let _node = Server::start(&w.host, &[7070]);
    let _far = Server::start(&w.remote, &[8080]);
    let mut p = Policy::default();
    p.instances.push(InstancePolicy {
        address: BAD,
        ingress: None,
        egress: Some(vec![PolicyRule {
            peers: Peers::Cidr("192.168.78.2/32".parse().unwrap()),
            ports: vec![8080],
        }]),
    });
    // The server lets nobody in but the nodes.
    p.instances.push(InstancePolicy {
        address: SERVER,
        ingress: Some(vec![]),
        egress: None,
    });
    w.set(&p).unwrap();
    assert!(reaches(&w.bad, at(Ipv4Addr::new(192, 168, 78, 2), 8080)));
    assert!(!reaches(&w.bad, at(SERVER, 8080)), "egress refuses");
    assert!(
        !reaches(&w.bad, at(Ipv4Addr::new(10, 88, 7, 1), 7070)),
        "the route to the node is filtered too"
    );
    assert!(reaches(&w.good, at(Ipv4Addr::new(10, 88, 7, 1), 7070)));
    assert!(!reaches(&w.good, at(SERVER, 8080)), "an empty ingress list");
    assert!(!reaches(&w.remote, at(SERVER, 8080)));
    p.nodes.insert(Ipv4Addr::new(192, 168, 78, 2));
    w.set(&p).unwrap();
    assert!(reaches(&w.remote, at(SERVER, 8080)), "a node is let in");

    // A flushed table is put back by the next open.
    w.host.block_on(|| async {
        let mut b = tug_netns::nft::Batch::new(2);
        b.push(tug_netns::nft::Op::DelTable("tug-pol-p1".into()));
        Rtnl::current().unwrap().nft(&b).await.unwrap();
    });
    assert!(reaches(&w.good, at(SERVER, 8080)), "no table: open");
    w.net(|_| async { Ok(()) }).unwrap();
    assert!(
        !reaches(&w.good, at(SERVER, 8080)),
        "reopened: enforced again"
    );
    w.teardown();
}
