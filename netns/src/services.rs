//! Which nftables rules a node's services need: pure functions from [`ServiceSpec`]s to
//! [`crate::nft::Batch`]es, so what is programmed is unit-tested without a kernel. The
//! [`crate::Network`] methods in `network/services.rs` apply them and keep the record.
//!
//! Each network has one services table `ip tug-svc-<network>`, next to (not inside) its NAT
//! table, so rebuilding one never disturbs the other:
//!
//! ```text
//! map services { type ipv4_addr . inet_proto . inet_service : verdict }  # VIP . proto . port
//! map ingress  { type inet_proto . inet_service : verdict }              # host ports
//! chain prerouting { type nat hook prerouting priority -110; jump dispatch }
//! chain output     { type nat hook output priority -110; jump dispatch }
//! chain dispatch {
//!     ip daddr . meta l4proto . th dport vmap @services
//!     fib daddr type local meta l4proto . th dport vmap @ingress
//! }
//! chain svc-10.89.0.1-80-tcp {                       # one per service, and its two sets:
//!     meta mark set mark | 0x2000                    # masquerade, decided in postrouting
//!     [ip saddr map @..-aff, still in @..-eps: refresh, dnat]   # client-ip affinity
//!     dnat to numgen random mod N map @svc-10.89.0.1-80-tcp   # index -> address . port
//! }
//! set svc-..-eps { type ipv4_addr . inet_service }   # the endpoints (affinity check)
//! chain postrouting { type nat hook postrouting priority 99;
//!     mark & 0x2000 == 0 return; mark clear 0x2000
//!     ip saddr SUBNET oifname != BRIDGE return       # a container to another node's endpoint
//!     masquerade                                     # hairpin, same bridge, the host, outside
//! }
//! ```
//!
//! Changing a service's endpoints flushes and refills only that service's chain and sets,
//! in one transaction; the dispatch maps and other services are untouched. Why masquerade
//! so much: without `br_netfilter`, an endpoint on the same bridge as its client answers it
//! directly at layer 2, bypassing the host's un-DNAT, and a hairpin client would get its own
//! address back; the host's own connections have the VIP as their source. A container
//! reaching an endpoint on another node keeps its address (the reply is routed back here).

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::nft::build::{bits, ip_in, mark, rule};
use crate::nft::{
    types, BaseChain, Batch, Chain, CmpOp, Expr, Hook, MetaKey, NatKind, Op, PayloadBase, SetSpec,
    Verdict, DATA_VERDICT, FAMILY_IPV4, REG32_0, REG32_1, REG32_2, REG_1, SET_EVAL, SET_TIMEOUT,
};
use crate::Protocol;

/// The packet mark bit that asks the services table's postrouting chain to masquerade.
/// kube-proxy uses 0x4000 (and 0x8000), Calico the upper 16 bits, Cilium 0x0f00.
pub const MASQUERADE_MARK: u32 = 0x2000;
/// The packet mark bit for "arrived through a port the node exposes" (an ingress host port
/// here, a published port in the NAT table): network policy lets such packets through, the
/// exposure is the service's own choice (see [`crate::policy`]).
pub const EXPOSED_MARK: u32 = 0x4000;

/// What a service is reached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frontend {
    /// A virtual address and port (the service address, the same on every node). The
    /// address is put on the bridge as a /32, so the host reaches it too.
    Virtual { address: Ipv4Addr, port: u16 },
    /// A port on every local address of the node (an ingress host port).
    HostPort { port: u16 },
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frontend::Virtual { address, port } => write!(f, "{address}:{port}"),
            Frontend::HostPort { port } => write!(f, "host port {port}"),
        }
    }
}

/// One balanced service: a frontend and protocol, and the endpoints that take its new
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub frontend: Frontend,
    pub protocol: Protocol,
    /// Ready endpoints, local or on other nodes. Empty: new connections are refused (TCP
    /// reset, ICMP port unreachable).
    pub endpoints: Vec<SocketAddrV4>,
    /// Client-address affinity: a client keeps its endpoint while it sends again within
    /// this many seconds (and the endpoint is still listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_secs: Option<u32>,
}

impl ServiceSpec {
    pub fn new(frontend: Frontend, protocol: Protocol, endpoints: Vec<SocketAddrV4>) -> Self {
        ServiceSpec {
            frontend,
            protocol,
            endpoints,
            affinity_secs: None,
        }
    }

    /// What identifies the service: one frontend, one protocol.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            frontend: self.frontend,
            protocol: self.protocol,
        }
    }
}

/// A service's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub frontend: Frontend,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.frontend, self.protocol)
    }
}

impl ServiceKey {
    /// The service's chain (also the name of its endpoint map): `svc-ADDR-PORT-PROTO` or
    /// `ing-PORT-PROTO`.
    pub fn chain(&self) -> String {
        match self.frontend {
            Frontend::Virtual { address, port } => {
                format!("svc-{address}-{port}-{}", self.protocol)
            }
            Frontend::HostPort { port } => format!("ing-{port}-{}", self.protocol),
        }
    }
    fn eps_set(&self) -> String {
        format!("{}-eps", self.chain())
    }
    fn affinity_set(&self) -> String {
        format!("{}-aff", self.chain())
    }
    /// The key of the dispatch map element, and the map.
    fn dispatch(&self) -> (&'static str, Vec<u8>) {
        let mut key = Vec::with_capacity(12);
        if let Frontend::Virtual { address, .. } = self.frontend {
            key.extend(address.octets());
        }
        key.extend([self.protocol.number(), 0, 0, 0]);
        let port = match self.frontend {
            Frontend::Virtual { port, .. } | Frontend::HostPort { port } => port,
        };
        key.extend(port.to_be_bytes());
        key.extend([0, 0]);
        match self.frontend {
            Frontend::Virtual { .. } => (SERVICES_MAP, key),
            Frontend::HostPort { .. } => (INGRESS_MAP, key),
        }
    }
}

/// Why a service was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {reason}")]
pub struct InvalidService {
    pub service: String,
    pub reason: String,
}

/// Checks a service against the network it is balanced on: the error names the field or
/// address that is wrong.
pub fn validate(spec: &ServiceSpec, subnet: Ipv4Network) -> Result<(), InvalidService> {
    let bad = |reason: String| InvalidService {
        service: spec.key().to_string(),
        reason,
    };
    match spec.frontend {
        Frontend::Virtual { address, port } => {
            if port == 0 {
                return Err(bad("port 0 cannot be balanced".into()));
            }
            if address.is_unspecified()
                || address.is_loopback()
                || address.is_multicast()
                || address.is_broadcast()
                || address.is_link_local()
            {
                return Err(bad(format!(
                    "virtual address {address} must be a unicast address that is not loopback or link-local"
                )));
            }
            if subnet.contains(address) {
                return Err(bad(format!(
                    "virtual address {address} is inside the container subnet {subnet}"
                )));
            }
        }
        Frontend::HostPort { port } => {
            if port == 0 {
                return Err(bad("host port 0 cannot be balanced".into()));
            }
        }
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let ip = *ep.ip();
        if ep.port() == 0 {
            return Err(bad(format!("endpoint {ep} has port 0")));
        }
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
            return Err(bad(format!(
                "endpoint {ep}: {ip} is not a unicast address a packet can be sent to"
            )));
        }
        if let Frontend::Virtual { address, .. } = spec.frontend {
            if ip == address {
                return Err(bad(format!("endpoint {ep} is the service's own address")));
            }
        }
        if spec.endpoints[..i].contains(ep) {
            return Err(bad(format!("endpoint {ep} is listed twice")));
        }
    }
    if let Some(t) = spec.affinity_secs {
        if t == 0 || t > 86_400 {
            return Err(bad(format!(
                "affinity timeout {t} s must be between 1 and 86400 seconds"
            )));
        }
    }
    Ok(())
}

/// What the services table depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesTable {
    pub table: String,
    pub bridge: String,
    pub subnet: Ipv4Network,
}

/// The services table name of a network.
pub fn table_name(network: &str) -> String {
    format!("tug-svc-{network}")
}

pub(crate) const SERVICES_MAP: &str = "services";
pub(crate) const INGRESS_MAP: &str = "ingress";
const DISPATCH: &str = "dispatch";
/// The chains every services table has, besides one per service.
pub(crate) const FIXED_CHAINS: [&str; 4] = [DISPATCH, "prerouting", "output", "postrouting"];

/// Set ids of one transaction (they only need to differ within it).
#[derive(Debug, Default)]
struct Ids(u32);

impl Ids {
    fn next(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

fn payload(base: PayloadBase, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg,
    }
}

fn l4proto(dreg: u32) -> Expr {
    Expr::Meta {
        key: MetaKey::L4Proto,
        dreg,
    }
}

fn dport(dreg: u32) -> Expr {
    payload(PayloadBase::Transport, 2, 2, dreg)
}

pub(crate) fn mark_update(mask: u32, xor: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: xor.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: REG_1,
        },
    ]
}

/// An endpoint as a map value: address, port, padded to two registers.
fn endpoint_bytes(ep: &SocketAddrV4) -> Vec<u8> {
    let mut v = ep.ip().octets().to_vec();
    v.extend(ep.port().to_be_bytes());
    v.extend([0, 0]);
    v
}

const ENDPOINT_TYPE: fn() -> u32 = || types::concat(&[types::IPV4_ADDR, types::INET_SERVICE]);

/// Creates (or re-asserts) the table, its maps and its fixed chains. Idempotent: the fixed
/// chains are flushed and refilled; service chains and the maps' elements are left alone.
pub fn setup(t: &ServicesTable) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    push_setup(&mut b, t, &mut Ids::default());
    b
}

fn push_setup(b: &mut Batch, t: &ServicesTable, ids: &mut Ids) {
    let tb = t.table.as_str();
    b.push(Op::AddTable(tb.into()));
    let services_id = ids.next();
    b.push(Op::AddSet(SetSpec {
        table: tb.into(),
        name: SERVICES_MAP.into(),
        id: services_id,
        flags: 0,
        key_type: types::concat(&[types::IPV4_ADDR, types::INET_PROTO, types::INET_SERVICE]),
        key_len: 12,
        data: Some((DATA_VERDICT, 0)),
    }));
    let ingress_id = ids.next();
    b.push(Op::AddSet(SetSpec {
        table: tb.into(),
        name: INGRESS_MAP.into(),
        id: ingress_id,
        flags: 0,
        key_type: types::concat(&[types::INET_PROTO, types::INET_SERVICE]),
        key_len: 8,
        data: Some((DATA_VERDICT, 0)),
    }));
    b.push(Op::AddChain(Chain {
        table: tb.into(),
        name: DISPATCH.into(),
        base: None,
    }));
    for (name, hook, priority) in [
        ("prerouting", Hook::Prerouting, -110),
        ("output", Hook::Output, -110),
        ("postrouting", Hook::Postrouting, 99),
    ] {
        b.push(Op::AddChain(Chain {
            table: tb.into(),
            name: name.into(),
            base: Some(BaseChain {
                kind: "nat",
                hook,
                priority,
                drop_policy: false,
            }),
        }));
    }
    for chain in [DISPATCH, "prerouting", "output", "postrouting"] {
        b.push(Op::FlushChain {
            table: tb.into(),
            chain: chain.into(),
        });
    }
    b.push(rule(
        tb,
        DISPATCH,
        vec![
            payload(PayloadBase::Network, 16, 4, REG32_0),
            l4proto(REG32_1),
            dport(REG32_2),
            Expr::VerdictMap {
                set: SERVICES_MAP.into(),
                set_id: services_id,
                sreg: REG32_0,
            },
        ],
    ));
    b.push(rule(
        tb,
        DISPATCH,
        vec![
            Expr::FibDaddrType { dreg: REG_1 },
            // RTN_LOCAL, host byte order.
            Expr::Cmp {
                sreg: REG_1,
                op: CmpOp::Eq,
                data: 2u32.to_ne_bytes().to_vec(),
            },
            l4proto(REG32_0),
            dport(REG32_1),
            Expr::VerdictMap {
                set: INGRESS_MAP.into(),
                set_id: ingress_id,
                sreg: REG32_0,
            },
        ],
    ));
    for chain in ["prerouting", "output"] {
        b.push(rule(
            tb,
            chain,
            vec![Expr::Verdict(Verdict::Jump(DISPATCH.into()))],
        ));
    }
    // Only packets a service chain marked; the mark is taken off before it can confuse
    // anything later (policy routing on the host).
    b.push(rule(
        tb,
        "postrouting",
        bits(mark(), MASQUERADE_MARK, false)
            .into_iter()
            .chain([Expr::Verdict(Verdict::Return)])
            .collect(),
    ));
    b.push(rule(tb, "postrouting", mark_update(!MASQUERADE_MARK, 0)));
    let mut keep = ip_in(12, t.subnet, CmpOp::Eq);
    keep.push(Expr::Meta {
        key: MetaKey::OifName,
        dreg: REG_1,
    });
    let mut bridge = t.bridge.as_bytes().to_vec();
    bridge.push(0);
    keep.push(Expr::Cmp {
        sreg: REG_1,
        op: CmpOp::Neq,
        data: bridge,
    });
    keep.push(Expr::Verdict(Verdict::Return));
    b.push(rule(tb, "postrouting", keep));
    b.push(rule(tb, "postrouting", vec![Expr::Masquerade]));
}

/// Programs one service: creates its chain and sets if missing, replaces its endpoints and
/// rules, and points its dispatch element at it. `previous` is what was programmed for the
/// same key before (it decides whether the affinity set must go).
pub fn set(t: &ServicesTable, spec: &ServiceSpec, previous: Option<&ServiceSpec>) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    push_set(&mut b, t, spec, previous, &mut Ids(100));
    b
}

fn push_set(
    b: &mut Batch,
    t: &ServicesTable,
    spec: &ServiceSpec,
    previous: Option<&ServiceSpec>,
    ids: &mut Ids,
) {
    let tb = t.table.as_str();
    let key = spec.key();
    let chain = key.chain();
    let (eps, aff) = (key.eps_set(), key.affinity_set());
    b.push(Op::AddChain(Chain {
        table: tb.into(),
        name: chain.clone(),
        base: None,
    }));
    let map_id = ids.next();
    b.push(Op::AddSet(SetSpec {
        table: tb.into(),
        name: chain.clone(),
        id: map_id,
        flags: 0,
        key_type: types::INTEGER,
        key_len: 4,
        data: Some((ENDPOINT_TYPE(), 8)),
    }));
    let eps_id = ids.next();
    b.push(Op::AddSet(SetSpec {
        table: tb.into(),
        name: eps.clone(),
        id: eps_id,
        flags: 0,
        key_type: ENDPOINT_TYPE(),
        key_len: 8,
        data: None,
    }));
    let aff_id = ids.next();
    if spec.affinity_secs.is_some() {
        b.push(Op::AddSet(SetSpec {
            table: tb.into(),
            name: aff.clone(),
            id: aff_id,
            flags: SET_TIMEOUT | SET_EVAL,
            key_type: types::IPV4_ADDR,
            key_len: 4,
            data: Some((ENDPOINT_TYPE(), 8)),
        }));
    }
    b.push(Op::FlushChain {
        table: tb.into(),
        chain: chain.clone(),
    });
    let had_affinity = previous.is_some_and(|p| p.affinity_secs.is_some());
    match (had_affinity, spec.affinity_secs.is_some()) {
        // The rule that used it is gone with the flush above.
        (true, false) => b.push(Op::DelSet {
            table: tb.into(),
            set: aff.clone(),
        }),
        // A new timeout applies to new entries; old ones keep theirs.
        _ => b,
    };
    for set in [&chain, &eps] {
        b.push(Op::FlushSet {
            table: tb.into(),
            set: set.clone(),
        });
    }
    if !spec.endpoints.is_empty() {
        b.push(Op::AddSetElements {
            table: tb.into(),
            set: chain.clone(),
            elements: spec
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| ((i as u32).to_ne_bytes().to_vec(), Some(endpoint_bytes(ep))))
                .collect(),
        });
        b.push(Op::AddSetElements {
            table: tb.into(),
            set: eps.clone(),
            elements: spec
                .endpoints
                .iter()
                .map(|ep| (endpoint_bytes(ep), None))
                .collect(),
        });
    }
    let marks = match spec.frontend {
        Frontend::Virtual { .. } => MASQUERADE_MARK,
        Frontend::HostPort { .. } => MASQUERADE_MARK | EXPOSED_MARK,
    };
    b.push(rule(tb, &chain, mark_update(!marks, marks)));
    let dnat = Expr::Nat {
        kind: NatKind::Dnat,
        reg_addr: REG32_0,
        reg_proto: Some(REG32_1),
    };
    if spec.endpoints.is_empty() {
        b.push(rule(
            tb,
            &chain,
            vec![Expr::Reject {
                tcp_reset: spec.protocol == Protocol::Tcp,
            }],
        ));
    } else {
        let remember = spec.affinity_secs.map(|secs| Expr::DynsetUpdate {
            set: aff.clone(),
            set_id: aff_id,
            sreg_key: REG32_2,
            sreg_data: Some(REG32_0),
            timeout_ms: u64::from(secs) * 1000,
        });
        if let Some(remember) = &remember {
            b.push(rule(
                tb,
                &chain,
                vec![
                    payload(PayloadBase::Network, 12, 4, REG32_2),
                    Expr::Lookup {
                        set: aff.clone(),
                        set_id: aff_id,
                        sreg: REG32_2,
                        dreg: Some(REG32_0),
                        invert: false,
                    },
                    // An endpoint taken out since is not reused.
                    Expr::Lookup {
                        set: eps.clone(),
                        set_id: eps_id,
                        sreg: REG32_0,
                        dreg: None,
                        invert: false,
                    },
                    remember.clone(),
                    dnat.clone(),
                ],
            ));
        }
        let mut pick = vec![
            Expr::Numgen {
                dreg: REG32_0,
                modulus: spec.endpoints.len() as u32,
                random: true,
            },
            Expr::Lookup {
                set: chain.clone(),
                set_id: map_id,
                sreg: REG32_0,
                dreg: Some(REG32_0),
                invert: false,
            },
        ];
        if let Some(remember) = remember {
            pick.push(payload(PayloadBase::Network, 12, 4, REG32_2));
            pick.push(remember);
        }
        pick.push(dnat);
        b.push(rule(tb, &chain, pick));
    }
    let (map, key_bytes) = key.dispatch();
    b.push(Op::AddElements {
        table: tb.into(),
        set: map.into(),
        elements: vec![(key_bytes, Verdict::Goto(chain))],
    });
}

/// Removes one service: its dispatch element first (no new packet reaches it), then its
/// chain and sets. Fails (ENOENT) when they are not all there; the caller then rebuilds.
pub fn remove(t: &ServicesTable, spec: &ServiceSpec) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    push_remove(&mut b, t, spec);
    b
}

fn push_remove(b: &mut Batch, t: &ServicesTable, spec: &ServiceSpec) {
    let tb = t.table.as_str();
    let key = spec.key();
    let chain = key.chain();
    let (map, key_bytes) = key.dispatch();
    b.push(Op::DelElements {
        table: tb.into(),
        set: map.into(),
        keys: vec![key_bytes],
    });
    b.push(Op::FlushChain {
        table: tb.into(),
        chain: chain.clone(),
    });
    b.push(Op::DelChain {
        table: tb.into(),
        chain: chain.clone(),
    });
    let mut sets = vec![chain, key.eps_set()];
    if spec.affinity_secs.is_some() {
        sets.push(key.affinity_set());
    }
    for set in sets {
        b.push(Op::DelSet {
            table: tb.into(),
            set,
        });
    }
}

/// Turns `current` into `wanted` in one transaction: services that changed are set, those
/// no longer wanted removed; those equal are not touched.
pub fn change(t: &ServicesTable, current: &[ServiceSpec], wanted: &[ServiceSpec]) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    let mut ids = Ids(100);
    for old in current {
        if !wanted.iter().any(|w| w.key() == old.key()) {
            push_remove(&mut b, t, old);
        }
    }
    for w in wanted {
        let old = current.iter().find(|c| c.key() == w.key());
        if old != Some(w) {
            push_set(&mut b, t, w, old, &mut ids);
        }
    }
    b
}

/// Rebuilds the whole table from `services`, atomically (after a reboot, a flushed
/// ruleset, or a transaction the kernel refused because it no longer matched the record).
pub fn resync(t: &ServicesTable, services: &[ServiceSpec]) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::AddTable(t.table.clone()));
    b.push(Op::DelTable(t.table.clone()));
    let mut ids = Ids::default();
    push_setup(&mut b, t, &mut ids);
    ids.0 = ids.0.max(100);
    for s in services {
        push_set(&mut b, t, s, None, &mut ids);
    }
    b
}

/// Removes the services table.
pub fn teardown(t: &ServicesTable) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::DelTable(t.table.clone()));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ServicesTable {
        ServicesTable {
            table: table_name("n1"),
            bridge: "tug-n1".into(),
            subnet: "10.88.0.0/24".parse().unwrap(),
        }
    }

    fn web(eps: &[&str]) -> ServiceSpec {
        ServiceSpec::new(
            Frontend::Virtual {
                address: Ipv4Addr::new(10, 89, 0, 1),
                port: 80,
            },
            Protocol::Tcp,
            eps.iter().map(|e| e.parse().unwrap()).collect(),
        )
    }

    fn rules_in<'a>(b: &'a Batch, chain: &str) -> Vec<&'a Vec<Expr>> {
        b.ops
            .iter()
            .filter_map(|op| match op {
                Op::AddRule(r) if r.chain == chain => Some(&r.exprs),
                _ => None,
            })
            .collect()
    }

    fn chains_touched(b: &Batch) -> Vec<String> {
        let mut v: Vec<String> = b
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::AddChain(c) => Some(c.name.clone()),
                Op::FlushChain { chain, .. } | Op::DelChain { chain, .. } => Some(chain.clone()),
                Op::AddRule(r) => Some(r.chain.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn names_say_which_service() {
        assert_eq!(web(&[]).key().chain(), "svc-10.89.0.1-80-tcp");
        let ing = ServiceKey {
            frontend: Frontend::HostPort { port: 30080 },
            protocol: Protocol::Udp,
        };
        assert_eq!(ing.chain(), "ing-30080-udp");
        assert_eq!(table_name("n1"), "tug-svc-n1");
    }

    #[test]
    fn dispatch_key_is_address_proto_port_each_padded_to_a_register() {
        let (map, key) = web(&[]).key().dispatch();
        assert_eq!(map, "services");
        assert_eq!(key, vec![10, 89, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        let (map, key) = ServiceKey {
            frontend: Frontend::HostPort { port: 30080 },
            protocol: Protocol::Udp,
        }
        .dispatch();
        assert_eq!(map, "ingress");
        assert_eq!(key, vec![17, 0, 0, 0, 0x75, 0x80, 0, 0]);
    }

    #[test]
    fn set_fills_index_map_and_picks_with_numgen_mod_endpoint_count() {
        let s = web(&["10.88.0.2:8080", "10.88.0.3:8080"]);
        let b = set(&table(), &s, None);
        let elems = b
            .ops
            .iter()
            .find_map(|op| match op {
                Op::AddSetElements { set, elements, .. } if set == "svc-10.89.0.1-80-tcp" => {
                    Some(elements.clone())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            elems,
            vec![
                (
                    0u32.to_ne_bytes().to_vec(),
                    Some(vec![10, 88, 0, 2, 0x1f, 0x90, 0, 0])
                ),
                (
                    1u32.to_ne_bytes().to_vec(),
                    Some(vec![10, 88, 0, 3, 0x1f, 0x90, 0, 0])
                ),
            ]
        );
        let rules = rules_in(&b, "svc-10.89.0.1-80-tcp");
        assert_eq!(rules.len(), 2, "mark, pick");
        assert!(rules[1].contains(&Expr::Numgen {
            dreg: REG32_0,
            modulus: 2,
            random: true
        }));
        assert!(
            matches!(rules[1].last(), Some(Expr::Nat { kind: NatKind::Dnat, reg_addr, reg_proto: Some(p) }) if *reg_addr == REG32_0 && *p == REG32_1)
        );
        // The dispatch element is added last, once the chain it jumps to is complete.
        assert!(matches!(b.ops.last(), Some(Op::AddElements { set, .. }) if set == "services"));
    }

    #[test]
    fn changing_one_service_touches_only_its_own_chain() {
        let a = web(&["10.88.0.2:8080", "10.88.0.3:8080"]);
        let mut other = web(&["10.88.0.4:53"]);
        other.frontend = Frontend::Virtual {
            address: Ipv4Addr::new(10, 89, 0, 2),
            port: 53,
        };
        let a2 = web(&["10.88.0.2:8080"]);
        let b = change(&table(), &[a.clone(), other.clone()], &[a2, other]);
        assert_eq!(chains_touched(&b), vec!["svc-10.89.0.1-80-tcp".to_string()]);
        assert!(!b.ops.iter().any(|op| matches!(op, Op::AddTable(_))));
        let same = a.clone();
        assert!(change(&table(), &[same], &[a]).ops.is_empty());
    }

    #[test]
    fn no_endpoints_refuses_with_a_reset_for_tcp_and_port_unreachable_for_udp() {
        let b = set(&table(), &web(&[]), None);
        let rules = rules_in(&b, "svc-10.89.0.1-80-tcp");
        assert_eq!(
            rules.last().unwrap().as_slice(),
            &[Expr::Reject { tcp_reset: true }]
        );
        let mut u = web(&[]);
        u.protocol = Protocol::Udp;
        let b = set(&table(), &u, None);
        assert_eq!(
            rules_in(&b, "svc-10.89.0.1-80-udp")
                .last()
                .unwrap()
                .as_slice(),
            &[Expr::Reject { tcp_reset: false }]
        );
    }

    #[test]
    fn remove_deletes_dispatch_element_before_chain_and_sets() {
        let b = remove(&table(), &web(&["10.88.0.2:80"]));
        let kinds: Vec<String> = b
            .ops
            .iter()
            .map(|o| {
                format!("{o:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            ["DelElements", "FlushChain", "DelChain", "DelSet", "DelSet"]
        );
    }

    #[test]
    fn affinity_checks_the_endpoint_is_still_listed_and_refreshes_the_entry() {
        let mut s = web(&["10.88.0.2:8080", "10.88.0.3:8080"]);
        s.affinity_secs = Some(30);
        let b = set(&table(), &s, None);
        let rules = rules_in(&b, "svc-10.89.0.1-80-tcp");
        assert_eq!(rules.len(), 3);
        assert!(rules[1].iter().any(
            |e| matches!(e, Expr::Lookup { set, dreg: None, .. } if set == "svc-10.89.0.1-80-tcp-eps")
        ));
        assert!(rules[2].iter().any(|e| matches!(
            e,
            Expr::DynsetUpdate {
                timeout_ms: 30_000,
                ..
            }
        )));
        // Turning affinity off deletes the set, after the flush that drops its users.
        let off = web(&["10.88.0.2:8080"]);
        let b = set(&table(), &off, Some(&s));
        let flush = b
            .ops
            .iter()
            .position(|o| matches!(o, Op::FlushChain { .. }))
            .unwrap();
        let del = b
            .ops
            .iter()
            .position(|o| matches!(o, Op::DelSet { set, .. } if set.ends_with("-aff")))
            .unwrap();
        assert!(flush < del);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let sub: Ipv4Network = "10.88.0.0/24".parse().unwrap();
        let e = validate(&web(&["10.88.0.2:0"]), sub).unwrap_err();
        assert!(
            e.to_string().contains("endpoint 10.88.0.2:0 has port 0"),
            "{e}"
        );
        let e = validate(&web(&["10.88.0.2:80", "10.88.0.2:80"]), sub).unwrap_err();
        assert!(
            e.to_string().contains("10.88.0.2:80 is listed twice"),
            "{e}"
        );
        let mut inside = web(&[]);
        inside.frontend = Frontend::Virtual {
            address: Ipv4Addr::new(10, 88, 0, 9),
            port: 80,
        };
        let e = validate(&inside, sub).unwrap_err();
        assert!(
            e.to_string()
                .contains("virtual address 10.88.0.9 is inside the container subnet"),
            "{e}"
        );
        let mut aff = web(&["10.88.0.2:80"]);
        aff.affinity_secs = Some(0);
        assert!(validate(&aff, sub)
            .unwrap_err()
            .to_string()
            .contains("affinity"));
        assert!(validate(&web(&["10.88.0.2:80", "192.168.1.5:80"]), sub).is_ok());
    }

    #[test]
    fn resync_replaces_the_table_then_sets_every_service() {
        let b = resync(&table(), &[web(&["10.88.0.2:80"])]);
        assert_eq!(b.ops[0], Op::AddTable("tug-svc-n1".into()));
        assert_eq!(b.ops[1], Op::DelTable("tug-svc-n1".into()));
        assert_eq!(rules_in(&b, "dispatch").len(), 2);
        assert_eq!(rules_in(&b, "postrouting").len(), 4);
        assert_eq!(rules_in(&b, "svc-10.89.0.1-80-tcp").len(), 2);
        let ids: Vec<u32> = b
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::AddSet(s) => Some(s.id),
                _ => None,
            })
            .collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ids.len(), unique.len(), "set ids repeat: {ids:?}");
    }
}
