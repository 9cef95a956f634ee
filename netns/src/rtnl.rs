//! [`NetOps`] through netlink: rtnetlink for links, addresses, routes and neighbours; the
//! crate's own [`nft`] client for nftables. No `ip`, `iptables` or `nft` processes.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoPortKind, InfoVeth};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};

use crate::nft;
use crate::ops::{NetOps, Netns, OpError, Route, RouteEntry, VethSpec, VxlanSpec};

/// Netlink operations bound to one network namespace.
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
    ns: Arc<OwnedFd>,
    nft: Arc<Mutex<Option<nft::Socket>>>,
}

fn own_netns() -> io::Result<OwnedFd> {
    std::fs::File::open("/proc/thread-self/ns/net").map(Into::into)
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with the calling thread inside `ns`, then puts the thread back. `f` must not
/// yield to an executor: it runs synchronously. Sockets made in `f` stay in `ns`.
pub fn with_netns<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = own_netns()?;
    setns(ns)?;
    let out = f();
    // Failing to return would leave this thread in the wrong namespace: nothing sane can
    // continue on it.
    setns(home.as_fd()).expect("setns back to the thread's own network namespace");
    Ok(out)
}

fn nl(op: &'static str, target: impl ToString) -> impl FnOnce(rtnetlink::Error) -> OpError {
    move |source| OpError::Netlink {
        op,
        target: target.to_string(),
        source: Box::new(source),
    }
}

fn code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Rtnl {
    /// Operations in the calling thread's current network namespace. Needs a tokio runtime
    /// (the netlink connection is spawned on it).
    pub fn current() -> Result<Rtnl, OpError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(OpError::Socket)?;
        tokio::spawn(conn);
        Ok(Rtnl {
            handle,
            ns: Arc::new(own_netns().map_err(OpError::Socket)?),
            nft: Arc::new(Mutex::new(None)),
        })
    }

    /// Operations in `ns`, whatever namespace the calling thread is in.
    pub fn in_netns(ns: BorrowedFd<'_>) -> Result<Rtnl, OpError> {
        let made = with_netns(ns, rtnetlink::new_connection)
            .map_err(OpError::Socket)?
            .map_err(OpError::Socket)?;
        let (conn, handle, _) = made;
        tokio::spawn(conn);
        let ns = ns.try_clone_to_owned().map_err(OpError::Socket)?;
        Ok(Rtnl {
            handle,
            ns: Arc::new(ns),
            nft: Arc::new(Mutex::new(None)),
        })
    }

    /// The namespace these operations act on.
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.ns.as_fd()
    }

    /// The nftables tables of `family` in this namespace (for checks and tests).
    pub fn nft_tables(&self, family: u8) -> Result<Vec<String>, OpError> {
        self.with_nft(|s| s.list_tables(family))
    }

    /// Chains of a table in this namespace (empty when the table is missing).
    pub fn nft_chains(&self, table: &str) -> Result<Vec<String>, OpError> {
        self.with_nft(|s| s.list_chains(nft::FAMILY_IPV4, table))
    }

    /// Elements of a set or map (0 when it does not exist).
    pub fn nft_element_count(&self, table: &str, set: &str) -> Result<usize, OpError> {
        self.with_nft(|s| s.count_elements(nft::FAMILY_IPV4, table, set))
    }

    /// Rules in a chain (0 when it does not exist).
    pub fn nft_rule_count(&self, table: &str, chain: &str) -> Result<usize, OpError> {
        self.with_nft(|s| s.count_rules(nft::FAMILY_IPV4, table, chain))
    }

    fn with_nft<T>(
        &self,
        f: impl FnOnce(&mut nft::Socket) -> Result<T, nft::NftError>,
    ) -> Result<T, OpError> {
        let mut guard = self.nft.lock().expect("nft socket lock");
        if guard.is_none() {
            let sock = with_netns(self.ns.as_fd(), nft::Socket::open)
                .map_err(OpError::Socket)?
                .map_err(OpError::Socket)?;
            *guard = Some(sock);
        }
        Ok(f(guard.as_mut().expect("socket just set"))?)
    }

    fn route_message(route: &Route) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix());
        if let Some(gw) = route.gateway {
            b = b.gateway(gw);
        }
        if let Some(dev) = route.dev {
            b = b.output_interface(dev);
        }
        if route.onlink {
            b = b.onlink();
        }
        b.build()
    }
}

impl NetOps for Rtnl {
    async fn enter(&self, ns: &Netns) -> Result<Self, OpError> {
        Rtnl::in_netns(ns.fd.as_fd())
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>, OpError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if code(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl("get link", name)(e)),
        }
    }

    async fn add_bridge(&self, name: &str, mtu: u32) -> Result<(), OpError> {
        let msg = LinkBridge::new(name).mtu(mtu).up().build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("add bridge", name))
    }

    async fn set_up(&self, index: u32) -> Result<(), OpError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl("set up link", index))
    }

    async fn add_veth(&self, spec: &VethSpec, peer_ns: &Netns) -> Result<(), OpError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.clone())
            .mtu(spec.mtu)
            .address(spec.peer_mac.to_vec())
            .setns_by_fd(peer_ns.fd.as_raw_fd())
            .build();
        let msg = LinkVeth::new(&spec.host_name, &spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .controller(spec.bridge_index)
            .up()
            .build();
        let target = || {
            format!(
                "{} (peer {} in {})",
                spec.host_name, spec.peer_name, peer_ns.reference
            )
        };
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("add veth", target()))?;
        if spec.hairpin {
            // The kernel ignores bridge-port attributes in the creating message, so this
            // is a second one, addressed by name.
            let port = LinkMessageBuilder::<LinkBridgePort>::default()
                .name(spec.host_name.clone())
                .set_port_kind(InfoPortKind::Bridge)
                .hairpin(true)
                .build();
            self.handle
                .link()
                .set_port(port)
                .execute()
                .await
                .map_err(nl("set hairpin on", target()))?;
        }
        Ok(())
    }

    async fn add_vxlan(&self, spec: &VxlanSpec) -> Result<(), OpError> {
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("add vxlan", &spec.name))
    }

    async fn del_link(&self, name: &str) -> Result<bool, OpError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if code(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl("delete link", name)(e)),
        }
    }

    async fn add_address(&self, index: u32, addr: Ipv4Network) -> Result<(), OpError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.ip()), addr.prefix())
            .execute()
            .await
        {
            Err(e) if code(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(nl("add address", format!("{addr} on link {index}"))),
        }
    }

    async fn del_address(&self, index: u32, addr: Ipv4Network) -> Result<bool, OpError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let what = || format!("{addr} on link {index}");
        while let Some(m) = s.try_next().await.map_err(nl("list addresses", index))? {
            let matches = m.header.prefix_len == addr.prefix()
                && m.attributes.iter().any(
                    |a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == addr.ip()),
                );
            if matches {
                return match self.handle.address().del(m).execute().await {
                    Ok(()) => Ok(true),
                    Err(e) if code(&e) == Some(libc::EADDRNOTAVAIL) => Ok(false),
                    Err(e) => Err(nl("delete address", what())(e)),
                };
            }
        }
        Ok(false)
    }

    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, OpError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("list addresses", index))? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    if let Ok(n) = Ipv4Network::new(*ip, m.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn routes(&self) -> Result<Vec<RouteEntry>, OpError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(req).execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("list routes", "ipv4"))? {
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            let mut gateway = None;
            let mut table = m.header.table as u32;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table != 254 {
                continue;
            }
            if let Ok(destination) = Ipv4Network::new(dst, m.header.destination_prefix_length) {
                out.push(RouteEntry {
                    destination,
                    gateway,
                    dev: oif,
                });
            }
        }
        Ok(out)
    }

    async fn add_route(&self, route: &Route) -> Result<(), OpError> {
        let msg = Self::route_message(route);
        match self.handle.route().add(msg).execute().await {
            Err(e) if code(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(nl("add route", route.destination)),
        }
    }

    async fn del_route(&self, route: &Route) -> Result<bool, OpError> {
        let msg = Self::route_message(route);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if code(&e) == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(nl("delete route", route.destination)(e)),
        }
    }

    async fn add_neighbour(&self, dev: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), OpError> {
        self.handle
            .neighbours()
            .add(dev, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl("add neighbour", ip))
    }

    async fn del_neighbour(&self, dev: u32, ip: Ipv4Addr) -> Result<bool, OpError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = dev;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(code(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(nl("delete neighbour", ip)(e)),
        }
    }

    async fn add_fdb(&self, dev: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<(), OpError> {
        self.handle
            .neighbours()
            .add_bridge(dev, &mac)
            .destination(IpAddr::V4(remote))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl("add fdb entry", remote))
    }

    async fn del_fdb(&self, dev: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<bool, OpError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = dev;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                remote,
            )));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(code(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(nl("delete fdb entry", remote)(e)),
        }
    }

    async fn nft(&self, batch: &nft::Batch) -> Result<(), OpError> {
        self.with_nft(|s| s.apply(batch))
    }

    async fn nft_rules(
        &self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<nft::RuleRef>>, OpError> {
        self.with_nft(|s| s.list_rules(family, table, chain))
    }

    async fn nft_list_chains(&self, family: u8, table: &str) -> Result<Vec<String>, OpError> {
        self.with_nft(|s| s.list_chains(family, table))
    }

    async fn nft_set_len(&self, family: u8, table: &str, set: &str) -> Result<usize, OpError> {
        self.with_nft(|s| s.count_elements(family, table, set))
    }

    async fn drop_unreplied(
        &self,
        endpoints: &[(crate::Protocol, std::net::SocketAddrV4)],
    ) -> Result<usize, OpError> {
        let wanted: Vec<(u8, std::net::SocketAddrV4)> =
            endpoints.iter().map(|(p, a)| (p.number(), *a)).collect();
        self.with_nft(|s| s.drop_unreplied(&wanted))
    }

    async fn sysctl(&self, key: &str, value: &str) -> Result<(), OpError> {
        let path = format!("/proc/sys/net/{key}");
        // /proc/sys/net is resolved against the opening thread's namespace.
        let r = with_netns(self.ns.as_fd(), || std::fs::write(&path, value)).and_then(|r| r);
        r.map_err(|source| OpError::Sysctl {
            key: key.to_string(),
            source,
        })
    }
}
