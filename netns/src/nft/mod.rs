//! A small nftables client over netlink (NETLINK_NETFILTER), written for what tug needs:
//! tables, base chains, regular chains, and rules built from a handful of expressions
//! (meta, payload, cmp, bitwise, immediate, ct, fib, nat, masq, lookup, numgen, dynset,
//! reject), sets, value maps and verdict maps.
//! This file is the model; `encode` is the wire format, `socket` the transaction.
//!
//! Why not a crate: `rustables` is GPL-3.0 (this workspace is Apache-2.0) and needs libclang
//! at build time for bindgen; `nftnl` links the C libnftnl; `netlink-packet-netfilter` has no
//! nat/masq/fib/ct expressions. The wire format is small and stable, so it lives here.
//!
//! Objects are described by plain types ([`Batch`], [`Rule`], [`Expr`]) so the code that
//! decides *which* rules exist is unit-tested without a kernel; [`Socket`] turns a batch into
//! one atomic nfnetlink transaction.

use std::io;

pub(crate) mod build;
mod conntrack;
mod ct_events;
mod encode;
mod socket;

pub use ct_events::{ConnEvent, ConnEvents};
pub use encode::encode_batch;
use encode::{describe, nft_type, Msg};
#[cfg(test)]
use socket::find_str_attr;
pub use socket::Socket;

/// Address family of a table (`NFPROTO_*`).
pub const FAMILY_IPV4: u8 = 2;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

/// Netfilter hooks (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// A chain; `base` makes it a base chain attached to a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub table: String,
    pub name: String,
    pub base: Option<BaseChain>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// "nat" or "filter".
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
    /// What happens to a packet no rule decided on: accept (false) or drop (true).
    pub drop_policy: bool,
}

/// Registers: 0 is the verdict register, 1..=4 the 16-byte data registers.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
/// The 4-byte registers (`NFT_REG32_00` ..): concatenations load consecutive ones, and a
/// lookup of an 8-byte value fills two.
pub const REG32_0: u32 = 8;
pub const REG32_1: u32 = 9;
pub const REG32_2: u32 = 10;
pub const REG32_3: u32 = 11;

/// `ct state` bits (`NF_CT_STATE_BIT`): established and related.
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;

/// The data type of a verdict map (`NFT_DATA_VERDICT`).
pub const DATA_VERDICT: u32 = 0xffff_ff00;

/// Set flags (`NFT_SET_*`).
pub const SET_MAP: u32 = 0x8;
pub const SET_TIMEOUT: u32 = 0x10;
/// Updated from the packet path (dynset): the kernel picks a backend that can.
pub const SET_EVAL: u32 = 0x20;

/// nft's data type numbers, kept in a set's description so `nft list` prints its elements
/// the right way (the kernel only uses the lengths).
pub mod types {
    pub const INTEGER: u32 = 4;
    pub const IPV4_ADDR: u32 = 7;
    pub const INET_PROTO: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const MARK: u32 = 19;
    /// A concatenation `a . b . c` of the types given.
    pub fn concat(parts: &[u32]) -> u32 {
        parts.iter().fold(0, |acc, t| (acc << 6) | t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    IifName = 6,
    OifName = 7,
    L4Proto = 16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat = 0,
    Dnat = 1,
}

/// Verdicts for immediate expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// One nftables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    /// `ct status` into dreg (host-endian u32 of IPS_* bits).
    CtStatus {
        dreg: u32,
    },
    /// `ct state` into dreg (host-endian u32 of `CT_STATE_*` bits).
    CtState {
        dreg: u32,
    },
    /// `fib daddr type` into dreg (host-endian u32 RTN_* value).
    FibDaddrType {
        dreg: u32,
    },
    Nat {
        kind: NatKind,
        reg_addr: u32,
        reg_proto: Option<u32>,
    },
    Masquerade,
    /// Look `sreg` up in a verdict map (`vmap`): the matching element's verdict applies.
    VerdictMap {
        set: String,
        set_id: u32,
        sreg: u32,
    },
    /// Look `sreg` up in a set (the rule stops unless found, or unless missing when
    /// `invert`), or in a value map (`dreg` gets the element's data).
    Lookup {
        set: String,
        set_id: u32,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// `meta KEY set` from sreg.
    MetaSet {
        key: MetaKey,
        sreg: u32,
    },
    /// A number in `0..modulus` into dreg (host-endian u32): random, or a counter.
    Numgen {
        dreg: u32,
        modulus: u32,
        random: bool,
    },
    /// Adds or refreshes the element `sreg_key [: sreg_data]` of a set from the packet
    /// path, with a timeout (`update @set { key timeout T : data }`).
    DynsetUpdate {
        set: String,
        set_id: u32,
        sreg_key: u32,
        sreg_data: Option<u32>,
        timeout_ms: u64,
    },
    /// Refuses the packet: a TCP reset, or ICMP port unreachable.
    Reject {
        tcp_reset: bool,
    },
}

/// A rule: a chain and its expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: String,
    pub chain: String,
    pub exprs: Vec<Expr>,
}

/// One message of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the table if missing (no error if it exists).
    AddTable(String),
    /// Delete the table and everything in it.
    DelTable(String),
    /// Create the chain if missing.
    AddChain(Chain),
    /// Delete every rule of a chain.
    FlushChain {
        table: String,
        chain: String,
    },
    /// Delete a chain and its rules (nothing may still jump to it).
    DelChain {
        table: String,
        chain: String,
    },
    AddRule(Rule),
    /// Create a verdict map (key of `key_len` bytes -> verdict) if missing. `id` names it
    /// within the transaction for rules that use it.
    AddVerdictMap {
        table: String,
        name: String,
        id: u32,
        key_len: u32,
    },
    /// Add elements `key -> verdict` to a verdict map.
    AddElements {
        table: String,
        set: String,
        elements: Vec<(Vec<u8>, Verdict)>,
    },
    /// Delete elements by key (error ENOENT if one is missing).
    DelElements {
        table: String,
        set: String,
        keys: Vec<Vec<u8>>,
    },
    /// Create a set or value map if missing.
    AddSet(SetSpec),
    /// Delete a set or map (nothing may still refer to it).
    DelSet {
        table: String,
        set: String,
    },
    /// Delete every element of a set or map.
    FlushSet {
        table: String,
        set: String,
    },
    /// Add elements to a set (`data` None) or a value map (`data` the value).
    AddSetElements {
        table: String,
        set: String,
        elements: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
    /// Add a rule at the start of its chain, tagged with `userdata` (so it can be found
    /// again in a chain that is not ours).
    InsertRule {
        rule: Rule,
        userdata: Vec<u8>,
    },
    /// Delete one rule by its handle.
    DelRule {
        table: String,
        chain: String,
        handle: u64,
    },
}

/// A set (`data` None) or a value map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub table: String,
    pub name: String,
    /// Names the set within the transaction for rules that use it.
    pub id: u32,
    /// `SET_*` flags; `SET_MAP` is added for a map.
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// (type, length) of a map's values.
    pub data: Option<(u32, u32)>,
}

/// Rule userdata holding a comment, as `nft` writes it (`NFTNL_UDATA_RULE_COMMENT`), so
/// `nft list ruleset` shows it.
pub fn comment_userdata(text: &str) -> Vec<u8> {
    let mut v = vec![0u8, (text.len() + 1).min(255) as u8];
    v.extend(text.bytes().take(254));
    v.push(0);
    v
}

/// A rule as a dump reports it: enough to find and delete one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub handle: u64,
    pub userdata: Vec<u8>,
}

/// An atomic transaction: all ops apply, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub family: u8,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new(family: u8) -> Self {
        Batch {
            family,
            ops: Vec::new(),
        }
    }
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }
}

/// An error from the kernel for one message of a batch.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables socket: {0}")]
    Io(#[from] io::Error),
    #[error("nftables rejected {op}: {source}")]
    Rejected {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("nftables reply was malformed: {0}")]
    Malformed(&'static str),
}

impl NftError {
    /// The errno the kernel answered with, when it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { source, .. } | NftError::Io(source) => source.raw_os_error(),
            NftError::Malformed(_) => None,
        }
    }
}
