//! The netfilter netlink socket: sends a [`Batch`] as one transaction and reads the
//! kernel's answers; dumps tables, chains, rules and set elements.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::*;

/// A netfilter netlink socket, bound to the network namespace it was opened in.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    sndbuf: usize,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Socket> {
        let fd = open_netfilter(0)?;
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

    pub(super) fn send(&self, bytes: &[u8]) -> io::Result<()> {
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
    pub(super) fn read_until(
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

    pub(super) fn next_seq(&mut self, n: u32) -> u32 {
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
        self.dump_msg(seq, m)
    }

    /// A dump of any netfilter subsystem (`kind` is the full message type), no attributes.
    pub(super) fn dump_raw(&mut self, kind: u16, family: u8) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = self.next_seq(1);
        let m = Msg::new(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0);
        self.dump_msg(seq, m)
    }

    fn dump_msg(&mut self, seq: u32, m: Msg) -> Result<Vec<Vec<u8>>, NftError> {
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

    /// The rules of a chain with their handles and userdata; `None` when the table or
    /// chain does not exist.
    pub fn list_rules(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<RuleRef>>, NftError> {
        // A rule dump filtered by a table or chain that does not exist is not always an
        // error (it can be an empty dump): ask for the chain first.
        if !self.list_chains(family, table)?.iter().any(|c| c == chain) {
            return Ok(None);
        }
        match self.dump(NFT_MSG_GETRULE, family, &[(1, table), (2, chain)]) {
            Ok(msgs) => Ok(Some(
                msgs.iter()
                    .filter_map(|p| {
                        let attrs = &p[4..];
                        let handle = find_attr(attrs, 3)?;
                        let handle = u64::from_be_bytes(handle.get(..8)?.try_into().ok()?);
                        let userdata = find_attr(attrs, 7).unwrap_or_default();
                        Some(RuleRef { handle, userdata })
                    })
                    .collect(),
            )),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
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

/// A NETLINK_NETFILTER socket bound to the multicast `groups` (0: none), in the calling
/// thread's network namespace: nftables' requests and conntrack's events alike.
pub(super) fn open_netfilter(groups: u32) -> io::Result<OwnedFd> {
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
    // SAFETY: zeroed sockaddr_nl is valid; family and groups set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
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
    Ok(fd)
}

pub(super) fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
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

/// The payload of the first attribute of type `want`.
fn find_attr(mut attrs: &[u8], want: u16) -> Option<Vec<u8>> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == want {
            return Some(attrs[4..len].to_vec());
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

pub(super) fn find_str_attr(mut attrs: &[u8], want: u16) -> Option<String> {
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
