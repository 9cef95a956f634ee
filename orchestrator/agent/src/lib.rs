//! tugboat-agent: `tugboat agent`, which runs the cluster's instances on one host, with
//! its helpers (the per-container monitor, the exec helper). It never
//! depends on the server: both speak through `tugboat-api`.
//!
//! It registers the node (capacity read from the host, labels from flags), heartbeats,
//! lists then watches the instances assigned to it, and runs one supervisor task per
//! instance ([`instance`]): ordered idempotent steps, then a per-container monitor process
//! ([`monitor`]) that is the container's parent, so containers outlive the agent. A restarted
//! agent finds its instances under `<data-dir>/instances/` and re-attaches to their monitors.
//! Services get virtual addresses, names and balancing in the kernel ([`services`], through
//! tug-netns' nftables services) whose endpoints include the ready instances of other nodes,
//! which are reached by host-gw routes to their container subnets ([`remote`]).

pub mod bundle;
pub mod host_check;
pub mod identity;
pub mod images;
pub mod instance;
pub mod logring;
pub mod logs;
pub mod metrics;
pub mod monitor;
pub mod netns_file;
pub mod node_api;
pub mod nsexec;
pub mod oci;
pub mod policy;
pub mod probes;
pub mod remote;
pub mod secrets;
pub mod services;
pub mod stats;
pub mod traffic;
pub mod tunnel;
pub mod userns;
pub mod volume_api;
pub mod volume_archive;
pub mod volume_drivers;
pub mod volume_freeze;
pub mod volumes;

use images::ImageSource;
use instance::StopMode;
use ipnetwork::Ipv4Network;
use services::ServiceTable;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tug_netns::{Network, NetworkConfig};
use tugboat_api::client::ApiClient;
use tugboat_api::model::{Instance, InstancePhase, Resources};
use tugboat_api::wire::{NodeRegistration, WatchKind};

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// Instances, volumes, the runtime's state, network state.
    pub data_dir: PathBuf,
    /// This node's container subnet.
    pub subnet: Ipv4Network,
    /// Where services have their virtual addresses (the server gives them; the network
    /// does not masquerade traffic to this range).
    pub service_range: Ipv4Network,
    /// The network's name (and so its bridge, `tug-<name>`).
    pub network: String,
    /// The `tugboat` binary (default: this process's executable): exec helpers run from it,
    /// monitors from `tugboat-monitor` next to it, else from it (`monitor::program`).
    pub monitor_exe: PathBuf,
    pub log_max_bytes: u64,
    /// Containers' output to a file, or to a bounded ring in memory (flash devices).
    pub log_mode: logring::LogMode,
    pub heartbeat: Duration,
    /// The address other nodes reach this one at (reported to the server).
    pub address: Option<String>,
    /// How packets reach other nodes' containers (host-gw routes, or a VXLAN overlay).
    pub peer_mode: tug_netns::PeerMode,
    /// Where the agent's own API (instance logs) listens; none: not served.
    pub api_listen: Option<std::net::SocketAddr>,
    /// Serve the agent's API through a tunnel the agent opens to the server (a node nothing
    /// can connect to: NAT, a carrier network), see [`tunnel`].
    pub dial_out: bool,
    /// The cluster's bearer token, required by the agent's API.
    pub token: Option<String>,
    /// Host directories instances may bind-mount (with what is under them); none by default.
    pub allow_host_paths: Vec<PathBuf>,
    /// The node's certificate (it joined with a join token): the agent's API speaks TLS and
    /// the certificate is renewed before it ends. None: the token, in plain HTTP.
    pub identity: Option<identity::NodeIdentity>,
    /// Serve the agent's API (exec, logs) to anyone when there is no credential to check.
    pub insecure_no_auth: bool,
    /// Kept for the system and the agent: the node offers its capacity minus this.
    pub reserve: Resources,
}

impl AgentConfig {
    pub fn new(node: &str, data_dir: &Path) -> AgentConfig {
        AgentConfig {
            node: node.into(),
            labels: BTreeMap::new(),
            data_dir: data_dir.into(),
            subnet: "10.88.0.0/24".parse().expect("a subnet"),
            service_range: tugboat_api::model::DEFAULT_SERVICE_RANGE
                .parse()
                .expect("a subnet"),
            network: "tugboat".into(),
            monitor_exe: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            log_max_bytes: 1 << 20,
            log_mode: logring::LogMode::File,
            heartbeat: Duration::from_secs(2),
            address: None,
            peer_mode: tug_netns::PeerMode::HostGw,
            api_listen: None,
            dial_out: false,
            token: None,
            allow_host_paths: vec![],
            identity: None,
            insecure_no_auth: false,
            reserve: Resources::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node {node}: data dir {path}: {source}")]
    DataDir {
        node: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node {node}: {source}")]
    Network {
        node: String,
        #[source]
        source: tug_netns::NetworkError,
    },
    #[error("node {node}: {message}")]
    Service { node: String, message: String },
}

/// What every instance supervisor shares.
pub struct NodeContext {
    pub node: String,
    pub data_dir: PathBuf,
    pub client: ApiClient,
    pub images: Arc<dyn ImageSource>,
    pub network: Network,
    /// Network calls one at a time: the network's file lock is taken per call, and two
    /// calls waiting on it from one process would block the async runtime's threads.
    pub net_lock: tokio::sync::Mutex<()>,
    pub services: Arc<ServiceTable>,
    /// The services' connections and the probes' failures, for `/metrics`.
    pub traffic: traffic::Traffic,
    pub runtime_root: PathBuf,
    pub monitor_exe: PathBuf,
    pub log_max_bytes: u64,
    pub log_mode: logring::LogMode,
    pub peer_mode: tug_netns::PeerMode,
    /// Whether the server answers, as the instances' status reports find it.
    pub server: ServerReach,
    /// Host directories instances may bind-mount (`--allow-host-path`).
    pub allow_host_paths: Vec<PathBuf>,
    /// The block device of the data dir, where `io` limits apply.
    pub block_device: Option<(i64, i64)>,
}

/// Whether the server answers: after a report that could not reach it, the others wait a
/// few seconds before the next try (one at a time pays the connect timeout, not all).
#[derive(Debug, Default)]
pub struct ServerReach(std::sync::Mutex<Option<std::time::Instant>>);

impl ServerReach {
    /// How long reports wait after the server could not be reached.
    pub const RETRY_AFTER: Duration = Duration::from_secs(3);

    pub fn available(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| std::time::Instant::now() >= until)
    }

    pub fn unreachable(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now() + Self::RETRY_AFTER);
    }

    pub fn answered(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl NodeContext {
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    /// A bind mount's host path, resolved (symlinks and `..` followed), when it is one of
    /// the allowed directories or under one; otherwise an error naming the path and the
    /// setting.
    pub fn allowed_host_path(&self, source: &str) -> Result<PathBuf, String> {
        allowed_host_path(&self.allow_host_paths, source, &self.node)
    }
}

/// See [`NodeContext::allowed_host_path`].
pub fn allowed_host_path(allowed: &[PathBuf], source: &str, node: &str) -> Result<PathBuf, String> {
    let resolved = std::fs::canonicalize(source).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("volume source {source} does not exist on node {node}")
        }
        _ => format!("volume source {source} on node {node}: {e}"),
    })?;
    let ok = allowed
        .iter()
        .any(|dir| std::fs::canonicalize(dir).is_ok_and(|dir| resolved.starts_with(&dir)));
    if ok {
        return Ok(resolved);
    }
    let list = if allowed.is_empty() {
        "none".to_string()
    } else {
        allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shown = if resolved.as_os_str() == source {
        source.to_string()
    } else {
        format!("{source} (= {})", resolved.display())
    };
    Err(format!(
        "volume source {shown}: host paths are not allowed on node {node} (allowed: {list}); \
         start its agent with --allow-host-path DIR to allow DIR and what is under it"
    ))
}

/// What the node offers the scheduler: its capacity minus what is reserved for the system.
pub fn offered(capacity: Resources, reserve: Resources) -> Resources {
    Resources::new(
        capacity.cpu_millis.saturating_sub(reserve.cpu_millis),
        capacity.memory_bytes.saturating_sub(reserve.memory_bytes),
        capacity.pids,
    )
}

/// `cpu=500m,memory=256Mi` (either may be left out), checked against the host's capacity.
pub fn parse_reserve(text: &str, capacity: Resources) -> Result<Resources, String> {
    let mut reserve = Resources::default();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            format!("--reserve {text}: `{part}` is not key=value (cpu=500m,memory=256Mi)")
        })?;
        match key.trim() {
            "cpu" => {
                reserve.cpu_millis = tugboat_api::spec::Cpu::parse(value)
                    .map_err(|e| format!("--reserve cpu: {e}"))?
                    .0
            }
            "memory" => {
                reserve.memory_bytes = tugboat_api::spec::Memory::parse(value)
                    .map_err(|e| format!("--reserve memory: {e}"))?
                    .0
            }
            other => return Err(format!("--reserve {text}: `{other}` is not cpu or memory")),
        }
    }
    if reserve.cpu_millis >= capacity.cpu_millis || reserve.memory_bytes >= capacity.memory_bytes {
        return Err(format!(
            "--reserve {text}: leaves nothing of this host ({}m cpu, {} bytes of memory)",
            capacity.cpu_millis, capacity.memory_bytes
        ));
    }
    Ok(reserve)
}

/// The host's CPUs (in millicores) and memory.
pub fn host_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Resources::new(cpus * 1000, memory, 0)
}

struct Running {
    stop: watch::Sender<StopMode>,
    task: JoinHandle<()>,
}

/// A running agent.
pub struct Agent {
    ctx: Arc<NodeContext>,
    config: AgentConfig,
    instances: HashMap<String, Running>,
    /// The agent's API, with the URL the server reaches it at.
    api: Option<(tokio::net::TcpListener, String)>,
    /// Instance directories found at start whose record could not be read.
    unreadable: Vec<String>,
}

impl Agent {
    /// Opens the node's network and service table; registers nothing yet.
    pub async fn open(
        config: AgentConfig,
        client: ApiClient,
        images: Arc<dyn ImageSource>,
    ) -> Result<Agent, AgentError> {
        let node = config.node.clone();
        for dir in ["instances", "volumes", "runtime", "net"] {
            let path = config.data_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| AgentError::DataDir {
                node: node.clone(),
                path,
                source,
            })?;
        }
        let mut net =
            NetworkConfig::new(&config.network, config.subnet, config.data_dir.join("net"));
        net.cluster_cidr = Some(config.service_range);
        let network = Network::open(net)
            .await
            .map_err(|source| AgentError::Network {
                node: node.clone(),
                source,
            })?;
        let services = ServiceTable::open(&config.data_dir.join("services.json"));
        let ctx = Arc::new(NodeContext {
            node,
            data_dir: config.data_dir.clone(),
            client,
            images,
            network,
            net_lock: tokio::sync::Mutex::new(()),
            services,
            traffic: traffic::Traffic::default(),
            runtime_root: config.data_dir.join("runtime"),
            monitor_exe: config.monitor_exe.clone(),
            log_max_bytes: config.log_max_bytes,
            log_mode: config.log_mode,
            peer_mode: config.peer_mode,
            server: ServerReach::default(),
            allow_host_paths: config.allow_host_paths.clone(),
            block_device: bundle::block_device_of(&config.data_dir),
        });
        if let Err(e) = traffic::follow_connections(ctx.traffic.clone(), ctx.services.clone()) {
            eprintln!(
                "tugboat agent: conntrack's events: {e}; the services' connections are not counted"
            );
        }
        let api = match config.api_listen {
            Some(addr) => {
                let listener =
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| AgentError::Service {
                            node: config.node.clone(),
                            message: format!("agent API on {addr}: {e}"),
                        })?;
                let local = listener.local_addr().map_err(|e| AgentError::Service {
                    node: config.node.clone(),
                    message: format!("agent API on {addr}: {e}"),
                })?;
                let host = if local.ip().is_unspecified() {
                    config.address.clone().unwrap_or_else(|| "127.0.0.1".into())
                } else {
                    local.ip().to_string()
                };
                let scheme = if config.identity.is_some() {
                    "https"
                } else {
                    "http"
                };
                Some((listener, format!("{scheme}://{host}:{}", local.port())))
            }
            None => None,
        };
        Ok(Agent {
            ctx,
            config,
            instances: HashMap::new(),
            api,
            unreadable: vec![],
        })
    }

    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    fn registration(&self) -> NodeRegistration {
        let volumes = std::fs::read_dir(self.ctx.volumes_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        NodeRegistration {
            name: self.config.node.clone(),
            labels: self.config.labels.clone(),
            capacity: offered(host_capacity(), self.config.reserve),
            address: self.config.address.clone(),
            subnet: Some(self.config.subnet),
            volumes,
            runtimes: oci::available(),
            agent_url: self.api.as_ref().map(|(_, url)| url.clone()),
        }
    }

    /// Registers (retrying until the server answers), then runs until `shutdown` is set:
    /// `true` stops every instance and removes the network, `false` leaves them running.
    pub async fn run(mut self, mut shutdown: watch::Receiver<Option<bool>>) {
        let client = self.ctx.client.clone();
        let registration = self.registration();
        let tls = match self.config.identity.as_ref().map(|i| i.api_config()) {
            Some(Ok(config)) => Some(config),
            Some(Err(e)) => {
                eprintln!("tugboat agent: the node API's TLS: {e}; not serving it");
                self.api = None;
                None
            }
            None => None,
        };
        let state = Arc::new(node_api::NodeApiState {
            data_dir: self.ctx.data_dir.clone(),
            token: self.config.token.clone(),
            tls: tls.is_some(),
            insecure_no_auth: self.config.insecure_no_auth,
            exe: self.ctx.monitor_exe.clone(),
            node: Some(self.ctx.clone()),
        });
        let tunnel_state = state.clone();
        let api = self.api.take().map(|(listener, _)| {
            if tls.is_none() && state.token.is_none() {
                if state.insecure_no_auth {
                    eprintln!("tugboat agent: WARNING: --insecure-no-auth: the node's API (exec, logs) answers anyone");
                } else {
                    eprintln!("tugboat agent: the node's API has no credential to check (no certificate, no token): it refuses exec and logs");
                }
            }
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stop.wait_for(|s| s.is_some()).await;
                };
                tugboat_api::tls::serve(listener, node_api::router(state), tls, stop).await;
            })
        });
        let renewal = self.config.identity.clone().map(|identity| {
            tokio::spawn(identity::renew_loop(
                identity,
                client.clone(),
                shutdown.clone(),
            ))
        });
        // The node runs what its disk says before the server answers (an edge node that
        // starts while its uplink is down, also after a reboot): supervisors re-attach to
        // running monitors or start the containers again, and the services' balancing is
        // programmed from the saved frontends (the kernel kept its rules, or tug-netns put them
        // back after a reboot). The server's word, once it answers, wins.
        self.adopt_local();
        let services = tokio::spawn(service_loop(self.ctx.clone()));
        let mut said = false;
        let heartbeat_every;
        loop {
            match client.register_node(&registration).await {
                Ok(node) => {
                    // The server's timer profile sets the pace, so its grace fits it.
                    heartbeat_every = match node.heartbeat_every_ms {
                        0 => self.config.heartbeat,
                        ms => Duration::from_millis(ms),
                    };
                    break;
                }
                Err(e) if !said => {
                    said = true;
                    eprintln!(
                        "tugboat agent: register {}: {e} (running the node's {} instances from its disk meanwhile; retrying)",
                        self.config.node,
                        self.instances.len()
                    );
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    services.abort();
                    let _ = services.await;
                    let stop_all = shutdown.borrow().unwrap_or(false);
                    return self.finish(stop_all).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.instances.retain(|_, r| !r.task.is_finished());
        }
        if said {
            eprintln!("tugboat agent: registered {}", self.config.node);
        }
        // Opened once the node is registered (the server opens tunnels of known nodes only).
        let tunnel = self.config.dial_out.then(|| {
            tokio::spawn(tunnel::run(
                client.clone(),
                self.config.node.clone(),
                tunnel_state,
                shutdown.clone(),
            ))
        });
        let others = Arc::new(std::sync::Mutex::new(remote::Others::default()));
        let heartbeat = tokio::spawn(heartbeat_loop(
            client.clone(),
            registration,
            heartbeat_every,
            others.clone(),
        ));
        let remote = tokio::spawn(remote_loop(self.ctx.clone(), others.clone()));
        let peers = tokio::spawn(peer_loop(self.ctx.clone(), others));
        volume_drivers::recover_restores(&self.ctx);
        let volume_usage = tokio::spawn(volume_drivers::usage_loop(self.ctx.clone()));
        let mut from = 0;
        loop {
            let requested = *shutdown.borrow();
            if let Some(stop_all) = requested {
                heartbeat.abort();
                services.abort();
                remote.abort();
                peers.abort();
                volume_usage.abort();
                let _ = services.await;
                let _ = remote.await;
                if let Some(api) = &api {
                    api.abort();
                }
                if let Some(tunnel) = &tunnel {
                    tunnel.abort();
                }
                if let Some(renewal) = &renewal {
                    renewal.abort();
                }
                return self.finish(stop_all).await;
            }
            let changes = if from == 0 {
                match client.assigned_instances(&self.config.node).await {
                    Ok(list) => {
                        from = list.revision + 1;
                        self.sync_assigned(list.items);
                        continue;
                    }
                    Err(_) => None,
                }
            } else {
                let watch = tokio::time::timeout(
                    Duration::from_secs(20) + SERVER_CALL,
                    client.watch(
                        WatchKind::Instances,
                        from,
                        Duration::from_secs(20),
                        Some(&self.config.node),
                    ),
                );
                tokio::select! {
                    _ = shutdown.changed() => continue,
                    r = watch => match r {
                        Ok(Ok(batch)) => {
                            from = batch.revision + 1;
                            Some(batch.changes)
                        }
                        Ok(Err(e)) if e.status() == Some(410) => {
                            from = 0;
                            continue;
                        }
                        _ => None,
                    }
                }
            };
            match changes {
                Some(changes) => {
                    for change in changes {
                        match instance_change(change) {
                            InstanceChange::Put(instance) => self.apply(*instance),
                            InstanceChange::Delete(id) => self.stop(&id),
                            InstanceChange::Unreadable { id, error } => eprintln!(
                                "tugboat agent: {}: a change of instance {id} that this agent cannot read, left as it is: {error}",
                                self.config.node
                            ),
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
            self.instances.retain(|_, r| !r.task.is_finished());
        }
    }

    /// Instances found on disk from an earlier run: supervised again (re-attached).
    fn adopt_local(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.ctx.data_dir.join("instances")) else {
            return;
        };
        for dir in dirs.flatten() {
            let paths = instance::InstancePaths { dir: dir.path() };
            let Some(instance) = monitor::read_json::<Instance>(&paths.record()) else {
                // Unreadable: removed once the server's list shows it is not ours
                // (sync_assigned), started again if it is.
                self.unreadable
                    .push(dir.file_name().to_string_lossy().into_owned());
                continue;
            };
            // A container that kept running keeps its place in its service from the
            // first programming on, not only once its supervisor has re-attached.
            let state: instance::LocalState =
                monitor::read_json(&paths.local_state()).unwrap_or_default();
            if let (Some(address), true) = (state.address, instance::monitor_running(&paths.dir)) {
                self.ctx.services.set_endpoint(
                    &instance.service,
                    &instance.id,
                    services::Endpoint {
                        address,
                        ready: state.ready,
                        last_resort: state.served,
                    },
                );
            }
            self.start(instance);
        }
    }

    /// The full list of assigned instances: start the new ones, stop the ones not in it.
    fn sync_assigned(&mut self, assigned: Vec<Instance>) {
        let wanted: std::collections::HashSet<String> =
            assigned.iter().map(|i| i.id.clone()).collect();
        for id in std::mem::take(&mut self.unreadable) {
            if !wanted.contains(&id) {
                eprintln!(
                    "tugboat agent: {}: instance {id}: its record on disk cannot be read and the server does not place it here: removing what is left of it",
                    self.config.node
                );
                let ctx = self.ctx.clone();
                tokio::spawn(async move { instance::remove_leftovers(&ctx, &id).await });
            }
        }
        let gone: Vec<String> = self
            .instances
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.stop(&id);
        }
        for instance in assigned {
            self.apply(instance);
        }
    }

    fn apply(&mut self, instance: Instance) {
        let ours = instance.node.as_deref() == Some(self.config.node.as_str());
        // Lost: the server did not reach this node for a while and has not replaced the
        // instance yet (or keeps it for this node): it runs on, and says so at once.
        let lost = ours && instance.phase == InstancePhase::Lost;
        if lost {
            if let Some(r) = self.instances.get(&instance.id) {
                let _ = r.stop.send(StopMode::Report);
                return;
            }
        }
        let active = lost
            || matches!(
                instance.phase,
                InstancePhase::Scheduled | InstancePhase::Running
            );
        if !ours || !active {
            if instance.phase != InstancePhase::Failed || !ours {
                self.stop(&instance.id);
            }
            return;
        }
        if !self.instances.contains_key(&instance.id) {
            self.start(instance);
        }
    }

    fn start(&mut self, instance: Instance) {
        if let Some(r) = self.instances.get(&instance.id) {
            if !r.task.is_finished() {
                return;
            }
        }
        let (stop, rx) = watch::channel(StopMode::Run);
        let id = instance.id.clone();
        let task = tokio::spawn(instance::supervise(self.ctx.clone(), instance, rx));
        self.instances.insert(id, Running { stop, task });
    }

    fn stop(&mut self, id: &str) {
        if let Some(r) = self.instances.get(id) {
            let _ = r.stop.send(StopMode::Stop);
        }
    }

    async fn finish(self, stop_all: bool) {
        let mode = if stop_all {
            StopMode::Stop
        } else {
            StopMode::Detach
        };
        let mut tasks = vec![];
        for (_, r) in self.instances {
            let _ = r.stop.send(mode);
            tasks.push(r.task);
        }
        for t in tasks {
            let _ = t.await;
        }
        if stop_all {
            let _ = std::fs::remove_file(self.ctx.data_dir.join("services.json"));
            let _ = std::fs::remove_file(self.ctx.data_dir.join(services::FRONTENDS_FILE));
            match Arc::try_unwrap(self.ctx) {
                Ok(ctx) => {
                    if let Err(e) = ctx.network.teardown().await {
                        eprintln!("tugboat agent: removing the network: {e}");
                    }
                }
                Err(_) => eprintln!("tugboat agent: the network is still in use; not removed"),
            }
        }
    }
}

/// A watched instance change: its id, and the instance (none when it was deleted).
/// What one watched change says of an instance.
#[derive(Debug)]
enum InstanceChange {
    Put(Box<Instance>),
    Delete(String),
    /// A put this agent cannot read (a newer server's field, say): the instance is left as
    /// it is, never taken for a delete, which would stop a running container.
    Unreadable {
        id: String,
        error: String,
    },
}

fn instance_change(change: tugboat_api::wire::ObjectChange) -> InstanceChange {
    let id = change
        .key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    match change.kind {
        tugboat_api::wire::EventKind::Delete => InstanceChange::Delete(id),
        tugboat_api::wire::EventKind::Put => match serde_json::from_value(change.object) {
            Ok(instance) => InstanceChange::Put(Box::new(instance)),
            Err(e) => InstanceChange::Unreadable {
                id,
                error: e.to_string(),
            },
        },
    }
}

/// `tugboat agent`: runs until SIGINT or SIGTERM, then leaves the instances running for the
/// next agent to re-attach to.
pub async fn run_until_signal(
    config: AgentConfig,
    client: ApiClient,
    images: Arc<dyn ImageSource>,
) -> Result<(), AgentError> {
    let agent = Agent::open(config, client, images).await?;
    let (stop, rx) = watch::channel(None);
    let task = tokio::spawn(agent.run(rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Service {
            node: "agent".into(),
            message: format!("signal handler: {e}"),
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop.send(Some(false));
    let _ = task.await;
    Ok(())
}

/// Heartbeats at the server's pace, each with what this node's probes see of its peers.
async fn heartbeat_loop(
    client: ApiClient,
    registration: NodeRegistration,
    mut every: Duration,
    others: Arc<std::sync::Mutex<remote::Others>>,
) {
    let mut refused: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        let beat = tugboat_api::wire::Heartbeat {
            peers: others
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .peer_views(&registration.name, std::time::Instant::now()),
        };
        // Bounded by the interval too: a heartbeat that takes longer is late anyway, and
        // the next one carries fresher news.
        let bound = SERVER_CALL.min(every.max(Duration::from_secs(1)));
        let Ok(sent) =
            tokio::time::timeout(bound, client.heartbeat(&registration.name, &beat)).await
        else {
            continue;
        };
        match sent {
            Ok(node) => {
                refused = None;
                if node.heartbeat_every_ms > 0 {
                    every = Duration::from_millis(node.heartbeat_every_ms);
                }
            }
            Err(e) if e.status() == Some(404) => {
                // Deleted meanwhile: register again (which may be refused, e.g. when another
                // node took this node's subnet).
                if let Err(e) = client.register_node(&registration).await {
                    eprintln!("tugboat agent: register {}: {e}", registration.name);
                }
            }
            // Refused (not merely unanswered): say so once, or the node goes lost in silence.
            Err(e) if e.status().is_some() => {
                let message = e.to_string();
                if refused.as_ref() != Some(&message) {
                    eprintln!("tugboat agent: heartbeat {}: {message}", registration.name);
                    refused = Some(message);
                }
            }
            Err(_) => {}
        }
    }
}

/// The longest a call to the server may take in the node's loops before it counts as
/// unanswered (a request on a connection whose link was cut gets no answer, ever).
const SERVER_CALL: Duration = Duration::from_secs(3);

/// Keeps every service's address, name and balancing current: the server's services are
/// fetched every second (and kept on disk for when it is away); the kernel's balancing
/// (tug-netns' nftables services) is programmed whenever an endpoint or a frontend changes,
/// at once (a readiness change, a peer found unreachable), with a one-second safety net.
async fn service_loop(ctx: Arc<NodeContext>) {
    // After a restart, the endpoints on other nodes are the ones the kernel was last given,
    // until the server's word on them: the agent never takes away what it cannot check.
    let own = ctx.network.config().subnet;
    ctx.services
        .restore(&ctx.network.services().unwrap_or_default(), |a| {
            own.contains(a)
        });
    tokio::join!(fetch_services(&ctx), balance(&ctx));
}

/// The server's services, every second: their addresses (names) and frontends.
async fn fetch_services(ctx: &NodeContext) {
    let mut round: u32 = 0;
    loop {
        // The cluster's network policy default, every fifth round (it changes only with a
        // server restart).
        if round % 5 == 0 {
            if let Ok(Ok(c)) =
                tokio::time::timeout(SERVER_CALL, ctx.client.describe_cluster()).await
            {
                ctx.services.set_default_deny(c.default_deny_ingress);
            }
        }
        round = round.wrapping_add(1);
        // Bounded: a request whose answer is lost (a cut link) must not hold it up forever.
        if let Ok(Ok(list)) = tokio::time::timeout(SERVER_CALL, ctx.client.services()).await {
            let addresses: BTreeMap<String, std::net::Ipv4Addr> = list
                .items
                .iter()
                .filter_map(|s| s.address.map(|a| (s.name.clone(), a)))
                .collect();
            if let Err(e) = ctx.services.set_addresses(addresses) {
                eprintln!("tugboat agent: {}: {e}", ctx.node);
            }
            if let Err(e) = ctx
                .services
                .set_frontends(services::frontends_of(&list.items))
            {
                eprintln!("tugboat agent: {}: {e}", ctx.node);
            }
            // A deleted service's connection figures go with it.
            ctx.traffic
                .keep_services(list.items.iter().map(|s| s.name.as_str()));
            ctx.services.set_policies(
                list.items
                    .iter()
                    .map(|s| {
                        let p = policy::ServicePolicy {
                            labels: s.spec.labels.clone(),
                            network: s.spec.network.clone(),
                        };
                        (s.name.clone(), p)
                    })
                    .collect(),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Programs the kernel's balancing whenever what it should be changes. Nothing is
/// programmed before the frontends are known (from the server or the disk): until then the
/// kernel keeps what it had, which tug-netns restores after a reboot.
async fn balance(ctx: &NodeContext) {
    let mut programmed: Option<Vec<tug_netns::ServiceSpec>> = None;
    // Network policy as last programmed (the kernel's record after a restart).
    let mut policed = ctx.network.policy().ok().flatten();
    let mut warned_bridge = false;
    let mut said: Vec<String> = vec![];
    let mut first = true;
    loop {
        let taken: Vec<(tug_netns::Protocol, u16)> = ctx
            .network
            .attachments()
            .unwrap_or_default()
            .iter()
            .flat_map(|a| a.ports.iter().map(|p| (p.protocol, p.host_port)))
            .collect();
        if let Some((wanted, problems)) = ctx.services.wanted(&taken) {
            if programmed.as_ref() != Some(&wanted) {
                let result = {
                    let _net = ctx.net_lock.lock().await;
                    ctx.network.set_services(&wanted).await
                };
                let mut now = problems;
                match result {
                    Ok(()) => programmed = Some(wanted),
                    Err(e) => now.push(format!("balancing services: {e}")),
                }
                // Each problem said once, not every second.
                for p in now.iter().filter(|p| !said.contains(p)) {
                    eprintln!("tugboat agent: {}: {p}", ctx.node);
                }
                said = now;
                if first && programmed.is_some() {
                    first = false;
                    retire_proxy(&ctx.data_dir);
                    sweep_addresses(ctx).await;
                }
            }
        }
        if let Some(wanted) = policy::compute(&ctx.services.policy_inputs()) {
            if policed.as_ref() != Some(&wanted) {
                let result = {
                    let _net = ctx.net_lock.lock().await;
                    ctx.network.set_policy(&wanted).await
                };
                if !wanted.instances.is_empty() && !warned_bridge && !policy::bridge_filtered() {
                    warned_bridge = true;
                    eprintln!(
                        "tugboat agent: {}: network policy: br_netfilter is not active \
                         (net.bridge.bridge-nf-call-iptables): connections between two \
                         containers of this node by instance address are not filtered \
                         (through a service name or address, and from other nodes, they are)",
                        ctx.node
                    );
                }
                match result {
                    Ok(()) => policed = Some(wanted),
                    Err(e) => {
                        let p = format!("network policy: {e}");
                        if !said.contains(&p) {
                            eprintln!("tugboat agent: {}: {p}", ctx.node);
                            said.push(p);
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = ctx.services.changed().notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// An agent before this one balanced services with a userspace proxy process (`tugboat
/// proxy`), which exits when its table file goes: once the kernel balances, it is asked to.
fn retire_proxy(data_dir: &Path) {
    if std::fs::remove_file(data_dir.join("proxy.json")).is_ok() {
        eprintln!("tugboat agent: services are balanced by the kernel now; the service proxy of an earlier version exits");
    }
}

/// The other nodes from the server: their ready instances become endpoints of this node's
/// services, their subnets get routes. See [`remote`] for what happens without the server.
///
/// Nodes are listed about every two seconds (a short list); instances are listed once, then
/// followed by watching them (every change at once, nothing when nothing changes), and not
/// at all while this node is alone in the cluster. The peers are probed by [`peer_loop`].
async fn remote_loop(ctx: Arc<NodeContext>, others: Arc<std::sync::Mutex<remote::Others>>) {
    let mut view = remote::RemoteView::default();
    let mut from = 0;
    loop {
        let nodes = match tokio::time::timeout(SERVER_CALL, ctx.client.nodes()).await {
            Ok(Ok(list)) => list.items,
            _ => {
                // The server is away: what is known stays (the peers' probes still take
                // unreachable nodes' endpoints away), and routes are kept.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let alone = nodes.iter().all(|n| n.name == ctx.node);
        let mut instances = None;
        if alone {
            from = 0;
            instances = Some(HashMap::new());
        } else if from == 0 {
            match tokio::time::timeout(SERVER_CALL, ctx.client.instances(None)).await {
                Ok(Ok(list)) => {
                    from = list.revision + 1;
                    instances = Some(list.items.into_iter().map(|i| (i.id.clone(), i)).collect());
                }
                _ => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        {
            let mut o = others.lock().unwrap_or_else(|p| p.into_inner());
            o.nodes = nodes.clone();
            if let Some(instances) = instances {
                o.instances = instances;
            }
            ctx.services.set_remote_endpoints(o.endpoints(&ctx.node));
            let (sources, nodes) = o.sources(&ctx.node);
            ctx.services.set_remote_sources(sources, nodes);
        }
        route_peers(&ctx, &mut view, &nodes).await;
        if alone {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let watched = tokio::time::timeout(
            Duration::from_secs(2) + SERVER_CALL,
            ctx.client
                .watch(WatchKind::Instances, from, Duration::from_secs(2), None),
        )
        .await;
        match watched {
            Ok(Ok(batch)) => {
                from = batch.revision + 1;
                let mut o = others.lock().unwrap_or_else(|p| p.into_inner());
                for change in batch.changes {
                    match instance_change(change) {
                        InstanceChange::Put(instance) => {
                            o.instances.insert(instance.id.clone(), *instance);
                        }
                        InstanceChange::Delete(id) => {
                            o.instances.remove(&id);
                        }
                        // Its last known state stays (see instance_change).
                        InstanceChange::Unreadable { .. } => {}
                    }
                }
                ctx.services.set_remote_endpoints(o.endpoints(&ctx.node));
                let (sources, nodes) = o.sources(&ctx.node);
                ctx.services.set_remote_sources(sources, nodes);
            }
            // Compacted past `from`: list again.
            Ok(Err(e)) if e.status() == Some(410) => from = 0,
            // No answer (in time): try again.
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Probes the other nodes directly (a TCP connection to each one's agent API, every
/// [`remote::PEER_PROBE_EVERY`]), whether or not the server answers: a node that does not
/// take [`remote::PEER_FAILURES`] probes in a row loses its endpoints on this node at once
/// (clients stop waiting on a dead node before the server declares it lost); one that takes
/// a probe again gets them back. While the server is away, the endpoints of reachable nodes
/// are kept.
async fn peer_loop(ctx: Arc<NodeContext>, others: Arc<std::sync::Mutex<remote::Others>>) {
    let mut probes = remote::PeerProbes::default();
    let mut every = tokio::time::interval(remote::PEER_PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let targets = others
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probe_targets(&ctx.node);
        let results =
            futures_util::future::join_all(targets.into_iter().map(|(node, addr)| async move {
                let ok = tokio::time::timeout(
                    remote::PEER_PROBE_TIMEOUT,
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                (node, ok)
            }))
            .await;
        let changed = probes.record(&results);
        let mut o = others.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        for (node, ok) in &results {
            if *ok {
                o.answered.insert(node.clone(), now);
            }
        }
        if changed.is_empty() {
            continue;
        }
        o.unreachable = probes.unreachable().clone();
        for (node, reachable) in changed {
            eprintln!(
                "tugboat agent: {}: node {node} is {}",
                ctx.node,
                if reachable {
                    "reachable again"
                } else {
                    "unreachable: its endpoints are taken out of this node's services"
                }
            );
        }
        ctx.services.set_remote_endpoints(o.endpoints(&ctx.node));
    }
}

/// Routes to the other nodes' subnets, set when the set of peers changes.
async fn route_peers(
    ctx: &NodeContext,
    view: &mut remote::RemoteView,
    nodes: &[tugboat_api::model::Node],
) {
    let (peers, problems) = remote::peers(&ctx.node, ctx.network.config().subnet, nodes);
    if view.routed.as_ref() == Some(&peers) {
        return;
    }
    for problem in problems {
        eprintln!("tugboat agent: {}: {problem}", ctx.node);
    }
    let _net = ctx.net_lock.lock().await;
    match ctx.network.set_peers(&peers, &ctx.peer_mode).await {
        Ok(_) => view.routed = Some(peers),
        Err(e) => eprintln!("tugboat agent: {}: routes to other nodes: {e}", ctx.node),
    }
}

/// Takes service addresses that no service is balanced on off the bridge: every /32 of the
/// service range that tug-netns did not put there (an agent before this one added each
/// service's address itself, also for services without ports).
async fn sweep_addresses(ctx: &NodeContext) {
    use tug_netns::ops::NetOps;
    let Some(range) = ctx.network.config().cluster_cidr else {
        return;
    };
    let wanted: std::collections::BTreeSet<std::net::Ipv4Addr> = ctx
        .network
        .services()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| match s.frontend {
            tug_netns::Frontend::Virtual { address, .. } => Some(address),
            tug_netns::Frontend::HostPort { .. } => None,
        })
        .collect();
    let _net = ctx.net_lock.lock().await;
    let bridge = ctx.network.bridge_index();
    let Ok(on_bridge) = ctx.network.ops().addresses(bridge).await else {
        return;
    };
    for a in on_bridge {
        if a.prefix() == 32 && range.contains(a.ip()) && !wanted.contains(&a.ip()) {
            if let Err(e) = ctx.network.ops().del_address(bridge, a).await {
                eprintln!(
                    "tugboat agent: {}: removing {a} (no service's) from the bridge: {e}",
                    ctx.node
                );
            }
        }
    }
}

#[cfg(test)]
mod host_path_tests {
    use super::allowed_host_path;

    #[test]
    fn only_allowed_directories_and_what_is_under_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        let allowed = vec![data.clone()];
        let sub = data.join("sub");
        assert!(allowed_host_path(&allowed, sub.to_str().unwrap(), "n1").is_ok());
        // `..` and symlinks are followed before the check.
        let escape = format!("{}/sub/../../other", data.display());
        let err = allowed_host_path(&allowed, &escape, "n1").unwrap_err();
        assert!(err.contains("not allowed on node n1"), "{err}");
        assert!(err.contains("--allow-host-path"), "{err}");
        std::os::unix::fs::symlink("/", data.join("root")).unwrap();
        let link = format!("{}/root", data.display());
        assert!(allowed_host_path(&allowed, &link, "n1")
            .unwrap_err()
            .contains("(= /)"));
        // Nothing is allowed by default, / least of all.
        let err = allowed_host_path(&[], "/", "n1").unwrap_err();
        assert!(err.contains("allowed: none"), "{err}");
        // A source that does not exist says so.
        assert_eq!(
            allowed_host_path(&allowed, "/no/such/dir", "n1").unwrap_err(),
            "volume source /no/such/dir does not exist on node n1"
        );
    }
}

#[cfg(test)]
mod reserve_tests {
    use super::*;

    #[test]
    fn a_reservation_comes_off_what_the_node_offers() {
        let host = Resources::new(2000, 4 << 30, 0);
        let r = parse_reserve("cpu=500m,memory=256Mi", host).unwrap();
        assert_eq!(
            offered(host, r),
            Resources::new(1500, (4 << 30) - (256 << 20), 0)
        );
        assert!(parse_reserve("cpu=2", host)
            .unwrap_err()
            .contains("leaves nothing"));
        assert!(parse_reserve("disk=1", host)
            .unwrap_err()
            .contains("`disk` is not cpu or memory"));
        assert!(parse_reserve("memory=lots", host)
            .unwrap_err()
            .starts_with("--reserve memory:"));
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use tugboat_api::wire::{EventKind, ObjectChange};

    #[test]
    fn only_a_delete_stops_an_instance_and_an_unreadable_put_is_not_one() {
        let change = |kind, object| ObjectChange {
            kind,
            key: "/instances/web-abc12-xyz01".into(),
            revision: 7,
            object,
        };
        let instance = crate::remote::tests::instance(
            "web-abc12-xyz01",
            "n1",
            tugboat_api::model::InstancePhase::Running,
            true,
            "",
        );
        match instance_change(change(
            EventKind::Put,
            serde_json::to_value(&instance).unwrap(),
        )) {
            InstanceChange::Put(i) => assert_eq!(i.id, "web-abc12-xyz01"),
            other => panic!("{other:?}"),
        }
        match instance_change(change(EventKind::Delete, serde_json::Value::Null)) {
            InstanceChange::Delete(id) => assert_eq!(id, "web-abc12-xyz01"),
            other => panic!("{other:?}"),
        }
        // A put whose object this agent cannot read (here: a field of the wrong type).
        let mut odd = serde_json::to_value(&instance).unwrap();
        odd["service"] = serde_json::json!(42);
        match instance_change(change(EventKind::Put, odd)) {
            InstanceChange::Unreadable { id, error } => {
                assert_eq!(id, "web-abc12-xyz01");
                assert!(error.contains("invalid type"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
