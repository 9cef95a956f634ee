//! A host's network: its bridge and subnet, and containers attached to it.
//!
//! Every public step is idempotent and ordered so that a crash at any point leaves a record
//! the next call can follow: the lease is written before any kernel object is made, and
//! detach removes whatever of a lease's objects exist.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::alloc::{AllocError, Allocator, Lease};
use crate::firewall::{self, FirewallSpec};
use crate::ops::{NetOps, Netns, NetnsRef, OpError, Route, VethSpec};
use crate::rtnl::Rtnl;
use crate::PortMapping;

mod attach;
mod policy;
mod services;
pub use self::policy::recorded_policy;
pub use self::services::recorded_services;
#[cfg(test)]
mod tests;

/// A network on one host: one bridge, one subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Letters, digits, '-' and '_'; at most 32 characters.
    pub name: String,
    /// Bridge interface name (at most 15 characters).
    pub bridge: String,
    /// The subnet of this host's containers.
    pub subnet: Ipv4Network,
    /// The bridge's address and the containers' default gateway; the subnet's first host
    /// address when not given.
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    /// Masquerade traffic leaving the host (on by default).
    pub masquerade: bool,
    /// Destinations never masqueraded: other hosts' container subnets (cross-host traffic
    /// keeps container addresses).
    pub cluster_cidr: Option<Ipv4Network>,
    /// Where leases and network state are kept.
    pub data_dir: PathBuf,
}

impl NetworkConfig {
    /// Defaults: bridge `tug-<name>` (cut to 15 characters), MTU 1500, masquerade on.
    pub fn new(name: &str, subnet: Ipv4Network, data_dir: impl Into<PathBuf>) -> Self {
        let mut bridge = format!("tug-{name}");
        bridge.truncate(15);
        NetworkConfig {
            name: name.to_string(),
            bridge,
            subnet,
            gateway: None,
            mtu: 1500,
            masquerade: true,
            cluster_cidr: None,
            data_dir: data_dir.into(),
        }
    }

    /// The gateway address (explicit or the subnet's first host).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.subnet.network()) + 1))
    }
}

/// What to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub netns: NetnsRef,
    /// Interface name inside the container (default `eth0`).
    pub ifname: String,
    /// A fixed address; the allocator picks one when `None`.
    pub ip: Option<Ipv4Addr>,
    /// A fixed MAC; derived from the address when `None` (stable across re-attaches).
    pub mac: Option<[u8; 6]>,
    pub ports: Vec<PortMapping>,
}

impl AttachRequest {
    pub fn new(container_id: &str, netns: NetnsRef) -> Self {
        AttachRequest {
            container_id: container_id.to_string(),
            netns,
            ifname: "eth0".into(),
            ip: None,
            mac: None,
            ports: Vec::new(),
        }
    }
}

/// A container's place on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    /// Address and prefix length inside the container.
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub ifname: String,
    pub host_veth: String,
    pub ports: Vec<PortMapping>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {network}: invalid configuration: {reason}")]
    InvalidConfig { network: String, reason: String },
    #[error("network {network}: subnet {subnet} overlaps {other_subnet} of {other}")]
    SubnetOverlap {
        network: String,
        subnet: Ipv4Network,
        other: String,
        other_subnet: Ipv4Network,
    },
    #[error("network {network}: {source}")]
    Alloc {
        network: String,
        #[source]
        source: AllocError,
    },
    #[error("network {network}: {step}: {source}")]
    Op {
        network: String,
        step: String,
        #[source]
        source: OpError,
    },
    #[error("container {container}: {source}")]
    Netns {
        container: String,
        #[source]
        source: OpError,
    },
    #[error("container {container}: invalid request: {reason}")]
    InvalidRequest { container: String, reason: String },
    #[error(
        "{protocol:?} port {port} is already published by container {holder} (network {network})"
    )]
    PortInUse {
        protocol: crate::Protocol,
        port: u16,
        holder: String,
        network: String,
    },
    #[error("network {network}: {source}")]
    InvalidService {
        network: String,
        #[source]
        source: crate::services::InvalidService,
    },
    #[error("container {container} is not attached to network {network}")]
    NotAttached { container: String, network: String },
    #[error("container {container}: {problem}")]
    Broken { container: String, problem: String },
    #[error("{cause}; cleanup could not undo: {}", leftovers.join("; "))]
    CleanupFailed {
        cause: Box<NetworkError>,
        leftovers: Vec<String>,
    },
}

/// Saved next to the leases: lets other networks check overlap, and teardown know whether
/// the bridge was ours to delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NetworkRecord {
    config: NetworkConfig,
    created_bridge: bool,
}

/// FNV-1a, stable across processes and Rust versions.
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// The host end's name for a container on a network: `tv` + 12 hex digits.
pub fn host_veth_name(network: &str, container_id: &str) -> String {
    format!(
        "tv{:012x}",
        fnv64(&[network, container_id]) & 0xffff_ffff_ffff
    )
}

/// A locally administered MAC derived from an address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ' ', ':']) && s != "." && s != ".."
}

/// One network on this host, bound to the namespace its [`NetOps`] act in.
pub struct Network<N: NetOps = Rtnl> {
    cfg: NetworkConfig,
    gateway: Ipv4Addr,
    ops: N,
    alloc: Allocator,
    pub(crate) fw: FirewallSpec,
    svc: crate::services::ServicesTable,
    bridge_index: u32,
}

impl Network<Rtnl> {
    /// Creates or adopts the network in the calling thread's network namespace. Needs a
    /// tokio runtime.
    pub async fn open(cfg: NetworkConfig) -> Result<Self, NetworkError> {
        let ops = Rtnl::current().map_err(|source| NetworkError::Op {
            network: cfg.name.clone(),
            step: "open netlink".into(),
            source,
        })?;
        Network::open_with(ops, cfg).await
    }
}

impl<N: NetOps> Network<N> {
    fn op_err(&self, step: impl Into<String>) -> impl FnOnce(OpError) -> NetworkError + '_ {
        let step = step.into();
        move |source| NetworkError::Op {
            network: self.cfg.name.clone(),
            step,
            source,
        }
    }

    fn alloc_err(&self) -> impl FnOnce(AllocError) -> NetworkError + '_ {
        move |source| NetworkError::Alloc {
            network: self.cfg.name.clone(),
            source,
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    pub fn ops(&self) -> &N {
        &self.ops
    }

    pub fn bridge_index(&self) -> u32 {
        self.bridge_index
    }

    /// Creates the bridge if missing (adopts it if present), gives it the gateway address,
    /// turns on forwarding and installs the network's NAT table. Idempotent.
    pub async fn open_with(ops: N, cfg: NetworkConfig) -> Result<Self, NetworkError> {
        let invalid = |reason: String| NetworkError::InvalidConfig {
            network: cfg.name.clone(),
            reason,
        };
        if !valid_name(&cfg.name) {
            return Err(invalid(format!(
                "name {:?} must be 1-32 letters, digits, '-' or '_'",
                cfg.name
            )));
        }
        if !valid_ifname(&cfg.bridge) {
            return Err(invalid(format!(
                "bridge name {:?} must be 1-15 characters",
                cfg.bridge
            )));
        }
        if cfg.subnet.prefix() > 30 {
            return Err(invalid(format!(
                "subnet {} leaves no room for containers",
                cfg.subnet
            )));
        }
        if cfg.subnet.network() != cfg.subnet.ip() {
            return Err(invalid(format!(
                "subnet {} has host bits set (did you mean {}/{}?)",
                cfg.subnet,
                cfg.subnet.network(),
                cfg.subnet.prefix()
            )));
        }
        let gateway = cfg.gateway();
        if !cfg.subnet.contains(gateway)
            || gateway == cfg.subnet.network()
            || gateway == cfg.subnet.broadcast()
        {
            return Err(invalid(format!(
                "gateway {gateway} is not a host address of {}",
                cfg.subnet
            )));
        }
        if !(576..=65535).contains(&cfg.mtu) {
            return Err(invalid(format!("mtu {} is out of range", cfg.mtu)));
        }
        let state_dir = cfg.data_dir.join(&cfg.name);
        let new_state_dir = !state_dir.exists();
        let alloc =
            Allocator::new(&cfg.data_dir, &cfg.name, cfg.subnet, gateway).map_err(|source| {
                NetworkError::Alloc {
                    network: cfg.name.clone(),
                    source,
                }
            })?;
        let fw = FirewallSpec {
            table: firewall::table_name(&cfg.name),
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet,
            masquerade: cfg.masquerade,
            cluster_cidr: cfg.cluster_cidr,
        };
        let svc = crate::services::ServicesTable {
            table: crate::services::table_name(&cfg.name),
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet,
        };
        let mut net = Network {
            cfg,
            gateway,
            ops,
            alloc,
            fw,
            svc,
            bridge_index: 0,
        };
        let checked = async {
            net.check_overlap_with_networks()?;
            let existing = net
                .ops
                .link_index(&net.cfg.bridge)
                .await
                .map_err(net.op_err("find bridge"))?;
            net.check_overlap_with_routes(existing).await?;
            Ok(existing)
        }
        .await;
        let existing = match checked {
            Ok(existing) => existing,
            Err(e) => {
                // Refused before anything was made: leave no empty state dir behind either.
                if new_state_dir {
                    let _ = std::fs::remove_dir_all(&state_dir);
                }
                return Err(e);
            }
        };
        let created_now = match existing {
            Some(_) => false,
            None => {
                let bridge = net.cfg.bridge.clone();
                match net.ops.add_bridge(&bridge, net.cfg.mtu).await {
                    Ok(()) => true,
                    // Another process (agent and CNI plugin at once) made it first.
                    Err(e) if e.errno() == Some(libc::EEXIST) => false,
                    Err(e) => return Err(net.op_err(format!("create bridge {bridge}"))(e)),
                }
            }
        };
        // Once tug made the bridge, teardown may delete it, whoever opens the network later.
        let created_bridge = created_now || net.read_record().is_some_and(|r| r.created_bridge);
        net.write_record(created_bridge)?;
        let bridge = net.cfg.bridge.clone();
        let index = net
            .ops
            .link_index(&bridge)
            .await
            .map_err(net.op_err("find bridge"))?
            .ok_or_else(|| NetworkError::Broken {
                container: String::new(),
                problem: format!("bridge {bridge} vanished after creation"),
            })?;
        net.bridge_index = index;
        if existing.is_some() {
            net.ops
                .set_up(index)
                .await
                .map_err(net.op_err(format!("set {bridge} up")))?;
        }
        let gw = Ipv4Network::new(gateway, net.cfg.subnet.prefix()).expect("prefix checked");
        net.ops
            .add_address(index, gw)
            .await
            .map_err(net.op_err(format!("address {gw} on {bridge}")))?;
        net.ops
            .sysctl("ipv4/ip_forward", "1")
            .await
            .map_err(net.op_err("enable forwarding"))?;
        net.ops
            .sysctl(&format!("ipv4/conf/{bridge}/route_localnet"), "1")
            .await
            .map_err(net.op_err("allow published ports on 127.0.0.1"))?;
        // The NAT table, rebuilt from the leases (after a reboot it is gone; after a crash
        // it may hold a half-published container). Under the lock, so no attach in another
        // process publishes in between.
        {
            let book = net.alloc.lock().map_err(net.alloc_err())?;
            let published = published(book.leases());
            net.ops
                .nft(&firewall::resync(&net.fw, &published))
                .await
                .map_err(net.op_err("install nat rules"))?;
            net.set_unmasqueraded_peers().await?;
            // Services the same way: the kernel again matches the record.
            net.resync_services().await?;
            net.resync_policy().await?;
        }
        net.ensure_forward_accept().await?;
        Ok(net)
    }

    /// On a host whose iptables FORWARD chain exists in nftables (iptables-nft; Docker sets
    /// its policy to DROP), makes sure it accepts this bridge's traffic: two tagged rules at
    /// its start. `Ok(false)` when there is no such chain (nothing to do). Idempotent; call it
    /// again when Docker (or a firewall) may have created the chain since the network opened.
    pub async fn ensure_forward_accept(&self) -> Result<bool, NetworkError> {
        let Some(rules) = self
            .ops
            .nft_rules(
                crate::nft::FAMILY_IPV4,
                crate::forward::FILTER_TABLE,
                crate::forward::FORWARD_CHAIN,
            )
            .await
            .map_err(self.op_err("read the iptables FORWARD chain"))?
        else {
            return Ok(false);
        };
        let batch = crate::forward::ensure(&rules, &self.cfg.name, &self.cfg.bridge);
        self.ops
            .nft(&batch)
            .await
            .map_err(self.op_err("accept the bridge in the iptables FORWARD chain"))?;
        Ok(true)
    }

    /// Takes this network's accept rules out of the iptables FORWARD chain (teardown).
    pub async fn remove_forward_accept(&self) -> Result<(), NetworkError> {
        let rules = self
            .ops
            .nft_rules(
                crate::nft::FAMILY_IPV4,
                crate::forward::FILTER_TABLE,
                crate::forward::FORWARD_CHAIN,
            )
            .await
            .map_err(self.op_err("read the iptables FORWARD chain"))?;
        if let Some(rules) = rules {
            self.ops
                .nft(&crate::forward::remove(&rules, &self.cfg.name))
                .await
                .map_err(self.op_err("remove accept rules from the iptables FORWARD chain"))?;
        }
        Ok(())
    }

    fn record_path(&self) -> PathBuf {
        self.cfg.data_dir.join(&self.cfg.name).join("network.json")
    }

    fn read_record(&self) -> Option<NetworkRecord> {
        read_record(&self.record_path())
    }

    fn write_record(&self, created_bridge: bool) -> Result<(), NetworkError> {
        let rec = NetworkRecord {
            config: self.cfg.clone(),
            created_bridge,
        };
        let path = self.record_path();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&rec).expect("record serialises");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| NetworkError::Alloc {
                network: self.cfg.name.clone(),
                source: AllocError::Io {
                    action: "write",
                    path,
                    source,
                },
            })
    }

    /// Other networks under the same data dir, with their records.
    fn sibling_records(&self) -> Vec<NetworkRecord> {
        let Ok(dir) = std::fs::read_dir(&self.cfg.data_dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy() != self.cfg.name.as_str())
            .filter_map(|e| read_record(&e.path().join("network.json")))
            .collect()
    }

    fn check_overlap_with_networks(&self) -> Result<(), NetworkError> {
        for rec in self.sibling_records() {
            let other = rec.config.subnet;
            if other.overlaps(self.cfg.subnet) {
                return Err(NetworkError::SubnetOverlap {
                    network: self.cfg.name.clone(),
                    subnet: self.cfg.subnet,
                    other: format!("network {}", rec.config.name),
                    other_subnet: other,
                });
            }
        }
        Ok(())
    }

    async fn check_overlap_with_routes(&self, bridge: Option<u32>) -> Result<(), NetworkError> {
        let routes = self
            .ops
            .routes()
            .await
            .map_err(self.op_err("list routes"))?;
        for r in routes {
            let (dst, oif) = (r.destination, r.dev);
            if dst.prefix() == 0 || (bridge.is_some() && oif == bridge) {
                continue;
            }
            if dst.overlaps(self.cfg.subnet) {
                return Err(NetworkError::SubnetOverlap {
                    network: self.cfg.name.clone(),
                    subnet: self.cfg.subnet,
                    other: format!("an existing route (interface index {})", oif.unwrap_or(0)),
                    other_subnet: dst,
                });
            }
        }
        Ok(())
    }

    /// Removes the whole network from the host: containers' veths, NAT table, overlay
    /// device, the bridge (when this network created it) and its state. Idempotent.
    pub async fn teardown(self) -> Result<(), NetworkError> {
        let leases = self.alloc.snapshot().map_err(self.alloc_err())?;
        for (id, l) in &leases {
            let name = if l.host_veth.is_empty() {
                host_veth_name(&self.cfg.name, id)
            } else {
                l.host_veth.clone()
            };
            self.ops
                .del_link(&name)
                .await
                .map_err(self.op_err(format!("delete veth {name}")))?;
        }
        match self.ops.nft(&firewall::teardown(&self.fw)).await {
            Err(e) if e.errno() != Some(libc::ENOENT) => {
                return Err(self.op_err("delete nat table")(e));
            }
            _ => {}
        }
        self.clear_services().await?;
        self.clear_policy().await?;
        self.remove_forward_accept().await?;
        self.clear_peers().await?;
        let vx = crate::peers::vxlan_name(&self.cfg.name);
        self.ops
            .del_link(&vx)
            .await
            .map_err(self.op_err(format!("delete {vx}")))?;
        let created = self.read_record().map(|r| r.created_bridge).unwrap_or(true);
        if created {
            let b = self.cfg.bridge.clone();
            self.ops
                .del_link(&b)
                .await
                .map_err(self.op_err(format!("delete bridge {b}")))?;
        }
        self.alloc.remove().map_err(self.alloc_err())?;
        Ok(())
    }
}

fn read_record(path: &Path) -> Option<NetworkRecord> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn published(leases: &std::collections::BTreeMap<String, Lease>) -> Vec<firewall::Published> {
    leases
        .iter()
        .filter(|(_, l)| !l.ports.is_empty())
        // attach writes ports and host_veth in the same lease update
        .map(|(_, l)| firewall::Published {
            host_veth: l.host_veth.clone(),
            ip: l.ip,
            ports: l.ports.clone(),
        })
        .collect()
}
