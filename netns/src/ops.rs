//! The kernel operations tug-netns needs, behind one small trait.
//!
//! [`crate::rtnl::Rtnl`] does them through netlink; [`crate::fake::Recorder`] records them,
//! so the order of steps (and what a failure undoes) is unit-tested without root.
//! Each value of a `NetOps` type is bound to one network namespace; [`NetOps::enter`] gives
//! one bound to another.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

use crate::nft;

/// A network namespace, by process or by file (`/proc/PID/ns/net`, `/run/netns/NAME`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    Pid(u32),
    Path(PathBuf),
}

impl NetnsRef {
    pub fn path(&self) -> PathBuf {
        match self {
            NetnsRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            NetnsRef::Path(p) => p.clone(),
        }
    }
}

impl std::fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetnsRef::Pid(pid) => write!(f, "netns of pid {pid}"),
            NetnsRef::Path(p) => write!(f, "netns {}", p.display()),
        }
    }
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    pub reference: NetnsRef,
    pub fd: OwnedFd,
}

impl Netns {
    /// Opens the namespace; the error names the path.
    pub fn open(reference: &NetnsRef) -> Result<Netns, OpError> {
        let path = reference.path();
        let file = std::fs::File::open(&path).map_err(|source| OpError::Netns {
            path: path.clone(),
            source,
        })?;
        // Refuse a file that is not a network namespace: setns would fail later, after the
        // veth was made.
        // SAFETY: fstatfs on an fd we own, into a zeroed struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            return Err(OpError::Netns {
                path,
                source: io::Error::last_os_error(),
            });
        }
        const NSFS_MAGIC: i64 = 0x6e736673;
        if st.f_type as i64 != NSFS_MAGIC {
            return Err(OpError::Netns {
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a namespace file"),
            });
        }
        Ok(Netns {
            reference: reference.clone(),
            fd: file.into(),
        })
    }
}

/// A veth pair whose host end joins a bridge and whose peer is made directly inside the
/// container's namespace, named and addressed at link level (brought up separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub host_name: String,
    pub bridge_index: u32,
    pub peer_name: String,
    pub mtu: u32,
    pub peer_mac: [u8; 6],
    /// Let frames leave by the bridge port they came in on (a container reaching its own
    /// published port through the host's address).
    pub hairpin: bool,
}

/// An IPv4 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub dev: Option<u32>,
    /// Gateway reachable on `dev` without a connected route (overlay next hops).
    pub onlink: bool,
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub destination: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<u32>,
}

/// A VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("nftables: {0}")]
    Nft(#[from] nft::NftError),
    #[error("sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("open network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("injected failure at {0}")]
    Injected(String),
}

impl OpError {
    /// The errno behind a netlink error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            OpError::Netlink { source, .. } => match source.as_ref() {
                rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
                _ => None,
            },
            OpError::Nft(e) => e.errno(),
            OpError::Sysctl { source, .. } | OpError::Netns { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Kernel operations in one network namespace. Adds succeed when the object already exists
/// as asked; deletes succeed when it is already gone (both report which happened where it
/// matters), so every caller step is idempotent.
#[allow(async_fn_in_trait)]
pub trait NetOps: Sized {
    /// The same operations, bound to another namespace.
    async fn enter(&self, ns: &Netns) -> Result<Self, OpError>;
    /// Index of a link by name.
    async fn link_index(&self, name: &str) -> Result<Option<u32>, OpError>;
    /// Creates a bridge (error EEXIST if a link of that name exists).
    async fn add_bridge(&self, name: &str, mtu: u32) -> Result<(), OpError>;
    async fn set_up(&self, index: u32) -> Result<(), OpError>;
    /// Creates the veth pair, its peer inside `peer_ns`.
    async fn add_veth(&self, spec: &VethSpec, peer_ns: &Netns) -> Result<(), OpError>;
    async fn add_vxlan(&self, spec: &VxlanSpec) -> Result<(), OpError>;
    /// Deletes a link; `Ok(false)` when there was none.
    async fn del_link(&self, name: &str) -> Result<bool, OpError>;
    /// Adds an address (no error if present).
    async fn add_address(&self, index: u32, addr: Ipv4Network) -> Result<(), OpError>;
    /// Removes an address; `Ok(false)` when the link did not have it.
    async fn del_address(&self, index: u32, addr: Ipv4Network) -> Result<bool, OpError>;
    /// Addresses on a link.
    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, OpError>;
    /// IPv4 routes of the main table.
    async fn routes(&self) -> Result<Vec<RouteEntry>, OpError>;
    /// Adds a route (no error if the same route exists).
    async fn add_route(&self, route: &Route) -> Result<(), OpError>;
    /// Deletes a route; `Ok(false)` when there was none.
    async fn del_route(&self, route: &Route) -> Result<bool, OpError>;
    /// A permanent ARP entry.
    async fn add_neighbour(&self, dev: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), OpError>;
    async fn del_neighbour(&self, dev: u32, ip: Ipv4Addr) -> Result<bool, OpError>;
    /// A permanent FDB entry: frames for `mac` on a VXLAN device go to `remote`.
    async fn add_fdb(&self, dev: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<(), OpError>;
    async fn del_fdb(&self, dev: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<bool, OpError>;
    /// Applies one nftables transaction.
    async fn nft(&self, batch: &nft::Batch) -> Result<(), OpError>;
    /// The rules of an nftables chain (handle and userdata); `None` when the table or the
    /// chain does not exist.
    async fn nft_rules(
        &self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<nft::RuleRef>>, OpError>;
    /// The chains of an nftables table (empty when the table does not exist).
    async fn nft_list_chains(&self, family: u8, table: &str) -> Result<Vec<String>, OpError>;
    /// The number of elements of an nftables set or map (0 when it does not exist).
    async fn nft_set_len(&self, family: u8, table: &str, set: &str) -> Result<usize, OpError>;
    /// Deletes the tracked IPv4 connections translated to one of `endpoints` that never
    /// saw a reply (their next packet is then balanced again); how many there were.
    async fn drop_unreplied(
        &self,
        endpoints: &[(crate::Protocol, std::net::SocketAddrV4)],
    ) -> Result<usize, OpError>;
    /// Writes a value under /proc/sys/net of this namespace.
    async fn sysctl(&self, key: &str, value: &str) -> Result<(), OpError>;
}
