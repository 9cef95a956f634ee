//! One fake host (a namespace with the bridge), containers (namespaces) on it, and a second
//! host wired to it. Needs root; skips otherwise.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use common::{sa, tcp_probe, udp_probe, Ns, RootWatch};
use tug_netns::network::host_veth_name;
use tug_netns::rtnl::Rtnl;
use tug_netns::{
    AttachRequest, Attachment, NetnsRef, Network, NetworkConfig, NetworkError, PortMapping,
    Protocol,
};

fn config(dir: &Path, name: &str, subnet: &str) -> NetworkConfig {
    NetworkConfig::new(name, subnet.parse().unwrap(), dir)
}

fn attach(host: &Ns, cfg: &NetworkConfig, req: AttachRequest) -> Result<Attachment, NetworkError> {
    let cfg = cfg.clone();
    host.block_on(move || async move {
        let net = Network::open(cfg).await?;
        net.attach(&req).await
    })
}

fn detach(host: &Ns, cfg: &NetworkConfig, id: &str) -> Result<(), NetworkError> {
    let cfg = cfg.clone();
    let id = id.to_string();
    host.block_on(move || async move { Network::open(cfg).await?.detach(&id).await })
}

fn teardown(host: &Ns, cfg: &NetworkConfig) {
    let cfg = cfg.clone();
    host.block_on(move || async move { Network::open(cfg).await?.teardown().await })
        .expect("teardown");
}

fn port(protocol: Protocol, host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        protocol,
        host_port,
        container_port,
    }
}

/// A host with a network, two containers and a second host ("remote") wired to it on
/// 192.168.77.0/24.
struct World {
    _data: tempfile::TempDir,
    cfg: NetworkConfig,
    host: Ns,
    remote: Ns,
    c1: Ns,
    c2: Ns,
    watch: RootWatch,
}

impl World {
    fn new(masquerade: bool) -> World {
        let watch = RootWatch::new();
        let data = tempfile::tempdir().unwrap();
        let host = Ns::new("host");
        let remote = Ns::new("remote");
        common::wire(
            &host,
            "uplink",
            "192.168.77.1/24",
            &remote,
            "uplink",
            "192.168.77.2/24",
        );
        let mut cfg = config(data.path(), "n1", "10.88.0.0/24");
        cfg.masquerade = masquerade;
        World {
            _data: data,
            cfg,
            host,
            remote,
            c1: Ns::new("c1"),
            c2: Ns::new("c2"),
            watch,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("n1")
    }
}

#[test]
fn two_containers_on_one_host_reach_each_other() {
    need_root!();
    let w = World::new(true);
    let a1 = attach(&w.host, &w.cfg, AttachRequest::new("c1", w.c1.reference())).unwrap();
    let mut r2 = AttachRequest::new("c2", w.c2.reference());
    r2.mac = Some([0x02, 0, 0, 0, 0, 0x42]);
    let a2 = attach(&w.host, &w.cfg, r2).unwrap();
    assert_eq!(a1.address.ip(), Ipv4Addr::new(10, 88, 0, 2));
    assert_eq!(a2.address.ip(), Ipv4Addr::new(10, 88, 0, 3));
    assert_eq!(a1.gateway, Ipv4Addr::new(10, 88, 0, 1));

    // Inside the container: eth0 with the address, MAC and MTU, lo up, default route.
    let link = w.c2.ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains("02:00:00:00:00:42"), "{link}");
    assert!(link.contains("mtu 1500"), "{link}");
    assert!(w.c1.ip(&["-o", "link", "show", "lo"]).contains("UP"));
    assert!(w.c1.addresses().contains("10.88.0.2/24"));
    assert!(w
        .c1
        .ip(&["route"])
        .contains("default via 10.88.0.1 dev eth0"));
    // On the host: the veth is a port of the bridge.
    let hv = w.host.ip(&["-o", "link", "show", &a1.host_veth]);
    assert!(hv.contains("master tug-n1"), "{hv}");

    let seen = tcp_probe(&w.c2, sa("10.88.0.3:7000"), &w.c1, sa("10.88.0.3:7000")).unwrap();
    assert_eq!(seen.ip(), Ipv4Addr::new(10, 88, 0, 2));
    let seen = tcp_probe(&w.c1, sa("0.0.0.0:7001"), &w.c2, sa("10.88.0.2:7001")).unwrap();
    assert_eq!(seen.ip(), Ipv4Addr::new(10, 88, 0, 3));

    teardown(&w.host, &w.cfg);
    assert!(w.host.links_of_kind("veth").iter().all(|l| l == "uplink"));
    assert!(w.host.links_of_kind("bridge").is_empty());
    w.watch.check();
}

#[test]
fn published_ports_reach_the_container_from_everywhere() {
    need_root!();
    let w = World::new(true);
    let mut r1 = AttachRequest::new("web", w.c1.reference());
    r1.ports = vec![port(Protocol::Tcp, 8080, 80), port(Protocol::Udp, 5353, 53)];
    let a1 = attach(&w.host, &w.cfg, r1).unwrap();
    attach(
        &w.host,
        &w.cfg,
        AttachRequest::new("client", w.c2.reference()),
    )
    .unwrap();
    let web = a1.address.ip();

    // From another host, to the host's address.
    let seen = tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.remote, sa("192.168.77.1:8080")).unwrap();
    assert_eq!(
        seen.ip(),
        Ipv4Addr::new(192, 168, 77, 2),
        "the client's address is kept"
    );
    let seen = udp_probe(&w.c1, sa("0.0.0.0:53"), &w.remote, sa("192.168.77.1:5353")).unwrap();
    assert_eq!(seen.ip(), Ipv4Addr::new(192, 168, 77, 2));

    // From the host itself, to its own address and to 127.0.0.1.
    tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.host, sa("192.168.77.1:8080")).unwrap();
    tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.host, sa("127.0.0.1:8080")).unwrap();
    udp_probe(&w.c1, sa("0.0.0.0:53"), &w.host, sa("127.0.0.1:5353")).unwrap();

    // From a container on the same bridge, through the host's address (hairpin).
    let seen = tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.c2, sa("192.168.77.1:8080")).unwrap();
    assert_ne!(seen.ip(), web);
    tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.c2, sa("10.88.0.1:8080")).unwrap();
    // ...and the container itself, through its own published port.
    tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.c1, sa("192.168.77.1:8080")).unwrap();

    // Detach unpublishes: the remote host can no longer get in.
    detach(&w.host, &w.cfg, "web").unwrap();
    assert_eq!(common::nat_footprint(&w.host, "n1"), (vec![], 0));
    teardown(&w.host, &w.cfg);
    w.watch.check();
}

#[test]
fn egress_is_masqueraded_as_the_host_address() {
    need_root!();
    let w = World::new(true);
    attach(&w.host, &w.cfg, AttachRequest::new("c1", w.c1.reference())).unwrap();
    let seen = tcp_probe(
        &w.remote,
        sa("192.168.77.2:9000"),
        &w.c1,
        sa("192.168.77.2:9000"),
    )
    .unwrap();
    assert_eq!(seen.ip(), Ipv4Addr::new(192, 168, 77, 1));
    teardown(&w.host, &w.cfg);
    w.watch.check();
}

#[test]
fn without_masquerade_egress_keeps_the_container_address() {
    need_root!();
    let w = World::new(false);
    w.remote
        .ip(&["route", "add", "10.88.0.0/24", "via", "192.168.77.1"]);
    attach(&w.host, &w.cfg, AttachRequest::new("c1", w.c1.reference())).unwrap();
    let seen = tcp_probe(
        &w.remote,
        sa("192.168.77.2:9000"),
        &w.c1,
        sa("192.168.77.2:9000"),
    )
    .unwrap();
    assert_eq!(seen.ip(), Ipv4Addr::new(10, 88, 0, 2));
    teardown(&w.host, &w.cfg);
    w.watch.check();
}

/// Kernel-side evidence of a container: host veths, addresses and published-port rules.
fn footprint(w: &World) -> (Vec<String>, String, usize, String) {
    let (chains, elements) = common::nat_footprint(&w.host, "n1");
    let rules = chains.len() * 1000 + elements;
    let text = std::fs::read_to_string(w.state_dir().join("leases.json")).unwrap_or_default();
    let leases = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| v["leases"].to_string())
        .unwrap_or_default();
    (
        w.host.links_of_kind("veth"),
        w.c1.addresses() + &w.c2.addresses(),
        rules,
        leases,
    )
}

#[test]
fn bad_input_is_refused_by_name_and_leaves_nothing() {
    need_root!();
    let w = World::new(true);
    let mut r = AttachRequest::new("first", w.c2.reference());
    r.ports = vec![port(Protocol::Tcp, 8080, 80)];
    attach(&w.host, &w.cfg, r).unwrap();
    let before = footprint(&w);

    // Address outside the subnet.
    let mut r = AttachRequest::new("c1", w.c1.reference());
    r.ip = Some(Ipv4Addr::new(10, 99, 0, 5));
    let e = attach(&w.host, &w.cfg, r).unwrap_err();
    assert!(
        e.to_string().contains("10.99.0.5") && e.to_string().contains("10.88.0.0/24"),
        "{e}"
    );
    assert_eq!(footprint(&w), before);

    // Namespace path missing.
    let missing = PathBuf::from(format!("/run/netns/{}-gone", w.c1.name));
    let e = attach(
        &w.host,
        &w.cfg,
        AttachRequest::new("c1", NetnsRef::Path(missing.clone())),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert_eq!(footprint(&w), before);

    // A file that is not a namespace.
    let e = attach(
        &w.host,
        &w.cfg,
        AttachRequest::new("c1", NetnsRef::Path("/etc/hostname".into())),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/etc/hostname"), "{e}");
    assert_eq!(footprint(&w), before);

    // Port already published.
    let mut r = AttachRequest::new("c1", w.c1.reference());
    r.ports = vec![port(Protocol::Tcp, 9090, 90), port(Protocol::Tcp, 8080, 80)];
    let e = attach(&w.host, &w.cfg, r).unwrap_err();
    assert!(
        e.to_string().contains("8080") && e.to_string().contains("first"),
        "{e}"
    );
    assert_eq!(footprint(&w), before);

    // Same port, other protocol, is fine.
    let mut r = AttachRequest::new("c1", w.c1.reference());
    r.ports = vec![port(Protocol::Udp, 8080, 80)];
    attach(&w.host, &w.cfg, r).unwrap();
    detach(&w.host, &w.cfg, "c1").unwrap();
    assert_eq!(footprint(&w), before);

    // The interface name is taken inside the container: the veth is made atomically with
    // its peer, so the kernel refuses it whole; the lease is given back.
    w.c1.ip(&["link", "add", "eth0", "type", "bridge"]);
    let e = attach(&w.host, &w.cfg, AttachRequest::new("c1", w.c1.reference())).unwrap_err();
    assert!(e.to_string().contains("veth"), "{e}");
    w.c1.ip(&["link", "del", "eth0"]);
    assert_eq!(footprint(&w), before);

    // Overlapping subnet: with another tug network, and with a route on the host.
    let other = config(&w.cfg.data_dir, "n2", "10.88.0.128/25");
    let e = w
        .host
        .block_on(move || async move { Network::open(other).await.map(|_| ()) })
        .unwrap_err();
    assert!(
        e.to_string().contains("10.88.0.128/25") && e.to_string().contains("n1"),
        "{e}"
    );
    let clash = config(&w.cfg.data_dir, "n3", "192.168.77.0/25");
    let e = w
        .host
        .block_on(move || async move { Network::open(clash).await.map(|_| ()) })
        .unwrap_err();
    assert!(e.to_string().contains("192.168.77.0/24"), "{e}");
    assert!(w.host.links_of_kind("bridge") == vec!["tug-n1".to_string()]);
    assert!(!w.cfg.data_dir.join("n2").exists() && !w.cfg.data_dir.join("n3").exists());

    teardown(&w.host, &w.cfg);
    w.watch.check();
}

#[test]
fn detach_is_idempotent_and_survives_a_vanished_container() {
    need_root!();
    let w = World::new(true);
    let mut r = AttachRequest::new("c1", w.c1.reference());
    r.ports = vec![port(Protocol::Tcp, 8080, 80)];
    let a = attach(&w.host, &w.cfg, r.clone()).unwrap();
    // Attaching again returns the same attachment.
    assert_eq!(attach(&w.host, &w.cfg, r).unwrap(), a);
    detach(&w.host, &w.cfg, "c1").unwrap();
    detach(&w.host, &w.cfg, "c1").unwrap();
    detach(&w.host, &w.cfg, "never-attached").unwrap();
    assert_eq!(w.host.links_of_kind("veth"), vec!["uplink".to_string()]);

    // The container's namespace dies and the container is started again with the same id
    // in a new one: it gets its old address back.
    let first = Ns::new("c3a");
    let a1 = attach(
        &w.host,
        &w.cfg,
        AttachRequest::new("again", first.reference()),
    )
    .unwrap();
    drop(first);
    common::eventually("the dead namespace's veth to go", || {
        !w.host.links_of_kind("veth").contains(&a1.host_veth)
    });
    let second = Ns::new("c3b");
    let a2 = attach(
        &w.host,
        &w.cfg,
        AttachRequest::new("again", second.reference()),
    )
    .unwrap();
    assert_eq!(a2.address, a1.address);
    assert!(second.addresses().contains(&a1.address.to_string()));
    detach(&w.host, &w.cfg, "again").unwrap();

    // The container's namespace goes away before detach.
    let c3 = Ns::new("c3");
    attach(&w.host, &w.cfg, AttachRequest::new("c3", c3.reference())).unwrap();
    drop(c3);
    detach(&w.host, &w.cfg, "c3").unwrap();
    assert_eq!(w.host.links_of_kind("veth"), vec!["uplink".to_string()]);
    let (_, _, rules, leases) = footprint(&w);
    assert_eq!(rules, 0);
    assert!(!leases.contains("c3") && !leases.contains("c1"), "{leases}");

    // A crash half-way: lease written, veth made, nothing else. Detach cleans it.
    let vname = host_veth_name("n1", "half");
    w.host.ip(&[
        "link", "add", &vname, "type", "veth", "peer", "name", "eth0", "netns", &w.c2.name,
    ]);
    {
        let alloc =
            tug_netns::alloc::Allocator::new(&w.cfg.data_dir, "n1", w.cfg.subnet, w.cfg.gateway())
                .unwrap();
        let mut book = alloc.lock().unwrap();
        book.allocate("half", None).unwrap();
        book.update("half", |l| l.host_veth = vname.clone());
        book.commit().unwrap();
    }
    detach(&w.host, &w.cfg, "half").unwrap();
    assert_eq!(w.host.links_of_kind("veth"), vec!["uplink".to_string()]);
    assert!(w.c2.links_of_kind("veth").is_empty());

    teardown(&w.host, &w.cfg);
    teardown(&w.host, &w.cfg);
    assert!(!w.state_dir().exists());
    w.watch.check();
}

#[test]
fn container_given_by_pid() {
    need_root!();
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip("container_given_by_pid", "needs util-linux unshare");
        return;
    }
    let w = World::new(true);
    let child = std::process::Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let pid = child.0.id();
    // unshare(1) unshares then execs sleep in the same process: wait until its namespace
    // differs from ours.
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    common::eventually("the child's own netns", || {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|l| l != ours)
            .unwrap_or(false)
    });
    let a = attach(
        &w.host,
        &w.cfg,
        AttachRequest::new("bypid", NetnsRef::Pid(pid)),
    )
    .unwrap();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip", "-4", "-o", "addr"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&a.address.to_string()));
    detach(&w.host, &w.cfg, "bypid").unwrap();
    let _ = child.0.kill();
    let _ = child.0.wait();
    teardown(&w.host, &w.cfg);
    w.watch.check();
}

#[test]
fn reopening_after_a_reboot_like_flush_restores_published_ports() {
    need_root!();
    let w = World::new(true);
    let mut r = AttachRequest::new("web", w.c1.reference());
    r.ports = vec![port(Protocol::Tcp, 8080, 80)];
    attach(&w.host, &w.cfg, r).unwrap();
    // The kernel forgets the NAT table (as after a reboot or `nft flush ruleset`)...
    let table = tug_netns::firewall::table_name("n1");
    w.host.block_on(move || async move {
        use tug_netns::ops::NetOps;
        let ops = Rtnl::current().unwrap();
        let mut b = tug_netns::nft::Batch::new(tug_netns::nft::FAMILY_IPV4);
        b.push(tug_netns::nft::Op::DelTable(table));
        ops.nft(&b).await.unwrap();
    });
    // ...and opening the network (what a restarted agent does) puts it back from the leases.
    let cfg = w.cfg.clone();
    w.host
        .block_on(move || async move { Network::open(cfg).await.map(|_| ()) })
        .unwrap();
    let seen = tcp_probe(&w.c1, sa("0.0.0.0:80"), &w.remote, sa("192.168.77.1:8080")).unwrap();
    assert_eq!(seen.ip(), Ipv4Addr::new(192, 168, 77, 2));
    teardown(&w.host, &w.cfg);
    w.watch.check();
}

#[test]
fn hundreds_of_published_ports_apply_as_one_transaction() {
    need_root!();
    let w = World::new(true);
    let mut r = AttachRequest::new("many", w.c1.reference());
    r.ports = (0..600)
        .map(|i| port(Protocol::Udp, 20000 + i, 53))
        .collect();
    attach(&w.host, &w.cfg, r).unwrap();
    let table = tug_netns::firewall::table_name("n1");
    let chain =
        tug_netns::firewall::container_chain(&tug_netns::network::host_veth_name("n1", "many"));
    let count = w.host.block_on(move || async move {
        Rtnl::current()
            .unwrap()
            .nft_rule_count(&table, &chain)
            .unwrap()
    });
    assert_eq!(count, 600);
    assert_eq!(common::nat_footprint(&w.host, "n1").1, 600);
    udp_probe(&w.c1, sa("0.0.0.0:53"), &w.remote, sa("192.168.77.1:20599")).unwrap();
    detach(&w.host, &w.cfg, "many").unwrap();
    assert_eq!(common::nat_footprint(&w.host, "n1"), (vec![], 0));
    teardown(&w.host, &w.cfg);
    w.watch.check();
}
