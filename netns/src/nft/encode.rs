//! The nf_tables wire format: netlink headers, attributes (nested, padded), expressions,
//! and a batch framed by BATCH_BEGIN/BATCH_END.

use super::*;

pub(super) struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    pub(super) fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
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
    /// Attributes already encoded (4-byte aligned), copied as they are.
    pub(super) fn raw(&mut self, attrs: &[u8]) {
        self.buf.extend_from_slice(attrs);
        self.pad();
    }
    pub(super) fn str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v);
    }
    fn be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }
    fn be64(&mut self, kind: u16, v: u64) {
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
    pub(super) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

pub(super) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// NFTA_DATA_VERDICT { code, chain }.
fn encode_verdict(m: &mut Msg, v: &Verdict) {
    m.begin(2); // NFTA_DATA_VERDICT
    let (code, chain): (i32, Option<&str>) = match v {
        Verdict::Accept => (1, None),
        Verdict::Drop => (0, None),
        Verdict::Return => (-5, None),
        Verdict::Jump(c) => (-3, Some(c)),
        Verdict::Goto(c) => (-4, Some(c)),
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
        Expr::CtStatus { .. } | Expr::CtState { .. } => "ct",
        Expr::FibDaddrType { .. } => "fib",
        Expr::Nat { .. } => "nat",
        Expr::Masquerade => "masq",
        Expr::VerdictMap { .. } | Expr::Lookup { .. } => "lookup",
        Expr::MetaSet { .. } => "meta",
        Expr::Numgen { .. } => "numgen",
        Expr::DynsetUpdate { .. } => "dynset",
        Expr::Reject { .. } => "reject",
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
        Expr::CtState { dreg } => {
            m.be32(1, *dreg);
            m.be32(2, 0); // NFT_CT_STATE
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
        Expr::Lookup {
            set,
            set_id,
            sreg,
            dreg,
            invert,
        } => {
            m.str(1, set); // NFTA_LOOKUP_SET
            m.be32(2, *sreg); // NFTA_LOOKUP_SREG
            if let Some(d) = dreg {
                m.be32(3, *d); // NFTA_LOOKUP_DREG
            }
            m.be32(4, *set_id); // NFTA_LOOKUP_SET_ID
            if *invert {
                m.be32(5, 1); // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
            }
        }
        Expr::MetaSet { key, sreg } => {
            m.be32(2, *key as u32); // NFTA_META_KEY
            m.be32(3, *sreg); // NFTA_META_SREG
        }
        Expr::Numgen {
            dreg,
            modulus,
            random,
        } => {
            m.be32(1, *dreg); // NFTA_NG_DREG
            m.be32(2, *modulus); // NFTA_NG_MODULUS
            m.be32(3, u32::from(*random)); // NFTA_NG_TYPE: NFT_NG_INCREMENTAL 0, RANDOM 1
        }
        Expr::DynsetUpdate {
            set,
            set_id,
            sreg_key,
            sreg_data,
            timeout_ms,
        } => {
            m.str(1, set); // NFTA_DYNSET_SET_NAME
            m.be32(2, *set_id); // NFTA_DYNSET_SET_ID
            m.be32(3, 1); // NFTA_DYNSET_OP: NFT_DYNSET_OP_UPDATE
            m.be32(4, *sreg_key); // NFTA_DYNSET_SREG_KEY
            if let Some(d) = sreg_data {
                m.be32(5, *d); // NFTA_DYNSET_SREG_DATA
            }
            m.be64(6, *timeout_ms); // NFTA_DYNSET_TIMEOUT
        }
        Expr::Reject { tcp_reset } => {
            if *tcp_reset {
                m.be32(1, 1); // NFTA_REJECT_TYPE: NFT_REJECT_TCP_RST
            } else {
                m.be32(1, 0); // NFT_REJECT_ICMP_UNREACH
                m.attr(2, &[3]); // NFTA_REJECT_ICMP_CODE: port unreachable
            }
        }
    }
    m.end();
    m.end();
}

/// Describes an op for error messages.
pub(super) fn describe(op: &Op) -> String {
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
        Op::AddSet(s) => format!("add set {} {}", s.table, s.name),
        Op::DelSet { table, set } => format!("delete set {table} {set}"),
        Op::FlushSet { table, set } => format!("flush set {table} {set}"),
        Op::AddSetElements {
            table,
            set,
            elements,
        } => format!("add elements to {table} {set}: {elements:?}"),
        Op::InsertRule { rule, .. } => {
            format!(
                "insert rule in {} {}: {:?}",
                rule.table, rule.chain, rule.exprs
            )
        }
        Op::DelRule {
            table,
            chain,
            handle,
        } => format!("delete rule {handle} from {table} {chain}"),
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
                m.be32(5, if b.drop_policy { 0 } else { 1 }); // NFTA_CHAIN_POLICY
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
        Op::AddSet(spec) => {
            let mut m = Msg::new(
                nft_type(NFT_MSG_NEWSET),
                base | NLM_F_CREATE,
                seq,
                family,
                0,
            );
            let mut flags = spec.flags;
            if spec.data.is_some() {
                flags |= SET_MAP;
            }
            m.str(1, &spec.table); // NFTA_SET_TABLE
            m.str(2, &spec.name); // NFTA_SET_NAME
            m.be32(3, flags); // NFTA_SET_FLAGS
            m.be32(4, spec.key_type); // NFTA_SET_KEY_TYPE
            m.be32(5, spec.key_len); // NFTA_SET_KEY_LEN
            if let Some((kind, len)) = spec.data {
                m.be32(6, kind); // NFTA_SET_DATA_TYPE
                if kind != DATA_VERDICT {
                    m.be32(7, len); // NFTA_SET_DATA_LEN
                }
            }
            m.be32(10, spec.id); // NFTA_SET_ID
            m.finish()
        }
        Op::DelSet { table, set } => {
            let mut m = Msg::new(nft_type(NFT_MSG_DELSET), base, seq, family, 0);
            m.str(1, table);
            m.str(2, set);
            m.finish()
        }
        Op::FlushSet { table, set } => {
            // DELSETELEM without an element list flushes the set.
            let mut m = Msg::new(nft_type(NFT_MSG_DELSETELEM), base, seq, family, 0);
            m.str(1, table);
            m.str(2, set);
            m.finish()
        }
        Op::AddSetElements {
            table,
            set,
            elements,
        } => {
            let flags = base | NLM_F_CREATE;
            let mut m = Msg::new(nft_type(NFT_MSG_NEWSETELEM), flags, seq, family, 0);
            m.str(1, table);
            m.str(2, set);
            m.begin(3);
            for (key, data) in elements {
                m.begin(1);
                m.data(1, key); // NFTA_SET_ELEM_KEY
                if let Some(d) = data {
                    m.data(2, d); // NFTA_SET_ELEM_DATA
                }
                m.end();
            }
            m.end();
            m.finish()
        }
        Op::InsertRule { rule, userdata } => {
            // No NLM_F_APPEND and no position: the rule goes first in its chain.
            let flags = base | NLM_F_CREATE;
            let mut m = Msg::new(nft_type(NFT_MSG_NEWRULE), flags, seq, family, 0);
            m.str(1, &rule.table);
            m.str(2, &rule.chain);
            m.begin(4);
            for e in &rule.exprs {
                encode_expr(&mut m, e);
            }
            m.end();
            m.attr(7, userdata); // NFTA_RULE_USERDATA
            m.finish()
        }
        Op::DelRule {
            table,
            chain,
            handle,
        } => {
            let mut m = Msg::new(nft_type(NFT_MSG_DELRULE), base, seq, family, 0);
            m.str(1, table);
            m.str(2, chain);
            m.be64(3, *handle); // NFTA_RULE_HANDLE
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
