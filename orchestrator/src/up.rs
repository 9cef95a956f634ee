//! `tugboat up`: the control plane and an agent in one process, on one host, with the
//! embedded store: apply a spec file, wait until it is ready, say where it answers, and on
//! Ctrl-C stop every instance and remove the network.

use crate::agent::images::ImageSource;
use crate::agent::{Agent, AgentConfig};
use crate::client::ApiClient;
use crate::model::InstancePhase;
use crate::server::{ServerConfig, ServerError};
use crate::spec::SpecFile;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecFileError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("applying {path}: {source}")]
    Apply {
        path: PathBuf,
        source: crate::client::ClientError,
    },
}

pub struct UpConfig {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub node: String,
    pub images: Arc<dyn ImageSource>,
    /// Adjusts the agent's settings (subnet, timers, ...).
    pub adjust_agent: fn(&mut AgentConfig),
}

/// What `up` prints once the services are ready.
pub fn summary(server: SocketAddr, data_dir: &Path, spec: &SpecFile) -> String {
    let mut text = String::new();
    for (name, service) in &spec.services {
        for port in &service.ports {
            if let Some(host) = port.published {
                text.push_str(&format!("{name}: http://127.0.0.1:{}/\n", host.0));
            }
        }
    }
    text.push_str(&format!(
        "control plane: https://{server} - look with:\n  tugboat --addr {server} --data-dir {} get instances\n",
        data_dir.join("server").display()
    ));
    text.push_str("Ctrl-C stops everything.\n");
    text
}

/// The host paths the spec file bind-mounts: `up`'s agent allows these (and only these),
/// since the person who runs `up` wrote them; each is said on stderr.
pub fn host_paths_named(spec: &SpecFile) -> Vec<PathBuf> {
    let mut paths = vec![];
    for (name, service) in &spec.services {
        for v in &service.volumes {
            if v.kind == crate::spec::VolumeKind::Bind {
                eprintln!(
                    "tugboat up: warning: service {name} bind-mounts host path {} (allowed because the spec file names it)",
                    v.source
                );
                paths.push(PathBuf::from(&v.source));
            }
        }
    }
    paths
}

/// Runs until `stop` completes. Prints progress and the summary to stderr/stdout.
pub async fn up(config: UpConfig, stop: impl Future<Output = ()>) -> Result<(), UpError> {
    let text = std::fs::read_to_string(&config.file).map_err(|source| UpError::Read {
        path: config.file.clone(),
        source,
    })?;
    let spec = crate::spec::parse_spec_file(&config.file.display().to_string(), &text, &|_| false)?;
    let server_dir = config.data_dir.join("server");
    // TLS as for `tugboat server`: the CLI finds the CA in <data-dir>/server/tls.
    let mut server_config = ServerConfig::new(&server_dir, config.listen);
    server_config.tls = Some(Default::default());
    let server = crate::server::start(server_config).await?;
    let client = match &server.tls {
        Some(tls) => ApiClient::with_tls(
            &server.addr.to_string(),
            server.token.clone(),
            &crate::tls::ClientTls {
                ca_pem: tls.ca.pem().to_string(),
                identity_pem: None,
            },
        )
        .map_err(|e| UpError::Tls(e.to_string()))?,
        None => ApiClient::new(&server.addr.to_string(), server.token.clone()),
    };
    let mut agent_config = AgentConfig::new(&config.node, &config.data_dir.join("agent"));
    agent_config.address = Some("127.0.0.1".into());
    agent_config.api_listen = Some(([127, 0, 0, 1], 0).into());
    agent_config.token = server.token.clone();
    agent_config.allow_host_paths = host_paths_named(&spec);
    (config.adjust_agent)(&mut agent_config);
    let agent = match Agent::open(agent_config, client.clone(), config.images.clone()).await {
        Ok(agent) => agent,
        Err(e) => {
            server.shutdown().await;
            return Err(e.into());
        }
    };
    let (agent_stop, agent_rx) = tokio::sync::watch::channel(None);
    let agent_task = tokio::spawn(agent.run(agent_rx));
    let result = async {
        client.apply(&spec).await.map_err(|source| UpError::Apply {
            path: config.file.clone(),
            source,
        })?;
        Ok::<_, UpError>(())
    }
    .await;
    if result.is_ok() {
        let agent_dir = config.data_dir.join("agent");
        let announce = async {
            report_progress(&client, &spec).await;
            wait_served(&agent_dir, &spec).await;
            print!("{}", summary(server.addr, &config.data_dir, &spec));
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = announce => {}
            _ = stop => {}
        }
    }
    eprintln!("tugboat up: stopping every instance");
    // The services go from the store too, so what it says stays true; volumes are kept.
    for name in spec.services.keys() {
        let _ = client.delete_service(name).await;
    }
    let _ = agent_stop.send(Some(true));
    let _ = agent_task.await;
    server.shutdown().await;
    result
}

/// Waits (up to 30 s) until the node's proxy serves every service with ready instances and
/// the published ports take connections: what `up` prints must answer.
async fn wait_served(agent_dir: &Path, spec: &SpecFile) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ports: Vec<u16> = spec
        .services
        .values()
        .flat_map(|s| s.ports.iter().filter_map(|p| p.published.map(|h| h.0)))
        .collect();
    while Instant::now() < deadline {
        let table: Option<crate::agent::proxy::ProxyTable> =
            crate::agent::monitor::read_json(&agent_dir.join(crate::agent::proxy::TABLE_FILE));
        let served = table.is_some_and(|t| {
            spec.services
                .iter()
                .filter(|(_, s)| s.replicas > 0 && !s.ports.is_empty())
                .all(|(name, _)| {
                    t.listeners
                        .iter()
                        .any(|l| &l.service == name && !l.endpoints.is_empty())
                })
        });
        let mut open = true;
        for port in &ports {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            open &= tokio::net::TcpStream::connect(addr).await.is_ok();
        }
        if served && open && crate::agent::proxy::running(agent_dir) {
            // The proxy reads its table every 100 ms.
            tokio::time::sleep(Duration::from_millis(250)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("tugboat up: the service proxy is not serving everything yet");
}

/// Waits until every service has its replicas ready, printing what is not yet.
async fn report_progress(client: &ApiClient, spec: &SpecFile) {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(list) = client.instances(None).await {
            let mut waiting = vec![];
            for (name, service) in &spec.services {
                let ready = list
                    .items
                    .iter()
                    .filter(|i| &i.service == name && i.phase == InstancePhase::Running && i.ready)
                    .count();
                if ready < service.replicas as usize {
                    let why = list
                        .items
                        .iter()
                        .filter(|i| &i.service == name && !i.ready)
                        .map(|i| {
                            i.pending_reason
                                .clone()
                                .unwrap_or_else(|| i.message.clone())
                        })
                        .find(|m| !m.is_empty())
                        .unwrap_or_default();
                    waiting.push(format!("{name} {ready}/{} {why}", service.replicas));
                }
            }
            if waiting.is_empty() {
                eprintln!(
                    "tugboat up: all services ready in {:.1}s",
                    started.elapsed().as_secs_f32()
                );
                return;
            }
            let line = waiting.join("; ");
            if line != last {
                eprintln!("tugboat up: waiting: {line}");
                last = line;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
