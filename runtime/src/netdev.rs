//! `linux.netDevices` (runtime-spec 1.3): network interfaces of tug's network namespace
//! moved into the container's, under the name asked, during create; and moved back, with
//! their own names, when the container is deleted (or its create fails).
//!
//! One RTM_NEWLINK per device does both the move (IFLA_NET_NS_FD) and the rename
//! (IFLA_IFNAME, applied by the kernel in the target namespace), through a raw rtnetlink
//! socket: the runtime needs two messages of it, not a netlink crate. The kernel takes the
//! addresses off an interface that changes namespace; a physical device whose container's
//! namespace ends without a delete (the init died) goes back to the host's first namespace
//! under its container name, a virtual one (veth, dummy) is destroyed with the namespace.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{Linux, LinuxNamespaceType};

/// A device to move: its name in tug's namespace and in the container's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetDevice {
    pub host: String,
    pub container: String,
}

/// The devices of `linux.netDevices`, sorted by host name.
pub fn devices(linux: &Linux) -> Vec<NetDevice> {
    let mut out: Vec<NetDevice> = linux
        .net_devices()
        .iter()
        .flatten()
        .map(|(host, d)| NetDevice {
            host: host.clone(),
            container: d
                .name()
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| host.clone()),
        })
        .collect();
    out.sort_by(|a, b| a.host.cmp(&b.host));
    out
}

/// Why `name` cannot name an interface, if it cannot (the kernel's dev_valid_name).
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than an interface name can be (15 bytes)")
    } else if name == "." || name == ".." {
        Some("is not an interface name")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("has a '/', ':' or white space, which an interface name cannot")
    } else {
        None
    }
}

/// Checks `linux.netDevices` with the rest of config.json: the container has a network
/// namespace of its own (`has_netns`), names are interface names, no two devices get one
/// name. ([`check_present`] is for create.)
pub fn check(linux: &Linux, has_netns: bool) -> Result<(), (String, String)> {
    let list = devices(linux);
    if list.is_empty() {
        return Ok(());
    }
    if !has_netns {
        return Err((
            "linux.netDevices".into(),
            "needs a network namespace of the container's own (\"network\" in linux.namespaces): \
             without one the devices would stay in the host's"
                .into(),
        ));
    }
    for (i, d) in list.iter().enumerate() {
        let field = format!("linux.netDevices.{}", d.host);
        if let Some(why) = bad_name(&d.host) {
            return Err((field, format!("the host's name \"{}\" {why}", d.host)));
        }
        if let Some(why) = bad_name(&d.container) {
            return Err((
                format!("{field}.name"),
                format!("\"{}\" {why}", d.container),
            ));
        }
        if let Some(other) = list[..i].iter().find(|o| o.container == d.container) {
            return Err((
                format!("{field}.name"),
                format!(
                    "\"{}\" is also the name of linux.netDevices.{}",
                    d.container, other.host
                ),
            ));
        }
    }
    Ok(())
}

/// Checks, before create makes anything, that each device is in tug's network namespace.
pub fn check_present(devices: &[NetDevice]) -> Result<(), String> {
    match devices.iter().find(|d| index_of(&d.host) == 0) {
        Some(d) => Err(format!(
            "linux.netDevices.{}: no network device \"{}\" in tug's network namespace",
            d.host, d.host
        )),
        None => Ok(()),
    }
}

/// The interface index of `name` in the calling thread's network namespace, 0 if none.
fn index_of(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else {
        return 0;
    };
    // SAFETY: a NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Opens a network namespace; the fd keeps it (and the devices in it) alive, also after
/// its last process is gone.
pub fn open_netns(path: &Path) -> Result<OwnedFd, String> {
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// The container's network namespace: the one linux.namespaces joins by path, else that
/// of its init `pid` (which may not have joined a path's yet, right after the clone).
pub fn container_netns(linux: &Linux, pid: i32) -> PathBuf {
    linux
        .namespaces()
        .iter()
        .flatten()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
        .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/ns/net")))
}

/// Moves `devices` from tug's network namespace into `target`.
pub fn move_in(target: &OwnedFd, devices: &[NetDevice]) -> Result<(), String> {
    if devices.is_empty() {
        return Ok(());
    }
    let sock = rtnetlink().map_err(|e| format!("netlink socket: {e}"))?;
    for d in devices {
        let index = index_of(&d.host);
        if index == 0 {
            return Err(format!(
                "linux.netDevices.{}: no such device in tug's network namespace",
                d.host
            ));
        }
        set_link(&sock, index, target, &d.container).map_err(|e| {
            format!(
                "linux.netDevices.{}: move into the container as {}: {e}",
                d.host, d.container
            )
        })?;
    }
    Ok(())
}

/// Moves `devices` from the network namespace `theirs` back into tug's, under their own
/// names; says which it could not (each is tried).
pub fn move_out(theirs: &OwnedFd, devices: &[NetDevice]) -> Result<(), String> {
    if devices.is_empty() {
        return Ok(());
    }
    let home = open_netns(Path::new("/proc/self/ns/net"))?;
    // The indexes and a netlink socket of the container's namespace: looked up and made
    // with this thread in it for a moment (tug is single-threaded).
    nix::sched::setns(theirs.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter the container's network namespace: {e}"))?;
    let indexes: Vec<u32> = devices.iter().map(|d| index_of(&d.container)).collect();
    let sock = rtnetlink();
    nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("return to tug's network namespace: {e}"))?;
    let sock = sock.map_err(|e| format!("netlink socket: {e}"))?;
    let mut failed = Vec::new();
    for (d, index) in devices.iter().zip(indexes) {
        let r = if index == 0 {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {} in the container", d.container),
            ))
        } else {
            set_link(&sock, index, &home, &d.host)
        };
        if let Err(e) = r {
            failed.push(format!("linux.netDevices.{}: move back: {e}", d.host));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn rtnetlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const IFLA_IFNAME: u16 = 3;
const IFLA_NET_NS_FD: u16 = 28;

/// The RTM_NEWLINK request that moves interface `index` into namespace `netns` as `name`.
fn set_link_message(index: u32, netns: i32, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    // struct nlmsghdr: len (filled in last), type, flags, seq, pid.
    m.extend(0u32.to_ne_bytes());
    m.extend(libc::RTM_NEWLINK.to_ne_bytes());
    m.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend(1u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // struct ifinfomsg: family, pad, type, index, flags, change.
    m.extend([libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend((index as i32).to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    let mut attr = |kind: u16, data: &[u8]| {
        m.extend(((4 + data.len()) as u16).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(data);
        m.resize(m.len().next_multiple_of(4), 0);
    };
    attr(IFLA_NET_NS_FD, &(netns as u32).to_ne_bytes());
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    attr(IFLA_IFNAME, &cname);
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn set_link(sock: &OwnedFd, index: u32, netns: &OwnedFd, name: &str) -> io::Result<()> {
    let m = set_link_message(index, netns.as_raw_fd(), name);
    // SAFETY: send/recv on our socket with buffers of the sizes given.
    let sent = unsafe { libc::send(sock.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // NLMSG_ERROR: struct nlmsghdr, then the error (0: the ack).
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if n < 20 || kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!(
            "unexpected netlink answer (type {kind})"
        )));
    }
    let error = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if error != 0 {
        return Err(io::Error::from_raw_os_error(-error));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(v: serde_json::Value) -> Linux {
        serde_json::from_value(serde_json::json!({ "netDevices": v })).unwrap()
    }

    #[test]
    fn names_are_checked_by_field() {
        let check = |v, netns| check(&linux(v), netns).map_err(|(f, m)| format!("{f}: {m}"));
        assert!(check(serde_json::json!({"lo": {}}), false)
            .unwrap_err()
            .starts_with("linux.netDevices: needs a network namespace"));
        assert!(check(serde_json::json!({"lo": {"name": "a/b"}}), true)
            .unwrap_err()
            .starts_with("linux.netDevices.lo.name:"));
        assert!(check(
            serde_json::json!({"lo": {"name": "x"}, "lp": {"name": "x"}}),
            true
        )
        .unwrap_err()
        .contains("also the name of linux.netDevices.lo"));
        let missing = devices(&linux(serde_json::json!({"tugt-nothere": {}})));
        assert!(check_present(&missing)
            .unwrap_err()
            .starts_with("linux.netDevices.tugt-nothere: no network device"));
        // Every namespace has a loopback: it exists, and keeps its name without "name".
        assert!(check(serde_json::json!({"lo": {}}), true).is_ok());
        assert!(check_present(&devices(&linux(serde_json::json!({"lo": {}})))).is_ok());
        assert_eq!(
            devices(&linux(serde_json::json!({"lo": {}}))),
            vec![NetDevice {
                host: "lo".into(),
                container: "lo".into()
            }]
        );
    }

    #[test]
    fn the_request_moves_and_renames_in_one_message() {
        let m = set_link_message(7, 9, "eth9");
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        // IFLA_NET_NS_FD (8 bytes), then IFLA_IFNAME "eth9\0" padded to 12.
        assert_eq!(&m[32..36], &[8, 0, 28, 0]);
        assert_eq!(u32::from_ne_bytes(m[36..40].try_into().unwrap()), 9);
        assert_eq!(&m[40..44], &[9, 0, 3, 0]);
        assert_eq!(&m[44..49], b"eth9\0");
        assert_eq!(m.len(), 52);
    }
}
