//! Reaching other hosts' containers.
//!
//! * host-gw: a route to the peer's container subnet via the peer's host address. Needs the
//!   hosts on one link (the peer address is a direct neighbour).
//! * VXLAN: when hosts do not share a link. One VXLAN device per network (`tvx<hash>`,
//!   learning off). Each host's VTEP has the address `<its subnet's network address>/32`
//!   and a MAC derived from its subnet, so a peer is fully described by its subnet and its
//!   host address: route `peer_subnet via peer_vtep_ip dev tvx onlink`, a permanent ARP
//!   entry `peer_vtep_ip -> peer_vtep_mac`, and an FDB entry `peer_vtep_mac -> peer_host`.
//!   No flooding, no multicast, no learning.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::network::{Network, NetworkError};
use crate::ops::{NetOps, Route, VxlanSpec};

/// Another host: its container subnet and the address its traffic is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub host_addr: Ipv4Addr,
}

/// The overlay of a network on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanConfig {
    pub vni: u32,
    /// This host's underlay address (the tunnel's source).
    pub local: Ipv4Addr,
    /// UDP port (4789 is the IANA port).
    pub port: u16,
    /// MTU of the VXLAN device: the underlay's minus 50.
    pub mtu: u32,
}

impl VxlanConfig {
    pub fn new(vni: u32, local: Ipv4Addr) -> Self {
        VxlanConfig {
            vni,
            local,
            port: 4789,
            mtu: 1450,
        }
    }
}

/// The VXLAN device name of a network (at most 15 characters).
pub fn vxlan_name(network: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in network.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("tvx{h:08x}")
}

/// The VTEP MAC of the host whose container subnet is `subnet`.
pub fn vtep_mac(subnet: Ipv4Network) -> [u8; 6] {
    let o = subnet.network().octets();
    [0x0e, 0x75, o[0], o[1], o[2], o[3]]
}

/// The VTEP address of the host whose container subnet is `subnet`.
pub fn vtep_ip(subnet: Ipv4Network) -> Ipv4Addr {
    subnet.network()
}

fn host_route(peer: &Peer) -> Route {
    Route {
        destination: peer.subnet,
        gateway: Some(peer.host_addr),
        dev: None,
        onlink: false,
    }
}

impl<N: NetOps> Network<N> {
    fn peer_err(&self, step: String) -> impl FnOnce(crate::ops::OpError) -> NetworkError + '_ {
        move |source| NetworkError::Op {
            network: self.config().name.clone(),
            step,
            source,
        }
    }

    fn check_peer(&self, peer: &Peer) -> Result<(), NetworkError> {
        if peer.subnet.overlaps(self.config().subnet) {
            return Err(NetworkError::SubnetOverlap {
                network: self.config().name.clone(),
                subnet: self.config().subnet,
                other: format!("peer {}", peer.host_addr),
                other_subnet: peer.subnet,
            });
        }
        Ok(())
    }

    /// host-gw: routes `peer.subnet` via `peer.host_addr`. Idempotent.
    pub async fn add_host_gw_peer(&self, peer: &Peer) -> Result<(), NetworkError> {
        self.check_peer(peer)?;
        self.ops()
            .add_route(&host_route(peer))
            .await
            .map_err(self.peer_err(format!("route {} via {}", peer.subnet, peer.host_addr)))
    }

    /// Removes a host-gw route; succeeds if it is already gone.
    pub async fn remove_host_gw_peer(&self, peer: &Peer) -> Result<(), NetworkError> {
        self.ops()
            .del_route(&host_route(peer))
            .await
            .map(|_| ())
            .map_err(self.peer_err(format!("delete route {}", peer.subnet)))
    }

    /// Creates (or finds) this network's VXLAN device and gives it this host's VTEP
    /// address. Returns its interface index.
    pub async fn ensure_overlay(&self, vx: &VxlanConfig) -> Result<u32, NetworkError> {
        let name = vxlan_name(&self.config().name);
        let subnet = self.config().subnet;
        if self
            .ops()
            .link_index(&name)
            .await
            .map_err(self.peer_err(format!("find {name}")))?
            .is_none()
        {
            let spec = VxlanSpec {
                name: name.clone(),
                vni: vx.vni,
                local: vx.local,
                port: vx.port,
                mtu: vx.mtu,
                mac: vtep_mac(subnet),
            };
            self.ops()
                .add_vxlan(&spec)
                .await
                .map_err(self.peer_err(format!("create {name}")))?;
        }
        let index = self
            .ops()
            .link_index(&name)
            .await
            .map_err(self.peer_err(format!("find {name}")))?
            .ok_or_else(|| NetworkError::Broken {
                container: String::new(),
                problem: format!("{name} vanished after creation"),
            })?;
        let addr = Ipv4Network::new(vtep_ip(subnet), 32).expect("/32");
        self.ops()
            .add_address(index, addr)
            .await
            .map_err(self.peer_err(format!("address {addr} on {name}")))?;
        Ok(index)
    }

    async fn overlay_index(&self) -> Result<u32, NetworkError> {
        let name = vxlan_name(&self.config().name);
        self.ops()
            .link_index(&name)
            .await
            .map_err(self.peer_err(format!("find {name}")))?
            .ok_or_else(|| NetworkError::InvalidConfig {
                network: self.config().name.clone(),
                reason: format!("no overlay device {name}: call ensure_overlay first"),
            })
    }

    /// VXLAN: reach `peer.subnet` through the overlay. Idempotent.
    pub async fn add_overlay_peer(&self, peer: &Peer) -> Result<(), NetworkError> {
        self.check_peer(peer)?;
        let dev = self.overlay_index().await?;
        let mac = vtep_mac(peer.subnet);
        let gw = vtep_ip(peer.subnet);
        self.ops()
            .add_fdb(dev, mac, peer.host_addr)
            .await
            .map_err(self.peer_err(format!("fdb entry for {}", peer.host_addr)))?;
        self.ops()
            .add_neighbour(dev, gw, mac)
            .await
            .map_err(self.peer_err(format!("neighbour {gw}")))?;
        let route = Route {
            destination: peer.subnet,
            gateway: Some(gw),
            dev: Some(dev),
            onlink: true,
        };
        self.ops()
            .add_route(&route)
            .await
            .map_err(self.peer_err(format!("route {} via overlay", peer.subnet)))
    }

    /// Removes what [`Network::add_overlay_peer`] added; succeeds if it is already gone.
    pub async fn remove_overlay_peer(&self, peer: &Peer) -> Result<(), NetworkError> {
        let name = vxlan_name(&self.config().name);
        let Some(dev) = self
            .ops()
            .link_index(&name)
            .await
            .map_err(self.peer_err(format!("find {name}")))?
        else {
            return Ok(());
        };
        let gw = vtep_ip(peer.subnet);
        let route = Route {
            destination: peer.subnet,
            gateway: Some(gw),
            dev: Some(dev),
            onlink: true,
        };
        self.ops()
            .del_route(&route)
            .await
            .map_err(self.peer_err(format!("delete route {}", peer.subnet)))?;
        self.ops()
            .del_neighbour(dev, gw)
            .await
            .map_err(self.peer_err(format!("delete neighbour {gw}")))?;
        self.ops()
            .del_fdb(dev, vtep_mac(peer.subnet), peer.host_addr)
            .await
            .map_err(self.peer_err(format!("delete fdb entry {}", peer.host_addr)))?;
        Ok(())
    }
}

/// How to reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    HostGw,
    Vxlan,
}

/// How [`Network::set_peers`] chooses the link for each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    HostGw,
    Vxlan(VxlanConfig),
    /// host-gw for peers whose host address is on a directly connected subnet, VXLAN for
    /// the others.
    Auto(VxlanConfig),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PeerFile {
    peers: Vec<(Peer, Link)>,
}

impl<N: NetOps> Network<N> {
    fn peers_path(&self) -> std::path::PathBuf {
        self.config()
            .data_dir
            .join(&self.config().name)
            .join("peers.json")
    }

    fn read_peers(&self) -> PeerFile {
        std::fs::read(self.peers_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_peers(&self, file: &PeerFile) -> Result<(), NetworkError> {
        let path = self.peers_path();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(file).expect("peers serialise");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| NetworkError::Alloc {
                network: self.config().name.clone(),
                source: crate::alloc::AllocError::Io {
                    action: "write",
                    path,
                    source,
                },
            })
    }

    /// host-gw when `host_addr` is on a directly connected subnet of this host (a route
    /// without a gateway covers it), VXLAN otherwise.
    pub async fn link_for(&self, peer: &Peer) -> Result<Link, NetworkError> {
        let routes = self
            .ops()
            .routes()
            .await
            .map_err(self.peer_err("list routes".into()))?;
        let direct = routes.iter().any(|r| {
            r.destination.prefix() > 0
                && r.gateway.is_none()
                && r.destination.contains(peer.host_addr)
                && r.dev != Some(self.bridge_index())
        });
        Ok(if direct { Link::HostGw } else { Link::Vxlan })
    }

    /// Makes this host reach exactly `peers`: adds what is missing, removes peers (or
    /// links) set before and no longer wanted. The set is remembered in the network's data
    /// dir, so this is the one call an agent repeats whenever the node list changes.
    pub async fn set_peers(
        &self,
        peers: &[Peer],
        mode: &PeerMode,
    ) -> Result<Vec<(Peer, Link)>, NetworkError> {
        let mut wanted = Vec::with_capacity(peers.len());
        for p in peers {
            self.check_peer(p)?;
            let link = match mode {
                PeerMode::HostGw => Link::HostGw,
                PeerMode::Vxlan(_) => Link::Vxlan,
                PeerMode::Auto(_) => self.link_for(p).await?,
            };
            wanted.push((*p, link));
        }
        let before = self.read_peers();
        for (p, link) in &before.peers {
            if !wanted.contains(&(*p, *link)) {
                match link {
                    Link::HostGw => self.remove_host_gw_peer(p).await?,
                    Link::Vxlan => self.remove_overlay_peer(p).await?,
                }
            }
        }
        if wanted.iter().any(|(_, l)| *l == Link::Vxlan) {
            let vx = match mode {
                PeerMode::Vxlan(v) | PeerMode::Auto(v) => v,
                PeerMode::HostGw => unreachable!("host-gw mode chose no VXLAN peer"),
            };
            self.ensure_overlay(vx).await?;
        }
        for (p, link) in &wanted {
            match link {
                Link::HostGw => self.add_host_gw_peer(p).await?,
                Link::Vxlan => self.add_overlay_peer(p).await?,
            }
        }
        self.write_peers(&PeerFile {
            peers: wanted.clone(),
        })?;
        self.set_unmasqueraded_peers().await?;
        Ok(wanted)
    }

    /// Keeps the peers' container subnets out of the masquerade (the NAT table's `peers`
    /// chain), so containers keep their addresses on other nodes, where network policy
    /// matches on them. From the peers record.
    pub(crate) async fn set_unmasqueraded_peers(&self) -> Result<(), NetworkError> {
        let subnets: Vec<Ipv4Network> = self
            .read_peers()
            .peers
            .iter()
            .map(|(p, _)| p.subnet)
            .collect();
        let batch = crate::firewall::set_peer_subnets(&self.fw, &subnets);
        if batch.ops.is_empty() {
            return Ok(());
        }
        self.ops()
            .nft(&batch)
            .await
            .map_err(self.peer_err("keep other nodes' subnets unmasqueraded".into()))
    }

    /// Removes the host-gw routes set by [`Network::set_peers`] (VXLAN routes go with the
    /// overlay device). Used by teardown.
    pub(crate) async fn clear_peers(&self) -> Result<(), NetworkError> {
        for (p, link) in self.read_peers().peers {
            if link == Link::HostGw {
                self.remove_host_gw_peer(&p).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, Recorder};
    use crate::ops::RouteEntry;
    use crate::NetworkConfig;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn peer(i: u8, host: [u8; 4]) -> Peer {
        Peer {
            subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            host_addr: host.into(),
        }
    }

    #[test]
    fn auto_uses_host_gw_on_a_shared_link_and_vxlan_beyond_it() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        fake.set_routes(vec![
            RouteEntry {
                destination: "0.0.0.0/0".parse().unwrap(),
                gateway: Some([192, 168, 1, 254].into()),
                dev: Some(9),
            },
            RouteEntry {
                destination: "192.168.1.0/24".parse().unwrap(),
                gateway: None,
                dev: Some(9),
            },
        ]);
        let cfg = NetworkConfig::new("n", "10.244.1.0/24".parse().unwrap(), d.path());
        let net = rt()
            .block_on(Network::open_with(fake.clone(), cfg))
            .unwrap();
        let near = peer(2, [192, 168, 1, 2]);
        let far = peer(3, [172, 16, 0, 3]);
        let vx = VxlanConfig::new(7, [192, 168, 1, 1].into());
        fake.clear_log();
        let got = rt()
            .block_on(net.set_peers(&[near, far], &PeerMode::Auto(vx)))
            .unwrap();
        assert_eq!(got, vec![(near, Link::HostGw), (far, Link::Vxlan)]);
        let calls = fake.calls();
        assert!(calls.contains(&Call::AddVxlan(vxlan_name("n"))));
        assert!(calls.contains(&Call::AddFdb([172, 16, 0, 3].into())));
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::AddRoute(r) if r.gateway == Some([192, 168, 1, 2].into()))));

        // Dropping a peer removes it, and only it; repeating is a no-op apart from re-adds.
        fake.clear_log();
        rt().block_on(net.set_peers(&[far], &PeerMode::Auto(vx)))
            .unwrap();
        let calls = fake.calls();
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::DelRoute(r) if r.destination == near.subnet)));
        assert!(!calls.iter().any(|c| matches!(c, Call::DelFdb(_))));
    }

    #[test]
    fn a_peer_overlapping_our_subnet_is_refused_before_any_change() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        let cfg = NetworkConfig::new("n", "10.244.1.0/24".parse().unwrap(), d.path());
        let net = rt()
            .block_on(Network::open_with(fake.clone(), cfg))
            .unwrap();
        fake.clear_log();
        let bad = Peer {
            subnet: "10.244.0.0/16".parse().unwrap(),
            host_addr: [192, 168, 1, 2].into(),
        };
        let e = rt()
            .block_on(net.set_peers(&[peer(2, [192, 168, 1, 2]), bad], &PeerMode::HostGw))
            .unwrap_err();
        assert!(e.to_string().contains("10.244.0.0/16"), "{e}");
        assert!(fake.calls().is_empty());
    }
}
