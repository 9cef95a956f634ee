//! A small nftables client over netlink (NETLINK_NETFILTER), written for what tug needs:
//! tables, base chains, regular chains, and rules built from a handful of expressions
//! (meta, payload, cmp, bitwise, immediate, ct, fib, nat, masq, lookup) and verdict maps.
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

mod encode;
mod socket;

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
}

/// Registers: 0 is the verdict register, 1..=4 the 16-byte data registers.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
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
    Return,
    Jump(String),
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
