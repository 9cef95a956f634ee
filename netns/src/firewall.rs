//! Which nftables rules a network needs. Pure functions from a network's description to
//! [`crate::nft::Batch`]es; applying them is the [`crate::ops::NetOps`] implementation's job.
//!
//! Each network owns one table `ip tug-<network>`:
//!
//! ```text
//! chain prerouting  { type nat hook prerouting priority -100; fib daddr type local jump ports }
//! chain output      { type nat hook output priority -100;     fib daddr type local jump ports }
//! map tcp-ports     { type inet_service : verdict; elements = { 8080 : jump c-tv1234... } }
//! map udp-ports     { ... }
//! chain ports       { meta l4proto tcp th dport vmap @tcp-ports
//!                     meta l4proto udp th dport vmap @udp-ports }
//! chain c-<veth>    { meta l4proto tcp th dport 8080 dnat to 10.88.0.2:80 ... }  # per container
//! chain postrouting { type nat hook postrouting priority 100;
//!     ct status dnat ip saddr SUBNET oifname BRIDGE masquerade      # hairpin
//!     ip saddr 127.0.0.0/8 oifname BRIDGE masquerade                # host's 127.0.0.1:port
//!     ip saddr SUBNET oifname != BRIDGE [ip daddr != CLUSTER] masquerade   # egress, optional
//! }
//! ```
//!
//! Publishing a container's ports adds its chain and its map elements; unpublishing deletes
//! them by key: both cost the same whatever else is published. When the kernel disagrees
//! with the leases (a crash between the lease and the rules, a flushed ruleset),
//! [`resync`] rebuilds the whole table from the leases in one transaction.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::nft::build::{bits, dport, ip_in, l4_dport, l4proto_is, rule};
use crate::nft::{
    BaseChain, Batch, Chain, CmpOp, Expr, Hook, MetaKey, NatKind, Op, Verdict, FAMILY_IPV4, REG_1,
    REG_2,
};
use crate::PortMapping;

/// What the rules of one network depend on.
#[derive(Debug, Clone)]
pub struct FirewallSpec {
    pub table: String,
    pub bridge: String,
    pub subnet: Ipv4Network,
    pub masquerade: bool,
    pub cluster_cidr: Option<Ipv4Network>,
}

/// The nftables table name of a network.
pub fn table_name(network: &str) -> String {
    format!("tug-{network}")
}

const PORTS: &str = "ports";
const TCP_MAP: &str = "tcp-ports";
const UDP_MAP: &str = "udp-ports";

fn map_of(p: crate::Protocol) -> &'static str {
    match p {
        crate::Protocol::Tcp => TCP_MAP,
        crate::Protocol::Udp => UDP_MAP,
    }
}

/// The chain holding one container's DNAT rules.
pub fn container_chain(host_veth: &str) -> String {
    format!("c-{host_veth}")
}

/// One container's published ports, as the rules need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<PortMapping>,
}

fn base(table: &str, name: &str, hook: Hook, priority: i32) -> Op {
    Op::AddChain(Chain {
        table: table.to_string(),
        name: name.to_string(),
        base: Some(BaseChain {
            kind: "nat",
            hook,
            priority,
            drop_policy: false,
        }),
    })
}

fn saddr_in(net: Ipv4Network) -> Vec<Expr> {
    ip_in(12, net, CmpOp::Eq)
}

fn oifname(name: &str, op: CmpOp) -> Vec<Expr> {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    vec![
        Expr::Meta {
            key: MetaKey::OifName,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data,
        },
    ]
}

fn fib_local() -> Vec<Expr> {
    vec![
        Expr::FibDaddrType { dreg: REG_1 },
        // RTN_LOCAL, in host byte order as the fib expression stores it.
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: 2u32.to_ne_bytes().to_vec(),
        },
    ]
}

/// Creates (or re-asserts) the network's table, chains and NAT rules. Idempotent: the base
/// chains are flushed and refilled in the same transaction; `ports` is left as it is.
pub fn setup(spec: &FirewallSpec) -> Batch {
    let t = spec.table.as_str();
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::AddTable(t.into()));
    b.push(Op::AddChain(Chain {
        table: t.into(),
        name: PORTS.into(),
        base: None,
    }));
    if spec.masquerade {
        b.push(Op::AddChain(Chain {
            table: t.into(),
            name: PEERS.into(),
            base: None,
        }));
    }
    b.push(base(t, "prerouting", Hook::Prerouting, -100));
    b.push(base(t, "output", Hook::Output, -100));
    b.push(base(t, "postrouting", Hook::Postrouting, 100));
    for (i, map) in [TCP_MAP, UDP_MAP].iter().enumerate() {
        b.push(Op::AddVerdictMap {
            table: t.into(),
            name: map.to_string(),
            id: i as u32 + 1,
            key_len: 2,
        });
    }
    for chain in [PORTS, "prerouting", "output", "postrouting"] {
        b.push(Op::FlushChain {
            table: t.into(),
            chain: chain.into(),
        });
    }
    for (i, (proto, map)) in [(6u8, TCP_MAP), (17u8, UDP_MAP)].iter().enumerate() {
        b.push(rule(
            t,
            PORTS,
            l4proto_is(*proto)
                .into_iter()
                .chain([
                    dport(),
                    Expr::VerdictMap {
                        set: map.to_string(),
                        set_id: i as u32 + 1,
                        sreg: REG_1,
                    },
                ])
                .collect(),
        ));
    }
    for chain in ["prerouting", "output"] {
        let mut e = fib_local();
        e.push(Expr::Verdict(Verdict::Jump(PORTS.into())));
        b.push(rule(t, chain, e));
    }
    // Hairpin: a container reaching a published port of a container on the same bridge
    // through the host's address must see replies come back from that address.
    // ct status dnat (IPS_DST_NAT).
    let mut hairpin = bits(Expr::CtStatus { dreg: REG_1 }, 0x20, true);
    hairpin.extend(saddr_in(spec.subnet));
    hairpin.extend(oifname(&spec.bridge, CmpOp::Eq));
    hairpin.push(Expr::Masquerade);
    b.push(rule(t, "postrouting", hairpin));
    // The host connecting to 127.0.0.1:port: the DNATed packet leaves on the bridge with a
    // loopback source, which the container could not answer.
    let loopback = Ipv4Network::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid /8");
    let mut local = saddr_in(loopback);
    local.extend(oifname(&spec.bridge, CmpOp::Eq));
    local.push(Expr::Masquerade);
    b.push(rule(t, "postrouting", local));
    if spec.masquerade {
        // Other nodes' container subnets keep the container's address (network policy
        // matches on it there): `peers` accepts them before the masquerade.
        b.push(rule(
            t,
            "postrouting",
            vec![Expr::Verdict(Verdict::Jump(PEERS.into()))],
        ));
        let mut egress = saddr_in(spec.subnet);
        egress.extend(oifname(&spec.bridge, CmpOp::Neq));
        if let Some(cluster) = spec.cluster_cidr {
            egress.extend(ip_in(16, cluster, CmpOp::Neq));
        }
        egress.push(Expr::Masquerade);
        b.push(rule(t, "postrouting", egress));
    }
    b
}

/// Publishes one container's ports: its chain with a DNAT rule per port, and one map
/// element per port jumping to that chain. Re-publishing the same set is harmless.
pub fn publish(spec: &FirewallSpec, p: &Published) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    push_publish(&mut b, spec, p);
    b
}

fn push_publish(b: &mut Batch, spec: &FirewallSpec, p: &Published) {
    if p.ports.is_empty() {
        return;
    }
    let t = spec.table.as_str();
    let chain = container_chain(&p.host_veth);
    b.push(Op::AddChain(Chain {
        table: t.into(),
        name: chain.clone(),
        base: None,
    }));
    b.push(Op::FlushChain {
        table: t.into(),
        chain: chain.clone(),
    });
    for m in &p.ports {
        b.push(rule(
            t,
            &chain,
            l4_dport(m.protocol.number(), m.host_port)
                .into_iter()
                // Network policy lets what comes through a published port in.
                .chain(crate::services::mark_update(
                    !crate::services::EXPOSED_MARK,
                    crate::services::EXPOSED_MARK,
                ))
                .chain([
                    Expr::Immediate {
                        dreg: REG_1,
                        data: p.ip.octets().to_vec(),
                    },
                    Expr::Immediate {
                        dreg: REG_2,
                        data: m.container_port.to_be_bytes().to_vec(),
                    },
                    Expr::Nat {
                        kind: NatKind::Dnat,
                        reg_addr: REG_1,
                        reg_proto: Some(REG_2),
                    },
                ])
                .collect(),
        ));
    }
    for proto in [crate::Protocol::Tcp, crate::Protocol::Udp] {
        let elements: Vec<(Vec<u8>, Verdict)> = p
            .ports
            .iter()
            .filter(|m| m.protocol == proto)
            .map(|m| {
                (
                    m.host_port.to_be_bytes().to_vec(),
                    Verdict::Jump(chain.clone()),
                )
            })
            .collect();
        if !elements.is_empty() {
            b.push(Op::AddElements {
                table: t.into(),
                set: map_of(proto).into(),
                elements,
            });
        }
    }
}

/// Unpublishes one container's ports: its map elements, then its chain. Fails (ENOENT)
/// when they are not all there; the caller then uses [`resync`].
pub fn unpublish(spec: &FirewallSpec, p: &Published) -> Batch {
    let t = spec.table.as_str();
    let mut b = Batch::new(FAMILY_IPV4);
    if p.ports.is_empty() {
        return b;
    }
    for proto in [crate::Protocol::Tcp, crate::Protocol::Udp] {
        let keys: Vec<Vec<u8>> = p
            .ports
            .iter()
            .filter(|m| m.protocol == proto)
            .map(|m| m.host_port.to_be_bytes().to_vec())
            .collect();
        if !keys.is_empty() {
            b.push(Op::DelElements {
                table: t.into(),
                set: map_of(proto).into(),
                keys,
            });
        }
    }
    b.push(Op::DelChain {
        table: t.into(),
        chain: container_chain(&p.host_veth),
    });
    b
}

/// The chain of other nodes' container subnets, which are not masqueraded.
pub const PEERS: &str = "peers";

/// Makes the `peers` chain accept (leave unmasqueraded) exactly these destinations: one
/// transaction, flushed and refilled. Nothing when masquerade is off (no chain).
pub fn set_peer_subnets(spec: &FirewallSpec, subnets: &[Ipv4Network]) -> Batch {
    let t = spec.table.as_str();
    let mut b = Batch::new(FAMILY_IPV4);
    if !spec.masquerade {
        return b;
    }
    b.push(Op::AddChain(Chain {
        table: t.into(),
        name: PEERS.into(),
        base: None,
    }));
    b.push(Op::FlushChain {
        table: t.into(),
        chain: PEERS.into(),
    });
    for net in subnets {
        let mut e = ip_in(16, *net, CmpOp::Eq);
        e.push(Expr::Verdict(Verdict::Accept));
        b.push(rule(t, PEERS, e));
    }
    b
}

/// Rebuilds the whole table from `published`, atomically: whatever was there (stale
/// container chains, a flushed ruleset) is replaced.
pub fn resync(spec: &FirewallSpec, published: &[Published]) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    // "add; delete; add" so the delete never fails for a missing table.
    b.push(Op::AddTable(spec.table.clone()));
    b.push(Op::DelTable(spec.table.clone()));
    b.ops.extend(setup(spec).ops);
    for p in published {
        push_publish(&mut b, spec, p);
    }
    b
}

/// Removes the network's table and every rule in it.
pub fn teardown(spec: &FirewallSpec) -> Batch {
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::DelTable(spec.table.clone()));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    fn spec(masquerade: bool) -> FirewallSpec {
        FirewallSpec {
            table: table_name("n1"),
            bridge: "tugbr0".into(),
            subnet: "10.88.0.0/24".parse().unwrap(),
            masquerade,
            cluster_cidr: Some("10.88.0.0/16".parse().unwrap()),
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

    fn web() -> Published {
        let m = |p, h, c| PortMapping {
            protocol: p,
            host_port: h,
            container_port: c,
        };
        Published {
            host_veth: "tv0001".into(),
            ip: Ipv4Addr::new(10, 88, 0, 2),
            ports: vec![
                m(Protocol::Tcp, 8080, 80),
                m(Protocol::Udp, 5353, 53),
                m(Protocol::Tcp, 8443, 443),
            ],
        }
    }

    #[test]
    fn setup_creates_table_chains_and_maps_before_flushing_and_rules() {
        let b = setup(&spec(true));
        assert_eq!(b.ops[0], Op::AddTable("tug-n1".into()));
        let first_flush = b
            .ops
            .iter()
            .position(|o| matches!(o, Op::FlushChain { .. }))
            .unwrap();
        let first_rule = b
            .ops
            .iter()
            .position(|o| matches!(o, Op::AddRule(_)))
            .unwrap();
        let last_def = b
            .ops
            .iter()
            .rposition(|o| matches!(o, Op::AddChain(_) | Op::AddVerdictMap { .. }))
            .unwrap();
        assert!(last_def < first_flush && first_flush < first_rule);
        let ports = rules_in(&b, "ports");
        assert_eq!(ports.len(), 2);
        assert!(
            matches!(ports[0].last(), Some(Expr::VerdictMap { set, .. }) if set == "tcp-ports")
        );
        assert!(
            matches!(ports[1].last(), Some(Expr::VerdictMap { set, .. }) if set == "udp-ports")
        );
    }

    #[test]
    fn other_nodes_subnets_are_accepted_before_the_masquerade() {
        let b = set_peer_subnets(&spec(true), &["10.88.2.0/24".parse().unwrap()]);
        let rules = rules_in(&b, PEERS);
        assert_eq!(rules.len(), 1);
        assert!(rules[0].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![10, 88, 2, 0]
        }));
        assert_eq!(rules[0].last(), Some(&Expr::Verdict(Verdict::Accept)));
        assert!(set_peer_subnets(&spec(false), &[]).ops.is_empty());
    }

    #[test]
    fn masquerade_rule_only_when_enabled_and_excludes_cluster() {
        let on = setup(&spec(true));
        let off = setup(&spec(false));
        assert_eq!(rules_in(&on, "postrouting").len(), 4);
        assert_eq!(rules_in(&off, "postrouting").len(), 2);
        assert_eq!(
            rules_in(&on, "postrouting")[2],
            &vec![Expr::Verdict(Verdict::Jump(PEERS.into()))]
        );
        let egress = rules_in(&on, "postrouting")[3];
        assert!(egress.contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Neq,
            data: b"tugbr0\0".to_vec()
        }));
        assert!(egress.contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Neq,
            data: vec![10, 88, 0, 0]
        }));
        assert_eq!(egress.last(), Some(&Expr::Masquerade));
    }

    #[test]
    fn publish_adds_chain_then_rules_then_elements_per_protocol() {
        let b = publish(&spec(true), &web());
        assert!(matches!(&b.ops[0], Op::AddChain(c) if c.name == "c-tv0001" && c.base.is_none()));
        assert!(matches!(&b.ops[1], Op::FlushChain { chain, .. } if chain == "c-tv0001"));
        let r = rules_in(&b, "c-tv0001");
        assert_eq!(r.len(), 3);
        assert!(r[0].contains(&Expr::Immediate {
            dreg: REG_1,
            data: vec![10, 88, 0, 2]
        }));
        assert!(r[1].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![17]
        }));
        let jump = Verdict::Jump("c-tv0001".into());
        let tail: Vec<&Op> = b.ops.iter().skip(5).collect();
        assert_eq!(
            tail,
            vec![
                &Op::AddElements {
                    table: "tug-n1".into(),
                    set: "tcp-ports".into(),
                    elements: vec![
                        (vec![0x1f, 0x90], jump.clone()),
                        (vec![0x20, 0xfb], jump.clone())
                    ],
                },
                &Op::AddElements {
                    table: "tug-n1".into(),
                    set: "udp-ports".into(),
                    elements: vec![(5353u16.to_be_bytes().to_vec(), jump)],
                },
            ]
        );
        assert!(publish(
            &spec(true),
            &Published {
                ports: vec![],
                ..web()
            }
        )
        .ops
        .is_empty());
    }

    #[test]
    fn unpublish_deletes_elements_before_the_chain_they_jump_to() {
        let b = unpublish(&spec(true), &web());
        assert_eq!(b.ops.len(), 3);
        assert!(
            matches!(&b.ops[0], Op::DelElements { set, keys, .. } if set == "tcp-ports" && keys.len() == 2)
        );
        assert!(matches!(&b.ops[1], Op::DelElements { set, .. } if set == "udp-ports"));
        assert_eq!(
            b.ops[2],
            Op::DelChain {
                table: "tug-n1".into(),
                chain: "c-tv0001".into()
            }
        );
    }

    #[test]
    fn resync_replaces_the_table_then_publishes_everyone() {
        let b = resync(&spec(true), &[web()]);
        assert_eq!(b.ops[0], Op::AddTable("tug-n1".into()));
        assert_eq!(b.ops[1], Op::DelTable("tug-n1".into()));
        assert_eq!(b.ops[2], Op::AddTable("tug-n1".into()));
        assert_eq!(rules_in(&b, "c-tv0001").len(), 3);
    }
}
