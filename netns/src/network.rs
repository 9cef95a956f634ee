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
    fw: FirewallSpec,
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
        let mut net = Network {
            cfg,
            gateway,
            ops,
            alloc,
            fw,
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
        }
        Ok(net)
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

    fn attachment(&self, id: &str, lease: &Lease, mac: Option<[u8; 6]>) -> Attachment {
        Attachment {
            container_id: id.to_string(),
            address: Ipv4Network::new(lease.ip, self.cfg.subnet.prefix()).expect("prefix"),
            gateway: self.gateway,
            mac: mac.unwrap_or_else(|| mac_for(lease.ip)),
            ifname: lease.ifname.clone(),
            host_veth: lease.host_veth.clone(),
            ports: lease.ports.clone(),
        }
    }

    fn validate(&self, req: &AttachRequest) -> Result<(), NetworkError> {
        let bad = |reason: String| NetworkError::InvalidRequest {
            container: req.container_id.clone(),
            reason,
        };
        if req.container_id.is_empty() || req.container_id.len() > 256 {
            return Err(bad("container id must be 1-256 characters".into()));
        }
        if !valid_ifname(&req.ifname) {
            return Err(bad(format!(
                "interface name {:?} must be 1-15 characters",
                req.ifname
            )));
        }
        for (i, p) in req.ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(bad(format!("port mapping {p:?} uses port 0")));
            }
            if req.ports[..i]
                .iter()
                .any(|q| q.protocol == p.protocol && q.host_port == p.host_port)
            {
                return Err(bad(format!(
                    "{:?} host port {} listed twice",
                    p.protocol, p.host_port
                )));
            }
        }
        if let Some(mac) = req.mac {
            if mac[0] & 1 == 1 || mac == [0; 6] {
                return Err(bad("mac must be a unicast, non-zero address".into()));
            }
        }
        Ok(())
    }

    /// Ports published by containers of other networks under the same data dir.
    fn ports_elsewhere(&self) -> Vec<(PortMapping, String, String)> {
        let mut out = Vec::new();
        for rec in self.sibling_records() {
            let a = Allocator::new(
                &rec.config.data_dir,
                &rec.config.name,
                rec.config.subnet,
                rec.config.gateway(),
            );
            if let Ok(leases) = a.and_then(|a| a.snapshot()) {
                for (id, l) in leases {
                    for p in l.ports {
                        out.push((p, id.clone(), rec.config.name.clone()));
                    }
                }
            }
        }
        out
    }

    /// Gives a container its network: a veth pair (host end on the bridge, the other end in
    /// the container's namespace as `ifname`), an address, `lo` up, a default route via the
    /// bridge, and its published ports. On error nothing of it is left behind (what could
    /// not be undone is named in [`NetworkError::CleanupFailed`]).
    ///
    /// Attaching a container that is already attached returns its attachment.
    pub async fn attach(&self, req: &AttachRequest) -> Result<Attachment, NetworkError> {
        self.validate(req)?;
        let ns = Netns::open(&req.netns).map_err(|source| NetworkError::Netns {
            container: req.container_id.clone(),
            source,
        })?;
        let id = req.container_id.as_str();
        let host_veth = host_veth_name(&self.cfg.name, id);
        let mut book = self.alloc.lock().map_err(self.alloc_err())?;
        let mut previous_ip = None;
        if let Some(lease) = book.get(id).cloned() {
            if self
                .ops
                .link_index(&lease.host_veth)
                .await
                .map_err(self.op_err("find veth"))?
                .is_some()
            {
                return Ok(self.attachment(id, &lease, req.mac));
            }
            // A lease without its veth: an attach that crashed half-way, or a container
            // whose namespace died (taking the veth with it) and is now restarted. Start
            // again, on the same address unless another one is asked for.
            book.release(id);
            previous_ip = Some(lease.ip);
        }
        for p in &req.ports {
            let clash = book
                .leases()
                .iter()
                .flat_map(|(h, l)| {
                    l.ports
                        .iter()
                        .map(move |q| (q, h.clone(), self.cfg.name.clone()))
                })
                .map(|(q, h, n)| (*q, h, n))
                .chain(self.ports_elsewhere())
                .find(|(q, _, _)| q.protocol == p.protocol && q.host_port == p.host_port);
            if let Some((_, holder, network)) = clash {
                return Err(NetworkError::PortInUse {
                    protocol: p.protocol,
                    port: p.host_port,
                    holder,
                    network,
                });
            }
        }
        let ip = book
            .allocate(id, req.ip.or(previous_ip))
            .map_err(self.alloc_err())?;
        book.update(id, |l| {
            l.ports = req.ports.clone();
            l.ifname = req.ifname.clone();
            l.host_veth = host_veth.clone();
        });
        // The lease is on disk before any kernel object exists: a crash from here on leaves
        // a record that detach follows.
        book.commit().map_err(self.alloc_err())?;
        let lease = book.get(id).cloned().expect("just leased");
        let mac = req.mac.unwrap_or_else(|| mac_for(ip));
        let result = self.plumb(req, &ns, &host_veth, ip, mac).await;
        match result {
            Ok(()) => Ok(self.attachment(id, &lease, Some(mac))),
            Err(cause) => {
                let mut leftovers = Vec::new();
                if let Err(e) = self.ops.del_link(&host_veth).await {
                    leftovers.push(format!("veth {host_veth}: {e}"));
                }
                // Publishing is the last step and one transaction: if it failed nothing of it
                // was applied, and if an earlier step failed it never ran.
                book.release(id);
                if let Err(e) = book.commit() {
                    leftovers.push(format!("lease of {ip}: {e}"));
                }
                if leftovers.is_empty() {
                    Err(cause)
                } else {
                    Err(NetworkError::CleanupFailed {
                        cause: Box::new(cause),
                        leftovers,
                    })
                }
            }
        }
    }

    async fn plumb(
        &self,
        req: &AttachRequest,
        ns: &Netns,
        host_veth: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetworkError> {
        let spec = VethSpec {
            host_name: host_veth.to_string(),
            bridge_index: self.bridge_index,
            peer_name: req.ifname.clone(),
            mtu: self.cfg.mtu,
            peer_mac: mac,
            hairpin: !req.ports.is_empty(),
        };
        self.ops
            .add_veth(&spec, ns)
            .await
            .map_err(self.op_err(format!("create veth {host_veth}")))?;
        let netns_err = |source| NetworkError::Netns {
            container: req.container_id.clone(),
            source,
        };
        let inside = self.ops.enter(ns).await.map_err(netns_err)?;
        if let Some(lo) = inside.link_index("lo").await.map_err(netns_err)? {
            inside.set_up(lo).await.map_err(netns_err)?;
        }
        let dev = inside
            .link_index(&req.ifname)
            .await
            .map_err(netns_err)?
            .ok_or_else(|| NetworkError::Broken {
                container: req.container_id.clone(),
                problem: format!(
                    "{} missing in {} right after creation",
                    req.ifname, req.netns
                ),
            })?;
        let addr = Ipv4Network::new(ip, self.cfg.subnet.prefix()).expect("prefix checked");
        inside.add_address(dev, addr).await.map_err(netns_err)?;
        // The peer cannot be made up in the creating message (veth_open needs the pair
        // linked, which happens after the peer is configured).
        inside.set_up(dev).await.map_err(netns_err)?;
        let default = Route {
            destination: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("default"),
            gateway: Some(self.gateway),
            dev: Some(dev),
            onlink: false,
        };
        inside.add_route(&default).await.map_err(netns_err)?;
        if !req.ports.is_empty() {
            let p = firewall::Published {
                host_veth: host_veth.to_string(),
                ip,
                ports: req.ports.clone(),
            };
            self.ops
                .nft(&firewall::publish(&self.fw, &p))
                .await
                .map_err(self.op_err(format!("publish ports of {}", req.container_id)))?;
        }
        Ok(())
    }

    /// Takes a container off the network: its veth, published ports and lease. Succeeds
    /// when there is nothing to remove (twice in a row, after a crash, after the container's
    /// namespace is gone).
    pub async fn detach(&self, container_id: &str) -> Result<(), NetworkError> {
        let mut book = self.alloc.lock().map_err(self.alloc_err())?;
        let lease = book.get(container_id).cloned();
        let host_veth = lease
            .as_ref()
            .map(|l| l.host_veth.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| host_veth_name(&self.cfg.name, container_id));
        // Ports first, so nothing is forwarded to an interface that is going away.
        if let Some(lease) = lease.as_ref().filter(|l| !l.ports.is_empty()) {
            let p = firewall::Published {
                host_veth: host_veth.clone(),
                ip: lease.ip,
                ports: lease.ports.clone(),
            };
            if self
                .ops
                .nft(&firewall::unpublish(&self.fw, &p))
                .await
                .is_err()
            {
                // Not (all) there: the attach died before publishing, or the ruleset was
                // changed behind our back. Make the kernel match the other leases.
                let mut rest = book.leases().clone();
                rest.remove(container_id);
                self.ops
                    .nft(&firewall::resync(&self.fw, &published(&rest)))
                    .await
                    .map_err(self.op_err(format!("unpublish ports of {container_id}")))?;
            }
        }
        self.ops
            .del_link(&host_veth)
            .await
            .map_err(self.op_err(format!("delete veth {host_veth}")))?;
        if lease.is_some() {
            book.release(container_id);
            book.commit().map_err(self.alloc_err())?;
        }
        Ok(())
    }

    /// The attachment of a container, after checking the kernel still has it: the host veth
    /// on the bridge and the address inside the container.
    pub async fn check(
        &self,
        container_id: &str,
        netns: &NetnsRef,
    ) -> Result<Attachment, NetworkError> {
        let leases = self.alloc.snapshot().map_err(self.alloc_err())?;
        let lease = leases
            .get(container_id)
            .ok_or_else(|| NetworkError::NotAttached {
                container: container_id.to_string(),
                network: self.cfg.name.clone(),
            })?;
        let broken = |problem: String| NetworkError::Broken {
            container: container_id.to_string(),
            problem,
        };
        if self
            .ops
            .link_index(&lease.host_veth)
            .await
            .map_err(self.op_err("find veth"))?
            .is_none()
        {
            return Err(broken(format!("host veth {} is missing", lease.host_veth)));
        }
        let ns = Netns::open(netns).map_err(|source| NetworkError::Netns {
            container: container_id.to_string(),
            source,
        })?;
        let netns_err = |source| NetworkError::Netns {
            container: container_id.to_string(),
            source,
        };
        let inside = self.ops.enter(&ns).await.map_err(netns_err)?;
        let dev = inside
            .link_index(&lease.ifname)
            .await
            .map_err(netns_err)?
            .ok_or_else(|| broken(format!("{} is missing in {netns}", lease.ifname)))?;
        let addrs = inside.addresses(dev).await.map_err(netns_err)?;
        let want = Ipv4Network::new(lease.ip, self.cfg.subnet.prefix()).expect("prefix");
        if !addrs.contains(&want) {
            return Err(broken(format!(
                "{} lacks address {want} (has {addrs:?})",
                lease.ifname
            )));
        }
        Ok(self.attachment(container_id, lease, None))
    }

    /// Current attachments, from the leases.
    pub fn attachments(&self) -> Result<Vec<Attachment>, NetworkError> {
        let leases = self.alloc.snapshot().map_err(self.alloc_err())?;
        Ok(leases
            .iter()
            .map(|(id, l)| self.attachment(id, l, None))
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, Recorder};
    use crate::nft::Op;
    use crate::Protocol;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// Any file on nsfs or procfs passes `Netns::open`; /proc/self/ns/net is one.
    fn ns() -> NetnsRef {
        NetnsRef::Path("/proc/self/ns/net".into())
    }

    fn open(dir: &Path, fake: &Recorder) -> Network<Recorder> {
        let cfg = NetworkConfig::new("n1", "10.9.0.0/24".parse().unwrap(), dir);
        rt().block_on(Network::open_with(fake.clone(), cfg))
            .unwrap()
    }

    fn web() -> AttachRequest {
        let mut r = AttachRequest::new("web", ns());
        r.ports = vec![PortMapping {
            protocol: Protocol::Tcp,
            host_port: 80,
            container_port: 8080,
        }];
        r
    }

    #[test]
    fn open_creates_bridge_then_address_then_forwarding_then_rules() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        open(d.path(), &fake);
        let calls = fake.calls();
        assert_eq!(calls[0], Call::AddBridge("tug-n1".into()));
        assert_eq!(
            calls[1],
            Call::AddAddress("tug-n1".into(), "10.9.0.1/24".parse().unwrap())
        );
        assert_eq!(calls[2], Call::Sysctl("ipv4/ip_forward".into(), "1".into()));
        assert!(matches!(&calls[4], Call::Nft(b) if b.ops[0] == Op::AddTable("tug-n1".into())));
        // Opening again adopts the bridge instead of creating it.
        fake.clear_log();
        open(d.path(), &fake);
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::AddBridge(_))));
        assert_eq!(fake.calls()[0], Call::SetUp("tug-n1".into()));
    }

    #[test]
    fn attach_orders_veth_then_inside_steps_then_ports() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        let net = open(d.path(), &fake);
        fake.clear_log();
        let a = rt().block_on(net.attach(&web())).unwrap();
        assert_eq!(a.address, "10.9.0.2/24".parse().unwrap());
        let log = fake.log();
        let inside = "/proc/self/ns/net".to_string();
        let kinds: Vec<(String, String)> = log
            .iter()
            .map(|(ns, c)| {
                let k = format!("{c:?}");
                (
                    ns.clone(),
                    k.split(['(', ' ', '{']).next().unwrap().to_string(),
                )
            })
            .collect();
        let expect = [
            ("host", "AddVeth"),
            ("host", "Enter"),
            (inside.as_str(), "SetUp"),
            (inside.as_str(), "AddAddress"),
            (inside.as_str(), "SetUp"),
            (inside.as_str(), "AddRoute"),
            ("host", "Nft"),
        ];
        let got: Vec<(&str, &str)> = kinds
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(log[2].1, Call::SetUp("lo".into()));
        assert_eq!(log[4].1, Call::SetUp("eth0".into()));
        match &log[5].1 {
            Call::AddRoute(r) => {
                assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
                assert_eq!(r.destination.prefix(), 0);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn a_failure_at_any_step_undoes_the_veth_lease_and_ports() {
        for step in ["AddVeth", "Enter", "AddAddress", "AddRoute", "Nft"] {
            let d = tempfile::tempdir().unwrap();
            let fake = Recorder::new("host");
            let net = open(d.path(), &fake);
            fake.clear_log();
            let s = step.to_string();
            let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let f2 = fired.clone();
            fake.fail_when(move |_, c| {
                format!("{c:?}").starts_with(&s)
                    && !f2.swap(true, std::sync::atomic::Ordering::SeqCst)
            });
            let e = rt().block_on(net.attach(&web())).unwrap_err();
            assert!(e.to_string().contains("injected"), "{step}: {e}");
            fake.clear_failure();
            // no veth on the host, none inside
            assert!(
                !fake
                    .links()
                    .iter()
                    .any(|(_, n)| n.starts_with("tv") || n == "eth0"),
                "{step}: {:?}",
                fake.links()
            );
            assert!(net.attachments().unwrap().is_empty(), "{step}: lease kept");
            // the last nft call (if any after the failure) leaves no DNAT rule
            let last_nft = fake.calls().into_iter().rev().find_map(|c| match c {
                Call::Nft(b) => Some(b),
                _ => None,
            });
            if let Some(b) = last_nft {
                if step != "Nft" {
                    assert!(
                        !b.ops.iter().any(|o| matches!(o, Op::AddRule(_))),
                        "{step}: {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn cleanup_failure_is_reported_with_the_cause() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        let net = open(d.path(), &fake);
        fake.fail_when(|_, c| matches!(c, Call::AddRoute(_) | Call::DelLink(_)));
        let e = rt().block_on(net.attach(&web())).unwrap_err();
        match &e {
            NetworkError::CleanupFailed { leftovers, .. } => {
                assert!(leftovers[0].contains("tv"), "{leftovers:?}")
            }
            e => panic!("{e}"),
        }
        assert!(e.to_string().contains("AddRoute"), "{e}");
    }

    #[test]
    fn detach_unpublishes_then_deletes_the_veth_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        let net = open(d.path(), &fake);
        let a = rt().block_on(net.attach(&web())).unwrap();
        fake.clear_log();
        rt().block_on(net.detach("web")).unwrap();
        let calls = fake.calls();
        assert!(
            matches!(&calls[0], Call::Nft(b) if matches!(b.ops.last(), Some(Op::DelChain { .. })))
        );
        assert_eq!(calls[1], Call::DelLink(a.host_veth.clone()));
        fake.clear_log();
        rt().block_on(net.detach("web")).unwrap();
        assert_eq!(fake.calls(), vec![Call::DelLink(a.host_veth)]);
    }

    #[test]
    fn bad_requests_touch_nothing() {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        let net = open(d.path(), &fake);
        rt().block_on(net.attach(&web())).unwrap();
        fake.clear_log();
        let mut dup = web();
        dup.container_id = "other".into();
        let e = rt().block_on(net.attach(&dup)).unwrap_err();
        assert!(matches!(e, NetworkError::PortInUse { port: 80, .. }), "{e}");
        let mut missing = AttachRequest::new("x", NetnsRef::Path("/nonexistent/ns".into()));
        missing.ip = None;
        let e = rt().block_on(net.attach(&missing)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
        let mut outside = AttachRequest::new("x", ns());
        outside.ip = Some(Ipv4Addr::new(10, 10, 0, 2));
        let e = rt().block_on(net.attach(&outside)).unwrap_err();
        assert!(e.to_string().contains("10.10.0.2"), "{e}");
        let mut twice = AttachRequest::new("x", ns());
        twice.ports = vec![web().ports[0], web().ports[0]];
        twice.ports[0].host_port = 81;
        twice.ports[1].host_port = 81;
        assert!(rt().block_on(net.attach(&twice)).is_err());
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert_eq!(net.attachments().unwrap().len(), 1);
    }

    #[test]
    fn invalid_configs_are_refused_before_any_call() {
        let d = tempfile::tempdir().unwrap();
        for (subnet, gw, name) in [
            ("10.9.0.0/31", None, "n"),
            ("10.9.0.5/24", None, "n"),
            ("10.9.0.0/24", Some(Ipv4Addr::new(10, 8, 0, 1)), "n"),
            ("10.9.0.0/24", None, "bad/name"),
        ] {
            let fake = Recorder::new("host");
            let mut cfg = NetworkConfig::new(name, subnet.parse().unwrap(), d.path());
            cfg.gateway = gw;
            let e = rt()
                .block_on(Network::open_with(fake.clone(), cfg))
                .err()
                .unwrap();
            assert!(matches!(e, NetworkError::InvalidConfig { .. }), "{e}");
            assert!(fake.calls().is_empty());
        }
    }

    #[test]
    fn names_are_stable_and_fit_ifnamsiz() {
        let a = host_veth_name("n1", "container-with-a-very-long-id-0123456789");
        assert_eq!(a.len(), 14);
        assert_eq!(
            a,
            host_veth_name("n1", "container-with-a-very-long-id-0123456789")
        );
        assert_ne!(
            a,
            host_veth_name("n2", "container-with-a-very-long-id-0123456789")
        );
        assert_eq!(
            mac_for(Ipv4Addr::new(10, 9, 0, 2)),
            [0x0a, 0x58, 10, 9, 0, 2]
        );
    }
}
