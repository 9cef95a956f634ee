//! Root test (and bench/autoscale's scenario): a service whose requests burn CPU, under
//! `tugboat up`, scales out on its agent's real cgroup numbers when a load starts, and back
//! in after its window when the load stops, while a light load keeps asking it (issue 17).
//! It prints `autoscale: decision X.X s after load, ready X.X s, F failed requests during
//! scale-in`, which bench/autoscale/run.sh reads.

mod host;

use host::{http_get, wait_for, TestHost};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);
const PORT: u16 = 8090;

/// A CGI that burns some CPU per request.
const BURN: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\ni=0\nwhile [ $i -lt 4000 ]; do i=$((i+1)); done\necho burnt\n";

fn spec(cgi: &str) -> String {
    format!(
        r#"
services:
  work:
    image: shop/catalog:1
    command: [httpd, -f, -p, "80", -h, /www]
    ports: [{{container: 80, published: {PORT}, mode: ingress}}]
    volumes: [{{type: bind, source: {cgi}, target: /www/cgi-bin, read_only: true}}]
    resources:
      requests: {{cpu: 100m}}
      limits: {{cpu: 300m}}
    health:
      readiness: {{http: {{port: 80, path: /healthz}}, interval_seconds: 1}}
    autoscale:
      min: 1
      max: 4
      target: {{cpu: 50%}}
      scale_up: {{max_step: 4, period_seconds: 1}}
      scale_down: {{stabilization_seconds: 8, max_step: 1, period_seconds: 1}}
    stop: {{grace_seconds: 2}}
"#
    )
}

/// `threads` clients asking `path` in a loop until `stop`; failures counted.
fn load(
    host: &TestHost,
    threads: usize,
    path: &'static str,
    pause: Duration,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let (stop, failed) = (stop.clone(), failed.clone());
            let ns = std::fs::File::open(format!("/run/netns/{}", host.netns)).unwrap();
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns of this thread only, on a namespace fd we hold open.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0);
                let addr = format!("127.0.0.1:{PORT}");
                while !stop.load(Ordering::SeqCst) {
                    if http_get(&addr, path).is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(pause);
                }
            })
        })
        .collect()
}

#[test]
fn a_loaded_service_scales_out_and_back_in_without_failing_requests() {
    skip_unless_possible!("a_loaded_service_scales_out_and_back_in_without_failing_requests");
    let mut host = TestHost::new();
    let cgi = host.dir.join("cgi-bin");
    std::fs::create_dir_all(&cgi).unwrap();
    std::fs::write(cgi.join("burn"), BURN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cgi.join("burn"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = host.dir.join("autoscale.yaml");
    std::fs::write(&file, spec(&cgi.display().to_string())).unwrap();
    host.start_up(&file);
    let state = |host: &TestHost| {
        host.api(|c| async move { c.describe_service("work").await })
            .map(|d| {
                let ready = d.instances.iter().filter(|i| i.ready).count() as u32;
                (d.service.spec.replicas, ready, d.events)
            })
            .ok()
    };
    let show = |host: &TestHost| format!("{:#?}", state(host));
    wait_for(
        "work ready",
        LIMIT,
        || state(&host).is_some_and(|s| s.1 == 1) && http_get_in(&host, "/cgi-bin/burn").is_ok(),
        || show(&host),
    );

    // The load: four clients without pause, each request burning CPU.
    let stop = Arc::new(AtomicBool::new(false));
    let failed_under_load = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let heavy = load(
        &host,
        4,
        "/cgi-bin/burn",
        Duration::ZERO,
        stop.clone(),
        failed_under_load.clone(),
    );
    let mut decided = None;
    let mut ready = None;
    while started.elapsed() < LIMIT && ready.is_none() {
        if let Some((replicas, up, _)) = state(&host) {
            if replicas > 1 && decided.is_none() {
                decided = Some(started.elapsed());
            }
            if replicas > 1 && up == replicas {
                ready = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    heavy.into_iter().for_each(|t| t.join().unwrap());
    let (Some(decided), Some(ready)) = (decided, ready) else {
        panic!("no scale-out under load: {}", show(&host));
    };

    // Idle but asked: a light load while it scales back in.
    let stop = Arc::new(AtomicBool::new(false));
    let failed_scale_in = Arc::new(AtomicU64::new(0));
    let light = load(
        &host,
        2,
        "/healthz",
        Duration::from_millis(100),
        stop.clone(),
        failed_scale_in.clone(),
    );
    wait_for(
        "work back to 1",
        LIMIT,
        || state(&host).is_some_and(|s| s.0 == 1 && s.1 == 1),
        || show(&host),
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    light.into_iter().for_each(|t| t.join().unwrap());
    let failed = failed_scale_in.load(Ordering::SeqCst);
    println!(
        "autoscale: decision {:.1} s after load, ready {:.1} s, {failed} failed requests during scale-in",
        decided.as_secs_f64(),
        ready.as_secs_f64()
    );
    let (_, _, events) = state(&host).unwrap();
    let out = events
        .iter()
        .find(|e| e.reason == "autoscaled")
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        out.starts_with("1 -> ") && out.ends_with("of request (target 50%)"),
        "{out}"
    );
    assert_eq!(failed, 0, "requests failed during scale-in");
    assert!(host.stop_up());
}

fn http_get_in(host: &TestHost, path: &str) -> Result<String, String> {
    host.in_netns(|| http_get(&format!("127.0.0.1:{PORT}"), path))
}
