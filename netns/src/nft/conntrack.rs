//! Connection tracking over the same netfilter socket (ctnetlink): find the connections
//! translated to an endpoint that never answered, and delete them.
//!
//! Why: a DNAT choice is made once per connection, on its first packet, and kept in the
//! connection's conntrack entry. A client whose SYN went to an endpoint that has since died
//! retransmits the SYN (after 1 s, then 3 s) into the same entry, to the same dead
//! endpoint. Deleting the entry when that endpoint leaves its service makes the
//! retransmission a new connection, which the service's rules balance over the endpoints
//! that are left: the client waits one retransmission instead of failing. Only entries that
//! never saw a reply are deleted: an established connection to an endpoint taken out of its
//! service (scale-in, a rolling update, a failed readiness probe) finishes undisturbed.
//!
//! Also: the ids of the connections tracked now ([`Socket::connection_ids`]), with which a
//! reader of conntrack's events that lost some (`ENOBUFS`) forgets the connections whose
//! end it missed.

use std::net::SocketAddrV4;

use super::*;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

pub(super) const CTA_TUPLE_ORIG: u16 = 1;
pub(super) const CTA_ID: u16 = 12;
pub(super) const CTA_TUPLE_REPLY: u16 = 2;
pub(super) const CTA_STATUS: u16 = 3;
const CTA_ZONE: u16 = 18;
pub(super) const CTA_TUPLE_IP: u16 = 1;
pub(super) const CTA_TUPLE_PROTO: u16 = 2;
pub(super) const CTA_IP_V4_SRC: u16 = 1;
pub(super) const CTA_PROTO_NUM: u16 = 1;
pub(super) const CTA_PROTO_SRC_PORT: u16 = 2;
/// `IPS_SEEN_REPLY`: packets went both ways.
pub(super) const IPS_SEEN_REPLY: u32 = 1 << 1;

pub(super) fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// One tracked connection, as far as the purge needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tracked {
    /// Protocol number and the source of the reply direction: where the connection was
    /// translated to.
    pub protocol: u8,
    pub reply_source: SocketAddrV4,
    pub replied: bool,
    /// The raw CTA_TUPLE_ORIG attribute (header included) and CTA_ZONE, which identify the
    /// entry to delete.
    pub key: Vec<u8>,
}

/// Attributes of a netlink payload: (type without flags, value, the whole attribute).
pub(super) fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len], &buf[..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

pub(super) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).into_iter().find(|a| a.0 == kind).map(|a| a.1)
}

/// Parses one CT_NEW message of a dump (its payload after the netlink header); `None` for
/// an entry that is not IPv4 TCP/UDP-like (no ports).
pub(super) fn parse(payload: &[u8]) -> Option<Tracked> {
    let body = payload.get(4..)?;
    let mut key = Vec::new();
    let mut reply = None;
    let mut status = 0;
    for (kind, value, whole) in attrs(body) {
        match kind {
            CTA_TUPLE_ORIG | CTA_ZONE => key.extend_from_slice(whole),
            CTA_TUPLE_REPLY => reply = Some(value),
            CTA_STATUS => status = u32::from_be_bytes(value.get(..4)?.try_into().ok()?),
            _ => {}
        }
        // Attributes are 4-byte aligned in the message; keep them so in the key.
        while !key.len().is_multiple_of(4) {
            key.push(0);
        }
    }
    let reply = reply?;
    let ip = find(find(reply, CTA_TUPLE_IP)?, CTA_IP_V4_SRC)?;
    let proto = find(reply, CTA_TUPLE_PROTO)?;
    let protocol = *find(proto, CTA_PROTO_NUM)?.first()?;
    let port = find(proto, CTA_PROTO_SRC_PORT)?;
    let ip: [u8; 4] = ip.get(..4)?.try_into().ok()?;
    let port = u16::from_be_bytes(port.get(..2)?.try_into().ok()?);
    Some(Tracked {
        protocol,
        reply_source: SocketAddrV4::new(ip.into(), port),
        replied: status & IPS_SEEN_REPLY != 0,
        key,
    })
}

/// The conntrack id of one entry of a dump (its payload after the netlink header).
pub(super) fn entry_id(payload: &[u8]) -> Option<u32> {
    let id = find(payload.get(4..)?, CTA_ID)?;
    Some(u32::from_be_bytes(id.get(..4)?.try_into().ok()?))
}

impl Socket {
    /// The ids of the IPv4 connections conntrack tracks now, in this socket's namespace
    /// (the ids [`super::ConnEvent`]s carry).
    pub fn connection_ids(&mut self) -> Result<std::collections::HashSet<u32>, NftError> {
        let entries = self.dump_raw(ct_type(IPCTNL_MSG_CT_GET), libc::AF_INET as u8)?;
        Ok(entries.iter().filter_map(|p| entry_id(p)).collect())
    }

    /// Deletes the IPv4 connections translated to one of `endpoints` (protocol number,
    /// address and port) that never saw a reply. Returns how many were deleted.
    pub fn drop_unreplied(&mut self, endpoints: &[(u8, SocketAddrV4)]) -> Result<usize, NftError> {
        if endpoints.is_empty() {
            return Ok(0);
        }
        let entries = self.dump_raw(ct_type(IPCTNL_MSG_CT_GET), libc::AF_INET as u8)?;
        let doomed: Vec<Tracked> = entries
            .iter()
            .filter_map(|p| parse(p))
            .filter(|t| !t.replied && endpoints.contains(&(t.protocol, t.reply_source)))
            .collect();
        let mut deleted = 0;
        for t in doomed {
            let seq = self.next_seq(1);
            let mut m = Msg::new(
                ct_type(IPCTNL_MSG_CT_DELETE),
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                libc::AF_INET as u8,
                0,
            );
            m.raw(&t.key);
            self.send(&m.finish())?;
            let errors = self.read_until(|s, kind, _| s == seq && kind == NLMSG_ERROR)?;
            match errors.first() {
                None => deleted += 1,
                // Gone meanwhile (answered, timed out): nothing to do.
                Some((_, errno)) if *errno == libc::ENOENT => {}
                Some((_, errno)) => {
                    return Err(NftError::Rejected {
                        op: format!("delete the connection to {}", t.reply_source),
                        source: io::Error::from_raw_os_error(*errno),
                    })
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(value);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    pub(crate) fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | NLA_F_NESTED, &parts.concat())
    }

    pub(crate) fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        nested(
            kind,
            &[
                nested(CTA_TUPLE_IP, &[attr(1, &src), attr(2, &dst)]),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[6]),
                        attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                        attr(3, &dport.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn an_entry_gives_where_it_was_translated_to_whether_it_was_answered_and_its_key() {
        let orig = tuple(CTA_TUPLE_ORIG, [10, 88, 0, 2], [10, 89, 0, 1], 40000, 80);
        let reply = tuple(CTA_TUPLE_REPLY, [10, 88, 1, 5], [10, 88, 0, 2], 8080, 40000);
        let zone = attr(CTA_ZONE, &0u16.to_be_bytes());
        for (status, replied) in [(0x8u32, false), (0x8 | IPS_SEEN_REPLY, true)] {
            let mut payload = vec![2, 0, 0, 0];
            payload.extend(&orig);
            payload.extend(&reply);
            payload.extend(attr(CTA_STATUS, &status.to_be_bytes()));
            payload.extend(&zone);
            let t = parse(&payload).expect("an IPv4 TCP entry");
            assert_eq!(t.protocol, 6);
            assert_eq!(t.reply_source, "10.88.1.5:8080".parse().unwrap());
            assert_eq!(t.replied, replied);
            assert_eq!(t.key, [orig.clone(), zone.clone()].concat());
            payload.extend(attr(CTA_ID, &77u32.to_be_bytes()));
            assert_eq!(entry_id(&payload), Some(77));
        }
        assert_eq!(parse(&[2, 0, 0, 0]), None);
        assert_eq!(entry_id(&[2, 0, 0, 0]), None);
    }
}
