//! A small nftables client over netlink (NETLINK_NETFILTER), written for what tug needs:
//! tables, base chains, regular chains, and rules built from a handful of expressions
//! (meta, payload, cmp, bitwise, immediate, ct, fib, nat, masq).
//!
//! Why not a crate: `rustables` is GPL-3.0 (this workspace is Apache-2.0) and needs libclang
//! at build time for bindgen; `nftnl` links the C libnftnl; `netlink-packet-netfilter` has no
//! nat/masq/fib/ct expressions. The wire format is small and stable, so it lives here.
//!
//! Objects are described by plain types ([`Batch`], [`Rule`], [`Expr`]) so the code that
//! decides *which* rules exist is unit-tested without a kernel; [`Socket`] turns a batch into
//! one atomic nfnetlink transaction.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

// ---------------------------------------------------------------------------------------
// encoding

struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // len, patched in finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v);
    }
    fn be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }
    fn begin(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }
    fn end(&mut self) {
        let start = self.nests.pop().expect("unbalanced nest");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn data(&mut self, kind: u16, value: &[u8]) {
        self.begin(kind);
        self.attr(1, value); // NFTA_DATA_VALUE
        self.end();
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// NFTA_DATA_VERDICT { code, chain }.
fn encode_verdict(m: &mut Msg, v: &Verdict) {
    m.begin(2); // NFTA_DATA_VERDICT
    let (code, chain): (i32, Option<&str>) = match v {
        Verdict::Accept => (1, None),
        Verdict::Return => (-5, None),
        Verdict::Jump(c) => (-3, Some(c)),
    };
    m.be32(1, code as u32);
    if let Some(c) = chain {
        m.str(2, c);
    }
    m.end();
}

fn encode_expr(m: &mut Msg, e: &Expr) {
    m.begin(1); // NFTA_LIST_ELEM
    let name = match e {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Cmp { .. } => "cmp",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::CtStatus { .. } => "ct",
        Expr::FibDaddrType { .. } => "fib",
        Expr::Nat { .. } => "nat",
        Expr::Masquerade => "masq",
        Expr::VerdictMap { .. } => "lookup",
    };
    m.str(1, name); // NFTA_EXPR_NAME
    m.begin(2); // NFTA_EXPR_DATA
    match e {
        Expr::Meta { key, dreg } => {
            m.be32(1, *dreg);
            m.be32(2, *key as u32);
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            m.be32(1, *dreg);
            m.be32(2, *base as u32);
            m.be32(3, *offset);
            m.be32(4, *len);
        }
        Expr::Cmp { sreg, op, data } => {
            m.be32(1, *sreg);
            m.be32(2, *op as u32);
            m.data(3, data);
        }
        Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
        } => {
            m.be32(1, *sreg);
            m.be32(2, *dreg);
            m.be32(3, mask.len() as u32);
            m.data(4, mask);
            m.data(5, xor);
        }
        Expr::Immediate { dreg, data } => {
            m.be32(1, *dreg);
            m.data(2, data);
        }
        Expr::Verdict(v) => {
            m.be32(1, REG_VERDICT);
            m.begin(2); // NFTA_IMMEDIATE_DATA
            encode_verdict(m, v);
            m.end();
        }
        Expr::CtStatus { dreg } => {
            m.be32(1, *dreg);
            m.be32(2, 2); // NFT_CT_STATUS
        }
        Expr::FibDaddrType { dreg } => {
            m.be32(1, *dreg);
            m.be32(2, 3); // NFT_FIB_RESULT_ADDRTYPE
            m.be32(3, 2); // NFTA_FIB_F_DADDR
        }
        Expr::Nat {
            kind,
            reg_addr,
            reg_proto,
        } => {
            m.be32(1, *kind as u32);
            m.be32(2, FAMILY_IPV4 as u32);
            m.be32(3, *reg_addr);
            if let Some(p) = reg_proto {
                m.be32(5, *p);
            }
        }
        Expr::Masquerade => {}
        Expr::VerdictMap { set, set_id, sreg } => {
            m.str(1, set); // NFTA_LOOKUP_SET
            m.be32(2, *sreg); // NFTA_LOOKUP_SREG
            m.be32(3, REG_VERDICT); // NFTA_LOOKUP_DREG
            m.be32(4, *set_id); // NFTA_LOOKUP_SET_ID
        }
    }
    m.end();
    m.end();
}

/// Describes an op for error messages.
fn describe(op: &Op) -> String {
    match op {
        Op::AddTable(t) => format!("add table {t}"),
        Op::DelTable(t) => format!("delete table {t}"),
        Op::AddChain(c) => format!("add chain {} {}", c.table, c.name),
        Op::FlushChain { table, chain } => format!("flush chain {table} {chain}"),
        Op::DelChain { table, chain } => format!("delete chain {table} {chain}"),
        Op::AddRule(r) => format!("add rule to {} {}: {:?}", r.table, r.chain, r.exprs),
        Op::AddVerdictMap { table, name, .. } => format!("add map {table} {name}"),
        Op::AddElements {
            table,
            set,
            elements,
        } => {
            format!("add elements to {table} {set}: {elements:?}")
        }
        Op::DelElements { table, set, keys } => {
            format!("delete elements from {table} {set}: {keys:?}")
        }
    }
}

fn encode_op(op: &Op, seq: u32, family: u8) -> Vec<u8> {
    // No NLM_F_ACK: the kernel reports failures anyway, and per-message ACKs of a large
    // batch can overflow the socket's receive buffer.
    let base = NLM_F_REQUEST;
    match op {
        Op::AddTable(name) => {
            let mut m = Msg::new(
                nft_type(NFT_MSG_NEWTABLE),
                base | NLM_F_CREATE,
                seq,
                family,
                0,
            );
            m.str(1, name);
            m.finish()
        }
        Op::DelTable(name) => {
            let mut m = Msg::new(nft_type(NFT_MSG_DELTABLE), base, seq, family, 0);
            m.str(1, name);
            m.finish()
        }
        Op::AddChain(c) => {
            let mut m = Msg::new(
                nft_type(NFT_MSG_NEWCHAIN),
                base | NLM_F_CREATE,
                seq,
                family,
                0,
            );
            m.str(1, &c.table);
            m.str(3, &c.name);
            if let Some(b) = &c.base {
                m.begin(4); // NFTA_CHAIN_HOOK
                m.be32(1, b.hook as u32);
                m.be32(2, b.priority as u32);
                m.end();
                m.be32(5, 1); // policy accept
                m.str(7, b.kind);
            }
            m.finish()
        }
        Op::FlushChain { table, chain } => {
            let mut m = Msg::new(nft_type(NFT_MSG_DELRULE), base, seq, family, 0);
            m.str(1, table);
            m.str(2, chain);
            m.finish()
        }
        Op::AddRule(r) => {
            let flags = base | NLM_F_CREATE | NLM_F_APPEND;
            let mut m = Msg::new(nft_type(NFT_MSG_NEWRULE), flags, seq, family, 0);
            m.str(1, &r.table);
            m.str(2, &r.chain);
            m.begin(4); // NFTA_RULE_EXPRESSIONS
            for e in &r.exprs {
                encode_expr(&mut m, e);
            }
            m.end();
            m.finish()
        }
        Op::DelChain { table, chain } => {
            let mut m = Msg::new(nft_type(NFT_MSG_DELCHAIN), base, seq, family, 0);
            m.str(1, table);
            m.str(3, chain);
            m.finish()
        }
        Op::AddVerdictMap {
            table,
            name,
            id,
            key_len,
        } => {
            let mut m = Msg::new(
                nft_type(NFT_MSG_NEWSET),
                base | NLM_F_CREATE,
                seq,
                family,
                0,
            );
            m.str(1, table); // NFTA_SET_TABLE
            m.str(2, name); // NFTA_SET_NAME
            m.be32(3, 0x8); // NFTA_SET_FLAGS: NFT_SET_MAP
            m.be32(4, 13); // NFTA_SET_KEY_TYPE: inet_service (for nft's display only)
            m.be32(5, *key_len); // NFTA_SET_KEY_LEN
            m.be32(6, 0xffff_ff00); // NFTA_SET_DATA_TYPE: NFT_DATA_VERDICT
            m.be32(10, *id); // NFTA_SET_ID
            m.finish()
        }
        Op::AddElements {
            table,
            set,
            elements,
        } => {
            let flags = base | NLM_F_CREATE;
            let mut m = Msg::new(nft_type(NFT_MSG_NEWSETELEM), flags, seq, family, 0);
            m.str(1, table); // NFTA_SET_ELEM_LIST_TABLE
            m.str(2, set); // NFTA_SET_ELEM_LIST_SET
            m.begin(3); // NFTA_SET_ELEM_LIST_ELEMENTS
            for (key, verdict) in elements {
                m.begin(1); // NFTA_LIST_ELEM
                m.data(1, key); // NFTA_SET_ELEM_KEY
                m.begin(2); // NFTA_SET_ELEM_DATA
                encode_verdict(&mut m, verdict);
                m.end();
                m.end();
            }
            m.end();
            m.finish()
        }
        Op::DelElements { table, set, keys } => {
            let mut m = Msg::new(nft_type(NFT_MSG_DELSETELEM), base, seq, family, 0);
            m.str(1, table);
            m.str(2, set);
            m.begin(3);
            for key in keys {
                m.begin(1);
                m.data(1, key);
                m.end();
            }
            m.end();
            m.finish()
        }
    }
}

/// Encodes a batch as the bytes of one sendmsg, first sequence number `seq`.
pub fn encode_batch(batch: &Batch, seq: u32) -> Vec<u8> {
    let mut out = Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish();
    for (i, op) in batch.ops.iter().enumerate() {
        out.extend(encode_op(op, seq + 1 + i as u32, batch.family));
    }
    let end_seq = seq + 1 + batch.ops.len() as u32;
    out.extend(
        Msg::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    out
}

// ---------------------------------------------------------------------------------------
// socket

/// A netfilter netlink socket, bound to the network namespace it was opened in.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    sndbuf: usize,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid; family set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl for the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // ACKs without a copy of the request; never block forever on a lost reply.
        setsockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, &1i32)?;
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        let mut sndbuf: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as u32;
        // SAFETY: sndbuf and len are valid out-parameters of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &mut sndbuf as *mut i32 as *mut libc::c_void,
                &mut len,
            )
        };
        // The kernel reports twice what it accounts; keep to half of it.
        let sndbuf = if r == 0 {
            sndbuf.max(0) as usize / 2
        } else {
            0
        };
        Ok(Socket { fd, seq, sndbuf })
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(n as usize);
        }
    }

    /// Reads replies until `done(seq_of_msg, type, payload)` returns true; collects errors
    /// (NLMSG_ERROR with a non-zero code) by sequence number.
    fn read_until(
        &self,
        mut on_msg: impl FnMut(u32, u16, &[u8]) -> bool,
    ) -> Result<Vec<(u32, i32)>, NftError> {
        let mut errors = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                if len < 16 || off + len > n {
                    return Err(NftError::Malformed("netlink header length"));
                }
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                let payload = &buf[off + 16..off + len];
                if kind == NLMSG_ERROR {
                    if payload.len() < 4 {
                        return Err(NftError::Malformed("short NLMSG_ERROR"));
                    }
                    let code = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                    if code != 0 {
                        errors.push((seq, -code));
                    }
                }
                if on_msg(seq, kind, payload) {
                    return Ok(errors);
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n + 2);
        if self.seq < s {
            self.seq = 1;
            return self.next_seq(n);
        }
        s
    }

    /// Applies a batch atomically. On failure names the first op the kernel refused.
    pub fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let n = batch.ops.len() as u32;
        let seq = self.next_seq(n + 1);
        let bytes = encode_batch(batch, seq);
        // A batch must arrive in one datagram; netlink refuses one larger than the send
        // buffer, so grow it (as nft does) for large batches.
        if bytes.len() + 4096 > self.sndbuf {
            let want = (bytes.len() + 4096) as i32;
            setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &want)
                .or_else(|_| setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &want))?;
            self.sndbuf = bytes.len() + 4096;
        }
        self.send(&bytes)?;
        // A GETGEN request after the batch: its ACK is the last reply we wait for, so the
        // batch's own replies (sent before it) have all been read.
        let fence_seq = seq + n + 2;
        let fence = Msg::new(
            nft_type(NFT_MSG_GETGEN),
            NLM_F_REQUEST | NLM_F_ACK,
            fence_seq,
            0,
            0,
        );
        self.send(&fence.finish())?;
        let errors = self.read_until(|s, kind, _| s == fence_seq && kind == NLMSG_ERROR)?;
        if let Some((s, errno)) = errors.into_iter().find(|(s, _)| *s != fence_seq) {
            let idx = s.wrapping_sub(seq + 1) as usize;
            let op = batch
                .ops
                .get(idx)
                .map(describe)
                .unwrap_or_else(|| "batch".to_string());
            return Err(NftError::Rejected {
                op,
                source: io::Error::from_raw_os_error(errno),
            });
        }
        Ok(())
    }

    fn dump(
        &mut self,
        kind: u16,
        family: u8,
        attrs: &[(u16, &str)],
    ) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = self.next_seq(1);
        let mut m = Msg::new(nft_type(kind), NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0);
        for (k, v) in attrs {
            m.str(*k, v);
        }
        self.send(&m.finish())?;
        let mut out = Vec::new();
        let errors = self.read_until(|s, t, payload| {
            if s != seq {
                return false;
            }
            if t == NLMSG_DONE || t == NLMSG_ERROR {
                return true;
            }
            out.push(payload.to_vec());
            false
        })?;
        if let Some((_, errno)) = errors.first() {
            return Err(NftError::Rejected {
                op: "dump".into(),
                source: io::Error::from_raw_os_error(*errno),
            });
        }
        Ok(out)
    }

    /// Names of the tables of `family` in this namespace.
    pub fn list_tables(&mut self, family: u8) -> Result<Vec<String>, NftError> {
        let msgs = self.dump(NFT_MSG_GETTABLE, family, &[])?;
        Ok(msgs
            .iter()
            .filter_map(|p| find_str_attr(&p[4..], 1))
            .collect())
    }

    /// Names of the chains of a table (empty when the table is missing).
    pub fn list_chains(&mut self, family: u8, table: &str) -> Result<Vec<String>, NftError> {
        match self.dump(NFT_MSG_GETCHAIN, family, &[]) {
            Ok(msgs) => Ok(msgs
                .iter()
                .filter(|p| find_str_attr(&p[4..], 1).as_deref() == Some(table))
                .filter_map(|p| find_str_attr(&p[4..], 3))
                .collect()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Number of elements in a set or map (0 when it is missing).
    pub fn count_elements(
        &mut self,
        family: u8,
        table: &str,
        set: &str,
    ) -> Result<usize, NftError> {
        match self.dump(NFT_MSG_GETSETELEM, family, &[(1, table), (2, set)]) {
            Ok(msgs) => Ok(msgs.iter().map(|p| count_list_elems(&p[4..])).sum()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Number of rules in a chain (0 when the table or chain is missing).
    pub fn count_rules(&mut self, family: u8, table: &str, chain: &str) -> Result<usize, NftError> {
        match self.dump(NFT_MSG_GETRULE, family, &[(1, table), (2, chain)]) {
            Ok(v) => Ok(v.len()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Counts NFTA_LIST_ELEMs inside the NFTA_SET_ELEM_LIST_ELEMENTS attribute.
fn count_list_elems(mut attrs: &[u8]) -> usize {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return 0;
        }
        if kind == 3 {
            let mut inner = &attrs[4..len];
            let mut n = 0;
            while inner.len() >= 4 {
                let l = u16::from_ne_bytes([inner[0], inner[1]]) as usize;
                if l < 4 || l > inner.len() {
                    break;
                }
                n += 1;
                inner = &inner[((l + 3) & !3).min(inner.len())..];
            }
            return n;
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    0
}

fn find_str_attr(mut attrs: &[u8], want: u16) -> Option<String> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == want {
            let v = &attrs[4..len];
            let v = v.split(|b| *b == 0).next().unwrap_or(v);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        let step = (len + 3) & !3;
        if step > attrs.len() {
            return None;
        }
        attrs = &attrs[step..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_framed_by_begin_and_end_with_consecutive_sequence_numbers() {
        let mut b = Batch::new(FAMILY_IPV4);
        b.push(Op::AddTable("tug".into()));
        b.push(Op::DelTable("tug".into()));
        let bytes = encode_batch(&b, 100);
        let mut off = 0;
        let mut seen = Vec::new();
        while off < bytes.len() {
            let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(bytes[off + 4..off + 6].try_into().unwrap());
            let seq = u32::from_ne_bytes(bytes[off + 8..off + 12].try_into().unwrap());
            seen.push((kind, seq));
            off += len;
        }
        assert_eq!(
            seen,
            vec![
                (NFNL_MSG_BATCH_BEGIN, 100),
                (nft_type(NFT_MSG_NEWTABLE), 101),
                (nft_type(NFT_MSG_DELTABLE), 102),
                (NFNL_MSG_BATCH_END, 103)
            ]
        );
    }

    #[test]
    fn string_attribute_is_nul_terminated_and_padded() {
        let mut m = Msg::new(0, 0, 0, 0, 0);
        m.str(1, "abc");
        let buf = m.finish();
        assert_eq!(&buf[20..28], &[8, 0, 1, 0, b'a', b'b', b'c', 0]);
        assert_eq!(find_str_attr(&buf[20..], 1).as_deref(), Some("abc"));
    }

    #[test]
    fn nested_attribute_length_covers_children() {
        let mut m = Msg::new(0, 0, 0, 0, 0);
        m.begin(4);
        m.be32(1, 7);
        m.end();
        let buf = m.finish();
        let len = u16::from_ne_bytes([buf[20], buf[21]]);
        let kind = u16::from_ne_bytes([buf[22], buf[23]]);
        assert_eq!(len, 12);
        assert_eq!(kind, 4 | NLA_F_NESTED);
        assert_eq!(&buf[28..32], &7u32.to_be_bytes());
    }
}
