//! Service address against direct connections, through tug-netns' nftables services. Needs
//! root. Never touches the root network namespace: the host and the two containers (a
//! server and a client) are namespaces this program makes (`tgsvc<pid>...`), deleted on exit.
//!
//!   cargo bench -p tug-netns --bench services             # 5 runs
//!   cargo bench -p tug-netns --bench services -- runs=7
//!
//! The same server instance is reached from the client container three ways: directly at
//! its address, through a service address (DNAT in the host's nftables services table), and,
//! for comparison, through a userspace relay on the host like the `tugboat proxy` that the
//! kernel path replaced.
//! Each run measures, for each way (taking turns in 100 ms slices, so that the load of a
//! neighbour on a shared machine falls on all alike):
//! - connections/s: connect, a 32-byte request, a 32-byte answer, close (a reset, so that
//!   no side fills with TIME_WAIT entries), one after the other
//!   for 10 slices (also their p50/p99 latency);
//! - requests/s: 32-byte requests and answers on one kept-alive connection, 10 slices;
//! - MB/s: 256 MiB sent by the server on one connection.
//!
//! The last line gives the ratios service/direct of the medians over the runs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use tug_netns::{AttachRequest, Frontend, NetnsRef, Network, NetworkConfig, Protocol, ServiceSpec};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
const PORT: u16 = 8080;
const BULK: usize = 256 << 20;

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

/// A namespace made with `ip netns add`, deleted on drop.
struct NamedNs(String);

impl NamedNs {
    fn new(name: String) -> NamedNs {
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NamedNs(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in namespace")
    }

    /// Starts `f` on a thread inside the namespace (the sockets it makes are made there).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns of this thread only, on a namespace fd it holds open.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
    }
}

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The server: the first byte of a connection says what it wants: `c` one answer then
/// close, `r` an answer per request until the client closes, `b` the bulk bytes.
fn serve(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            let mut req = [0u8; 32];
            if s.read_exact(&mut req).is_err() {
                return;
            }
            match req[0] {
                b'b' => {
                    let chunk = vec![7u8; 1 << 16];
                    let mut left = BULK;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        left -= n;
                    }
                }
                b'r' => loop {
                    if s.write_all(&req).is_err() || s.read_exact(&mut req).is_err() {
                        return;
                    }
                },
                _ => {
                    // The client closes (with a reset, see `connections`): no TIME_WAIT
                    // here, whose 4-tuples a client's later ports would run into.
                    let _ = s.write_all(&req);
                    let _ = s.read(&mut req);
                }
            }
        });
    }
}

/// A userspace relay like the `tugboat proxy` the kernel path replaced: each connection
/// accepted is connected to `to`, and bytes are copied both ways through an 8 KiB buffer
/// (as tokio's copy_bidirectional did), for the comparison only.
fn relay(listener: TcpListener, to: SocketAddrV4) {
    fn pump(mut from: TcpStream, mut to: TcpStream) {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    loop {
        let Ok((inbound, _)) = listener.accept() else {
            continue;
        };
        let Ok(outbound) = TcpStream::connect(to) else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (i2, o2) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
        std::thread::spawn(move || pump(inbound, outbound));
        std::thread::spawn(move || pump(o2, i2));
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    conns: f64,
    reqs: f64,
    mbs: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Closes with a reset (SO_LINGER 0), as load generators do: tens of thousands of
/// connections a second would otherwise fill either side with TIME_WAIT entries, and the
/// measure would be of port reuse, not of the path.
fn close_with_reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a linger struct of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// Connections (connect, request, answer, close) to `target` for `slice`: their count and
/// latencies are added to `lat`.
fn connections(target: SocketAddrV4, slice: Duration, lat: &mut Vec<Duration>) {
    let mut req = [b'c'; 32];
    let started = Instant::now();
    while started.elapsed() < slice {
        let t = Instant::now();
        let mut s = TcpStream::connect(target).expect("connect");
        s.set_nodelay(true).unwrap();
        s.write_all(&req).unwrap();
        s.read_exact(&mut req).unwrap();
        close_with_reset(s);
        lat.push(t.elapsed());
    }
}

/// Requests and answers on one kept-alive connection for `slice`: how many.
fn requests(target: SocketAddrV4, slice: Duration) -> u64 {
    let mut s = TcpStream::connect(target).expect("connect");
    s.set_nodelay(true).unwrap();
    let mut req = [b'r'; 32];
    let mut n = 0u64;
    s.write_all(&req).unwrap();
    let started = Instant::now();
    while started.elapsed() < slice {
        s.read_exact(&mut req).unwrap();
        s.write_all(&req).unwrap();
        n += 1;
    }
    n
}

/// The bulk transfer: how long it took.
fn bulk(target: SocketAddrV4) -> Duration {
    let mut s = TcpStream::connect(target).expect("connect");
    let started = Instant::now();
    s.write_all(&[b'b'; 32]).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < BULK {
        match s.read(&mut buf).unwrap() {
            0 => break,
            k => got += k,
        }
    }
    assert_eq!(got, BULK);
    started.elapsed()
}

/// One run of the three measures against each target. The targets take turns in slices of
/// 100 ms (and the bulk transfers one after the other), so that a neighbour's load on this
/// shared machine falls on all of them alike.
fn measure(targets: &[SocketAddrV4]) -> Vec<Figures> {
    const SLICE: Duration = Duration::from_millis(100);
    const SLICES: u32 = 10;
    let mut lat: Vec<Vec<Duration>> = vec![vec![]; targets.len()];
    let mut reqs = vec![0u64; targets.len()];
    for _ in 0..SLICES {
        for (i, t) in targets.iter().enumerate() {
            connections(*t, SLICE, &mut lat[i]);
            reqs[i] += requests(*t, SLICE);
        }
    }
    let secs = (SLICE * SLICES).as_secs_f64();
    let took: Vec<Duration> = targets.iter().map(|t| bulk(*t)).collect();
    (0..targets.len())
        .map(|i| {
            let l = &mut lat[i];
            l.sort();
            let pct =
                |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e6;
            Figures {
                conns: l.len() as f64 / secs,
                reqs: reqs[i] as f64 / secs,
                mbs: BULK as f64 / (1 << 20) as f64 / took[i].as_secs_f64(),
                p50_us: pct(0.5),
                p99_us: pct(0.99),
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench services: needs root (network namespaces, nftables)");
        std::process::exit(1);
    }
    let runs: usize = std::env::args()
        .find_map(|a| a.strip_prefix("runs=").and_then(|n| n.parse().ok()))
        .unwrap_or(5)
        .max(1);
    let tag = format!("tgsvc{}", std::process::id());
    let host = NamedNs::new(format!("{tag}h"));
    let server = NamedNs::new(format!("{tag}s"));
    let client = NamedNs::new(format!("{tag}c"));
    let data = std::env::temp_dir().join(format!("{tag}-data"));
    let cfg = NetworkConfig::new("bsvc", "10.98.0.0/24".parse().unwrap(), &data);
    let (sref, cref) = (
        NetnsRef::Path(server.path().into()),
        NetnsRef::Path(client.path().into()),
    );
    let (c, took) = host.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let net = Network::open(cfg.clone()).await.expect("open the network");
                let s = net
                    .attach(&AttachRequest::new("server", sref))
                    .await
                    .expect("attach the server");
                net.attach(&AttachRequest::new("client", cref))
                    .await
                    .expect("attach the client");
                let direct = SocketAddrV4::new(s.address.ip(), PORT);
                let started = Instant::now();
                net.set_service(&ServiceSpec::new(
                    Frontend::Virtual {
                        address: VIP,
                        port: PORT,
                    },
                    Protocol::Tcp,
                    vec![direct],
                ))
                .await
                .expect("the service");
                (direct, started.elapsed())
            })
    });
    let direct = c;
    let service = SocketAddrV4::new(VIP, PORT);
    println!(
        "bench/services: {} runs; server {direct}, service {service}; set_service took {:.2} ms",
        runs,
        took.as_secs_f64() * 1e3
    );
    let listener = server.run(move || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).expect("bind")
    });
    std::thread::spawn(move || serve(listener));
    // The relay listens on the bridge's address in the host namespace, and connects from
    // there (its threads are in that namespace, as the node's proxy was).
    let relayed = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 1), 9090);
    let listener = host.run(move || TcpListener::bind(relayed).expect("bind the relay"));
    drop(host.spawn(move || relay(listener, direct)));
    let mut results: Vec<(Figures, Figures)> = vec![];
    let mut relays: Vec<Figures> = vec![];
    for run in 0..runs {
        let (d, s, r) = client.run(move || {
            // Alternate which goes first: a warm cache favours none of them.
            let order = if run % 2 == 0 {
                [direct, service, relayed]
            } else {
                [relayed, service, direct]
            };
            let f = measure(&order);
            if run % 2 == 0 {
                (f[0], f[1], f[2])
            } else {
                (f[2], f[1], f[0])
            }
        });
        relays.push(r);
        for (name, f) in [("direct ", d), ("service", s), ("relay  ", r)] {
            println!(
                "  run {}: {name} connections/s {:8.0}  requests/s {:8.0}  MB/s {:7.0}  connection p50 {:5.0} us p99 {:5.0} us",
                run + 1,
                f.conns,
                f.reqs,
                f.mbs,
                f.p50_us,
                f.p99_us
            );
        }
        results.push((d, s));
    }
    let med = |pick: fn(&Figures) -> f64, side: usize| {
        median(
            results
                .iter()
                .map(|(d, s)| pick(if side == 0 { d } else { s }))
                .collect(),
        )
    };
    for (name, side) in [("direct ", 0), ("service", 1)] {
        println!(
            "median {name}: connections/s {:.0}, requests/s {:.0}, MB/s {:.0}, connection p50 {:.0} us, p99 {:.0} us",
            med(|f| f.conns, side),
            med(|f| f.reqs, side),
            med(|f| f.mbs, side),
            med(|f| f.p50_us, side),
            med(|f| f.p99_us, side),
        );
    }
    let relay_med = |pick: fn(&Figures) -> f64| median(relays.iter().map(pick).collect());
    println!(
        "median relay  : connections/s {:.0}, requests/s {:.0}, MB/s {:.0}, connection p50 {:.0} us, p99 {:.0} us (userspace, for comparison)",
        relay_med(|f| f.conns),
        relay_med(|f| f.reqs),
        relay_med(|f| f.mbs),
        relay_med(|f| f.p50_us),
        relay_med(|f| f.p99_us),
    );
    let ratio = |pick: fn(&Figures) -> f64| med(pick, 1) / med(pick, 0);
    let line = format!(
        "services: service/direct connections/s {:.2}, requests/s {:.2}, MB/s {:.2}",
        ratio(|f| f.conns),
        ratio(|f| f.reqs),
        ratio(|f| f.mbs)
    );
    // The network goes with the host namespace; its state directory by hand.
    drop((client, server, host));
    let _ = std::fs::remove_dir_all(&data);
    println!("{line}");
}
