//! A control plane on 127.0.0.1 with simulated nodes: each registers, heartbeats, watches
//! its assigned instances through the agent API and reports them running and ready (or
//! failed, for images named `*:broken`), like an agent whose containers start at once.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::controllers::NodeTimers;
use tugboat::controlplane::Timers;
use tugboat::model::{Instance, InstancePhase, Resources};
use tugboat::server::{start, RunningServer, ServerConfig};
use tugboat::wire::{InstanceStatusReport, NodeRegistration, ReportedPhase, WatchKind};

pub const GI: u64 = 1 << 30;

pub struct TestCluster {
    pub server: RunningServer,
    pub client: ApiClient,
    pub nodes: Vec<SimulatedNode>,
    _dir: tempfile::TempDir,
}

pub struct SimulatedNode {
    pub name: String,
    /// Set to make the node go silent (no heartbeats, no reports).
    pub silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimulatedNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn test_timers() -> Timers {
    Timers {
        nodes: NodeTimers {
            heartbeat_every_ms: 100,
            not_ready_after_ms: 400,
            lost_after_ms: 1000,
        },
        reconcile_interval: Duration::from_millis(50),
        replace_failed_after: Duration::from_millis(200),
    }
}

impl TestCluster {
    pub async fn start(nodes: &[(&str, &[(&str, &str)])]) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        config.timers = test_timers();
        let server = start(config).await.unwrap();
        let client = ApiClient::new(&server.addr.to_string(), server.token.clone());
        let mut cluster = TestCluster {
            server,
            client,
            nodes: vec![],
            _dir: dir,
        };
        for (name, labels) in nodes {
            cluster
                .add_node(name, labels, Resources::new(4000, 8 * GI, 0))
                .await;
        }
        cluster
    }

    pub async fn add_node(&mut self, name: &str, labels: &[(&str, &str)], capacity: Resources) {
        let registration = NodeRegistration {
            runtimes: vec![],
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            capacity,
            address: Some("127.0.0.1".into()),
            subnet: None,
            volumes: vec![],
            agent_url: None,
        };
        self.client.register_node(&registration).await.unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_simulated_agent(
            self.client.clone(),
            name.to_string(),
            silent.clone(),
        ));
        self.nodes.push(SimulatedNode {
            name: name.into(),
            silent,
            task,
        });
    }

    pub fn node(&self, name: &str) -> &SimulatedNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub async fn instances(&self, service: &str) -> Vec<Instance> {
        self.client.instances(Some(service)).await.unwrap().items
    }

    pub async fn stop(self) {
        drop(self.nodes);
        self.server.shutdown().await;
    }
}

/// The agent loop of a simulated node: list, then watch its instances; heartbeat.
async fn run_simulated_agent(client: ApiClient, node: String, silent: Arc<AtomicBool>) {
    let mut reported: std::collections::HashSet<String> = Default::default();
    let mut last_heartbeat = Instant::now();
    let mut from = 0;
    loop {
        if silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if last_heartbeat.elapsed() > Duration::from_millis(100) {
            let _ = client.heartbeat(&node, &Default::default()).await;
            last_heartbeat = Instant::now();
        }
        let mut assigned: Vec<Instance> = vec![];
        if from == 0 {
            let Ok(list) = client.assigned_instances(&node).await else {
                continue;
            };
            from = list.revision + 1;
            assigned = list.items;
        } else {
            match client
                .watch(
                    WatchKind::Instances,
                    from,
                    Duration::from_millis(100),
                    Some(&node),
                )
                .await
            {
                Ok(batch) => {
                    from = batch.revision + 1;
                    for change in batch.changes {
                        if let Ok(instance) = serde_json::from_value::<Instance>(change.object) {
                            assigned.push(instance);
                        }
                    }
                }
                Err(e) if e.status() == Some(410) => from = 0,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        for instance in assigned {
            if instance.phase != InstancePhase::Scheduled || reported.contains(&instance.id) {
                continue;
            }
            let broken = instance.spec.image.ends_with(":broken");
            let report = InstanceStatusReport {
                node: node.clone(),
                phase: if broken {
                    ReportedPhase::Failed
                } else {
                    ReportedPhase::Running
                },
                ready: !broken,
                message: if broken {
                    "image app:broken: exit code 1 at start".into()
                } else {
                    "started".into()
                },
                exit_code: broken.then_some(1),
                restarts: 0,
                stats: None,
                address: None,
                last_exit: None,
                crash_looping: false,
            };
            if client.report_status(&instance.id, &report).await.is_ok() {
                reported.insert(instance.id);
            }
        }
    }
}

/// Poll `check` until it returns Some, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn ready_count(instances: &[Instance]) -> usize {
    instances
        .iter()
        .filter(|i| i.phase == InstancePhase::Running && i.ready)
        .count()
}
