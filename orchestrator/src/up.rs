//! `tugboat up`: the control plane and an agent in one process, on one host, with the
//! embedded store: apply a spec file, wait until it is ready, say where it answers, and on
//! Ctrl-C stop every instance and remove the network.
//!
//! Before anything starts it checks that the cgroup controllers are visible (`ip netns exec`
//! hides them). The cluster is made to match the file: services an earlier `up` with the same
//! data dir left in the store that the file does not name are listed and removed. While
//! it waits, each distinct reason an instance is not ready is printed once; past the
//! deadline `up` stops everything and fails with a summary.

use crate::agent::images::ImageSource;
use crate::agent::{Agent, AgentConfig};
use crate::client::ApiClient;
use crate::model::{Instance, InstancePhase};
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
    #[error("this host cannot run instances: {0}")]
    Host(#[from] crate::agent::host_check::HostCheckError),
    #[error("not every service was ready within {}s (--deadline); everything was stopped:\n{summary}", .deadline.as_secs())]
    Deadline { deadline: Duration, summary: String },
}

/// How long `up` waits for every service to be ready unless told (`--deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

pub struct UpConfig {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub node: String,
    pub images: Arc<dyn ImageSource>,
    /// Adjusts the agent's settings (log mode, subnet, timers, ...).
    pub adjust_agent: Box<dyn FnOnce(&mut AgentConfig) + Send>,
    /// Every service must be ready by then, or `up` stops everything and fails.
    pub deadline: Duration,
}

/// `up --data-dir D` keeps its server's files (store, token, tls/) in D/server; the client
/// looks there too, so `tugboat --data-dir D get ...` finds them.
pub const SERVER_SUBDIR: &str = "server";

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
        data_dir.display()
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
    // Before anything is started: without its cgroups no instance could ever run.
    crate::agent::host_check::check_cgroups()?;
    let server_dir = config.data_dir.join(SERVER_SUBDIR);
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
    let network = agent_config.network.clone();
    let agent = match Agent::open(agent_config, client.clone(), config.images.clone()).await {
        Ok(agent) => agent,
        Err(e) => {
            server.shutdown().await;
            return Err(e.into());
        }
    };
    let (agent_stop, agent_rx) = tokio::sync::watch::channel(None);
    let agent_task = tokio::spawn(agent.run(agent_rx));
    let apply_error = |source| UpError::Apply {
        path: config.file.clone(),
        source,
    };
    let mut result = async {
        remove_earlier_services(&client, &spec, &config.file)
            .await
            .map_err(apply_error)?;
        client
            .apply(&spec.without_build())
            .await
            .map_err(apply_error)?;
        Ok::<_, UpError>(())
    }
    .await;
    if result.is_ok() {
        let agent_dir = config.data_dir.join("agent");
        let announce = async {
            report_progress(&client, &spec, config.deadline).await?;
            wait_served(&agent_dir, &network, &spec).await;
            print!("{}", summary(server.addr, &config.data_dir, &spec));
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::future::pending::<Result<(), UpError>>().await
        };
        tokio::select! {
            r = announce => result = r,
            _ = stop => {}
        }
    }
    eprintln!("tugboat up: stopping every instance");
    // The services go from the store too, so what it says stays true; volumes are kept.
    // Those applied by hand meanwhile (`tugboat apply`) go as well: `up` stops everything.
    let mut names: std::collections::BTreeSet<String> = spec.services.keys().cloned().collect();
    if let Ok(listed) = client.services().await {
        names.extend(listed.items.into_iter().map(|s| s.name));
    }
    for name in &names {
        let _ = client.delete_service(name).await;
    }
    let _ = agent_stop.send(Some(true));
    let _ = agent_task.await;
    server.shutdown().await;
    result
}

/// Waits (up to 30 s) until the node's kernel balances every service with ready instances
/// and the published ports take connections: what `up` prints must answer.
async fn wait_served(agent_dir: &Path, network: &str, spec: &SpecFile) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ports: Vec<u16> = spec
        .services
        .values()
        .flat_map(|s| s.ports.iter().filter_map(|p| p.published.map(|h| h.0)))
        .collect();
    while Instant::now() < deadline {
        let served = spec
            .services
            .iter()
            .filter(|(_, s)| s.replicas > 0 && !s.ports.is_empty())
            .all(|(name, _)| {
                crate::agent::services::programmed_endpoints(agent_dir, network, name)
                    .is_some_and(|e| !e.is_empty())
            });
        let mut open = true;
        for port in &ports {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            open &= tokio::net::TcpStream::connect(addr).await.is_ok();
        }
        if served && open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("tugboat up: the services are not all balanced yet");
}

/// Services in the store that the file does not name (left by an earlier `up` with this data
/// dir that did not stop cleanly, or applied by hand meanwhile) are removed, each named: `up`
/// makes the cluster match its file.
async fn remove_earlier_services(
    client: &ApiClient,
    spec: &SpecFile,
    file: &Path,
) -> Result<(), crate::client::ClientError> {
    let earlier = client.services().await?;
    for service in earlier.items {
        if !spec.services.contains_key(&service.name) {
            eprintln!(
                "tugboat up: removing service {}: it is not in {} (left in the store by an earlier run)",
                service.name,
                file.display()
            );
            client.delete_service(&service.name).await?;
        }
    }
    Ok(())
}

/// What `up` says while it waits: each distinct reason an instance of a service is not
/// ready, once, and how many are ready when that changes.
#[derive(Debug, Default)]
pub struct Progress {
    seen: std::collections::BTreeSet<(String, String)>,
    last_counts: String,
    /// The latest reason per service, for the summary at the deadline.
    latest: std::collections::BTreeMap<String, String>,
}

/// An instance's reason in words without what changes from one report to the next (the
/// back-off's seconds); none while it is only on its way (starting, probing).
pub fn reason_of(i: &Instance) -> Option<String> {
    let text = i
        .pending_reason
        .clone()
        .unwrap_or_else(|| i.message.clone());
    let text = match text
        .find("; restarting in ")
        .or_else(|| text.find("; back-off "))
    {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let passing = [
        "",
        "starting",
        "started",
        "running",
        "running; waiting for the readiness probe",
    ];
    (!passing.contains(&text.as_str())).then_some(text)
}

impl Progress {
    /// Lines to print for this look at the instances; `None` once every service is ready.
    pub fn observe(&mut self, spec: &SpecFile, instances: &[Instance]) -> Option<Vec<String>> {
        let mut lines = vec![];
        let mut counts = vec![];
        for (name, service) in &spec.services {
            let mine: Vec<&Instance> = instances.iter().filter(|i| &i.service == name).collect();
            let ready = mine
                .iter()
                .filter(|i| i.phase == InstancePhase::Running && i.ready)
                .count();
            if ready >= service.replicas as usize {
                self.latest.remove(name);
                continue;
            }
            counts.push(format!("{name} {ready}/{}", service.replicas));
            for i in mine.iter().filter(|i| !i.ready) {
                let Some(reason) = reason_of(i) else { continue };
                self.latest.insert(name.clone(), reason.clone());
                if self.seen.insert((name.clone(), reason.clone())) {
                    lines.push(format!("tugboat up: {name}: {reason}"));
                }
            }
        }
        if counts.is_empty() {
            return None;
        }
        let counts = counts.join(", ");
        if counts != self.last_counts {
            lines.insert(0, format!("tugboat up: waiting: {counts} ready"));
            self.last_counts = counts;
        }
        Some(lines)
    }

    /// Every service that is not ready, with its latest reason.
    pub fn summary(&self, spec: &SpecFile, instances: &[Instance]) -> String {
        let mut out = String::new();
        for (name, service) in &spec.services {
            let ready = instances
                .iter()
                .filter(|i| &i.service == name && i.phase == InstancePhase::Running && i.ready)
                .count();
            if ready >= service.replicas as usize {
                continue;
            }
            let why = self
                .latest
                .get(name)
                .map_or("no reason reported".to_string(), |r| r.clone());
            out += &format!("  {name}: {ready}/{} ready: {why}\n", service.replicas);
        }
        out
    }
}

/// Waits until every service has its replicas ready, printing each reason it is not once;
/// fails with a summary past `deadline`.
async fn report_progress(
    client: &ApiClient,
    spec: &SpecFile,
    deadline: Duration,
) -> Result<(), UpError> {
    let started = Instant::now();
    let mut progress = Progress::default();
    let mut instances = vec![];
    loop {
        if let Ok(list) = client.instances(None).await {
            instances = list.items;
            match progress.observe(spec, &instances) {
                None => {
                    eprintln!(
                        "tugboat up: all services ready in {:.1}s",
                        started.elapsed().as_secs_f32()
                    );
                    return Ok(());
                }
                Some(lines) => {
                    for line in lines {
                        eprintln!("{line}");
                    }
                }
            }
        }
        if started.elapsed() >= deadline {
            return Err(UpError::Deadline {
                deadline,
                summary: progress.summary(spec, &instances),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstancePhase;

    fn spec() -> SpecFile {
        let text = "services:\n  web: {image: web:1, replicas: 2}\n  db: {image: db:1}\n";
        crate::spec::parse_spec_file("t.yaml", text, &|_| false).unwrap()
    }

    fn instance(id: &str, service: &str, ready: bool, message: &str) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "service": service, "template_hash": "t",
            "spec": {"image": "x:1"}, "phase": "running", "created_at_ms": 0,
        }))
        .unwrap();
        i.ready = ready;
        i.message = message.into();
        i
    }

    #[test]
    fn each_reason_is_printed_once_and_the_counts_when_they_change() {
        let spec = spec();
        let mut p = Progress::default();
        let first = vec![
            instance("web-1", "web", false, "image web:1 not found"),
            instance("web-2", "web", false, "image web:1 not found"),
            instance("db-1", "db", false, "starting"),
        ];
        let lines = p.observe(&spec, &first).unwrap();
        assert_eq!(
            lines,
            vec![
                "tugboat up: waiting: db 0/1, web 0/2 ready",
                "tugboat up: web: image web:1 not found"
            ]
        );
        assert!(p.observe(&spec, &first).unwrap().is_empty());
        // The back-off's seconds change, the reason does not.
        let looping = vec![
            instance("web-1", "web", true, "running"),
            instance(
                "web-2",
                "web",
                false,
                "exited with code 1; restarting in 0.5s",
            ),
            instance(
                "db-1",
                "db",
                false,
                "exited with code 1; restarting in 0.2s",
            ),
        ];
        let lines = p.observe(&spec, &looping).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let again = vec![
            instance("web-1", "web", true, "running"),
            instance(
                "web-2",
                "web",
                false,
                "exited with code 1; restarting in 1.0s",
            ),
            instance(
                "db-1",
                "db",
                false,
                "exited with code 1; restarting in 2.0s",
            ),
        ];
        assert!(p.observe(&spec, &again).unwrap().is_empty());
        assert_eq!(
            p.summary(&spec, &again),
            "  db: 0/1 ready: exited with code 1\n  web: 1/2 ready: exited with code 1\n"
        );
        let ready = vec![
            instance("web-1", "web", true, "running"),
            instance("web-2", "web", true, "running"),
            instance("db-1", "db", true, "running"),
        ];
        assert!(p.observe(&spec, &ready).is_none());
        let _ = InstancePhase::Running;
    }
}
