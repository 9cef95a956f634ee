//! Network policy: which addresses may open connections to (ingress) and from (egress) the
//! node's containers. Pure functions from a [`Policy`] to [`crate::nft::Batch`]es, so what
//! is programmed is unit-tested without a kernel; `network/policy.rs` applies them and
//! keeps the record.
//!
//! One table `ip tug-pol-<network>` per network, beside the NAT and services tables:
//!
//! ```text
//! set nodes   { type ipv4_addr }                 # the cluster's nodes: always let in
//! set g-NAME  { type ipv4_addr }                 # one per address group (a service, labels)
//! map ingress { type ipv4_addr : verdict }       # instance -> goto in-ADDR
//! map egress  { type ipv4_addr : verdict }       # instance -> jump out-ADDR
//! chain forward { type filter hook forward priority 0; policy accept;
//!     ct state established,related accept
//!     meta mark & 0x4000 != 0 meta mark set mark & ~0x4000 accept  # a published/ingress port
//!     ip saddr vmap @egress                      # returns when allowed, else reject
//!     ip daddr vmap @ingress                     # accepts when allowed, else reject
//! }
//! chain input { type filter hook input priority 0; policy accept;   # containers to the node
//!     ct state established,related accept
//!     ip saddr vmap @egress
//! }
//! chain in-10.88.0.5 {
//!     ip saddr @nodes accept
//!     ip saddr @g-service/orders accept                     # from: {service: orders}
//!     ip saddr & 255.255.255.0 == 192.0.2.0 meta l4proto tcp th dport 80 accept   # cidr, ports
//!     ... udp the same
//!     ct status dnat drop                        # came through a service address
//!     meta l4proto tcp reject with tcp reset
//!     reject                                     # ICMP port unreachable
//! }
//! chain out-10.88.0.5 { ...the same with daddr and `return`...; reject }
//! ```
//!
//! Only the first packet of a connection is judged (conntrack lets the rest through), and
//! it is judged in the forward hook, after the services table's DNAT: a connection to a
//! service address is matched on the instance it was given. Traffic the node itself makes
//! (the agent's health probes, `tugboat exec`'s checks, anything on the host) leaves by the
//! output hook and is never filtered; traffic from the other nodes' own addresses (`nodes`)
//! is let in too, which is how an ingress port on one node reaches an instance on another
//! (the first node masquerades it). A port the node exposes (a published port, an ingress
//! host port) is the service's own choice: packets that came in through one carry
//! [`EXPOSED_MARK`] from the DNAT and are let through.
//!
//! A change that only moves addresses in or out of groups (instances coming and going) is
//! one transaction of set element additions and deletions; anything else (rules, which
//! instances have policy) rebuilds the table in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::nft::build::{bits, ip_in, l4_dport, l4proto_is, mark, rule};
use crate::nft::{
    types, BaseChain, Batch, Chain, CmpOp, Expr, Hook, Op, PayloadBase, SetSpec, Verdict,
    CT_STATE_ESTABLISHED, CT_STATE_RELATED, DATA_VERDICT, FAMILY_IPV4, REG_1,
};
pub use crate::services::EXPOSED_MARK;

/// Whose packets a rule lets through.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peers {
    /// Any address (the rule only limits the ports).
    Any,
    /// The addresses of a group of [`Policy::groups`].
    Group(String),
    /// A range of addresses (outside the cluster, typically).
    Cidr(Ipv4Network),
}

/// One allowance: these peers, on these ports (TCP and UDP; none listed: every port). For
/// ingress the ports are the instance's; for egress the destination's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub peers: Peers,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// The policy of one container on this node. `None`: that direction is not restricted;
/// `Some(rules)`: only what a rule allows (an empty list allows nothing but the nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePolicy {
    pub address: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<PolicyRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<PolicyRule>>,
}

/// The whole policy of a network on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Named sets of addresses the rules refer to (the instances of a service, of services
    /// with some labels), on any node.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// The cluster's nodes' own addresses: always let in.
    #[serde(default)]
    pub nodes: BTreeSet<Ipv4Addr>,
    /// Containers with a policy (the others are not restricted).
    #[serde(default)]
    pub instances: Vec<InstancePolicy>,
}

impl Policy {
    /// The policy without the groups' and nodes' members: two policies with the same shape
    /// differ only in set elements.
    fn shape(&self) -> Policy {
        Policy {
            groups: self
                .groups
                .keys()
                .map(|k| (k.clone(), BTreeSet::new()))
                .collect(),
            nodes: BTreeSet::new(),
            instances: self.instances.clone(),
        }
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network policy: {0}")]
pub struct InvalidPolicy(pub String);

/// Checks a policy: group names, references, ports, instances listed once.
pub fn validate(p: &Policy) -> Result<(), InvalidPolicy> {
    let bad = |s: String| Err(InvalidPolicy(s));
    for name in p.groups.keys() {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_whitespace()) {
            return bad(format!(
                "group name {name:?} must be 1-64 characters without spaces"
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for i in &p.instances {
        if !seen.insert(i.address) {
            return bad(format!("instance {} is listed twice", i.address));
        }
        for (dir, rules) in [("ingress", &i.ingress), ("egress", &i.egress)] {
            for r in rules.iter().flatten() {
                if let Peers::Group(g) = &r.peers {
                    if !p.groups.contains_key(g) {
                        return bad(format!(
                            "instance {} {dir}: group {g:?} is not defined",
                            i.address
                        ));
                    }
                }
                if r.ports.contains(&0) {
                    return bad(format!("instance {} {dir}: port 0", i.address));
                }
            }
        }
    }
    Ok(())
}

/// The policy table name of a network.
pub fn table_name(network: &str) -> String {
    format!("tug-pol-{network}")
}

pub(crate) const NODES_SET: &str = "nodes";
pub(crate) const INGRESS_MAP: &str = "ingress";
pub(crate) const EGRESS_MAP: &str = "egress";

fn group_set(name: &str) -> String {
    format!("g-{name}")
}

fn in_chain(a: Ipv4Addr) -> String {
    format!("in-{a}")
}

fn out_chain(a: Ipv4Addr) -> String {
    format!("out-{a}")
}

/// `ip saddr` (offset 12) or `ip daddr` (16) into REG_1.
fn addr(offset: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: 4,
        dreg: REG_1,
    }
}

fn ct_established() -> Vec<Expr> {
    let mut e = bits(
        Expr::CtState { dreg: REG_1 },
        CT_STATE_ESTABLISHED | CT_STATE_RELATED,
        true,
    );
    e.push(Expr::Verdict(Verdict::Accept));
    e
}

/// The set ids of the transaction: groups get 10.., the fixed sets 1-3.
struct Ids {
    groups: BTreeMap<String, u32>,
}

const NODES_ID: u32 = 1;
/// `ct status dnat` (`IPS_DST_NAT`).
const IPS_DST_NAT: u32 = 0x20;
const INGRESS_ID: u32 = 2;
const EGRESS_ID: u32 = 3;

/// The rules of one direction of one instance's chain. `offset` is where the peer's
/// address is (12 source for ingress, 16 destination for egress).
fn push_rules(
    b: &mut Batch,
    table: &str,
    chain: &str,
    rules: &[PolicyRule],
    offset: u32,
    allow: Verdict,
    ids: &Ids,
) {
    for r in rules {
        let peer: Vec<Expr> = match &r.peers {
            Peers::Any => vec![],
            Peers::Group(g) => vec![
                addr(offset),
                Expr::Lookup {
                    set: group_set(g),
                    set_id: ids.groups[g],
                    sreg: REG_1,
                    dreg: None,
                    invert: false,
                },
            ],
            Peers::Cidr(net) => ip_in(offset, *net, CmpOp::Eq),
        };
        if r.ports.is_empty() {
            let mut e = peer;
            e.push(Expr::Verdict(allow.clone()));
            b.push(rule(table, chain, e));
            continue;
        }
        for port in &r.ports {
            for proto in [crate::Protocol::Tcp, crate::Protocol::Udp] {
                let mut e = peer.clone();
                e.extend(l4_dport(proto.number(), *port));
                e.push(Expr::Verdict(allow.clone()));
                b.push(rule(table, chain, e));
            }
        }
    }
    // Refused. Through a service address or port (DNAT) the packet is dropped: its
    // connection is not confirmed yet, so a reset or ICMP error would leave with the
    // instance's address, not the one the client used, and be ignored by it.
    b.push(rule(
        table,
        chain,
        bits(Expr::CtStatus { dreg: REG_1 }, IPS_DST_NAT, true)
            .into_iter()
            .chain([Expr::Verdict(Verdict::Drop)])
            .collect(),
    ));
    // Otherwise a TCP reset, or ICMP port unreachable, so clients fail at once.
    let mut tcp = l4proto_is(crate::Protocol::Tcp.number());
    tcp.push(Expr::Reject { tcp_reset: true });
    b.push(rule(table, chain, tcp));
    b.push(rule(table, chain, vec![Expr::Reject { tcp_reset: false }]));
}

fn elements(addrs: impl IntoIterator<Item = Ipv4Addr>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    addrs
        .into_iter()
        .map(|a| (a.octets().to_vec(), None))
        .collect()
}

fn addr_set(table: &str, name: &str, id: u32) -> Op {
    Op::AddSet(SetSpec {
        table: table.into(),
        name: name.into(),
        id,
        flags: 0,
        key_type: types::IPV4_ADDR,
        key_len: 4,
        data: None,
    })
}

/// Builds the whole table from `p`, atomically replacing whatever was there (the table is
/// made first so the delete never fails).
pub fn resync(table: &str, p: &Policy) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::AddTable(table.into()));
    b.push(Op::DelTable(table.into()));
    b.push(Op::AddTable(table.into()));
    let ids = Ids {
        groups: p
            .groups
            .keys()
            .enumerate()
            .map(|(i, g)| (g.clone(), 10 + i as u32))
            .collect(),
    };
    b.push(addr_set(table, NODES_SET, NODES_ID));
    if !p.nodes.is_empty() {
        b.push(Op::AddSetElements {
            table: table.into(),
            set: NODES_SET.into(),
            elements: elements(p.nodes.iter().copied()),
        });
    }
    for (g, members) in &p.groups {
        b.push(addr_set(table, &group_set(g), ids.groups[g]));
        if !members.is_empty() {
            b.push(Op::AddSetElements {
                table: table.into(),
                set: group_set(g),
                elements: elements(members.iter().copied()),
            });
        }
    }
    for (name, id) in [(INGRESS_MAP, INGRESS_ID), (EGRESS_MAP, EGRESS_ID)] {
        b.push(Op::AddSet(SetSpec {
            table: table.into(),
            name: name.into(),
            id,
            flags: 0,
            key_type: types::IPV4_ADDR,
            key_len: 4,
            data: Some((DATA_VERDICT, 0)),
        }));
    }
    // The instances' chains before the maps' elements that point at them.
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    for i in &p.instances {
        if let Some(rules) = &i.ingress {
            let chain = in_chain(i.address);
            b.push(Op::AddChain(Chain {
                table: table.into(),
                name: chain.clone(),
                base: None,
            }));
            let mut nodes = vec![
                addr(12),
                Expr::Lookup {
                    set: NODES_SET.into(),
                    set_id: NODES_ID,
                    sreg: REG_1,
                    dreg: None,
                    invert: false,
                },
            ];
            nodes.push(Expr::Verdict(Verdict::Accept));
            b.push(rule(table, &chain, nodes));
            push_rules(&mut b, table, &chain, rules, 12, Verdict::Accept, &ids);
            ingress.push((i.address.octets().to_vec(), Verdict::Goto(chain)));
        }
        if let Some(rules) = &i.egress {
            let chain = out_chain(i.address);
            b.push(Op::AddChain(Chain {
                table: table.into(),
                name: chain.clone(),
                base: None,
            }));
            push_rules(&mut b, table, &chain, rules, 16, Verdict::Return, &ids);
            egress.push((i.address.octets().to_vec(), Verdict::Jump(chain)));
        }
    }
    for (map, elems) in [(INGRESS_MAP, ingress), (EGRESS_MAP, egress)] {
        if !elems.is_empty() {
            b.push(Op::AddElements {
                table: table.into(),
                set: map.into(),
                elements: elems,
            });
        }
    }
    for (name, hook) in [("forward", Hook::Forward), ("input", Hook::Input)] {
        b.push(Op::AddChain(Chain {
            table: table.into(),
            name: name.into(),
            base: Some(BaseChain {
                kind: "filter",
                hook,
                priority: 0,
                drop_policy: false,
            }),
        }));
        b.push(rule(table, name, ct_established()));
        if name == "forward" {
            let mut exposed = bits(mark(), EXPOSED_MARK, true);
            exposed.extend(crate::services::mark_update(!EXPOSED_MARK, 0));
            exposed.push(Expr::Verdict(Verdict::Accept));
            b.push(rule(table, name, exposed));
        }
        b.push(rule(
            table,
            name,
            vec![
                addr(12),
                Expr::VerdictMap {
                    set: EGRESS_MAP.into(),
                    set_id: EGRESS_ID,
                    sreg: REG_1,
                },
            ],
        ));
        if name == "forward" {
            b.push(rule(
                table,
                name,
                vec![
                    addr(16),
                    Expr::VerdictMap {
                        set: INGRESS_MAP.into(),
                        set_id: INGRESS_ID,
                        sreg: REG_1,
                    },
                ],
            ));
        }
    }
    b
}

/// Turns `current` into `wanted`: when only the groups' and nodes' members differ, one
/// transaction of element additions and deletions (`None` when nothing differs at all);
/// otherwise the whole table rebuilt.
pub fn change(table: &str, current: &Policy, wanted: &Policy) -> Option<Batch> {
    if current == wanted {
        return None;
    }
    if current.shape() != wanted.shape() {
        return Some(resync(table, wanted));
    }
    let mut b = Batch::new(FAMILY_IPV4);
    let mut sets: Vec<(String, &BTreeSet<Ipv4Addr>, &BTreeSet<Ipv4Addr>)> =
        vec![(NODES_SET.into(), &current.nodes, &wanted.nodes)];
    for (g, want) in &wanted.groups {
        sets.push((group_set(g), &current.groups[g], want));
    }
    for (set, had, want) in sets {
        let gone: Vec<Vec<u8>> = had.difference(want).map(|a| a.octets().to_vec()).collect();
        if !gone.is_empty() {
            b.push(Op::DelElements {
                table: table.into(),
                set: set.clone(),
                keys: gone,
            });
        }
        let new = elements(want.difference(had).copied());
        if !new.is_empty() {
            b.push(Op::AddSetElements {
                table: table.into(),
                set,
                elements: new,
            });
        }
    }
    Some(b)
}

/// Removes the policy table.
pub fn teardown(table: &str) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::DelTable(table.into()));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn payments() -> Policy {
        let mut groups = BTreeMap::new();
        groups.insert(
            "service/orders".to_string(),
            [a("10.88.1.5"), a("10.88.2.7")].into(),
        );
        Policy {
            groups,
            nodes: [a("192.168.1.1")].into(),
            instances: vec![InstancePolicy {
                address: a("10.88.1.9"),
                ingress: Some(vec![
                    PolicyRule {
                        peers: Peers::Group("service/orders".into()),
                        ports: vec![],
                    },
                    PolicyRule {
                        peers: Peers::Cidr("192.0.2.0/24".parse().unwrap()),
                        ports: vec![80],
                    },
                ]),
                egress: None,
            }],
        }
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

    #[test]
    fn an_instance_with_ingress_rules_gets_a_chain_that_ends_in_reject() {
        let b = resync("tug-pol-t", &payments());
        let rules = rules_in(&b, "in-10.88.1.9");
        // nodes, the group, cidr x port 80 x (tcp, udp), drop if DNATed, the two rejects.
        assert_eq!(rules.len(), 7, "{rules:#?}");
        assert!(rules[1].iter().any(|e| matches!(e,
            Expr::Lookup { set, .. } if set == "g-service/orders")));
        assert!(rules[2].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![192, 0, 2, 0]
        }));
        assert!(rules[2].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: 80u16.to_be_bytes().to_vec()
        }));
        assert_eq!(rules[4].last(), Some(&Expr::Verdict(Verdict::Drop)));
        assert_eq!(rules[5].last(), Some(&Expr::Reject { tcp_reset: true }));
        assert_eq!(rules[6], &vec![Expr::Reject { tcp_reset: false }]);
        // The map points at the chain; no egress chain.
        assert!(b.ops.iter().any(|op| matches!(op,
            Op::AddElements { set, elements, .. } if set == INGRESS_MAP
                && elements == &vec![(vec![10, 88, 1, 9], Verdict::Goto("in-10.88.1.9".into()))])));
        assert!(rules_in(&b, "out-10.88.1.9").is_empty());
    }

    #[test]
    fn forward_accepts_established_and_exposed_ports_before_the_maps() {
        let b = resync("tug-pol-t", &payments());
        let fwd = rules_in(&b, "forward");
        assert_eq!(fwd.len(), 4);
        assert_eq!(fwd[0][0], Expr::CtState { dreg: REG_1 });
        assert!(fwd[1].contains(&Expr::Verdict(Verdict::Accept)));
        assert!(matches!(fwd[2].last(), Some(Expr::VerdictMap { set, .. }) if set == EGRESS_MAP));
        assert!(matches!(fwd[3].last(), Some(Expr::VerdictMap { set, .. }) if set == INGRESS_MAP));
        assert_eq!(rules_in(&b, "input").len(), 2);
    }

    #[test]
    fn egress_rules_return_so_the_destinations_ingress_is_checked_too() {
        let mut p = payments();
        p.instances[0].egress = Some(vec![PolicyRule {
            peers: Peers::Any,
            ports: vec![53],
        }]);
        let b = resync("tug-pol-t", &p);
        let out = rules_in(&b, "out-10.88.1.9");
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].last(), Some(&Expr::Verdict(Verdict::Return)));
        assert!(b.ops.iter().any(|op| matches!(op,
            Op::AddElements { set, elements, .. } if set == EGRESS_MAP
                && elements[0].1 == Verdict::Jump("out-10.88.1.9".into()))));
    }

    #[test]
    fn membership_changes_are_element_changes_only() {
        let old = payments();
        let mut new = old.clone();
        let g = new.groups.get_mut("service/orders").unwrap();
        g.remove(&a("10.88.2.7"));
        g.insert(a("10.88.3.3"));
        new.nodes.insert(a("192.168.1.2"));
        let b = change("tug-pol-t", &old, &new).unwrap();
        assert_eq!(
            b.ops,
            vec![
                Op::AddSetElements {
                    table: "tug-pol-t".into(),
                    set: NODES_SET.into(),
                    elements: vec![(vec![192, 168, 1, 2], None)],
                },
                Op::DelElements {
                    table: "tug-pol-t".into(),
                    set: "g-service/orders".into(),
                    keys: vec![vec![10, 88, 2, 7]],
                },
                Op::AddSetElements {
                    table: "tug-pol-t".into(),
                    set: "g-service/orders".into(),
                    elements: vec![(vec![10, 88, 3, 3], None)],
                },
            ]
        );
        assert!(change("tug-pol-t", &new, &new).is_none());
    }

    #[test]
    fn a_rule_change_rebuilds_the_table() {
        let old = payments();
        let mut new = old.clone();
        new.instances[0].ingress.as_mut().unwrap().pop();
        let b = change("tug-pol-t", &old, &new).unwrap();
        assert_eq!(b.ops[1], Op::DelTable("tug-pol-t".into()));
    }

    #[test]
    fn validate_refuses_undefined_groups_port_zero_and_duplicates() {
        let mut p = payments();
        p.instances[0].ingress.as_mut().unwrap()[0].peers = Peers::Group("nope".into());
        assert!(validate(&p)
            .unwrap_err()
            .0
            .contains("\"nope\" is not defined"));
        let mut p = payments();
        p.instances[0].ingress.as_mut().unwrap()[1].ports = vec![0];
        assert!(validate(&p).unwrap_err().0.contains("port 0"));
        let mut p = payments();
        p.instances.push(p.instances[0].clone());
        assert!(validate(&p).unwrap_err().0.contains("listed twice"));
        assert!(validate(&payments()).is_ok());
    }
}
