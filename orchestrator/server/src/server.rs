//! `tugboat server`: the store, the controllers and the HTTP API in one process.

use crate::controllers::runner::run_controllers;
use crate::controlplane::Role;
use crate::controlplane::{ControlPlane, Timers};
use crate::http::{router, ApiState};
use crate::scheduler::{Scheduler, SchedulerOptions};
use crate::store::{
    EmbeddedStore, EmbeddedStoreOptions, EtcdOptions, EtcdStore, Store, StoreError,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/tugboat";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
pub const STORE_FILE: &str = "store.log";
pub const TOKEN_FILE: &str = "token";
pub const LOCK_FILE: &str = "lock";

/// Hold an exclusive lock on `<data_dir>/lock` for as long as the file stays open: two
/// servers on one store would each believe their memory is the truth.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, ServerError> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServerError::DataDir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EWOULDBLOCK) => ServerError::Locked {
                path: data_dir.into(),
            },
            _ => ServerError::DataDir {
                path,
                source: error,
            },
        });
    }
    Ok(file)
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Bearer-token auth; off only when explicitly disabled.
    pub auth: bool,
    pub timers: Timers,
    pub scheduler: SchedulerOptions,
    pub store: EmbeddedStoreOptions,
    /// Where the objects live: the embedded log under the data dir, or etcd.
    pub backend: StoreBackend,
    /// TLS on the API, with the cluster CA under `<data-dir>/tls`; None: plain HTTP.
    pub tls: Option<crate::pki::TlsSettings>,
    /// Host autoscaling through providers (`--node-pools FILE`).
    pub node_pools: Option<crate::nodepools::PoolsConfig>,
    /// Network policy: a service without ingress rules takes connections only from the
    /// nodes (Kubernetes' default is the opposite: allow; so is ours without this).
    pub default_deny_ingress: bool,
    /// The cluster token given to the server (`--token`): kept as `<data-dir>/token` when
    /// the data dir has none; on etcd, what the cluster's bootstrap data is sealed with.
    pub cluster_token: Option<String>,
    /// On etcd: the leader compacts etcd's history this often (`election::compact_history`).
    pub etcd_compaction_interval: Option<std::time::Duration>,
}

impl ServerConfig {
    pub fn new(data_dir: &Path, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            auth: true,
            timers: Timers::default(),
            scheduler: SchedulerOptions::default(),
            store: EmbeddedStoreOptions::default(),
            backend: StoreBackend::Embedded,
            tls: None,
            node_pools: None,
            default_deny_ingress: false,
            cluster_token: None,
            etcd_compaction_interval: None,
        }
    }
}

pub const TLS_DIR: &str = "tls";

/// The store a server runs on.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// `<data-dir>/store.log`: one server, which always leads.
    Embedded,
    /// etcd v3: several servers; the one holding the leader lease runs the controllers.
    Etcd {
        options: EtcdOptions,
        /// The leader lease's time to live ([`crate::election::DEFAULT_LEADER_TTL`]).
        leader_ttl: std::time::Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--token is not the token in {path}: this data dir is a server's with another token (use that one, or an empty data dir)")]
    TokenDiffers { path: PathBuf },
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(tugboat_api::tls::TlsError),
    #[error("data dir {path} is in use by another tugboat server (it holds {path}/lock); stop it or use another --data-dir")]
    Locked { path: PathBuf },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Read the token at `<data_dir>/token`, making one (mode 0600) at first start.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, ServerError> {
    let (token, new) = choose_token(data_dir, None)?;
    if new {
        save_token(data_dir, &token)?;
    }
    Ok(token)
}

/// The server's token: `<data_dir>/token`, else the one given, else a new one; true when
/// the data dir does not hold it yet. A given token must be the data dir's.
fn choose_token(data_dir: &Path, given: Option<&str>) -> Result<(String, bool), ServerError> {
    let path = data_dir.join(TOKEN_FILE);
    let err = |source| ServerError::Token {
        path: path.clone(),
        source,
    };
    let given = given.map(str::trim).filter(|t| !t.is_empty());
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            let token = token.trim().to_string();
            if given.is_some_and(|g| g != token) {
                return Err(ServerError::TokenDiffers { path });
            }
            return Ok((token, false));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(given) = given {
        return Ok((given.to_string(), true));
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(err)?;
    Ok((bytes.iter().map(|b| format!("{b:02x}")).collect(), true))
}

/// Writes `<data_dir>/token` (mode 0600) atomically.
fn save_token(data_dir: &Path, token: &str) -> Result<(), ServerError> {
    let path = data_dir.join(TOKEN_FILE);
    tugboat_api::write_durable(&path, format!("{token}\n").as_bytes(), 0o600)
        .map_err(|source| ServerError::Token { path, source })
}

/// Makes the files every server of a cluster shares ([`crate::bootstrap::SHARED_FILES`]) in
/// `dir`, keeping those it has: the CA, then the secrets key.
fn make_shared_files(dir: &Path) -> Result<(), String> {
    tugboat_api::tls::Ca::load_or_create(&dir.join(TLS_DIR)).map_err(|e| e.to_string())?;
    crate::controlplane::secrets::SecretBox::load_or_create(dir).map_err(|e| e.to_string())?;
    Ok(())
}

/// A started server. Dropping it does not stop it: call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The store, in words: `embedded <path>` or `etcd <endpoints> prefix <prefix>`.
    pub backend: String,
    pub token: Option<String>,
    /// The cluster's TLS, when the API speaks it.
    pub tls: Option<Arc<crate::pki::ServerTls>>,
    pub control: Arc<ControlPlane>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Released when the server is dropped.
    _lock: std::fs::File,
}

impl RunningServer {
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Wait until the server stops (it stops on shutdown only).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// The store a backend names: the store, the etcd store (for the election) and the store
/// in words (`embedded <path>` or `etcd <endpoints> prefix <prefix>`). The caller holds
/// the data dir's lock.
async fn open_store(
    data_dir: &Path,
    backend: &StoreBackend,
    options: &EmbeddedStoreOptions,
) -> Result<
    (
        Arc<dyn Store>,
        Option<(EtcdStore, std::time::Duration)>,
        String,
    ),
    ServerError,
> {
    Ok(match backend {
        StoreBackend::Embedded => {
            let path = data_dir.join(STORE_FILE);
            let store = EmbeddedStore::open(&path, options.clone())?;
            (
                Arc::new(store),
                None,
                format!("embedded {}", path.display()),
            )
        }
        StoreBackend::Etcd {
            options,
            leader_ttl,
        } => {
            let store = EtcdStore::connect(options).await?;
            let backend = format!(
                "etcd {} prefix {}",
                store.endpoints(),
                if store.prefix().is_empty() {
                    "(none)"
                } else {
                    store.prefix()
                }
            );
            (Arc::new(store.clone()), Some((store, *leader_ttl)), backend)
        }
    })
}

/// A store opened by `tugboat store export|import`. The embedded store is opened under the
/// data dir's lock, so it is refused while a server runs on it (stop the server first).
pub struct OfflineStore {
    pub store: Arc<dyn Store>,
    /// The store in words.
    pub description: String,
    _lock: Option<std::fs::File>,
}

/// `create`: an import may make the embedded store (and its data dir); an export may not.
pub async fn open_offline(
    data_dir: &Path,
    backend: &StoreBackend,
    create: bool,
) -> Result<OfflineStore, ServerError> {
    let lock = match backend {
        StoreBackend::Embedded => {
            if create {
                std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
                    path: data_dir.into(),
                    source,
                })?;
            } else if !data_dir.join(STORE_FILE).exists() {
                return Err(ServerError::DataDir {
                    path: data_dir.join(STORE_FILE),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no store here (is --data-dir the server's?)",
                    ),
                });
            }
            Some(lock_data_dir(data_dir)?)
        }
        StoreBackend::Etcd { .. } => None,
    };
    let (store, _, description) =
        open_store(data_dir, backend, &EmbeddedStoreOptions::default()).await?;
    Ok(OfflineStore {
        store,
        description,
        _lock: lock,
    })
}

pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let lock = lock_data_dir(&config.data_dir)?;
    let (store, etcd, backend) =
        open_store(&config.data_dir, &config.backend, &config.store).await?;
    let token = if config.auth {
        Some(choose_token(
            &config.data_dir,
            config.cluster_token.as_deref(),
        )?)
    } else {
        None
    };
    if etcd.is_some() {
        // Before anything of the cluster's is made here: a wrong token writes nothing.
        match token.as_ref().map(|t| t.0.as_str()).or(config.cluster_token.as_deref()) {
            Some(cluster_token) => {
                let outcome = crate::bootstrap::ensure(
                    store.as_ref(),
                    &config.data_dir,
                    cluster_token,
                    make_shared_files,
                )
                .await?;
                eprintln!(
                    "tugboat server: bootstrap: {}",
                    match outcome {
                        crate::bootstrap::Bootstrap::Stored => "first server on this store: stored the cluster's CA and secrets key in etcd, sealed with the token",
                        crate::bootstrap::Bootstrap::Joined => "using the cluster's CA and secrets key from etcd",
                    }
                );
            }
            None => eprintln!(
                "tugboat server: bootstrap: none (--insecure-no-auth without --token): this server keeps its own CA and secrets key"
            ),
        }
    }
    let token = match token {
        Some((token, new)) => {
            if new {
                save_token(&config.data_dir, &token)?;
            }
            Some(token)
        }
        None => None,
    };
    let mut control = ControlPlane::new(
        store,
        Scheduler::new(config.scheduler.clone()),
        config.timers,
    );
    control.node_pools = config
        .node_pools
        .clone()
        .map(|pools| Arc::new(crate::nodepools::NodePools::new(pools)));
    let control = Arc::new(control);
    if etcd.is_some() {
        // Until its campaign is won.
        control.set_leadership(Role::Follower, None);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let tls = match &config.tls {
        Some(settings) => Some(
            crate::pki::ServerTls::open(config.data_dir.join(TLS_DIR), addr, settings.clone())
                .map_err(ServerError::Tls)?,
        ),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let secrets = crate::controlplane::secrets::SecretBox::load_or_create(&config.data_dir)
        .map_err(|source| ServerError::DataDir {
            path: config.data_dir.join(crate::controlplane::secrets::KEY_FILE),
            source,
        })?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    // How this server names itself in the leader key and in the list of servers.
    let identity = format!("{addr} (pid {}, host {host})", std::process::id());
    let registry = crate::servers::ServerRegistry {
        this: tugboat_api::wire::ServerInfo {
            name: host.clone(),
            id: identity.clone(),
            api_url: format!(
                "{}://{}",
                if tls.is_some() { "https" } else { "http" },
                if addr.ip().is_unspecified() {
                    format!("{host}:{}", addr.port())
                } else {
                    addr.to_string()
                }
            ),
            version: env!("CARGO_PKG_VERSION").into(),
            started_ms: tugboat_api::model::now_ms(),
            role: tugboat_api::wire::ServerRole::Follower,
        },
        shared: etcd.is_some(),
    };
    let app = router(Arc::new(ApiState {
        control: control.clone(),
        token: token.clone(),
        tls: tls.clone(),
        secrets: Arc::new(secrets),
        metrics: Arc::default(),
        tunnels: Arc::default(),
        default_deny_ingress: config.default_deny_ingress,
        servers: Arc::new(registry.clone()),
    }));
    let mut http_shutdown = shutdown_rx.clone();
    let server_config = tls.as_ref().map(|t| t.config.clone());
    let http = tokio::spawn(async move {
        let stop = async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        };
        tugboat_api::tls::serve(listener, app, server_config, stop).await;
    });
    let mut tasks = vec![http];
    tasks.push(tokio::spawn(
        control
            .feed
            .clone()
            .run(control.store.clone(), shutdown_rx.clone()),
    ));
    // The controllers' copy of the cluster, kept on every server, followers too: a new
    // leader's first pass then finds it current instead of listing the whole cluster from
    // etcd first (at 100,000 instances, seconds of a failover).
    tasks.push(tokio::spawn(
        control
            .cache
            .clone()
            .run(control.store.clone(), shutdown_rx.clone()),
    ));
    if etcd.is_some() {
        tasks.push(tokio::spawn(crate::liveness::relay(
            control.store.clone(),
            control.clone(),
            addr.to_string(),
            std::time::Duration::from_millis(config.timers.nodes.heartbeat_every_ms.max(100)),
            shutdown_rx.clone(),
        )));
    }
    if let Some((store, ttl)) = &etcd {
        tasks.push(tokio::spawn(crate::servers::keep_registered(
            store.clone(),
            registry.this.clone(),
            addr.to_string(),
            *ttl,
            shutdown_rx.clone(),
        )));
    }
    let controllers = match etcd {
        None => tokio::spawn(run_controllers(control.clone(), shutdown_rx.clone())),
        Some((store, ttl)) => tokio::spawn(crate::election::run(
            store,
            control.clone(),
            identity,
            ttl,
            config.etcd_compaction_interval,
            shutdown_rx.clone(),
            |line| eprintln!("tugboat server: {line}"),
        )),
    };
    tasks.push(controllers);
    if let Some(tls) = tls.clone() {
        tasks.push(tokio::spawn(renew_server_cert(tls, shutdown_rx)));
    }
    Ok(RunningServer {
        addr,
        backend,
        token,
        tls,
        control,
        shutdown,
        tasks,
        _lock: lock,
    })
}

/// Renews the server's certificate before it ends (a third of its life left).
async fn renew_server_cert(tls: Arc<crate::pki::ServerTls>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(tls.renewal_check_every()) => {}
        }
        match tls.renew_if_due() {
            Ok(true) => eprintln!(
                "tugboat server: renewed the server certificate (valid until {} ms since the epoch)",
                tls.server_status().not_after_ms
            ),
            Ok(false) => {}
            Err(e) => eprintln!("tugboat server: renewing the server certificate: {e}"),
        }
    }
}
