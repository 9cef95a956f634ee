//! Connection tracking's events (ctnetlink's multicast groups): what the kernel's service
//! balancing did, told as it happens. The balancing is DNAT in the kernel, so no process
//! sees the connections; conntrack does, once per connection: when it is made (with where it
//! was translated to), when TCP starts closing it, and when its entry goes (whether it was
//! ever established). The agent counts these per service ([`ConnEvent`]).
//!
//! Events can be lost when the reader falls behind (the kernel then answers `ENOBUFS`);
//! [`ConnEvents::read`] says so, and the socket's buffer is made large to make it rare.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};

use super::conntrack::{
    attrs, ct_type, find, CTA_ID, CTA_IP_V4_SRC, CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_STATUS,
    CTA_TUPLE_IP, CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_TUPLE_REPLY, IPS_SEEN_REPLY,
};

const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `IPS_ASSURED`: TCP's handshake completed (other protocols: traffic both ways).
const IPS_ASSURED: u32 = 1 << 2;
/// `TCP_CONNTRACK_FIN_WAIT` and later: the connection is closing.
const TCP_CLOSING: u8 = 4;
const NLM_F_CREATE: u16 = 0x400;
/// `NF_NETLINK_CONNTRACK_{NEW,UPDATE,DESTROY}`: the legacy group bits.
const GROUPS: u32 = 0x1 | 0x2 | 0x4;
const IPPROTO_TCP: u8 = 6;

/// What happened to one tracked IPv4 connection (`id` is conntrack's, unique while the
/// entry lives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// A connection was made to `destination`; the kernel sent it to `translated_to` (the
    /// same when it was not translated).
    New {
        id: u32,
        protocol: u8,
        destination: SocketAddrV4,
        translated_to: SocketAddrV4,
    },
    /// TCP began closing it (FIN or RST seen): it no longer counts as active.
    Closing { id: u32 },
    /// Its entry is gone; `established`: TCP's handshake completed (for other protocols: an
    /// answer came back).
    Gone { id: u32, established: bool },
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn endpoint(tuple: &[u8], ip_kind: u16, port_kind: u16) -> Option<(u8, SocketAddrV4)> {
    let ip = find(find(tuple, CTA_TUPLE_IP)?, ip_kind)?;
    let proto = find(tuple, CTA_TUPLE_PROTO)?;
    let protocol = *find(proto, CTA_PROTO_NUM)?.first()?;
    let port = find(proto, port_kind)?;
    let ip: [u8; 4] = ip.get(..4)?.try_into().ok()?;
    let port = u16::from_be_bytes(port.get(..2)?.try_into().ok()?);
    Some((protocol, SocketAddrV4::new(ip.into(), port)))
}

/// One event message (netlink type and flags, payload after the netlink header); `None`
/// for what is not an IPv4 connection with ports, or not an event of interest.
pub(super) fn parse_event(kind: u16, flags: u16, payload: &[u8]) -> Option<ConnEvent> {
    let body = payload.get(4..)?;
    if payload.first() != Some(&(libc::AF_INET as u8)) {
        return None;
    }
    let (mut id, mut status, mut orig, mut reply, mut tcp_state) = (None, 0, None, None, None);
    for (k, value, _) in attrs(body) {
        match k {
            CTA_ID => id = be_u32(value),
            CTA_STATUS => status = be_u32(value)?,
            CTA_TUPLE_ORIG => orig = Some(value),
            CTA_TUPLE_REPLY => reply = Some(value),
            CTA_PROTOINFO => {
                tcp_state = find(find(value, CTA_PROTOINFO_TCP)?, CTA_PROTOINFO_TCP_STATE)
                    .and_then(|s| s.first().copied())
            }
            _ => {}
        }
    }
    let id = id?;
    let (protocol, destination) = endpoint(orig?, CTA_IP_V4_DST, CTA_PROTO_DST_PORT)?;
    if kind == ct_type(IPCTNL_MSG_CT_DELETE) {
        let established = if protocol == IPPROTO_TCP {
            status & IPS_ASSURED != 0
        } else {
            status & IPS_SEEN_REPLY != 0
        };
        return Some(ConnEvent::Gone { id, established });
    }
    if kind != ct_type(IPCTNL_MSG_CT_NEW) {
        return None;
    }
    if flags & NLM_F_CREATE != 0 {
        let (_, translated_to) = endpoint(reply?, CTA_IP_V4_SRC, CTA_PROTO_SRC_PORT)?;
        return Some(ConnEvent::New {
            id,
            protocol,
            destination,
            translated_to,
        });
    }
    match tcp_state {
        Some(s) if protocol == IPPROTO_TCP && s >= TCP_CLOSING => Some(ConnEvent::Closing { id }),
        _ => None,
    }
}

/// A ctnetlink socket subscribed to new, updated and destroyed connections, in the network
/// namespace of the thread that opened it. Reads block.
pub struct ConnEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl ConnEvents {
    pub fn open() -> io::Result<ConnEvents> {
        let fd = super::socket::open_netfilter(GROUPS)?;
        // A large buffer: a burst of connections must not overflow it (beyond rmem_max
        // where the kernel lets us).
        let size: i32 = 8 << 20;
        super::socket::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size).or_else(
            |_| super::socket::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size),
        )?;
        Ok(ConnEvents {
            fd,
            buf: vec![0; 256 * 1024],
        })
    }

    /// Waits for the next events and appends them to `out`. `ENOBUFS` (an `Err` of that
    /// raw os error) means events were lost; the socket stays usable.
    pub fn read(&mut self, out: &mut Vec<ConnEvent>) -> io::Result<()> {
        let n = loop {
            // SAFETY: buf valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        out.extend(messages(&self.buf[..n]));
        Ok(())
    }
}

/// The events in one datagram of netlink messages.
fn messages(mut buf: &[u8]) -> Vec<ConnEvent> {
    let mut out = vec![];
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        out.extend(parse_event(kind, flags, &buf[16..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::conntrack::tests::{attr, nested, tuple};
    use super::*;

    fn message(kind: u16, flags: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let payload: Vec<u8> = [vec![libc::AF_INET as u8, 0, 0, 0], attrs.concat()].concat();
        let mut m = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        m.extend(ct_type(kind).to_ne_bytes());
        m.extend(flags.to_ne_bytes());
        m.extend([0u8; 8]);
        m.extend(payload);
        m
    }

    #[test]
    fn new_closing_and_gone_connections_are_told_apart() {
        let orig = tuple(CTA_TUPLE_ORIG, [10, 88, 0, 2], [10, 89, 0, 1], 40000, 80);
        let reply = tuple(CTA_TUPLE_REPLY, [10, 88, 1, 5], [10, 88, 0, 2], 8080, 40000);
        let id = attr(CTA_ID, &7u32.to_be_bytes());
        let status = |s: u32| attr(CTA_STATUS, &s.to_be_bytes());
        let tcp_state = |s: u8| {
            nested(
                CTA_PROTOINFO,
                &[nested(
                    CTA_PROTOINFO_TCP,
                    &[attr(CTA_PROTOINFO_TCP_STATE, &[s])],
                )],
            )
        };
        let base = [orig.clone(), reply.clone(), id.clone()];
        let datagram = [
            message(
                IPCTNL_MSG_CT_NEW,
                NLM_F_CREATE | 0x200,
                &[&base[..], &[status(0x8), tcp_state(1)]].concat(),
            ),
            // An update that is not a close: nothing.
            message(
                IPCTNL_MSG_CT_NEW,
                0,
                &[&base[..], &[status(0xe), tcp_state(3)]].concat(),
            ),
            message(
                IPCTNL_MSG_CT_NEW,
                0,
                &[&base[..], &[status(0xe), tcp_state(7)]].concat(),
            ),
            message(
                IPCTNL_MSG_CT_DELETE,
                0,
                &[&base[..], &[status(0xe)]].concat(),
            ),
            // Refused (RST answered the SYN): answered, never established.
            message(
                IPCTNL_MSG_CT_DELETE,
                0,
                &[&base[..], &[status(0xa)]].concat(),
            ),
        ]
        .concat();
        assert_eq!(
            messages(&datagram),
            [
                ConnEvent::New {
                    id: 7,
                    protocol: 6,
                    destination: "10.89.0.1:80".parse().unwrap(),
                    translated_to: "10.88.1.5:8080".parse().unwrap(),
                },
                ConnEvent::Closing { id: 7 },
                ConnEvent::Gone {
                    id: 7,
                    established: true
                },
                ConnEvent::Gone {
                    id: 7,
                    established: false
                },
            ]
        );
    }
}
