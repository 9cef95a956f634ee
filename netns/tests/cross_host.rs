//! Three fake hosts, one container each; containers reach each other across hosts by host-gw
//! routes (hosts on one switch) and by VXLAN (hosts on three subnets behind a router).
//! Needs root.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{tcp_probe, Ns, RootWatch};
use tug_netns::peers::vxlan_name;
use tug_netns::{AttachRequest, Link, Network, NetworkConfig, Peer, PeerMode, VxlanConfig};

struct Host {
    ns: Ns,
    container: Ns,
    cfg: NetworkConfig,
    underlay: Ipv4Addr,
}

impl Host {
    fn peer(&self) -> Peer {
        Peer {
            subnet: self.cfg.subnet,
            host_addr: self.underlay,
        }
    }

    fn container_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.subnet.network()) + 2)
    }

    fn teardown(&self) {
        let cfg = self.cfg.clone();
        self.ns
            .block_on(move || async move { Network::open(cfg).await?.teardown().await })
            .unwrap();
    }
}

fn host(data: &std::path::Path, i: u8, underlay: Ipv4Addr) -> Host {
    let mut cfg = NetworkConfig::new(
        "x",
        format!("10.244.{i}.0/24").parse().unwrap(),
        data.join(format!("h{i}")),
    );
    cfg.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
    cfg.mtu = 1450;
    Host {
        ns: Ns::new(&format!("h{i}")),
        container: Ns::new(&format!("c{i}")),
        cfg,
        underlay,
    }
}

/// Opens each host's network, attaches its container, and connects it to the others with
/// `overlay` (VXLAN) or host-gw.
fn connect_all(hosts: &[Host], overlay: bool) {
    let all: Vec<Peer> = hosts.iter().map(Host::peer).collect();
    for (i, h) in hosts.iter().enumerate() {
        let cfg = h.cfg.clone();
        let req = AttachRequest::new("app", h.container.reference());
        let me = h.peer();
        let others: Vec<Peer> = all.iter().copied().filter(|p| *p != me).collect();
        let local = h.underlay;
        h.ns.block_on(move || async move {
            let net = Network::open(cfg).await.unwrap();
            net.attach(&req).await.unwrap();
            let vx = VxlanConfig::new(4242, local);
            if i == 0 {
                // The first host uses the declarative call and lets it choose the link.
                let want = if overlay { Link::Vxlan } else { Link::HostGw };
                for _ in 0..2 {
                    let got = net.set_peers(&others, &PeerMode::Auto(vx)).await.unwrap();
                    assert!(got.iter().all(|(_, l)| *l == want), "{got:?}");
                }
                return;
            }
            if overlay {
                net.ensure_overlay(&vx).await.unwrap();
            }
            for p in &others {
                if overlay {
                    net.add_overlay_peer(p).await.unwrap();
                    net.add_overlay_peer(p).await.unwrap(); // idempotent
                } else {
                    net.add_host_gw_peer(p).await.unwrap();
                    net.add_host_gw_peer(p).await.unwrap();
                }
            }
        });
    }
}

/// Every container reaches every other one, and the far end sees the container's own
/// address (no masquerade inside the cluster).
fn check_mesh(hosts: &[Host]) {
    for (i, a) in hosts.iter().enumerate() {
        for (j, b) in hosts.iter().enumerate() {
            if i == j {
                continue;
            }
            let port = 7100 + (i * 3 + j) as u16;
            let target = SocketAddrV4::new(b.container_ip(), port);
            let seen = tcp_probe(&b.container, target, &a.container, target)
                .unwrap_or_else(|e| panic!("container on h{i} -> h{j}: {e}"));
            assert_eq!(seen.ip(), a.container_ip(), "h{i} -> h{j} kept its address");
        }
    }
}

#[test]
fn host_gw_routes_between_three_hosts_on_one_switch() {
    need_root!();
    let watch = RootWatch::new();
    let data = tempfile::tempdir().unwrap();
    let lan = Ns::new("lan");
    lan.ip(&["link", "add", "sw", "type", "bridge"]);
    lan.ip(&["link", "set", "sw", "up"]);
    let hosts: Vec<Host> = (1..=3u8)
        .map(|i| {
            let h = host(data.path(), i, Ipv4Addr::new(192, 168, 50, i));
            let port = format!("p{i}");
            let addr = format!("192.168.50.{i}/24");
            h.ns.ip(&[
                "link", "add", "uplink", "type", "veth", "peer", "name", &port, "netns", &lan.name,
            ]);
            h.ns.ip(&["addr", "add", &addr, "dev", "uplink"]);
            h.ns.ip(&["link", "set", "uplink", "up"]);
            lan.ip(&["link", "set", &port, "master", "sw", "up"]);
            h
        })
        .collect();
    connect_all(&hosts, false);
    assert!(hosts[0]
        .ns
        .ip(&["route"])
        .contains("10.244.2.0/24 via 192.168.50.2"));
    check_mesh(&hosts);

    // Removing a peer removes its route, twice over.
    let p = hosts[1].peer();
    let cfg = hosts[0].cfg.clone();
    hosts[0].ns.block_on(move || async move {
        let net = Network::open(cfg).await.unwrap();
        net.remove_host_gw_peer(&p).await.unwrap();
        net.remove_host_gw_peer(&p).await.unwrap();
    });
    assert!(!hosts[0].ns.ip(&["route"]).contains("10.244.2.0/24"));
    for h in &hosts {
        h.teardown();
    }
    // set_peers remembered its routes, and teardown took them away.
    let left = hosts[0].ns.ip(&["route"]);
    assert!(!left.contains("10.244."), "{left}");
    watch.check();
}

#[test]
fn vxlan_overlay_between_three_hosts_behind_a_router() {
    need_root!();
    let watch = RootWatch::new();
    let data = tempfile::tempdir().unwrap();
    let router = Ns::new("rtr");
    router.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap());
    let hosts: Vec<Host> = (1..=3u8)
        .map(|i| {
            let h = host(data.path(), i, Ipv4Addr::new(172, 31, i, 2));
            let leg = format!("leg{i}");
            common::wire(
                &h.ns,
                "uplink",
                &format!("172.31.{i}.2/24"),
                &router,
                &leg,
                &format!("172.31.{i}.1/24"),
            );
            h.ns.ip(&["route", "add", "default", "via", &format!("172.31.{i}.1")]);
            h
        })
        .collect();
    connect_all(&hosts, true);
    // Not routed by the underlay: the router knows nothing of 10.244.0.0/16.
    assert!(!router.ip(&["route"]).contains("10.244"));
    let vx = vxlan_name("x");
    assert!(hosts[0]
        .ns
        .ip(&["-d", "link", "show", &vx])
        .contains("vxlan id 4242"));
    check_mesh(&hosts);

    let p = hosts[2].peer();
    let cfg = hosts[0].cfg.clone();
    hosts[0].ns.block_on(move || async move {
        let net = Network::open(cfg).await.unwrap();
        net.remove_overlay_peer(&p).await.unwrap();
        net.remove_overlay_peer(&p).await.unwrap();
    });
    assert!(!hosts[0].ns.ip(&["route"]).contains("10.244.3.0/24"));
    let neigh = hosts[0].ns.ip(&["neigh", "show", "dev", &vx]);
    assert!(
        neigh.contains("10.244.2.0") && !neigh.contains("10.244.3.0"),
        "{neigh}"
    );
    for h in &hosts {
        h.teardown();
        assert!(
            h.ns.ip(&["-o", "link"]).lines().all(|l| !l.contains(&vx)),
            "overlay left"
        );
    }
    watch.check();
}
