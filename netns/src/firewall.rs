//! Which nftables rules a network needs. Pure functions from a network's description to
//! [`nft::Batch`]es; applying them is the [`crate::ops::NetOps`] implementation's job.
//!
//! Each network owns one table `ip tug-<network>`:
//!
//! ```text
//! chain prerouting  { type nat hook prerouting priority -100; fib daddr type local jump ports }
//! chain output      { type nat hook output priority -100;     fib daddr type local jump ports }
//! chain ports       { meta l4proto tcp th dport 8080 dnat to 10.88.0.2:80 ... }
//! chain postrouting { type nat hook postrouting priority 100;
//!     ct status dnat ip saddr SUBNET oifname BRIDGE masquerade      # hairpin
//!     ip saddr 127.0.0.0/8 oifname BRIDGE masquerade                # host's 127.0.0.1:port
//!     ip saddr SUBNET oifname != BRIDGE [ip daddr != CLUSTER] masquerade   # egress, optional
//! }
//! ```
//!
//! The `ports` chain is rewritten whole (flush + add, one transaction) from the persisted
//! leases every time a container's published ports change: the kernel then always matches
//! the lease file, whatever happened before (a crash, a second detach).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::nft::{
    BaseChain, Batch, Chain, CmpOp, Expr, Hook, MetaKey, NatKind, Op, PayloadBase, Rule, Verdict,
    FAMILY_IPV4, REG_1, REG_2,
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

fn base(table: &str, name: &str, hook: Hook, priority: i32) -> Op {
    Op::AddChain(Chain {
        table: table.to_string(),
        name: name.to_string(),
        base: Some(BaseChain {
            kind: "nat",
            hook,
            priority,
        }),
    })
}

fn rule(table: &str, chain: &str, exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        table: table.into(),
        chain: chain.into(),
        exprs,
    })
}

fn ip_in(offset: u32, net: Ipv4Network, op: CmpOp) -> Vec<Expr> {
    vec![
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: 4,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: net.mask().octets().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: net.network().octets().to_vec(),
        },
    ]
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
    b.push(base(t, "prerouting", Hook::Prerouting, -100));
    b.push(base(t, "output", Hook::Output, -100));
    b.push(base(t, "postrouting", Hook::Postrouting, 100));
    for chain in ["prerouting", "output", "postrouting"] {
        b.push(Op::FlushChain {
            table: t.into(),
            chain: chain.into(),
        });
    }
    for chain in ["prerouting", "output"] {
        let mut e = fib_local();
        e.push(Expr::Verdict(Verdict::Jump(PORTS.into())));
        b.push(rule(t, chain, e));
    }
    // Hairpin: a container reaching a published port of a container on the same bridge
    // through the host's address must see replies come back from that address.
    let mut hairpin = vec![
        Expr::CtStatus { dreg: REG_1 },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: 0x20u32.to_ne_bytes().to_vec(), // IPS_DST_NAT
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
    ];
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

/// Rewrites the `ports` chain to exactly `published` (mapping, container address).
pub fn ports(spec: &FirewallSpec, published: &[(PortMapping, Ipv4Addr)]) -> Batch {
    let t = spec.table.as_str();
    let mut b = Batch::new(FAMILY_IPV4);
    b.push(Op::FlushChain {
        table: t.into(),
        chain: PORTS.into(),
    });
    for (m, ip) in published {
        b.push(rule(
            t,
            PORTS,
            vec![
                Expr::Meta {
                    key: MetaKey::L4Proto,
                    dreg: REG_1,
                },
                Expr::Cmp {
                    sreg: REG_1,
                    op: CmpOp::Eq,
                    data: vec![m.protocol.number()],
                },
                Expr::Payload {
                    base: PayloadBase::Transport,
                    offset: 2,
                    len: 2,
                    dreg: REG_1,
                },
                Expr::Cmp {
                    sreg: REG_1,
                    op: CmpOp::Eq,
                    data: m.host_port.to_be_bytes().to_vec(),
                },
                Expr::Immediate {
                    dreg: REG_1,
                    data: ip.octets().to_vec(),
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
            ],
        ));
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

    #[test]
    fn setup_creates_table_before_chains_and_flushes_before_adding_rules() {
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
        let last_chain = b
            .ops
            .iter()
            .rposition(|o| matches!(o, Op::AddChain(_)))
            .unwrap();
        assert!(last_chain < first_flush && first_flush < first_rule);
        assert!(!b
            .ops
            .iter()
            .any(|o| matches!(o, Op::FlushChain { chain, .. } if chain == "ports")));
    }

    #[test]
    fn masquerade_rule_only_when_enabled_and_excludes_cluster() {
        let on = setup(&spec(true));
        let off = setup(&spec(false));
        assert_eq!(rules_in(&on, "postrouting").len(), 3);
        assert_eq!(rules_in(&off, "postrouting").len(), 2);
        let egress = rules_in(&on, "postrouting")[2];
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
    fn ports_chain_is_flushed_then_one_dnat_rule_per_mapping() {
        let m = |p, h, c| PortMapping {
            protocol: p,
            host_port: h,
            container_port: c,
        };
        let b = ports(
            &spec(true),
            &[
                (m(Protocol::Tcp, 8080, 80), Ipv4Addr::new(10, 88, 0, 2)),
                (m(Protocol::Udp, 5353, 53), Ipv4Addr::new(10, 88, 0, 3)),
            ],
        );
        assert!(matches!(&b.ops[0], Op::FlushChain { chain, .. } if chain == "ports"));
        let r = rules_in(&b, "ports");
        assert_eq!(r.len(), 2);
        assert!(r[0].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![6]
        }));
        assert!(r[0].contains(&Expr::Immediate {
            dreg: REG_1,
            data: vec![10, 88, 0, 2]
        }));
        assert!(r[1].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![17]
        }));
        assert!(r[1].contains(&Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: 5353u16.to_be_bytes().to_vec()
        }));
        assert!(ports(&spec(true), &[]).ops.len() == 1);
    }
}
