//! The typed protocol between `tug` (the parent) and the container's init during create.
//!
//! One SOCK_SEQPACKET socketpair, one JSON message per packet. Errors in init travel back as
//! [`InitMsg::Error`] with their context, so the parent can report them and clean up.
//!
//! ```text
//! parent                                init
//!   clone3 ───────────────────────────▶ (waits)
//!   put init in the cgroup
//!   CgroupJoined ─────────────────────▶ join namespaces, hostname, mounts, devices
//!                ◀───────────────────── RunHooks     (only when createRuntime/prestart exist)
//!   run prestart + createRuntime hooks
//!   HooksDone ────────────────────────▶ createContainer hooks, pivot_root, sysctl, masks
//!                ◀───────────────────── Ready        (or Error at any step)
//!   write state "created", exit          (init blocks on exec.fifo until `tug start`)
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentMsg {
    /// The child is in its cgroup; `state` is the OCI state for hooks.
    CgroupJoined {
        state: String,
    },
    HooksDone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitMsg {
    RunHooks,
    Ready,
    Error(String),
}

/// One end of the socketpair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

const MAX_MSG: usize = 64 * 1024;

impl Channel {
    /// A connected pair: (parent end, init end). Both close on exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        socket::send(self.fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
            .map_err(io::Error::from)
            .map(drop)
    }

    /// Receives one message; end of file (the other side exited) is UnexpectedEof.
    pub fn recv<T: DeserializeOwned>(&self) -> io::Result<T> {
        let mut buf = vec![0u8; MAX_MSG];
        let n = loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side closed the channel",
            ));
        }
        serde_json::from_slice(&buf[..n]).map_err(io::Error::other)
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_and_eof_is_reported() {
        let (p, c) = Channel::pair().unwrap();
        let m = ParentMsg::CgroupJoined { state: "{}".into() };
        p.send(&m).unwrap();
        assert_eq!(c.recv::<ParentMsg>().unwrap(), m);
        c.send(&InitMsg::Error("mount /proc: EPERM".into()))
            .unwrap();
        assert_eq!(
            p.recv::<InitMsg>().unwrap(),
            InitMsg::Error("mount /proc: EPERM".into())
        );
        drop(c);
        assert_eq!(
            p.recv::<InitMsg>().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
