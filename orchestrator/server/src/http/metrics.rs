//! `GET /metrics`: the cluster in the OpenMetrics text format Prometheus scrapes
//! (prometheus-client). The API's own counters live as long as the server; the state of
//! nodes, services and instances is read from the store at each scrape, so a scrape says
//! what the API would.

use crate::controlplane::ControlPlane;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tugboat_api::model::{InstancePhase, NodeStatus, Resources, RolloutState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// The API's counters, kept for the server's life.
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 0.5 ms to ~16 s.
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

impl ApiMetrics {
    pub fn observe(&self, route: &str, method: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                method: method.into(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    service: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    service: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// `id`, not `instance`: Prometheus gives each target an `instance` label of its own.
struct InstanceLabels {
    service: String,
    id: String,
    node: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// The whole scrape, in the OpenMetrics text format.
pub async fn render(cp: &ControlPlane, api: &ApiMetrics) -> Result<String, String> {
    let nodes = cp.list_nodes().await.map_err(|e| e.to_string())?.items;
    let services = cp.list_services().await.map_err(|e| e.to_string())?.items;
    let instances = cp
        .list_instances(None, None)
        .await
        .map_err(|e| e.to_string())?
        .items;
    let mut registry = Registry::with_prefix("tugboat");

    let node_ready = Family::<NodeLabels, Gauge>::default();
    let node_cpu = Family::<NodeLabels, FGauge>::default();
    let node_memory = Family::<NodeLabels, Gauge>::default();
    let alloc_cpu = Family::<NodeLabels, FGauge>::default();
    let alloc_memory = Family::<NodeLabels, Gauge>::default();
    let by_status = Family::<StatusLabels, Gauge>::default();
    let mut allocated: HashMap<&str, Resources> = HashMap::new();
    for i in &instances {
        if let (Some(node), false) = (&i.node, i.phase == InstancePhase::Failed) {
            let r = allocated.entry(node.as_str()).or_default();
            let asked = Resources::requested_by(&i.spec);
            r.cpu_millis += asked.cpu_millis;
            r.memory_bytes += asked.memory_bytes;
        }
    }
    for n in &nodes {
        let l = NodeLabels {
            node: n.name.clone(),
        };
        node_ready
            .get_or_create(&l)
            .set(i64::from(n.status == NodeStatus::Ready));
        node_cpu
            .get_or_create(&l)
            .set(n.capacity.cpu_millis as f64 / 1000.0);
        node_memory
            .get_or_create(&l)
            .set(n.capacity.memory_bytes as i64);
        let a = allocated.get(n.name.as_str()).copied().unwrap_or_default();
        alloc_cpu
            .get_or_create(&l)
            .set(a.cpu_millis as f64 / 1000.0);
        alloc_memory.get_or_create(&l).set(a.memory_bytes as i64);
        let status = serde_json::to_value(n.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        by_status.get_or_create(&StatusLabels { status }).inc();
    }
    registry.register("node_ready", "1 when the node is ready", node_ready);
    registry.register_with_unit(
        "node_capacity_cpu",
        "CPU the node offers",
        Unit::Other("cores".into()),
        node_cpu,
    );
    registry.register_with_unit(
        "node_capacity_memory",
        "Memory the node offers",
        Unit::Bytes,
        node_memory,
    );
    registry.register_with_unit(
        "node_allocated_cpu",
        "CPU requested by the instances placed on the node",
        Unit::Other("cores".into()),
        alloc_cpu,
    );
    registry.register_with_unit(
        "node_allocated_memory",
        "Memory requested by the instances placed on the node",
        Unit::Bytes,
        alloc_memory,
    );
    registry.register("nodes", "Nodes by status", by_status);

    let desired = Family::<ServiceLabels, Gauge>::default();
    let ready = Family::<ServiceLabels, Gauge>::default();
    for s in &services {
        let l = ServiceLabels {
            service: s.name.clone(),
        };
        desired.get_or_create(&l).set(i64::from(s.spec.replicas));
        ready.get_or_create(&l).set(
            instances
                .iter()
                .filter(|i| i.service == s.name && i.ready)
                .count() as i64,
        );
    }
    // Rollouts, one series per state (1 for the service's state, 0 for the others), and
    // each autoscaled service's target and current use, as fractions of what is requested.
    let rollout = Family::<RolloutLabels, Gauge>::default();
    let target = Family::<ResourceLabels, FGauge>::default();
    let current = Family::<ResourceLabels, FGauge>::default();
    let now = tugboat_api::model::now_ms();
    for s in &services {
        for state in [
            RolloutState::Complete,
            RolloutState::Progressing,
            RolloutState::RolledBack,
        ] {
            rollout
                .get_or_create(&RolloutLabels {
                    service: s.name.clone(),
                    state: state.as_str().into(),
                })
                .set(i64::from(s.rollout.state == state));
        }
        let Some(autoscale) = &s.spec.autoscale else {
            continue;
        };
        let observed = crate::controllers::autoscale::observe(cp, s, instances.iter(), now);
        let requests = &s.spec.resources.requests;
        type Used = fn(&tugboat_api::model::InstanceStats) -> u64;
        let resources: [(&str, Option<u32>, u64, Used); 2] = [
            (
                "cpu",
                autoscale.target.cpu.map(|p| p.0),
                requests.cpu.map_or(0, |c| c.0),
                |u| u.cpu_millis,
            ),
            (
                "memory",
                autoscale.target.memory.map(|p| p.0),
                requests.memory.map_or(0, |m| m.0),
                |u| u.memory_bytes,
            ),
        ];
        for (resource, pct, request, used) in resources {
            let Some(pct) = pct else { continue };
            let l = ResourceLabels {
                service: s.name.clone(),
                resource: resource.into(),
            };
            target.get_or_create(&l).set(f64::from(pct) / 100.0);
            if let Some(u) = crate::controllers::autoscale::utilization(request, &observed, used) {
                current.get_or_create(&l).set(u);
            }
        }
    }
    registry.register(
        "service_rollout_state",
        "1 for the state of a service's rollout (complete, progressing, rolled-back)",
        rollout,
    );
    registry.register_with_unit(
        "service_autoscale_target",
        "The use an autoscaled service aims at, as a fraction of what its instances request",
        Unit::Other("ratio".into()),
        target,
    );
    registry.register_with_unit(
        "service_autoscale_current",
        "The average use of an autoscaled service's ready instances, as a fraction of what each requests",
        Unit::Other("ratio".into()),
        current,
    );
    registry.register(
        "service_replicas_desired",
        "Replicas a service asks for",
        desired,
    );
    registry.register(
        "service_replicas_ready",
        "Ready instances of a service",
        ready,
    );

    let phases = Family::<StatusLabels, Gauge>::default();
    let cpu = Family::<InstanceLabels, FGauge>::default();
    let memory = Family::<InstanceLabels, Gauge>::default();
    let pids = Family::<InstanceLabels, Gauge>::default();
    let restarts = Family::<InstanceLabels, Counter>::default();
    for i in &instances {
        let phase = serde_json::to_value(i.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        phases.get_or_create(&StatusLabels { status: phase }).inc();
        let l = InstanceLabels {
            service: i.service.clone(),
            id: i.id.clone(),
            node: i.node.clone().unwrap_or_default(),
        };
        restarts.get_or_create(&l).inc_by(u64::from(i.restarts));
        if let Some(u) = cp.usage_of(&i.id) {
            cpu.get_or_create(&l).set(u.cpu_millis as f64 / 1000.0);
            memory.get_or_create(&l).set(u.memory_bytes as i64);
            pids.get_or_create(&l).set(u.pids as i64);
        }
    }
    registry.register("instances", "Instances by phase", phases);
    registry.register_with_unit(
        "instance_cpu",
        "CPU an instance used over its agent's last interval",
        Unit::Other("cores".into()),
        cpu,
    );
    registry.register_with_unit(
        "instance_memory",
        "Memory an instance's cgroup holds",
        Unit::Bytes,
        memory,
    );
    registry.register("instance_pids", "Processes in an instance's cgroup", pids);
    registry.register(
        "instance_restarts",
        "Restarts of an instance's container",
        restarts,
    );

    // Volumes, as their nodes last measured them.
    let volume_used = Family::<VolumeLabels, Gauge>::default();
    let volume_size = Family::<VolumeLabels, Gauge>::default();
    let inodes_used = Family::<VolumeLabels, Gauge>::default();
    let inodes = Family::<VolumeLabels, Gauge>::default();
    let mounted = Family::<VolumeLabels, Gauge>::default();
    for u in cp.volume_usages() {
        let l = VolumeLabels {
            volume: u.volume.clone(),
            node: u.node.clone(),
        };
        volume_used.get_or_create(&l).set(u.bytes_used as i64);
        volume_size.get_or_create(&l).set(u.bytes_total as i64);
        inodes_used.get_or_create(&l).set(u.inodes_used as i64);
        inodes.get_or_create(&l).set(u.inodes_total as i64);
        mounted
            .get_or_create(&l)
            .set(i64::from(u.state == "mounted"));
    }
    registry.register_with_unit(
        "volume_used",
        "Bytes in use on a volume, as its node measured",
        Unit::Bytes,
        volume_used,
    );
    registry.register_with_unit(
        "volume_size",
        "A volume's size (its filesystem's), as its node measured",
        Unit::Bytes,
        volume_size,
    );
    registry.register(
        "volume_inodes_used",
        "Inodes in use on a volume",
        inodes_used,
    );
    registry.register("volume_inodes", "Inodes a volume's filesystem has", inodes);
    registry.register(
        "volume_mounted",
        "1 when the volume is mounted on the node, 0 when making it failed",
        mounted,
    );

    // The scheduler: how long instances waited to be placed, and why the pending ones wait.
    let pending = Family::<ReasonLabels, Gauge>::default();
    for (reason, n) in cp.scheduling.pending_by_reason() {
        pending
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .set(n);
    }
    registry.register(
        "scheduler_pending_instances",
        "Instances no node can take now, by the kind of their main reason",
        pending,
    );
    registry.register_with_unit(
        "scheduler_placement_latency",
        "From an instance's creation to its placement on a node",
        Unit::Seconds,
        cp.scheduling.placement_latency.clone(),
    );
    if let Some(store) = cp.store().metrics() {
        registry.register_with_unit(
            "store_append_latency",
            "Writing and fdatasyncing one commit to the store's log",
            Unit::Seconds,
            store.append_latency,
        );
        registry.register_with_unit(
            "store_log_size",
            "The store's log file",
            Unit::Bytes,
            store.log_bytes,
        );
        registry.register(
            "store_compactions",
            "Times the store's log was rewritten as a snapshot",
            store.compactions,
        );
    }

    let revision = Gauge::<i64>::default();
    revision.set(cp.store().current_revision().await.unwrap_or(0) as i64);
    registry.register("store_revision", "The store's revision", revision);
    registry.register(
        "api_requests",
        "API requests by route, method and status",
        api.requests.clone(),
    );
    registry.register_with_unit(
        "api_request_duration",
        "Time to answer an API request",
        Unit::Seconds,
        api.latency.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| e.to_string())?;
    Ok(text)
}
