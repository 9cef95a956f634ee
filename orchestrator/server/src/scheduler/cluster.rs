//! What the scheduler sees: nodes with what is already reserved on them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tugboat_api::model::{Instance, Node, NodeStatus, Resources, Volume};
use tugboat_api::spec::{AccessMode, PlacementSpec, Priority, Protocol, ServiceSpec, VolumeKind};

/// What one instance needs from a node, derived once per service template.
#[derive(Debug, Clone)]
pub struct PlacementRequest {
    pub service: Arc<str>,
    pub resources: Resources,
    pub host_ports: Vec<(Protocol, u16)>,
    pub named_volumes: Vec<String>,
    pub placement: PlacementSpec,
    /// An OCI runtime by name the node must have (None: tug, or a path the agent checks).
    pub runtime: Option<String>,
    /// Who may evict whom when nodes are full (strictly lower only).
    pub priority: Priority,
}

impl PlacementRequest {
    pub fn for_service(service: &str, spec: &ServiceSpec) -> PlacementRequest {
        PlacementRequest {
            service: service.into(),
            resources: Resources::requested_by(spec),
            host_ports: spec
                .ports
                .iter()
                .filter_map(|p| p.host_port().map(|h| (p.protocol, h)))
                .collect(),
            named_volumes: spec
                .volumes
                .iter()
                .filter(|v| v.kind == VolumeKind::Volume && !v.read_only)
                .map(|v| v.source.clone())
                .collect(),
            placement: spec.placement.clone(),
            runtime: spec
                .runtime
                .clone()
                .filter(|r| r != "tug" && !r.starts_with('/')),
            priority: spec.priority,
        }
    }
}

/// One node and what is reserved on it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// Cordoned or draining: takes nothing new.
    pub cordoned: bool,
    pub capacity: Resources,
    pub allocated: Resources,
    pub host_ports: HashSet<(Protocol, u16)>,
    /// Instances per service on this node.
    pub services: HashMap<Arc<str>, u32>,
    pub volumes: HashSet<String>,
    /// OCI runtimes by name (tug always).
    pub runtimes: HashSet<String>,
}

impl NodeState {
    pub fn new(name: &str, labels: BTreeMap<String, String>, capacity: Resources) -> NodeState {
        NodeState {
            name: name.into(),
            labels,
            ready: true,
            cordoned: false,
            capacity,
            allocated: Resources::default(),
            host_ports: HashSet::new(),
            services: HashMap::new(),
            volumes: HashSet::new(),
            runtimes: HashSet::from(["tug".to_string()]),
        }
    }

    pub fn from_node(node: &Node) -> NodeState {
        let mut state = NodeState::new(&node.name, node.labels.clone(), node.capacity);
        state.ready = node.status == NodeStatus::Ready;
        state.cordoned = node.cordoned || node.draining;
        state.volumes = node.volumes.iter().cloned().collect();
        state.runtimes.extend(node.runtimes.iter().cloned());
        state
    }

    pub fn runs(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|n| *n > 0)
    }
}

/// The cluster as the scheduler sees it. Reservations go through [`ClusterState::reserve`].
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub nodes: Vec<NodeState>,
    index: HashMap<String, usize>,
    /// Which node holds each named volume.
    pub volume_nodes: HashMap<String, usize>,
    /// Volumes any node may mount (an nfs or multi-node exec volume): never pinned.
    pub shared_volumes: HashSet<String>,
    /// Local volumes whose object names a node that is not registered: no node takes them.
    pub homeless_volumes: HashMap<String, String>,
    /// Instances of a service per value of a spread label: (service, label key) -> value -> n.
    pub spread_counts: HashMap<(Arc<str>, String), HashMap<String, u32>>,
}

impl ClusterState {
    pub fn new(nodes: Vec<NodeState>) -> ClusterState {
        let mut cluster = ClusterState::default();
        for node in nodes {
            cluster.add_node(node);
        }
        cluster
    }

    pub fn add_node(&mut self, node: NodeState) {
        let i = self.nodes.len();
        for volume in &node.volumes {
            self.volume_nodes.insert(volume.clone(), i);
        }
        self.index.insert(node.name.clone(), i);
        self.nodes.push(node);
    }

    /// Build from stored nodes and the instances that hold resources on them.
    pub fn from_store(nodes: &[Node], instances: &[Instance]) -> ClusterState {
        Self::from_store_with_volumes(nodes, instances, &BTreeMap::new())
    }

    /// The same, knowing the volume objects: shared volumes pin nobody, and a local volume
    /// made for a node (`node:`) is on that node before any instance uses it.
    pub fn from_store_with_volumes<I: std::borrow::Borrow<Instance>>(
        nodes: &[Node],
        instances: &[I],
        volumes: &BTreeMap<String, Volume>,
    ) -> ClusterState {
        let mut cluster = ClusterState::new(nodes.iter().map(NodeState::from_node).collect());
        for volume in volumes.values() {
            if volume.config.access_mode() == AccessMode::MultiNodeWriter {
                cluster.volume_nodes.remove(&volume.name);
                cluster.shared_volumes.insert(volume.name.clone());
            } else if let Some(home) = &volume.config.node {
                match cluster.node_index(home) {
                    Some(i) => {
                        cluster.volume_nodes.insert(volume.name.clone(), i);
                    }
                    None => {
                        cluster
                            .homeless_volumes
                            .insert(volume.name.clone(), home.clone());
                    }
                }
            }
        }
        let mut requests: HashMap<&str, PlacementRequest> = HashMap::new();
        for instance in instances
            .iter()
            .map(I::borrow)
            .filter(|i| i.holds_resources())
        {
            let key = instance.template_hash.as_str();
            let request = requests.entry(key).or_insert_with(|| {
                PlacementRequest::for_service(&instance.service, &instance.spec)
            });
            if let Some(i) = instance.node.as_deref().and_then(|n| cluster.node_index(n)) {
                cluster.reserve(request, i);
            }
        }
        cluster
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Instances of `service` in the spread domain `value` of label `key`.
    pub fn spread_count(&self, service: &Arc<str>, key: &str, value: &str) -> u32 {
        self.spread_counts
            .get(&(service.clone(), key.to_string()))
            .and_then(|m| m.get(value))
            .copied()
            .unwrap_or(0)
    }

    /// Take an instance off node `i`: the inverse of [`ClusterState::reserve`], for trying
    /// what an eviction would free. A named volume stays where it is (its data does).
    pub fn release(&mut self, request: &PlacementRequest, i: usize) {
        let node = &mut self.nodes[i];
        node.allocated.sub(&request.resources);
        for port in &request.host_ports {
            node.host_ports.remove(port);
        }
        if let Some(n) = node.services.get_mut(&request.service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                node.services.remove(&request.service);
            }
        }
        if let Some(key) = &request.placement.spread {
            if let Some(value) = self.nodes[i].labels.get(key) {
                if let Some(n) = self
                    .spread_counts
                    .get_mut(&(request.service.clone(), key.clone()))
                    .and_then(|m| m.get_mut(value))
                {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// Record an instance on node `i`. Does not check fit: callers go through
    /// [`super::Scheduler::commit`], which does.
    pub fn reserve(&mut self, request: &PlacementRequest, i: usize) {
        let node = &mut self.nodes[i];
        node.allocated.add(&request.resources);
        node.host_ports.extend(request.host_ports.iter().copied());
        *node.services.entry(request.service.clone()).or_default() += 1;
        for volume in &request.named_volumes {
            if self.shared_volumes.contains(volume) {
                continue;
            }
            node.volumes.insert(volume.clone());
            self.volume_nodes.insert(volume.clone(), i);
        }
        if let Some(key) = &request.placement.spread {
            if let Some(value) = self.nodes[i].labels.get(key) {
                *self
                    .spread_counts
                    .entry((request.service.clone(), key.clone()))
                    .or_default()
                    .entry(value.clone())
                    .or_default() += 1;
            }
        }
    }
}
