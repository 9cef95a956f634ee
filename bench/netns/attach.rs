//! Attach/detach benchmark for tug-netns. Needs root. Never touches the root network
//! namespace: every "host" and "container" is a namespace this program makes.
//!
//!   cargo bench -p tug-netns --bench attach            # full run
//!   cargo bench -p tug-netns --bench attach -- quick   # fewer samples
//!   cargo bench -p tug-netns --bench attach -- quick levels=500
//!
//! Measures, with medians:
//! 1. attach and detach of one container through the library (allocation, veth made inside
//!    the container's namespace, address, lo, route) against the same plumbing done with
//!    `ip` commands (the comparison side only);
//! 2. the cost of one more attach when 10, 100 and 500 containers are already attached,
//!    without and with a published port (ports are rewritten as one nftables transaction).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tug_netns::{AttachRequest, NetnsRef, Network, NetworkConfig, PortMapping, Protocol};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A new network namespace, kept alive by its fd (gone when the fd closes, even on a crash).
fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this short-lived thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        let f = std::fs::File::open("/proc/thread-self/ns/net").expect("open netns");
        OwnedFd::from(f)
    })
    .join()
    .unwrap()
}

fn fd_ref(fd: &OwnedFd) -> NetnsRef {
    NetnsRef::Path(PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    )))
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

struct NamedNs(String);
impl NamedNs {
    fn new(name: String) -> NamedNs {
        ip(&["netns", "add", &name]);
        NamedNs(name)
    }
}
impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The `ip` side: the same plumbing as Network::attach, one process per step.
fn ip_side(samples: usize) -> (Duration, Duration) {
    let tag = format!("tb{}", std::process::id());
    let host = NamedNs::new(format!("{tag}-iphost"));
    let h = host.0.clone();
    ip(&["-n", &h, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &h, "addr", "add", "10.61.0.1/24", "dev", "br0"]);
    ip(&["-n", &h, "link", "set", "br0", "up"]);
    let c = NamedNs::new(format!("{tag}-ipc"));
    let (mut att, mut det) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = Instant::now();
        ip(&[
            "-n", &h, "link", "add", "vb0", "type", "veth", "peer", "name", "eth0", "netns", &c.0,
        ]);
        ip(&["-n", &h, "link", "set", "vb0", "master", "br0", "up"]);
        ip(&["-n", &c.0, "link", "set", "lo", "up"]);
        ip(&["-n", &c.0, "addr", "add", "10.61.0.2/24", "dev", "eth0"]);
        ip(&["-n", &c.0, "link", "set", "eth0", "up"]);
        ip(&["-n", &c.0, "route", "add", "default", "via", "10.61.0.1"]);
        att.push(t.elapsed());
        let t = Instant::now();
        ip(&["-n", &h, "link", "del", "vb0"]);
        det.push(t.elapsed());
    }
    (median(&mut att), median(&mut det))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the netns benchmark needs root");
        return;
    }
    let quick = std::env::args().any(|a| a == "quick");
    let samples = if quick { 30 } else { 200 };
    let custom: Option<Vec<usize>> = std::env::args()
        .find_map(|a| a.strip_prefix("levels=").map(String::from))
        .map(|l| {
            l.split(',')
                .map(|n| n.parse().expect("levels=N,N,..."))
                .collect()
        });
    let default_levels: &[usize] = if quick { &[10, 100] } else { &[10, 100, 500] };
    let levels: &[usize] = custom.as_deref().unwrap_or(default_levels);
    let extra = if quick { 10 } else { 30 };

    let data = std::env::temp_dir().join(format!("tug-netns-bench-{}", std::process::id()));
    let result = std::thread::spawn({
        let data = data.clone();
        let levels = levels.to_vec();
        move || {
            // This thread is the fake host.
            // SAFETY: unshare affects only this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(library_side(data, samples, levels, extra))
        }
    })
    .join()
    .expect("bench thread");
    let _ = std::fs::remove_dir_all(&data);
    let (lib_att, lib_det, scale) = result;
    let (ip_att, ip_det) = ip_side(if quick { 10 } else { 50 });

    println!("## tug-netns attach/detach ({} samples, medians)", samples);
    println!();
    println!("| operation | tug-netns | ip commands | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| attach | {} | {} | {:.1}x |",
        ms(lib_att),
        ms(ip_att),
        ip_att.as_secs_f64() / lib_att.as_secs_f64()
    );
    println!(
        "| detach | {} | {} | {:.1}x |",
        ms(lib_det),
        ms(ip_det),
        ip_det.as_secs_f64() / lib_det.as_secs_f64()
    );
    println!();
    println!(
        "| already attached | attach (no ports) | attach (1 port each) | detach (1 port each) |"
    );
    println!("|---|---|---|---|");
    for (n, a, ap, dp) in scale {
        println!("| {n} | {} | {} | {} |", ms(a), ms(ap), ms(dp));
    }
}

type Scale = Vec<(usize, Duration, Duration, Duration)>;

async fn library_side(
    data: PathBuf,
    samples: usize,
    levels: Vec<usize>,
    extra: usize,
) -> (Duration, Duration, Scale) {
    let mut cfg = NetworkConfig::new("bench", "10.60.0.0/21".parse().unwrap(), &data);
    cfg.bridge = "br0".into();
    let net = Network::open(cfg.clone()).await.expect("open network");

    // 1. one container, attach/detach repeated
    let c = new_netns();
    let (mut att, mut det) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let req = AttachRequest::new(&format!("one{i}"), fd_ref(&c));
        let t = Instant::now();
        net.attach(&req).await.expect("attach");
        att.push(t.elapsed());
        let t = Instant::now();
        net.detach(&req.container_id).await.expect("detach");
        det.push(t.elapsed());
    }
    let one = (median(&mut att), median(&mut det));

    // 2. scale, without and with published ports
    let mut scale = Vec::new();
    for with_ports in [false, true] {
        let mut held: Vec<(String, OwnedFd)> = Vec::new();
        let mut port = 20000u16;
        for &level in &levels {
            while held.len() < level {
                let fd = new_netns();
                let id = format!("bg{}", held.len());
                let mut req = AttachRequest::new(&id, fd_ref(&fd));
                if with_ports {
                    port += 1;
                    req.ports = vec![PortMapping {
                        protocol: Protocol::Tcp,
                        host_port: port,
                        container_port: 80,
                    }];
                }
                net.attach(&req).await.expect("attach background");
                held.push((id, fd));
            }
            let (mut a, mut d) = (Vec::new(), Vec::new());
            for i in 0..extra {
                let fd = new_netns();
                let mut req = AttachRequest::new(&format!("x{level}-{i}"), fd_ref(&fd));
                if with_ports {
                    req.ports = vec![PortMapping {
                        protocol: Protocol::Tcp,
                        host_port: 10000,
                        container_port: 80,
                    }];
                }
                let t = Instant::now();
                net.attach(&req).await.expect("attach extra");
                a.push(t.elapsed());
                let t = Instant::now();
                net.detach(&req.container_id).await.expect("detach extra");
                d.push(t.elapsed());
            }
            let (am, dm) = (median(&mut a), median(&mut d));
            if with_ports {
                if let Some(e) = scale
                    .iter_mut()
                    .find(|e: &&mut (usize, Duration, Duration, Duration)| e.0 == level)
                {
                    e.2 = am;
                    e.3 = dm;
                }
            } else {
                scale.push((level, am, Duration::ZERO, Duration::ZERO));
            }
        }
        for (id, _fd) in &held {
            net.detach(id).await.expect("detach background");
        }
    }
    net.teardown().await.expect("teardown");
    (one.0, one.1, scale)
}
