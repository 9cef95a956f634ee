//! A host like one where Docker runs: iptables-nft's `filter FORWARD` chain with policy
//! drop, made by the test through netlink in the fake host's namespace. Container traffic
//! crossing the host passes because the network accepts its bridge there, and stops when
//! those rules are taken away. Needs root; skips otherwise.

mod common;

use common::{sa, tcp_probe, udp_probe, Ns, RootWatch};
use tug_netns::forward::{FILTER_TABLE, FORWARD_CHAIN};
use tug_netns::nft::{BaseChain, Batch, Chain, Hook, Op, RuleRef, FAMILY_IPV4};
use tug_netns::ops::NetOps;
use tug_netns::rtnl::Rtnl;
use tug_netns::{AttachRequest, Network, NetworkConfig, PortMapping, Protocol};

fn forward_rules(host: &Ns) -> Option<Vec<RuleRef>> {
    host.block_on(|| async {
        Rtnl::current()
            .unwrap()
            .nft_rules(FAMILY_IPV4, FILTER_TABLE, FORWARD_CHAIN)
            .await
            .unwrap()
    })
}

#[test]
fn container_traffic_passes_a_forward_chain_with_drop_policy() {
    need_root!();
    let watch = RootWatch::new();
    let data = tempfile::tempdir().unwrap();
    let host = Ns::new("dockhost");
    let remote = Ns::new("dockremote");
    common::wire(
        &host,
        "uplink",
        "192.168.78.1/24",
        &remote,
        "uplink",
        "192.168.78.2/24",
    );
    remote.ip(&["route", "add", "10.77.0.0/24", "via", "192.168.78.1"]);
    // What Docker leaves: iptables' FORWARD chain, policy drop.
    host.block_on(|| async {
        let mut b = Batch::new(FAMILY_IPV4);
        b.push(Op::AddTable(FILTER_TABLE.into()));
        b.push(Op::AddChain(Chain {
            table: FILTER_TABLE.into(),
            name: FORWARD_CHAIN.into(),
            base: Some(BaseChain {
                kind: "filter",
                hook: Hook::Forward,
                priority: 0,
                drop_policy: true,
            }),
        }));
        Rtnl::current().unwrap().nft(&b).await.unwrap();
    });
    assert_eq!(forward_rules(&host), Some(vec![]));

    let mut cfg = NetworkConfig::new("dk", "10.77.0.0/24".parse().unwrap(), data.path());
    cfg.masquerade = false; // the remote host routes to the containers
    let c1 = Ns::new("dockc1");
    let mut req = AttachRequest::new("web", c1.reference());
    req.ports = vec![PortMapping {
        protocol: Protocol::Tcp,
        host_port: 8080,
        container_port: 80,
    }];
    let c = cfg.clone();
    host.block_on(move || async move { Network::open(c).await?.attach(&req).await })
        .unwrap();
    let ours = forward_rules(&host).unwrap();
    assert_eq!(ours.len(), 2, "an accept rule for each direction");

    // Both directions of routed traffic, TCP and UDP, and a published port.
    tcp_probe(&remote, sa("0.0.0.0:7000"), &c1, sa("192.168.78.2:7000")).unwrap();
    udp_probe(&remote, sa("0.0.0.0:7001"), &c1, sa("192.168.78.2:7001")).unwrap();
    tcp_probe(&c1, sa("0.0.0.0:7002"), &remote, sa("10.77.0.2:7002")).unwrap();
    tcp_probe(&c1, sa("0.0.0.0:80"), &remote, sa("192.168.78.1:8080")).unwrap();

    // Opening again (an agent restart) does not add them twice.
    let c = cfg.clone();
    host.block_on(move || async move { Network::open(c).await.map(|_| ()) })
        .unwrap();
    assert_eq!(forward_rules(&host).unwrap(), ours);

    // Without them, the drop policy applies: the rules are what lets traffic through.
    let c = cfg.clone();
    host.block_on(move || async move { Network::open(c).await?.remove_forward_accept().await })
        .unwrap();
    assert_eq!(forward_rules(&host), Some(vec![]));
    assert!(tcp_probe(&remote, sa("0.0.0.0:7003"), &c1, sa("192.168.78.2:7003")).is_err());
    let c = cfg.clone();
    let back = host
        .block_on(move || async move { Network::open(c).await?.ensure_forward_accept().await })
        .unwrap();
    assert!(back);
    tcp_probe(&remote, sa("0.0.0.0:7004"), &c1, sa("192.168.78.2:7004")).unwrap();

    // Teardown takes our rules out and leaves Docker's chain (and its policy) alone.
    let c = cfg.clone();
    host.block_on(move || async move { Network::open(c).await?.teardown().await })
        .unwrap();
    assert_eq!(forward_rules(&host), Some(vec![]));
    watch.check();
}
