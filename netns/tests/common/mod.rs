//! Test harness: fake hosts and containers are network namespaces made with `ip netns add`
//! under a unique prefix and deleted by guards, even when a test fails. The machine's root
//! namespace is never changed; [`RootWatch`] checks that.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tug_netns::NetnsRef;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early (the test is skipped, and says why) when not root or no `ip` tool.
#[macro_export]
macro_rules! need_root {
    () => {
        if !common::is_root() {
            common::skip(
                std::thread::current().name().unwrap_or(module_path!()),
                "needs root (network namespaces, veths, nftables)",
            );
            return;
        }
        if std::process::Command::new("ip").arg("-V").output().is_err() {
            common::skip(
                std::thread::current().name().unwrap_or(module_path!()),
                "needs iproute2's `ip` to make test namespaces",
            );
            return;
        }
    };
}

/// Says why a test is skipped, on the real stderr (libtest's capture would hide an
/// `eprintln!` of a passing test).
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name prefix for this process: `tn<pid>x<n>`.
pub fn unique(label: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("tn{}x{}{}", std::process::id(), n, label)
}

pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(label: &str) -> Ns {
        let name = unique(label);
        ip(&["netns", "add", &name]);
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn reference(&self) -> NetnsRef {
        NetnsRef::Path(self.path())
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid netns fd, for this thread only.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// Runs an async block inside this namespace on a current-thread tokio runtime.
    pub fn block_on<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f())
        })
    }

    /// Names of links of `kind` (e.g. "veth") in this namespace.
    pub fn links_of_kind(&self, kind: &str) -> Vec<String> {
        self.ip(&["-o", "link", "show", "type", kind])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    pub fn addresses(&self) -> String {
        self.ip(&["-4", "-o", "addr", "show"])
    }

    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/net/{key}");
        self.run(move || std::fs::read_to_string(path).unwrap().trim().to_string())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects two namespaces with a veth pair and gives each end an address.
pub fn wire(a: &Ns, a_if: &str, a_addr: &str, b: &Ns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    b.ip(&["link", "set", b_if, "up"]);
}

const DEADLINE: Duration = Duration::from_secs(5);

/// Opens a TCP listener inside `server`, connects to `target` from inside `client`
/// (retrying until a deadline), sends a line and reads it back through the server.
/// Returns the client address the server saw.
pub fn tcp_probe(
    server: &Ns,
    bind: SocketAddrV4,
    client: &Ns,
    target: SocketAddrV4,
) -> io::Result<SocketAddr> {
    // The previous probe's server socket may still be closing (LAST_ACK) for a moment.
    let listener = server.run(move || {
        let end = Instant::now() + DEADLINE;
        loop {
            match TcpListener::bind(bind) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                r => return r,
            }
        }
    })?;
    listener.set_nonblocking(true)?;
    let srv = std::thread::spawn(move || -> io::Result<SocketAddr> {
        let end = Instant::now() + DEADLINE;
        loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(DEADLINE))?;
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf)?;
                    s.write_all(&buf)?;
                    // Wait for the client to close first, so TIME_WAIT stays on its side
                    // and the next probe can bind the same server port at once.
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest)?;
                    return Ok(peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        }
    });
    let client_result = client.run(move || -> io::Result<()> {
        let end = Instant::now() + DEADLINE;
        loop {
            match TcpStream::connect_timeout(&target.into(), Duration::from_millis(500)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(DEADLINE))?;
                    s.write_all(b"hello")?;
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf)?;
                    assert_eq!(&buf, b"hello");
                    return Ok(());
                }
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    match client_result {
        Ok(()) => srv.join().expect("server thread"),
        Err(e) => {
            let _ = srv.join();
            Err(e)
        }
    }
}

/// UDP round trip: a server in `server` bound to `bind` echoes one datagram sent from
/// `client` to `target`. Returns the client address the server saw.
pub fn udp_probe(
    server: &Ns,
    bind: SocketAddrV4,
    client: &Ns,
    target: SocketAddrV4,
) -> io::Result<SocketAddr> {
    let sock = server.run(move || UdpSocket::bind(bind))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let srv = std::thread::spawn(move || -> io::Result<SocketAddr> {
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 16];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    sock.send_to(&buf[..n], peer)?;
                    return Ok(peer);
                }
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => {}
            }
        }
    });
    let client_sock = client.run(|| UdpSocket::bind("0.0.0.0:0"))?;
    client_sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 16];
    let res = loop {
        client_sock.send_to(b"ping", target)?;
        match client_sock.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == b"ping" => break Ok(()),
            Ok(_) => {}
            Err(e) if Instant::now() >= end => break Err(e),
            Err(_) => {}
        }
    };
    let seen = srv.join().expect("udp server thread");
    res.and(seen)
}

pub fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// Checks that a test did not touch the machine's root network namespace: no links,
/// nftables tables named like ours, and the same ip_forward.
pub struct RootWatch {
    forward: String,
}

impl RootWatch {
    pub fn new() -> RootWatch {
        RootWatch {
            forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        }
    }

    pub fn check(&self) {
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        assert_eq!(forward, self.forward, "root namespace ip_forward changed");
        let links = ip(&["-o", "link"]);
        for l in links.lines() {
            let name = l.split(':').nth(1).unwrap_or("").trim();
            assert!(
                !(name.starts_with("tug-") || (name.starts_with("tv") && name.len() >= 14)),
                "a tug link appeared in the root namespace: {name}"
            );
        }
        let mut s = tug_netns::nft::Socket::open().unwrap();
        let tables = s.list_tables(tug_netns::nft::FAMILY_IPV4).unwrap();
        assert!(
            !tables.iter().any(|t| t.starts_with("tug-")),
            "a tug nftables table appeared in the root namespace: {tables:?}"
        );
    }
}

impl Default for RootWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `f` until it returns true or the deadline passes.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What published ports leave in a network's table: per-container chains and map elements.
pub fn nat_footprint(host: &Ns, network: &str) -> (Vec<String>, usize) {
    let table = tug_netns::firewall::table_name(network);
    host.block_on(move || async move {
        let ops = tug_netns::rtnl::Rtnl::current().unwrap();
        let chains: Vec<String> = ops
            .nft_chains(&table)
            .unwrap()
            .into_iter()
            .filter(|c| c.starts_with("c-"))
            .collect();
        let elements = ops.nft_element_count(&table, "tcp-ports").unwrap()
            + ops.nft_element_count(&table, "udp-ports").unwrap();
        (chains, elements)
    })
}
