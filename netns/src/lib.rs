//! tug-netns: container networking through netlink.
//!
//! [`Network`] is one bridge and subnet on a host; [`Network::attach`] gives a container a
//! veth pair, an address from the on-disk [`alloc::Allocator`], a default route and its
//! published ports; [`Network::detach`] takes them away. Cross-host reachability is in
//! [`peers`]. Everything goes through netlink ([`rtnl::Rtnl`]); the [`ops::NetOps`] trait
//! has a recording fake ([`fake::Recorder`]) for tests without root.
pub mod alloc;
pub mod cni;
pub mod fake;
pub mod firewall;
pub mod forward;
pub mod network;
pub mod nft;
pub mod ops;
pub mod peers;
pub mod policy;
pub mod rtnl;
pub mod services;

pub use network::{AttachRequest, Attachment, Network, NetworkConfig, NetworkError};
pub use ops::NetnsRef;
pub use peers::{Link, Peer, PeerMode, VxlanConfig};
pub use policy::{InstancePolicy, Peers, Policy, PolicyRule};
pub use services::{Frontend, ServiceKey, ServiceSpec};

use serde::{Deserialize, Serialize};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// A host port forwarded to a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
}
