//! 300 attach/detach cycles, each with a fresh container namespace and a published port,
//! leave nothing behind: no veth, no address, no rule, no lease, no namespace. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{Ns, RootWatch};
use tug_netns::rtnl::Rtnl;
use tug_netns::{AttachRequest, Network, NetworkConfig, PortMapping, Protocol};

const CYCLES: usize = 300;

#[test]
fn attach_detach_cycles_leave_nothing_behind() {
    need_root!();
    let watch = RootWatch::new();
    let data = tempfile::tempdir().unwrap();
    let host = Ns::new("leakhost");
    let cfg = NetworkConfig::new("leak", "10.66.0.0/24".parse().unwrap(), data.path());
    let prefix = format!("tn{}x", std::process::id());
    let c = cfg.clone();
    let (leases, elapsed) = host.block_on(move || async move {
        let net = Network::open(c).await.unwrap();
        let start = Instant::now();
        for i in 0..CYCLES {
            let ns = Ns::new("leakc");
            let mut req = AttachRequest::new(&format!("c{i}"), ns.reference());
            req.ports = vec![PortMapping {
                protocol: Protocol::Tcp,
                host_port: 30000,
                container_port: 80,
            }];
            let a = net.attach(&req).await.unwrap();
            assert!(ns.addresses().contains(&a.address.to_string()));
            if i % 2 == 0 {
                net.detach(&req.container_id).await.unwrap();
                net.detach(&req.container_id).await.unwrap();
                drop(ns);
            } else {
                // the container dies first; detach must still clean the host
                drop(ns);
                net.detach(&req.container_id).await.unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "cycles too slow"
            );
        }
        let elapsed = start.elapsed();
        (net.attachments().unwrap().len(), elapsed)
    });
    eprintln!("{CYCLES} cycles (incl. netns add/del) in {elapsed:?}");
    assert_eq!(
        common::nat_footprint(&host, "leak"),
        (vec![], 0),
        "published-port rules left"
    );
    assert_eq!(leases, 0, "leases left");
    assert!(
        host.links_of_kind("veth").is_empty(),
        "{:?}",
        host.links_of_kind("veth")
    );
    let addrs = host.addresses();
    assert_eq!(addrs.lines().count(), 2, "only lo and the gateway: {addrs}");
    let left: Vec<String> = common::ip(&["netns", "list"])
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("leakc"))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let c = cfg.clone();
    host.block_on(move || async move { Network::open(c).await?.teardown().await })
        .unwrap();
    assert!(host.links_of_kind("bridge").is_empty());
    let tables = host.block_on(|| async { Rtnl::current().unwrap().nft_tables(2).unwrap() });
    assert!(tables.is_empty(), "{tables:?}");
    watch.check();
}
