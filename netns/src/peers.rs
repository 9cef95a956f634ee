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
