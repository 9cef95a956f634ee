//! Accept rules for hosts whose forward path drops by default (Docker sets the iptables
//! FORWARD policy to DROP): without them every packet to or from the containers that
//! crosses the host (egress, published ports, services, other nodes) is dropped.
//!
//! Like Docker and netavark for their bridges, we insert into iptables' own chain
//! (`table ip filter`, chain `FORWARD`, which iptables-nft keeps in nftables):
//!
//! ```text
//! iifname "BRIDGE" accept comment "tug NETWORK"
//! oifname "BRIDGE" accept comment "tug NETWORK"
//! ```
//!
//! at its start, and find them again by their comment (rule userdata) to remove them. The
//! chain is never created or deleted by us: when it does not exist there is nothing to get
//! past (and an iptables-legacy FORWARD chain is outside nftables: not handled). Network
//! policy, when it refuses, lives in our own table, where an accept here cannot override it.

use crate::nft::{comment_userdata, Batch, CmpOp, Expr, MetaKey, Op, Rule, RuleRef, Verdict};
use crate::nft::{FAMILY_IPV4, REG_1};

/// iptables' filter table, as iptables-nft names it in nftables.
pub const FILTER_TABLE: &str = "filter";
/// iptables' FORWARD chain.
pub const FORWARD_CHAIN: &str = "FORWARD";

/// The comment that marks a network's rules.
pub fn tag(network: &str) -> Vec<u8> {
    comment_userdata(&format!("tug {network}"))
}

fn accept(key: MetaKey, bridge: &str) -> Vec<Expr> {
    let mut name = bridge.as_bytes().to_vec();
    name.push(0);
    vec![
        Expr::Meta { key, dreg: REG_1 },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: name,
        },
        Expr::Verdict(Verdict::Accept),
    ]
}

/// What to do so that `existing` (the FORWARD chain's rules) holds exactly our two rules
/// for `bridge`: nothing when they are there; otherwise delete whatever of ours is there
/// and insert both, in one transaction.
pub fn ensure(existing: &[RuleRef], network: &str, bridge: &str) -> Batch {
    let tag = tag(network);
    let ours: Vec<&RuleRef> = existing.iter().filter(|r| r.userdata == tag).collect();
    let mut b = Batch::new(FAMILY_IPV4);
    if ours.len() == 2 {
        return b;
    }
    for r in ours {
        b.push(del(r.handle));
    }
    for key in [MetaKey::OifName, MetaKey::IifName] {
        b.push(Op::InsertRule {
            rule: Rule {
                table: FILTER_TABLE.into(),
                chain: FORWARD_CHAIN.into(),
                exprs: accept(key, bridge),
            },
            userdata: tag.clone(),
        });
    }
    b
}

fn del(handle: u64) -> Op {
    Op::DelRule {
        table: FILTER_TABLE.into(),
        chain: FORWARD_CHAIN.into(),
        handle,
    }
}

/// Deletes the network's rules from the FORWARD chain.
pub fn remove(existing: &[RuleRef], network: &str) -> Batch {
    let tag = tag(network);
    let mut b = Batch::new(FAMILY_IPV4);
    for r in existing.iter().filter(|r| r.userdata == tag) {
        b.push(del(r.handle));
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theirs(handle: u64) -> RuleRef {
        RuleRef {
            handle,
            userdata: Vec::new(),
        }
    }

    fn ours(handle: u64) -> RuleRef {
        RuleRef {
            handle,
            userdata: tag("n1"),
        }
    }

    #[test]
    fn inserts_both_rules_tagged_when_missing() {
        let b = ensure(&[theirs(1), theirs(2)], "n1", "tug-n1");
        assert_eq!(b.ops.len(), 2);
        for (op, key) in b.ops.iter().zip([MetaKey::OifName, MetaKey::IifName]) {
            match op {
                Op::InsertRule { rule, userdata } => {
                    assert_eq!(
                        (rule.table.as_str(), rule.chain.as_str()),
                        ("filter", "FORWARD")
                    );
                    assert_eq!(rule.exprs, accept(key, "tug-n1"));
                    assert_eq!(userdata, &tag("n1"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(tag("n1")[..2], [0, 7], "a comment TLV nft can print");
    }

    #[test]
    fn leaves_a_complete_pair_alone_and_replaces_a_half_one() {
        assert!(ensure(&[theirs(1), ours(5), ours(6)], "n1", "tug-n1")
            .ops
            .is_empty());
        let b = ensure(&[ours(5), theirs(1)], "n1", "tug-n1");
        assert_eq!(b.ops[0], del(5));
        assert_eq!(b.ops.len(), 3);
    }

    #[test]
    fn remove_deletes_only_this_networks_rules() {
        let other = RuleRef {
            handle: 9,
            userdata: tag("n2"),
        };
        let b = remove(&[theirs(1), ours(5), other, ours(6)], "n1");
        assert_eq!(b.ops, vec![del(5), del(6)]);
    }
}
