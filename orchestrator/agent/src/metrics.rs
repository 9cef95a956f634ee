//! `GET /metrics` on the node's API: what this node's containers use, read at each scrape
//! from their cgroups, their network namespace (`/proc/PID/net/dev`) and the instance
//! directories, in the OpenMetrics text format (prometheus-client). Names follow cAdvisor's
//! (`container_cpu_usage_seconds_total`, ...) under the `tugboat_` prefix; the labels are
//! `service` and `id` (not `instance`, which Prometheus gives its targets). The server
//! forwards it as `GET /v1/nodes/{name}/metrics`, so one scrape config with the API's token
//! reaches every node, those that only dial out too (docs/ARCHITECTURE.md, "Metrics").
//!
//! Only running containers are listed; a counter starts again with each run of the
//! container (Prometheus takes a drop as a reset). The cluster's view (desired and ready
//! replicas, phases, the API, the store) is the server's `/metrics`.
//!
//! With them, per service, the connections this node's balancing made
//! (`tugboat_service_connections_total`, `tugboat_service_active_connections`,
//! `tugboat_service_upstream_failures_total`) and per instance its failed health probes
//! (`tugboat_instance_probe_failures_total{probe="liveness|readiness"}`), counted since the
//! agent started ([`super::traffic`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::path::Path;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    service: String,
    id: String,
}

/// Where the counters are read: normally `/sys/fs/cgroup` and `/proc` (tests lay out fakes).
pub struct Roots<'a> {
    pub instances: &'a Path,
    pub cgroup: &'a Path,
    pub proc: &'a Path,
}

type FCounter = Counter<f64, AtomicU64>;

/// The scrape's content type (OpenMetrics text, as the server's `/metrics`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The scrape, in the OpenMetrics text format; with the node's service connections and
/// probe failures when given ([`super::traffic`]).
pub fn render(roots: &Roots, traffic: Option<&super::traffic::Traffic>) -> Result<String, String> {
    let cpu = Family::<ContainerLabels, FCounter>::default();
    let memory = Family::<ContainerLabels, Gauge>::default();
    let pids = Family::<ContainerLabels, Gauge>::default();
    let reads = Family::<ContainerLabels, Counter>::default();
    let writes = Family::<ContainerLabels, Counter>::default();
    let received = Family::<ContainerLabels, Counter>::default();
    let sent = Family::<ContainerLabels, Counter>::default();
    let restarts = Family::<ContainerLabels, Counter>::default();
    let oom = Family::<ContainerLabels, Counter>::default();
    let running = Gauge::<i64>::default();
    let entries = std::fs::read_dir(roots.instances).into_iter().flatten();
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(instance) =
            tugboat_monitor::read_json::<tugboat_api::model::Instance>(&dir.join("instance.json"))
        else {
            continue;
        };
        if !super::instance::monitor_running(&dir) {
            continue;
        }
        let Some(pid) = super::instance::monitor_record(&dir).and_then(|r| r.container_pid) else {
            continue;
        };
        running.inc();
        let l = ContainerLabels {
            service: instance.service.clone(),
            id: instance.id.clone(),
        };
        if let Some(u) = super::stats::read_usage(roots.cgroup, &instance.id) {
            cpu.get_or_create(&l).inc_by(u.cpu_ns as f64 / 1e9);
            memory.get_or_create(&l).set(u.memory_bytes as i64);
            pids.get_or_create(&l).set(u.pids as i64);
        }
        if let Some((r, w)) = super::stats::read_io(roots.cgroup, &instance.id) {
            reads.get_or_create(&l).inc_by(r);
            writes.get_or_create(&l).inc_by(w);
        }
        if let Some((rx, tx)) = super::stats::read_network(roots.proc, pid) {
            received.get_or_create(&l).inc_by(rx);
            sent.get_or_create(&l).inc_by(tx);
        }
        let state: Option<super::instance::LocalState> =
            tugboat_monitor::read_json(&dir.join("state.json"));
        restarts
            .get_or_create(&l)
            .inc_by(u64::from(state.map_or(0, |s| s.restarts)));
        oom.get_or_create(&l)
            .inc_by(super::stats::oom_kills(roots.cgroup, &instance.id).unwrap_or(0));
    }
    let mut registry = Registry::with_prefix("tugboat");
    registry.register(
        "containers_running",
        "Containers running on this node",
        running,
    );
    registry.register_with_unit(
        "container_cpu_usage",
        "CPU time the container's cgroup used",
        Unit::Seconds,
        cpu,
    );
    registry.register_with_unit(
        "container_memory_usage",
        "Memory the container's cgroup holds",
        Unit::Bytes,
        memory,
    );
    registry.register(
        "container_pids",
        "Processes in the container's cgroup",
        pids,
    );
    registry.register_with_unit(
        "container_fs_reads",
        "Bytes the container's cgroup read from block devices",
        Unit::Bytes,
        reads,
    );
    registry.register_with_unit(
        "container_fs_writes",
        "Bytes the container's cgroup wrote to block devices",
        Unit::Bytes,
        writes,
    );
    registry.register_with_unit(
        "container_network_receive",
        "Bytes the container's network namespace received (loopback not counted)",
        Unit::Bytes,
        received,
    );
    registry.register_with_unit(
        "container_network_transmit",
        "Bytes the container's network namespace sent (loopback not counted)",
        Unit::Bytes,
        sent,
    );
    registry.register(
        "container_restarts",
        "Times the agent restarted the instance's container",
        restarts,
    );
    registry.register(
        "container_oom_kills",
        "Processes the OOM killer killed in the container's cgroup (this run)",
        oom,
    );
    if let Some(traffic) = traffic {
        super::traffic::register(&mut registry, traffic);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_containers_are_scraped_and_others_are_not() {
        let root = tempfile::tempdir().unwrap();
        let instances = root.path().join("instances");
        let cgroup = root.path().join("cgroup");
        let proc = root.path().join("proc");
        // A running instance: its monitor holds the lock; this process stands in as the
        // container (its own /proc/self/net/dev is read through a fake /proc).
        let me = std::process::id() as i32;
        let web = instances.join("web-1");
        std::fs::create_dir_all(&web).unwrap();
        let instance = serde_json::json!({
            "id": "web-1", "service": "web", "template_hash": "t", "created_at_ms": 0,
            "spec": {"image": "busybox"},
            "phase": "running", "ready": true
        });
        let instance: tugboat_api::model::Instance =
            serde_json::from_value(instance).unwrap_or_else(|e| panic!("{e}"));
        tugboat_monitor::write_json(&web.join("instance.json"), &instance).unwrap();
        tugboat_monitor::write_json(
            &web.join(tugboat_monitor::MONITOR_FILE),
            &tugboat_monitor::MonitorRecord {
                pid: me,
                start_time: 0,
                container_pid: Some(me),
            },
        )
        .unwrap();
        let _lock = tugboat_monitor::take_lock(&web.join(tugboat_monitor::LOCK_FILE))
            .unwrap()
            .unwrap();
        std::fs::write(web.join("state.json"), r#"{"restarts": 2}"#).unwrap();
        let cg = cgroup.join("tug/web-1");
        std::fs::create_dir_all(&cg).unwrap();
        for (f, v) in [
            ("memory.current", "1048576"),
            ("cpu.stat", "usage_usec 2500000\n"),
            ("pids.current", "3"),
            ("io.stat", "8:0 rbytes=10 wbytes=20\n"),
            ("memory.events", "oom 1\noom_kill 1\n"),
        ] {
            std::fs::write(cg.join(f), v).unwrap();
        }
        let net = proc.join(me.to_string()).join("net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(
            net.join("dev"),
            "h1\nh2\n  eth0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n",
        )
        .unwrap();
        // One that ended: no monitor holds its lock.
        let gone = instances.join("web-2");
        std::fs::create_dir_all(&gone).unwrap();
        let mut ended = instance.clone();
        ended.id = "web-2".into();
        tugboat_monitor::write_json(&gone.join("instance.json"), &ended).unwrap();

        let text = render(
            &Roots {
                instances: &instances,
                cgroup: &cgroup,
                proc: &proc,
            },
            None,
        )
        .unwrap();
        for line in [
            "tugboat_containers_running 1",
            r#"tugboat_container_cpu_usage_seconds_total{service="web",id="web-1"} 2.5"#,
            r#"tugboat_container_memory_usage_bytes{service="web",id="web-1"} 1048576"#,
            r#"tugboat_container_pids{service="web",id="web-1"} 3"#,
            r#"tugboat_container_fs_reads_bytes_total{service="web",id="web-1"} 10"#,
            r#"tugboat_container_fs_writes_bytes_total{service="web",id="web-1"} 20"#,
            r#"tugboat_container_network_receive_bytes_total{service="web",id="web-1"} 100"#,
            r#"tugboat_container_network_transmit_bytes_total{service="web",id="web-1"} 200"#,
            r#"tugboat_container_restarts_total{service="web",id="web-1"} 2"#,
            r#"tugboat_container_oom_kills_total{service="web",id="web-1"} 1"#,
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("web-2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
