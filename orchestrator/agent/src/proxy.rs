//! The node's service proxy: `tugboat proxy`, a small detached process that balances TCP
//! connections to services over their ready instances.
//!
//! It is not part of the agent so that traffic keeps flowing while the agent is stopped,
//! crashed or upgraded (as containers keep running under their monitors). The agent writes
//! the table (`proxy.json`: for each listening address, the service, its instances' port and
//! its ready instances) by temp file and rename whenever it changes; the proxy reads it when
//! its modification time changes (every 100 ms) and opens or closes listeners to match.
//! Connections go to the next ready instance, round robin; when it does not take the
//! connection (refused, unreachable, no answer in 2 s) the next one is tried, and the one
//! that failed is passed over for 5 s. The proxy holds `proxy.lock` for
//! its life (the agent's liveness check); it exits when the table file is removed.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TABLE_FILE: &str = "proxy.json";
pub const LOCK_FILE: &str = "proxy.lock";
/// The proxy's pid, for people and tests.
pub const PID_FILE: &str = "proxy.pid";

/// What the proxy serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyTable {
    pub listeners: Vec<ProxyListener>,
}

/// One listening address: a service's virtual address and port, or an ingress host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyListener {
    pub service: String,
    pub listen: SocketAddr,
    /// The instances' port.
    pub target_port: u16,
    /// Ready instances.
    pub endpoints: Vec<Ipv4Addr>,
}

/// Starts the proxy for the table in `dir` (returns once it has detached).
pub fn spawn(exe: &Path, dir: &Path) -> io::Result<()> {
    let status = std::process::Command::new(exe)
        .arg("proxy")
        .arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the service proxy failed to start ({status})"
        )))
    }
}

/// Is a proxy serving `dir`?
pub fn running(dir: &Path) -> bool {
    super::monitor::lock_held(&dir.join(LOCK_FILE))
}

/// Writes the table if it differs from what is there.
pub fn write_table(dir: &Path, table: &ProxyTable) -> io::Result<bool> {
    let path = dir.join(TABLE_FILE);
    if super::monitor::read_json::<ProxyTable>(&path).as_ref() == Some(table) {
        return Ok(false);
    }
    super::monitor::write_json(&path, table)?;
    Ok(true)
}

/// Stops the proxy: removes the table and waits (up to 5 s) for it to exit.
pub fn stop(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(TABLE_FILE));
    for _ in 0..100 {
        if !running(dir) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(dir.join(LOCK_FILE));
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// `tugboat proxy --dir DIR`: detaches, then serves until the table file goes away.
pub fn run(dir: &Path) -> i32 {
    let lock = match super::monitor::take_lock(&dir.join(LOCK_FILE)) {
        Ok(Some(lock)) => lock,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("tugboat proxy: {e}");
            return 1;
        }
    };
    // SAFETY: single-threaded here; no runtime exists yet.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("tugboat proxy: fork: {e}");
            return 1;
        }
    }
    let _lock = lock;
    let _ = nix::unistd::setsid();
    let _ = std::fs::write(dir.join(PID_FILE), std::process::id().to_string());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => std::process::exit(1),
    };
    runtime.block_on(serve(dir.to_path_buf()));
    std::process::exit(0);
}

struct Balancer {
    task: tokio::task::JoinHandle<()>,
    endpoints: Arc<Mutex<(Vec<Ipv4Addr>, u16)>>,
}

async fn serve(dir: PathBuf) {
    let path = dir.join(TABLE_FILE);
    let mut balancers: HashMap<SocketAddr, Balancer> = HashMap::new();
    let mut seen: Option<std::time::SystemTime> = None;
    let mut table = ProxyTable::default();
    let mut retry_at = std::time::Instant::now();
    loop {
        let modified = match std::fs::metadata(&path) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(_) => None,
        };
        let changed = modified != seen;
        if changed {
            if let Some(t) = super::monitor::read_json::<ProxyTable>(&path) {
                table = t;
                seen = modified;
            }
        }
        if changed || std::time::Instant::now() >= retry_at {
            apply(&table, &mut balancers);
            retry_at = std::time::Instant::now() + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, b) in balancers {
        b.task.abort();
    }
}

fn apply(table: &ProxyTable, balancers: &mut HashMap<SocketAddr, Balancer>) {
    let wanted: HashMap<SocketAddr, &ProxyListener> =
        table.listeners.iter().map(|l| (l.listen, l)).collect();
    balancers.retain(|addr, b| {
        let keep = wanted.contains_key(addr) && !b.task.is_finished();
        if !keep {
            b.task.abort();
        }
        keep
    });
    for (addr, l) in wanted {
        if let Some(b) = balancers.get(&addr) {
            *b.endpoints.lock().unwrap_or_else(|p| p.into_inner()) =
                (l.endpoints.clone(), l.target_port);
            continue;
        }
        let Ok(listener) = bind(addr) else { continue };
        let endpoints = Arc::new(Mutex::new((l.endpoints.clone(), l.target_port)));
        let task = tokio::spawn(accept_loop(listener, endpoints.clone()));
        balancers.insert(addr, Balancer { task, endpoints });
    }
}

fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How long an endpoint that refused or did not answer a connection is passed over.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long a connection attempt to an endpoint may take while others are left to try: an
/// endpoint on a LAN answers a SYN in well under a millisecond, and a dead node's endpoints
/// (no answer at all) must not hold a client for seconds before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// The last endpoint left gets longer (a slow link, a loaded host): there is nothing else.
const LAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Endpoints that failed a connection recently, and until when they are passed over.
#[derive(Default)]
pub struct Down(Mutex<HashMap<Ipv4Addr, std::time::Instant>>);

impl Down {
    fn mark(&self, ip: Ipv4Addr) {
        let until = std::time::Instant::now() + DOWN_FOR;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip, until);
    }

    fn clear(&self, ip: Ipv4Addr) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }

    fn is_down(&self, ip: Ipv4Addr, now: std::time::Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .is_some_and(|until| *until > now)
    }
}

/// The endpoints to try for one connection, in order: round robin from the next one, those
/// that failed lately last (still tried: they may be back, and the table may be all of them).
pub fn candidates(endpoints: &[Ipv4Addr], next: &AtomicUsize, down: &Down) -> Vec<Ipv4Addr> {
    if endpoints.is_empty() {
        return vec![];
    }
    let start = next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
    let now = std::time::Instant::now();
    let (mut up, mut failed) = (vec![], vec![]);
    for ip in endpoints[start..].iter().chain(&endpoints[..start]) {
        if down.is_down(*ip, now) {
            failed.push(*ip);
        } else {
            up.push(*ip);
        }
    }
    up.extend(failed);
    up
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    endpoints: Arc<Mutex<(Vec<Ipv4Addr>, u16)>>,
) {
    let next = AtomicUsize::new(0);
    let down = Arc::new(Down::default());
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (targets, port) = {
            let guard = endpoints.lock().unwrap_or_else(|p| p.into_inner());
            let (list, port) = &*guard;
            (candidates(list, &next, &down), *port)
        };
        if targets.is_empty() {
            drop(conn);
            continue;
        }
        tokio::spawn(relay(conn, targets, port, down.clone()));
    }
}

/// Connects to the first of `targets` that answers (an endpoint that fails is passed over
/// for [`DOWN_FOR`]: an instance on a node that went away costs one failed attempt, not a
/// failed request each time), then relays both ways.
async fn relay(
    mut inbound: tokio::net::TcpStream,
    targets: Vec<Ipv4Addr>,
    port: u16,
    down: Arc<Down>,
) {
    let last = targets.len().saturating_sub(1);
    for (n, ip) in targets.into_iter().enumerate() {
        let target = SocketAddr::from((ip, port));
        let limit = if n == last {
            LAST_CONNECT_TIMEOUT
        } else {
            CONNECT_TIMEOUT
        };
        let connect = tokio::time::timeout(limit, tokio::net::TcpStream::connect(target)).await;
        match connect {
            Ok(Ok(mut outbound)) => {
                down.clear(ip);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                return;
            }
            _ => down.mark(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend on loopback that says "hello" to every connection; its port.
    async fn hello_backend() -> u16 {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = backend.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = backend.accept().await.unwrap();
                use tokio::io::AsyncWriteExt;
                let _ = c.write_all(b"hello").await;
            }
        });
        port
    }

    #[test]
    fn round_robin_with_failed_endpoints_last() {
        let next = AtomicUsize::new(0);
        let down = Down::default();
        let a: Ipv4Addr = "10.88.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.88.0.3".parse().unwrap();
        let c: Ipv4Addr = "10.88.0.4".parse().unwrap();
        assert!(candidates(&[], &next, &down).is_empty());
        let firsts: Vec<_> = (0..3)
            .map(|_| candidates(&[a, b, c], &next, &down)[0])
            .collect();
        assert_eq!(firsts, [a, b, c]);
        down.mark(b);
        for _ in 0..3 {
            let order = candidates(&[a, b, c], &next, &down);
            assert_eq!(order.len(), 3);
            assert_ne!(order[0], b);
            assert_eq!(order[2], b, "a failed endpoint is tried last");
        }
        down.clear(b);
        assert!((0..3).any(|_| candidates(&[a, b, c], &next, &down)[0] == b));
    }

    #[tokio::test]
    async fn a_dead_endpoint_costs_no_failed_connection() {
        let port = hello_backend().await;
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = front.local_addr().unwrap();
        // 127.0.0.2 has nothing on the port: refused, as an instance that just died.
        let dead: Ipv4Addr = "127.0.0.2".parse().unwrap();
        let endpoints = Arc::new(Mutex::new((vec![dead, Ipv4Addr::LOCALHOST], port)));
        tokio::spawn(accept_loop(front, endpoints));
        for i in 0..10 {
            let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
            let mut answer = String::new();
            use tokio::io::AsyncReadExt;
            let _ = c.read_to_string(&mut answer).await;
            assert_eq!(answer, "hello", "connection {i}");
        }
    }

    #[tokio::test]
    async fn the_proxy_follows_its_table() {
        let port = hello_backend().await;
        let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = front.local_addr().unwrap();
        drop(front);
        let dir = tempfile::tempdir().unwrap();
        let table = ProxyTable {
            listeners: vec![ProxyListener {
                service: "web".into(),
                listen,
                target_port: port,
                endpoints: vec![Ipv4Addr::LOCALHOST],
            }],
        };
        assert!(write_table(dir.path(), &table).unwrap());
        assert!(!write_table(dir.path(), &table).unwrap());
        let served = tokio::spawn(serve(dir.path().to_path_buf()));
        let mut answer = String::new();
        for _ in 0..100 {
            if let Ok(mut c) = tokio::net::TcpStream::connect(listen).await {
                use tokio::io::AsyncReadExt;
                let _ = c.read_to_string(&mut answer).await;
                if !answer.is_empty() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answer, "hello");
        std::fs::remove_file(dir.path().join(TABLE_FILE)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the proxy stops when its table goes")
            .unwrap();
    }
}
