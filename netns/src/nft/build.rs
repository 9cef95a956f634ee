//! Expression builders shared by the tables tug-netns programs (firewall, services, policy):
//! one spelling of a rule, a masked compare, a port match.

use super::{CmpOp, Expr, MetaKey, Op, PayloadBase, Rule, REG_1};

/// A rule appended to `chain` of `table`.
pub(crate) fn rule(table: &str, chain: &str, exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        table: table.into(),
        chain: chain.into(),
        exprs,
    })
}

/// `load` into REG_1, AND `mask`, compare with `data` (`ip saddr 10.0.0.0/8`,
/// `meta mark & 0x4000 != 0`).
pub(crate) fn masked_cmp(load: Expr, mask: Vec<u8>, op: CmpOp, data: Vec<u8>) -> Vec<Expr> {
    let zeros = vec![0; mask.len()];
    vec![
        load,
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask,
            xor: zeros,
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data,
        },
    ]
}

/// Whether any bit of `mask` is set (`set`) or none is, in a 32-bit value `load` puts in
/// REG_1 (a mark, ct state, ct status).
pub(crate) fn bits(load: Expr, mask: u32, set: bool) -> Vec<Expr> {
    let op = if set { CmpOp::Neq } else { CmpOp::Eq };
    masked_cmp(load, mask.to_ne_bytes().to_vec(), op, vec![0; 4])
}

/// The packet mark into REG_1.
pub(crate) fn mark() -> Expr {
    Expr::Meta {
        key: MetaKey::Mark,
        dreg: REG_1,
    }
}

/// The IPv4 source (offset 12) or destination (16) address in `net`, or not (`op`).
pub(crate) fn ip_in(offset: u32, net: ipnetwork::Ipv4Network, op: CmpOp) -> Vec<Expr> {
    masked_cmp(
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: 4,
            dreg: REG_1,
        },
        net.mask().octets().to_vec(),
        op,
        net.network().octets().to_vec(),
    )
}

/// The layer 4 protocol is `proto` (6 TCP, 17 UDP).
pub(crate) fn l4proto_is(proto: u8) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![proto],
        },
    ]
}

/// The transport's destination port into REG_1.
pub(crate) fn dport() -> Expr {
    Expr::Payload {
        base: PayloadBase::Transport,
        offset: 2,
        len: 2,
        dreg: REG_1,
    }
}

/// Protocol `proto` to destination port `port`.
pub(crate) fn l4_dport(proto: u8, port: u16) -> Vec<Expr> {
    let mut e = l4proto_is(proto);
    e.push(dport());
    e.push(Expr::Cmp {
        sreg: REG_1,
        op: CmpOp::Eq,
        data: port.to_be_bytes().to_vec(),
    });
    e
}
