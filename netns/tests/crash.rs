//! An attach that "crashes" after each of its kernel steps (every later operation fails,
//! so not even its own cleanup runs), on the real kernel; a detach from a fresh process
//! state must then leave the host clean. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use common::{Ns, RootWatch};
use ipnetwork::Ipv4Network;
use tug_netns::nft::Batch;
use tug_netns::ops::{NetOps, Netns, OpError, Route, RouteEntry, VethSpec, VxlanSpec};
use tug_netns::rtnl::Rtnl;
use tug_netns::{AttachRequest, Network, NetworkConfig, PortMapping, Protocol};

/// Real operations until `budget` changes have been made; then every change fails.
#[derive(Clone)]
struct Crashing {
    inner: Rtnl,
    budget: Arc<AtomicIsize>,
}

impl Crashing {
    fn spend(&self, what: &str) -> Result<(), OpError> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(OpError::Injected(format!("crashed before {what}")));
        }
        Ok(())
    }
}

impl NetOps for Crashing {
    async fn enter(&self, ns: &Netns) -> Result<Self, OpError> {
        self.spend("enter")?;
        Ok(Crashing {
            inner: self.inner.enter(ns).await?,
            budget: self.budget.clone(),
        })
    }
    async fn link_index(&self, name: &str) -> Result<Option<u32>, OpError> {
        self.inner.link_index(name).await
    }
    async fn add_bridge(&self, name: &str, mtu: u32) -> Result<(), OpError> {
        self.spend("add_bridge")?;
        self.inner.add_bridge(name, mtu).await
    }
    async fn set_up(&self, index: u32) -> Result<(), OpError> {
        self.spend("set_up")?;
        self.inner.set_up(index).await
    }
    async fn add_veth(&self, spec: &VethSpec, peer_ns: &Netns) -> Result<(), OpError> {
        self.spend("add_veth")?;
        self.inner.add_veth(spec, peer_ns).await
    }
    async fn add_vxlan(&self, spec: &VxlanSpec) -> Result<(), OpError> {
        self.spend("add_vxlan")?;
        self.inner.add_vxlan(spec).await
    }
    async fn del_link(&self, name: &str) -> Result<bool, OpError> {
        self.spend("del_link")?;
        self.inner.del_link(name).await
    }
    async fn add_address(&self, index: u32, addr: Ipv4Network) -> Result<(), OpError> {
        self.spend("add_address")?;
        self.inner.add_address(index, addr).await
    }
    async fn del_address(&self, index: u32, addr: Ipv4Network) -> Result<bool, OpError> {
        self.spend("del_address")?;
        self.inner.del_address(index, addr).await
    }
    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, OpError> {
        self.inner.addresses(index).await
    }
    async fn routes(&self) -> Result<Vec<RouteEntry>, OpError> {
        self.inner.routes().await
    }
    async fn add_route(&self, route: &Route) -> Result<(), OpError> {
        self.spend("add_route")?;
        self.inner.add_route(route).await
    }
    async fn del_route(&self, route: &Route) -> Result<bool, OpError> {
        self.spend("del_route")?;
        self.inner.del_route(route).await
    }
    async fn add_neighbour(&self, dev: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), OpError> {
        self.spend("add_neighbour")?;
        self.inner.add_neighbour(dev, ip, mac).await
    }
    async fn del_neighbour(&self, dev: u32, ip: Ipv4Addr) -> Result<bool, OpError> {
        self.spend("del_neighbour")?;
        self.inner.del_neighbour(dev, ip).await
    }
    async fn add_fdb(&self, dev: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<(), OpError> {
        self.spend("add_fdb")?;
        self.inner.add_fdb(dev, mac, remote).await
    }
    async fn del_fdb(&self, dev: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<bool, OpError> {
        self.spend("del_fdb")?;
        self.inner.del_fdb(dev, mac, remote).await
    }
    async fn nft_rules(
        &self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<tug_netns::nft::RuleRef>>, OpError> {
        self.inner.nft_rules(family, table, chain).await
    }
    async fn nft(&self, batch: &Batch) -> Result<(), OpError> {
        self.spend("nft")?;
        self.inner.nft(batch).await
    }
    async fn nft_list_chains(&self, family: u8, table: &str) -> Result<Vec<String>, OpError> {
        self.inner.nft_list_chains(family, table).await
    }
    async fn nft_set_len(&self, family: u8, table: &str, set: &str) -> Result<usize, OpError> {
        self.inner.nft_set_len(family, table, set).await
    }
    async fn drop_unreplied(
        &self,
        endpoints: &[(tug_netns::Protocol, std::net::SocketAddrV4)],
    ) -> Result<usize, OpError> {
        self.spend("drop_unreplied")?;
        self.inner.drop_unreplied(endpoints).await
    }
    async fn sysctl(&self, key: &str, value: &str) -> Result<(), OpError> {
        self.spend("sysctl")?;
        self.inner.sysctl(key, value).await
    }
}

#[test]
fn detach_cleans_up_after_an_attach_that_died_at_any_step() {
    need_root!();
    let watch = RootWatch::new();
    let data = tempfile::tempdir().unwrap();
    let host = Ns::new("crashhost");
    let cfg = NetworkConfig::new("crash", "10.67.0.0/24".parse().unwrap(), data.path());
    let c = cfg.clone();
    let container = Ns::new("crashc");
    let cref = container.reference();
    let table = tug_netns::firewall::table_name("crash");
    let steps = host.block_on(move || async move {
        let budget = Arc::new(AtomicIsize::new(isize::MAX));
        let ops = Crashing {
            inner: Rtnl::current().unwrap(),
            budget: budget.clone(),
        };
        let crashing = Network::open_with(ops, c.clone()).await.unwrap();
        let real = Network::open(c).await.unwrap();
        let mut req = AttachRequest::new("victim", cref);
        req.ports = vec![PortMapping {
            protocol: Protocol::Tcp,
            host_port: 8080,
            container_port: 80,
        }];
        let mut steps = 0;
        for k in 0.. {
            budget.store(k, Ordering::SeqCst);
            let done = crashing.attach(&req).await.is_ok();
            // The process "restarts": a fresh Network, real operations.
            real.detach("victim").await.unwrap();
            let left = (
                real.ops()
                    .link_index(&tug_netns::network::host_veth_name("crash", "victim"))
                    .await,
                real.ops().nft_chains(&table).unwrap().len(),
                real.ops().nft_element_count(&table, "tcp-ports").unwrap(),
                real.attachments().unwrap().len(),
            );
            assert!(
                // prerouting, output, postrouting, ports, peers: no container chain
                matches!(left, (Ok(None), 5, 0, 0)),
                "after a crash at step {k}: {left:?}"
            );
            if done {
                steps = k;
                break;
            }
        }
        real.teardown().await.unwrap();
        steps
    });
    assert!(
        steps >= 7,
        "attach has at least 7 kernel steps, saw {steps}"
    );
    assert!(container.links_of_kind("veth").is_empty());
    assert_eq!(
        container.addresses().lines().count(),
        1,
        "only lo's address is left"
    );
    watch.check();
}
