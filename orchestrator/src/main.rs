//! `tugboat`: parses arguments and calls the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use tugboat::client::ApiClient;
use tugboat::commands::{self, Kind};
use tugboat::model::now_ms;
use tugboat::output::{self, OutputFormat};
use tugboat::server::{ServerConfig, DEFAULT_DATA_DIR, DEFAULT_LISTEN};

#[derive(Parser)]
#[command(
    name = "tugboat",
    version,
    about = "Tug's orchestrator: control plane server and client"
)]
struct Cli {
    /// Server address (host:port or http:// URL); several, comma-separated, for a cluster
    /// of servers: a server that does not answer (or answers 503) is left for the next.
    #[arg(long, global = true, env = "TUGBOAT_ADDR")]
    addr: Option<String>,
    /// Bearer token (default: from the config file, then <data-dir>/token). For `server`:
    /// the cluster token, kept in a new data dir; with --store etcd, a server with an empty
    /// data dir takes the cluster's CA and secrets key from etcd with it.
    #[arg(long, global = true, env = "TUGBOAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA certificate to trust (default: the config file's `ca:`, then
    /// <data-dir>/tls/ca.pem). With a CA, the client speaks TLS and trusts nothing else.
    #[arg(long, global = true, env = "TUGBOAT_CA")]
    ca: Option<PathBuf>,
    /// Client config file with `addr:`, `token:` and `ca:` (default ~/.config/tugboat/config.yaml).
    #[arg(long, global = true, env = "TUGBOAT_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory: the server's (store, token, tls/) for `server`, the node's (image
    /// store, volumes) for `agent`, `build`, `image`, and both for `up` (its server under
    /// <data-dir>/server). The client finds the token and CA in <data-dir> or
    /// <data-dir>/server, so the same --data-dir works for every command.
    #[arg(long, global = true, env = "TUGBOAT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Output format: table, wide (more columns), json or yaml.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Profile {
    Lan,
    Edge,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StoreKind {
    Embedded,
    Etcd,
}

/// Which store: `tugboat server` and `tugboat store export|import` take the same flags.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Where the cluster's objects live: `embedded` (<data-dir>/store.log; one server) or
    /// `etcd` (an etcd v3 cluster; several servers, one of which leads the controllers).
    #[arg(long = "store", value_enum, default_value = "embedded")]
    store: StoreKind,
    /// The etcd members, comma separated: http://HOST:PORT,... (with --store etcd).
    #[arg(long, value_name = "URL,...")]
    etcd_endpoints: Option<String>,
    /// This cluster's key prefix in etcd (several clusters can share one etcd).
    #[arg(long, default_value = tugboat::store::DEFAULT_ETCD_PREFIX)]
    etcd_prefix: String,
    /// The CA that signed etcd's certificate (PEM), for https:// endpoints.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// This server's client certificate for etcd (PEM), when etcd asks for one.
    #[arg(long, value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_key: Option<PathBuf>,
    /// The etcd user, when etcd's authentication is on.
    #[arg(long)]
    etcd_user: Option<String>,
    /// The etcd user's password (better from the environment than the command line).
    #[arg(long, env = "TUGBOAT_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
}

impl StoreArgs {
    fn backend(&self, leader_ttl: std::time::Duration) -> Result<tugboat::server::StoreBackend> {
        use tugboat::server::StoreBackend;
        match self.store {
            StoreKind::Embedded => {
                let given = [
                    ("--etcd-endpoints", self.etcd_endpoints.is_some()),
                    ("--etcd-ca", self.etcd_ca.is_some()),
                    ("--etcd-cert", self.etcd_cert.is_some()),
                    ("--etcd-key", self.etcd_key.is_some()),
                    ("--etcd-user", self.etcd_user.is_some()),
                ];
                if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                    bail!("{flag} is for --store etcd (the store is embedded by default)");
                }
                Ok(StoreBackend::Embedded)
            }
            StoreKind::Etcd => Ok(StoreBackend::Etcd {
                options: tugboat::store::EtcdOptions::parse(
                    self.etcd_endpoints.as_deref().unwrap_or(""),
                    &self.etcd_prefix,
                )?
                .with_tls(
                    self.etcd_ca.clone(),
                    self.etcd_cert.clone(),
                    self.etcd_key.clone(),
                )?
                .with_user(self.etcd_user.clone(), self.etcd_password.clone())?,
                leader_ttl,
            }),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: store, controllers, HTTP API.
    Server {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
        /// With --store etcd: the leader's lease. A leader that dies is replaced after
        /// about this long (etcd raises values under its minimum, 1.5 s by default).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        leader_lease_ttl: std::time::Duration,
        /// With --store etcd: the leader compacts etcd's history every this long, to the
        /// revision etcd had one interval before (kube-apiserver's way; `5m` as its
        /// default). Off unless given: compaction is global to an etcd that other users
        /// may share; then run etcd with --auto-compaction-retention.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        etcd_compaction_interval: Option<std::time::Duration>,
        /// Serve without authentication. Only for a trusted loopback.
        #[arg(long)]
        insecure_no_auth: bool,
        /// Network policy: instances of services without `network.ingress` rules take
        /// connections only from the nodes (default: from anyone).
        #[arg(long)]
        default_deny_ingress: bool,
        /// Node timers for the network the nodes are on: `lan` (a heartbeat every 0.5 s, not
        /// ready after 1.5 s, lost after 3 s) or `edge` (5 s, 15 s, 60 s: slow or metered
        /// links). A node is lost only when neither the server nor any peer reaches it.
        #[arg(long, value_enum, default_value = "lan")]
        profile: Profile,
        /// How often agents heartbeat (they take it from the server); overrides the profile.
        #[arg(long, value_parser = humantime::parse_duration)]
        heartbeat_every: Option<std::time::Duration>,
        /// Silence after which a node takes no new instances; overrides the profile.
        #[arg(long, value_parser = humantime::parse_duration)]
        node_not_ready_after: Option<std::time::Duration>,
        /// Time without the server or any peer reaching a node after which its instances
        /// are replaced elsewhere (as each service's `reschedule` says); overrides the profile.
        #[arg(long, value_parser = humantime::parse_duration)]
        node_lost_after: Option<std::time::Duration>,
        /// Serve plain HTTP, without TLS: bearer tokens then cross the network in clear and
        /// nodes cannot join with certificates. Only for tests on a trusted loopback.
        #[arg(long)]
        insecure_plain_http: bool,
        /// A DNS name or address clients reach the server at, put in its certificate
        /// (besides localhost, the host's name and its addresses); repeatable.
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
        /// Lifetime of the server's certificate (renewed when a third is left).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "365d")]
        server_cert_lifetime: std::time::Duration,
        /// Lifetime of the certificates nodes get when they join (they renew them when a
        /// third is left).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "365d")]
        node_cert_lifetime: std::time::Duration,
        /// Host autoscaling: a YAML file of node pools and their providers
        /// (docs/nodepools.md); checked at start.
        #[arg(long)]
        node_pools: Option<PathBuf>,
    },
    /// Move a cluster's objects between stores (embedded <-> etcd), with its servers
    /// stopped: `export` writes one JSON document, `import` reads it into an empty store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Tokens: admin, read-only, or join (for a node's first certificate).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Secrets: sealed in the server's store, given only to the nodes that run instances
    /// mounting them, mounted as files (`secrets:` in a service); never printed.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Create or update the services of a spec file (YAML or JSON), all or nothing.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Say what would be created or updated; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// What `apply -f FILE` would change: a unified diff per service, of the server's spec
    /// and the file's. Exit code 1 when something differs, as diff(1).
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List services, instances, nodes or events; with a NAME, only that one.
    Get {
        kind: Kind,
        name: Option<String>,
        /// Only instances of this service.
        #[arg(long)]
        service: Option<String>,
        /// Print again after each change (events: each new one).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show one object with its recent events (and why it is pending); `describe cluster`:
    /// the CA's hash and when each certificate ends.
    Describe {
        kind: Kind,
        #[arg(default_value = "")]
        name: String,
    },
    /// Delete a service (and its instances), an instance (it is replaced) or a node; or,
    /// with -f, the services of a spec file.
    #[command(arg_required_else_help = true)]
    Delete {
        #[arg(required_unless_present = "file")]
        kind: Option<Kind>,
        #[arg(required_unless_present = "file")]
        name: Option<String>,
        #[arg(short = 'f', long = "file", conflicts_with_all = ["kind", "name"])]
        file: Option<PathBuf>,
    },
    /// Set a service's replica count.
    Scale {
        service: String,
        replicas: u32,
        /// Wait until that many instances are ready (and no more run).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// `status`: wait until the rollout is done (exit 0) or rolled back (exit 1);
    /// `history`: the templates kept; `undo`: back to the last good template.
    Rollout {
        action: RolloutAction,
        service: String,
        /// How long `status` waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// A node's scheduling: `cordon` (nothing new placed on it), `drain` (cordon, and move
    /// its instances to other nodes, each replacement ready before its old copy stops, within
    /// the service's update bounds) or `uncordon`.
    Node { action: NodeAction, name: String },
    /// Run a command in an instance; its exit code is tugboat's. With -i its input is
    /// tugboat's, with -t it runs on a terminal (for a shell: `exec -it ID -- sh`).
    Exec {
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Run the command on a terminal (a pty); this terminal is put in raw mode.
        #[arg(short = 't', long)]
        tty: bool,
        instance: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An instance's output (stdout and stderr), from its node's agent; for a service, that
    /// of each of its instances, each line prefixed with the instance.
    Logs {
        /// An instance, or a service.
        target: String,
        /// Keep printing what it writes.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Each line with the time its monitor read it (RFC 3339, UTC, as `docker logs -t`).
        #[arg(short = 't', long)]
        timestamps: bool,
        /// The run before the latest one: what the container printed before its last
        /// restart (`kubectl logs --previous`).
        #[arg(short = 'p', long, conflicts_with = "follow")]
        previous: bool,
    },
    /// Build an image from a Dockerfile/Containerfile into this node's image store
    /// (under --data-dir); RUN steps run in `tug` containers. See docs/build.md.
    Build {
        /// The build context directory.
        context: PathBuf,
        /// Name the image (repeatable).
        #[arg(short = 't', long = "tag")]
        tags: Vec<String>,
        /// The Dockerfile (default: Dockerfile, else Containerfile, in the context).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// NAME=VALUE for an ARG (repeatable).
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
        /// Build this stage (default: the last).
        #[arg(long)]
        target: Option<String>,
        /// Also write the image as an OCI layout dir, or an oci-archive if PATH ends in .tar
        /// (`--output` is the global output format).
        #[arg(long = "oci", value_name = "PATH")]
        oci: Option<PathBuf>,
        /// No step-by-step progress.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Images of this node (the store under --data-dir): pull, import, ls, rm, prune, inspect.
    Image {
        #[command(subcommand)]
        action: tug_image::cli::ImageCommand,
    },
    /// Volumes: objects in the cluster (create, ls, describe, rm; docs/volumes.md), or with
    /// --local the named-volume directories of this node (under --data-dir).
    Volume {
        #[command(subcommand)]
        action: VolumeAction,
    },
    /// CPU, memory and pids of each instance, from its cgroup (as its agent reported).
    Top {
        /// Only instances of this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// A shell completion script: `tugboat completion bash > /etc/bash_completion.d/tugboat`.
    Completion { shell: clap_complete::Shell },
    /// Write man pages (tugboat.1 and one per command) into DIR.
    Man { dir: PathBuf },
    /// Run this host's instances for the server at --addr (data in --data-dir).
    Agent {
        #[arg(long)]
        node: String,
        /// Node label, `key=value`; repeat for more.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// This node's container subnet; every node needs its own (the server refuses a
        /// subnet that overlaps another node's).
        #[arg(long, default_value = "10.88.0.0/24")]
        subnet: String,
        /// The address other nodes reach this one at: they route this node's subnet via it.
        #[arg(long)]
        address: Option<std::net::Ipv4Addr>,
        /// How packets reach other nodes' containers: `host-gw` (routes via the other
        /// nodes' addresses; the nodes share a link), `vxlan` (a VXLAN tunnel from
        /// --address, UDP 4789; the nodes only need to reach each other) or `auto`
        /// (host-gw where the other node is on a shared link, VXLAN elsewhere).
        #[arg(long, value_enum, default_value = "host-gw")]
        overlay: Overlay,
        /// The VXLAN network identifier (with --overlay vxlan); the same on every node.
        #[arg(long, default_value_t = 1)]
        vni: u32,
        /// Where the agent's own API (instance logs) listens.
        #[arg(long, default_value = "127.0.0.1:7481", conflicts_with = "dial_out")]
        api_listen: SocketAddr,
        /// Listen on nothing: the agent opens a tunnel to the server and serves exec and
        /// logs through it (a node behind NAT or a carrier network that nothing can connect
        /// to). Other nodes then reach its instances only when the server calls it ready.
        #[arg(long)]
        dial_out: bool,
        /// Use unpacked images (`<dir>/<name>/<tag>/rootfs`) instead of the image store
        /// under --data-dir.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Import an OCI layout or archive into the image store first; repeatable.
        #[arg(long)]
        import: Vec<PathBuf>,
        /// A host directory instances may bind-mount (with what is under it); repeatable.
        /// None by default: a spec's `type: bind` volume is refused on this node.
        #[arg(long = "allow-host-path")]
        allow_host_paths: Vec<PathBuf>,
        /// Join the cluster with this token (`tugboat token create --scope join --ttl 1h`):
        /// the node gets a certificate for its name, kept under <data-dir>/tls, and uses it
        /// from then on (the token is needed only once).
        #[arg(long, env = "TUGBOAT_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// The cluster CA's hash (`sha256:...`, from `tugboat describe cluster` or the
        /// server's start-up line): a join trusts only a server with this CA.
        #[arg(long)]
        ca_hash: Option<String>,
        /// With no certificate and no token, serve the node's API (exec, logs) to anyone.
        /// Only for tests on a private network.
        #[arg(long)]
        insecure_no_auth: bool,
        /// Kept for the system and the agent, not offered to instances: `cpu=500m,memory=256Mi`.
        #[arg(long)]
        reserve: Option<String>,
        /// Where containers' output goes: `file` (container.log, rotated) or `ring` (a
        /// bounded ring of 1 MiB per container in memory, written out when the container
        /// ends or on request: for devices whose flash should not take a write per line).
        #[arg(long, default_value = "file")]
        log_mode: tugboat::agent::logring::LogMode,
    },
    /// Server and agent in one process: apply a spec file, say where it answers; Ctrl-C
    /// stops everything.
    Up {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = "local")]
        node: String,
        /// Use unpacked images (`<dir>/<name>/<tag>/rootfs`) instead of the image store.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Import an OCI layout or archive into the image store first; repeatable.
        #[arg(long)]
        import: Vec<PathBuf>,
        /// Every service must be ready within this (`90s`, `5m`); otherwise `up` stops
        /// everything and exits non-zero with what was not ready and why.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where containers' output goes, as `tugboat agent --log-mode`: `file` or `ring`
        /// (memory; on disk only when asked and when a container ends).
        #[arg(long, default_value = "file")]
        log_mode: tugboat::agent::logring::LogMode,
    },
    /// The per-container monitor, as `tugboat-monitor` does it (the agent runs this only
    /// when there is no `tugboat-monitor` next to tugboat).
    #[command(hide = true)]
    Monitor {
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        runtime_root: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1 << 20)]
        log_max_bytes: u64,
        #[arg(long, requires = "oci_root")]
        oci_runtime: Option<PathBuf>,
        #[arg(long)]
        oci_root: Option<PathBuf>,
        #[arg(long, default_value = "file")]
        log_mode: tugboat::agent::logring::LogMode,
    },
    /// Run a command in a container's namespaces (the agent's exec helper).
    #[command(hide = true)]
    Nsexec {
        #[arg(long)]
        runtime_root: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        tty: bool,
        #[arg(long)]
        console_fd: Option<i32>,
        #[arg(long, requires = "oci_root")]
        oci_runtime: Option<PathBuf>,
        #[arg(long)]
        oci_root: Option<PathBuf>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label `{s}` is not key=value"))
}

#[derive(Clone, Copy, ValueEnum)]
enum Overlay {
    HostGw,
    Vxlan,
    /// host-gw to nodes on a shared link, VXLAN to the others.
    Auto,
}

#[derive(Subcommand)]
enum VolumeAction {
    /// Make a volume object: `--driver local` (a directory; with --size an ext4 image of that
    /// size), `nfs` (--opt server=ADDR --opt path=/export), or `exec` (--opt plugin=/path).
    Create {
        name: String,
        #[arg(long, default_value = "local")]
        driver: String,
        /// `1Gi`, `500Mi`: a limit writers meet as ENOSPC (local, and plugins that take it).
        #[arg(long)]
        size: Option<String>,
        /// A driver option, `key=value`; repeatable.
        #[arg(long = "opt", value_parser = parse_label)]
        opts: Vec<(String, String)>,
        /// `single-node-writer` or `multi-node-writer` (default: the driver's).
        #[arg(long)]
        access: Option<String>,
        /// local: the node the volume is made on (default: where its first user runs).
        #[arg(long)]
        node: Option<String>,
    },
    /// List volume objects with their node and usage (--local: this node's directories).
    Ls {
        #[arg(long)]
        local: bool,
    },
    /// A volume's driver, size, node, users and each node's usage.
    Describe { name: String },
    /// Delete a volume object (refused while a service mounts it); its nodes remove its
    /// data. --local: remove this node's directory of an object-less volume.
    Rm {
        name: String,
        #[arg(long)]
        local: bool,
    },
    /// Write a volume's contents as a tar archive (owners, modes, symlinks, times), read
    /// through the node that holds it.
    Snapshot {
        name: String,
        /// The archive to write, or `-` for stdout (`-f`, as `store export`: `-o` is the
        /// global output format).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Archive while the instances that mount the volume keep running (by default they
        /// are paused on its node until the archive is written: a point-in-time copy).
        #[arg(long)]
        no_freeze: bool,
    },
    /// Restore a tar archive into a volume: refused while an instance uses it, and into a
    /// volume that holds data unless --force (which replaces it).
    Restore {
        name: String,
        /// The archive to read, or `-` for stdin.
        #[arg(long, short = 'i')]
        input: PathBuf,
        /// The node to put a local volume on that is on no node yet, or that does not exist
        /// (it is made, local, on that node); its users go there.
        #[arg(long)]
        node: Option<String>,
        /// Replace what the volume holds.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Write every object of the store (the --store flags, default the embedded store under
    /// --data-dir) to FILE, or to stdout with `-`.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, short = 'f', default_value = "-")]
        file: PathBuf,
    },
    /// Read an export into the store (the --store flags); the store must be empty unless
    /// --replace, which deletes what it holds first.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token and print it (only now: the server keeps only its hash).
    Create {
        #[arg(long, value_enum, default_value = "join")]
        scope: Scope,
        /// How long it is valid (a join token must say; at most a week).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by its id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum SecretAction {
    /// Make or replace a secret from literals and files (at least one).
    Create {
        name: String,
        /// `key=value`; repeatable.
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        /// `key=path` (or `path`: the key is the file's name); repeatable.
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
    /// List secrets: names and keys, never values.
    Ls,
    /// Delete a secret.
    Rm { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    Admin,
    Read,
    Join,
}

#[derive(Clone, Copy, ValueEnum)]
enum NodeAction {
    Cordon,
    Uncordon,
    Drain,
}

#[derive(Clone, Copy, ValueEnum)]
enum RolloutAction {
    Status,
    History,
    Undo,
}

fn client(cli: &Cli) -> Result<ApiClient> {
    let (path, required) = match &cli.config {
        Some(path) => (Some(path.clone()), true),
        None => (tugboat::cli_config::default_config_path(), false),
    };
    let config = match path {
        Some(path) => tugboat::cli_config::read_config_file(&path, required)?,
        None => Default::default(),
    };
    let (addr, token) =
        tugboat::cli_config::resolve(cli.addr.clone(), cli.token.clone(), &config, &cli.data_dir);
    let ca = tugboat::cli_config::resolve_ca(cli.ca.clone(), &config, &cli.data_dir);
    api_client(&addr, token, ca.as_deref())
}

/// Plain HTTP only when asked for (`http://`) or when no CA is known; TLS otherwise.
fn api_client(
    addr: &str,
    token: Option<String>,
    ca: Option<&std::path::Path>,
) -> Result<ApiClient> {
    if addr.starts_with("http://") {
        return Ok(ApiClient::new(addr, token));
    }
    match ca {
        Some(ca) => {
            let ca_pem = std::fs::read_to_string(ca)
                .with_context(|| format!("the cluster CA {}", ca.display()))?;
            let tls = tugboat::tls::ClientTls {
                ca_pem,
                identity_pem: None,
            };
            ApiClient::with_tls(addr, token, &tls).with_context(|| format!("--ca {}", ca.display()))
        }
        None if addr.starts_with("https://") => bail!(
            "{addr}: TLS needs the cluster CA: --ca FILE (the server's <data-dir>/tls/ca.pem), `ca:` in the config file, or --data-dir of the server"
        ),
        None => Ok(ApiClient::new(addr, token)),
    }
}

fn print_data<T: serde::Serialize>(
    value: &T,
    format: OutputFormat,
    table: impl FnOnce() -> String,
) {
    commands::print(value, format, table)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The monitor must stay single-threaded: it runs before any async runtime exists.
    if let Command::Monitor {
        id,
        bundle,
        runtime_root,
        dir,
        log_max_bytes,
        oci_runtime,
        oci_root,
        log_mode,
    } = &cli.command
    {
        let args = tugboat::agent::monitor::MonitorArgs {
            id: id.clone(),
            bundle: bundle.clone(),
            runtime_root: runtime_root.clone(),
            dir: dir.clone(),
            log_max_bytes: *log_max_bytes,
            oci: oci_runtime.clone().zip(oci_root.clone()),
            log_mode: *log_mode,
        };
        return std::process::ExitCode::from(tugboat::agent::monitor::run(&args) as u8);
    }
    if let Command::Nsexec {
        runtime_root,
        id,
        tty,
        console_fd,
        oci_runtime,
        oci_root,
        command,
    } = &cli.command
    {
        let code = tugboat::agent::nsexec::run(&tugboat::agent::nsexec::HelperArgs {
            runtime_root: runtime_root.clone(),
            id: id.clone(),
            tty: *tty,
            console_fd: *console_fd,
            command: command.clone(),
            oci: oci_runtime.clone().zip(oci_root.clone()),
        });
        return std::process::ExitCode::from(code.clamp(0, 255) as u8);
    }
    if let Command::Build { .. } = &cli.command {
        // Before any async runtime: RUN steps start `tug` and hold a netns in a thread.
        return build_image(&cli);
    }
    // `build:` in a spec file: built before the async runtime, as `tugboat build` is.
    let spec_file = match &cli.command {
        Command::Up { file, .. }
        | Command::Apply {
            file,
            dry_run: false,
        } => Some(file),
        _ => None,
    };
    if let Some(file) = spec_file {
        if let Err(e) = build_for_spec(file, &cli.data_dir) {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    // Few blocking threads: the agent's steps are short, and hundreds of threads (one per
    // starting instance) would each keep a malloc arena.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let now = now_ms();
    match &cli.command {
        Command::Server {
            listen,
            store,
            leader_lease_ttl,
            etcd_compaction_interval,
            insecure_no_auth,
            default_deny_ingress,
            profile,
            heartbeat_every,
            node_not_ready_after,
            node_lost_after,
            insecure_plain_http,
            tls_names,
            server_cert_lifetime,
            node_cert_lifetime,
            node_pools,
        } => {
            let mut config = ServerConfig::new(&cli.data_dir, *listen);
            if let Some(path) = node_pools {
                config.node_pools = Some(tugboat::nodepools::PoolsConfig::load(path)?);
            }
            config.backend = store.backend(*leader_lease_ttl)?;
            if let Some(interval) = etcd_compaction_interval {
                if matches!(config.backend, tugboat::server::StoreBackend::Embedded) {
                    bail!("--etcd-compaction-interval is for --store etcd (the embedded store compacts its own log)");
                }
                if interval.is_zero() {
                    bail!(
                        "--etcd-compaction-interval must be longer than 0 (leave it out for none)"
                    );
                }
            }
            config.etcd_compaction_interval = *etcd_compaction_interval;
            config.auth = !insecure_no_auth;
            config.cluster_token = cli.token.clone();
            config.default_deny_ingress = *default_deny_ingress;
            if *insecure_plain_http {
                eprintln!("tugboat server: WARNING: --insecure-plain-http: no TLS; tokens cross the network in clear");
            } else {
                config.tls = Some(tugboat::pki::TlsSettings {
                    names: tls_names.clone(),
                    server_cert_lifetime: *server_cert_lifetime,
                    node_cert_lifetime: *node_cert_lifetime,
                });
            }
            let mut nodes = match profile {
                Profile::Lan => tugboat::controllers::NodeTimers::LAN,
                Profile::Edge => tugboat::controllers::NodeTimers::EDGE,
            };
            let ms = |d: &std::time::Duration| d.as_millis() as u64;
            if let Some(d) = heartbeat_every {
                nodes.heartbeat_every_ms = ms(d);
            }
            if let Some(d) = node_not_ready_after {
                nodes.not_ready_after_ms = ms(d);
            }
            if let Some(d) = node_lost_after {
                nodes.lost_after_ms = ms(d);
            }
            nodes.check().map_err(anyhow::Error::msg)?;
            config.timers.nodes = nodes;
            let server = tugboat::server::start(config)
                .await
                .context("starting the server")?;
            if let Some(tls) = &server.tls {
                eprintln!(
                    "tugboat server: cluster CA {} ({}); nodes join with: tugboat agent --addr https://{} --join-token $(tugboat token create --ttl 1h) --ca-hash {} ...",
                    tls.ca.hash(),
                    cli.data_dir.join("tls/ca.pem").display(),
                    server.addr,
                    tls.ca.hash()
                );
            }
            eprintln!(
                "tugboat server listening on {}://{} (store {}, data dir {}, auth {})",
                if server.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                server.addr,
                server.backend,
                cli.data_dir.display(),
                if server.token.is_some() {
                    "on: token in <data-dir>/token"
                } else {
                    "OFF"
                }
            );
            if matches!(store.store, StoreKind::Embedded) {
                eprintln!("tugboat server: role leader (embedded store: this server runs the controllers)");
            }
            let stop = server.shutdown_handle();
            // Ctrl-C or SIGTERM (systemd's stop): a leader gives up its lease on the way
            // out, so another server takes over at once instead of after the lease's ttl.
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                let _ = stop.send(true);
            });
            server.wait().await;
        }
        Command::Store { action } => match action {
            StoreAction::Export { store, file } => {
                let backend = store.backend(tugboat::election::DEFAULT_LEADER_TTL)?;
                let opened = tugboat::server::open_offline(&cli.data_dir, &backend, false)
                    .await
                    .context("opening the store to export")?;
                let export = tugboat::store::transfer::export(opened.store.as_ref())
                    .await
                    .with_context(|| format!("reading {}", opened.description))?;
                let mut text = serde_json::to_string_pretty(&export)?;
                text.push('\n');
                if file.as_os_str() == "-" {
                    print!("{text}");
                } else {
                    std::fs::write(file, text)
                        .with_context(|| format!("writing {}", file.display()))?;
                }
                eprintln!(
                    "tugboat store export: {} keys from {} at revision {}",
                    export.items.len(),
                    opened.description,
                    export.revision
                );
            }
            StoreAction::Import {
                store,
                file,
                replace,
            } => {
                let backend = store.backend(tugboat::election::DEFAULT_LEADER_TTL)?;
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let export = tugboat::store::transfer::parse_export(&text)
                    .with_context(|| format!("{}", file.display()))?;
                let opened = tugboat::server::open_offline(&cli.data_dir, &backend, true)
                    .await
                    .context("opening the store to import into")?;
                let outcome =
                    tugboat::store::transfer::import(opened.store.as_ref(), &export, *replace)
                        .await
                        .with_context(|| format!("importing into {}", opened.description))?;
                eprintln!(
                    "tugboat store import: {} keys into {}{}",
                    outcome.keys,
                    opened.description,
                    if outcome.replaced > 0 {
                        format!(" (replaced {} keys)", outcome.replaced)
                    } else {
                        String::new()
                    }
                );
            }
        },
        Command::Token { action } => {
            let api = client(&cli)?;
            match action {
                TokenAction::Create {
                    scope,
                    ttl,
                    description,
                } => {
                    let request = tugboat::wire::TokenRequest {
                        scope: match scope {
                            Scope::Admin => tugboat::wire::TokenScope::Admin,
                            Scope::Read => tugboat::wire::TokenScope::Read,
                            Scope::Join => tugboat::wire::TokenScope::Join,
                        },
                        ttl_seconds: ttl.map(|t| t.as_secs().max(1)),
                        description: description.clone(),
                    };
                    let created = api.create_token(&request).await?;
                    print_data(&created, cli.output, || format!("{}\n", created.token));
                }
                TokenAction::Ls => {
                    let list = api.tokens().await?;
                    print_data(&list, cli.output, || output::tokens_table(&list, now));
                }
                TokenAction::Revoke { id } => {
                    api.revoke_token(id).await?;
                    println!("token {id} revoked");
                }
            }
        }
        Command::Secret { action } => {
            let api = client(&cli)?;
            match action {
                SecretAction::Create {
                    name,
                    literals,
                    files,
                } => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let mut data = std::collections::BTreeMap::new();
                    for l in literals {
                        let Some((k, v)) = l.split_once('=') else {
                            bail!("--from-literal {l}: expected key=value");
                        };
                        data.insert(k.to_string(), b64.encode(v));
                    }
                    for f in files {
                        let (k, path) = match f.split_once('=') {
                            Some((k, p)) => (k.to_string(), PathBuf::from(p)),
                            None => {
                                let p = PathBuf::from(f);
                                let k = p
                                    .file_name()
                                    .map(|n| n.to_string_lossy().into_owned())
                                    .with_context(|| format!("--from-file {f}: no file name"))?;
                                (k, p)
                            }
                        };
                        let bytes = std::fs::read(&path)
                            .with_context(|| format!("--from-file {}", path.display()))?;
                        data.insert(k, b64.encode(bytes));
                    }
                    if data.is_empty() {
                        bail!(
                            "secret {name}: give --from-literal key=value or --from-file key=path"
                        );
                    }
                    let info = api
                        .put_secret(&tugboat::wire::SecretRequest {
                            name: name.clone(),
                            data,
                        })
                        .await?;
                    print_data(&info, cli.output, || {
                        format!("secret/{name} ({} keys)\n", info.keys.len())
                    });
                }
                SecretAction::Ls => {
                    let list = api.secrets().await?;
                    print_data(&list, cli.output, || output::secrets_table(&list, now));
                }
                SecretAction::Rm { name } => {
                    api.delete_secret(name).await?;
                    println!("secret/{name} deleted");
                }
            }
        }
        Command::Apply { file, dry_run } => {
            commands::apply(&client(&cli)?, file, &cli.data_dir, cli.output, *dry_run).await?;
        }
        Command::Diff { file } => {
            if commands::diff(&client(&cli)?, file).await? {
                std::process::exit(1);
            }
        }
        Command::Get {
            kind,
            name,
            service,
            watch,
        } => {
            let api = client(&cli)?;
            commands::get(
                &api,
                *kind,
                name.as_deref(),
                service.as_deref(),
                cli.output,
                *watch,
            )
            .await?;
        }
        Command::Describe { kind, name } => {
            let api = client(&cli)?;
            match kind {
                Kind::Services => {
                    let d = api.describe_service(name).await?;
                    // Network policy: the rules resolve against the whole cluster.
                    let network = if d.service.spec.network.is_default() {
                        String::new()
                    } else {
                        let services = api.services().await?.items;
                        let instances = api.instances(None).await?.items;
                        let deny = api
                            .describe_cluster()
                            .await
                            .is_ok_and(|c| c.default_deny_ingress);
                        output::network_text(&d.service.spec, &services, &instances, deny)
                    };
                    print_data(&d, cli.output, || {
                        let text = output::describe_service(&d, now);
                        match text.split_once("\nInstances:\n") {
                            Some((head, rest)) => {
                                format!("{head}\n{network}\nInstances:\n{rest}")
                            }
                            None => text + &network,
                        }
                    });
                }
                Kind::Instances => {
                    let d: tugboat::wire::InstanceDescription = api
                        .call(reqwest::Method::GET, &format!("/v1/instances/{name}"), None)
                        .await?;
                    print_data(&d, cli.output, || output::describe_instance(&d, now));
                }
                Kind::Nodes => {
                    let d: tugboat::wire::NodeDescription = api
                        .call(reqwest::Method::GET, &format!("/v1/nodes/{name}"), None)
                        .await?;
                    print_data(&d, cli.output, || output::describe_node(&d, now));
                }
                Kind::Cluster => {
                    let d = api.describe_cluster().await?;
                    print_data(&d, cli.output, || output::describe_cluster(&d, now));
                }
                Kind::Events => bail!("`describe events`: use `get events [NAME]`"),
                Kind::Servers => {
                    bail!("`describe servers`: use `get servers` or `describe cluster`")
                }
            }
        }
        Command::Delete {
            file: Some(file), ..
        } => commands::delete_file(&client(&cli)?, file, cli.output).await?,
        Command::Delete { kind, name, .. } => {
            let (Some(kind), Some(name)) = (kind, name) else {
                bail!("delete KIND NAME, or delete -f FILE")
            };
            let path = match kind {
                Kind::Services => format!("/v1/services/{name}"),
                Kind::Instances => format!("/v1/instances/{name}"),
                Kind::Nodes => format!("/v1/nodes/{name}"),
                Kind::Events => bail!("events are not deleted: the server keeps the recent ones"),
                Kind::Cluster => bail!("a cluster is not deleted through its API"),
                Kind::Servers => bail!("a server leaves the cluster when it stops"),
            };
            let api = client(&cli)?;
            let answer: serde_json::Value = api.call(reqwest::Method::DELETE, &path, None).await?;
            print_data(&answer, cli.output, || format!("deleted {name}\n"));
        }
        Command::Scale {
            service,
            replicas,
            wait,
            timeout,
        } => {
            let api = client(&cli)?;
            let wait = wait.then_some(*timeout);
            commands::scale(&api, service, *replicas, wait, cli.output).await?;
        }
        Command::Node { action, name } => {
            let verb = match action {
                NodeAction::Cordon => "cordon",
                NodeAction::Uncordon => "uncordon",
                NodeAction::Drain => "drain",
            };
            let api = client(&cli)?;
            let node: tugboat::model::Node = api
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/nodes/{name}/{verb}"),
                    None,
                )
                .await?;
            print_data(&node, cli.output, || {
                let what = match action {
                    NodeAction::Cordon => "cordoned: nothing new is placed on it",
                    NodeAction::Uncordon => "uncordoned: it takes new instances",
                    NodeAction::Drain => {
                        "draining: its instances move to other nodes (`tugboat get instances` shows them)"
                    }
                };
                format!("node/{name} {what}\n")
            });
        }
        Command::Rollout {
            action,
            service,
            timeout,
        } => {
            let api = client(&cli)?;
            match action {
                RolloutAction::Status => commands::rollout_status(&api, service, *timeout).await?,
                RolloutAction::History => {
                    commands::rollout_history(&api, service, cli.output).await?
                }
                RolloutAction::Undo => commands::rollout_undo(&api, service, cli.output).await?,
            }
        }
        Command::Exec {
            interactive,
            tty,
            instance,
            command,
        } if *interactive || *tty => {
            let size = if *tty {
                tugboat::execstream::terminal_size()
            } else {
                None
            };
            let request = tugboat::execstream::ExecRequest {
                command: command.clone(),
                tty: *tty,
                stdin: *interactive,
                rows: size.map(|s| s.0),
                cols: size.map(|s| s.1),
                ..Default::default()
            };
            let stream = client(&cli)?.exec_stream(instance, &request).await?;
            let code = tugboat::execstream::attach(stream, *tty, *interactive)
                .await
                .with_context(|| format!("exec in instance {instance}"))?;
            std::process::exit(code.clamp(0, 255));
        }
        Command::Exec {
            instance, command, ..
        } => {
            let result = client(&cli)?.exec(instance, command).await?;
            print!("{}", result.stdout);
            eprint!("{}", result.stderr);
            if result.exit_code != 0 {
                std::process::exit(result.exit_code.clamp(1, 255));
            }
        }
        Command::Logs {
            target,
            follow,
            tail,
            timestamps,
            previous,
        } => {
            let options = tugboat_api::wire::LogOptions {
                follow: *follow,
                tail: *tail,
                timestamps: *timestamps,
                previous: *previous,
            };
            commands::logs(&client(&cli)?, target, &options).await?
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "tugboat", &mut std::io::stdout());
        }
        Command::Man { dir } => {
            let written =
                tugboat::manpages::write_all(<Cli as clap::CommandFactory>::command(), dir)
                    .with_context(|| format!("writing man pages to {}", dir.display()))?;
            println!("{} man pages in {}", written, dir.display());
        }
        Command::Image { action } => tug_image::cli::run(action.clone(), &cli.data_dir).await?,
        Command::Volume { action } => match action {
            VolumeAction::Ls { local: true } => {
                for (name, users) in tugboat::agent::volumes::list(&cli.data_dir) {
                    println!("{name}\t{}", users.join(","));
                }
            }
            VolumeAction::Rm { name, local: true } => {
                let path = tugboat::agent::volumes::remove(&cli.data_dir, name)?;
                println!("removed volume {name} ({})", path.display());
            }
            VolumeAction::Create {
                name,
                driver,
                size,
                opts,
                access,
                node,
            } => {
                let config = tugboat::spec::VolumeConfig {
                    driver: tugboat::spec::VolumeDriver::parse(driver)
                        .map_err(|e| anyhow::anyhow!("--{e}"))?,
                    size: size.clone(),
                    options: opts.iter().cloned().collect(),
                    access: access
                        .as_deref()
                        .map(tugboat::spec::AccessMode::parse)
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--{e}"))?,
                    node: node.clone(),
                };
                let problems = config.check(name);
                if !problems.is_empty() {
                    bail!("volume {name}: {}", problems.join("; "));
                }
                let volume = client(&cli)?
                    .create_volume(&tugboat::wire::VolumeRequest {
                        name: name.clone(),
                        config,
                    })
                    .await?;
                print_data(&volume, cli.output, || format!("volume/{name} created\n"));
            }
            VolumeAction::Ls { local: false } => {
                let list = client(&cli)?.volumes().await?;
                print_data(&list, cli.output, || output::volumes_table(&list));
            }
            VolumeAction::Describe { name } => {
                let volume = client(&cli)?.volume(name).await?;
                print_data(&volume, cli.output, || {
                    output::describe_volume(&volume, now)
                });
            }
            VolumeAction::Rm { name, local: false } => {
                client(&cli)?.delete_volume(name).await?;
                println!("volume/{name} deleted (its nodes remove its data)");
            }
            VolumeAction::Snapshot {
                name,
                file,
                no_freeze,
            } => commands::volume_snapshot(&client(&cli)?, name, file, !*no_freeze).await?,
            VolumeAction::Restore {
                name,
                input,
                node,
                force,
            } => {
                let restored =
                    commands::volume_restore(&client(&cli)?, name, input, node.as_deref(), *force)
                        .await?;
                print_data(&restored, cli.output, || {
                    format!(
                        "volume/{name} restored on node {}: {} entries, {} bytes\n",
                        restored.node, restored.entries, restored.bytes
                    )
                });
            }
        },
        Command::Top { service } => {
            let list = client(&cli)?.instances(service.as_deref()).await?;
            print_data(&list, cli.output, || output::top_table(&list.items, now));
        }
        Command::Agent {
            node,
            labels,
            subnet,
            address,
            overlay,
            vni,
            api_listen,
            dial_out,
            images,
            import,
            allow_host_paths,
            join_token,
            ca_hash,
            insecure_no_auth,
            reserve,
            log_mode,
        } => {
            // Before anything is started: without its cgroups no instance could ever run.
            tugboat::agent::host_check::check_cgroups()?;
            let mut config = tugboat::agent::AgentConfig::new(node, &cli.data_dir);
            let tls_dir = tugboat::agent::identity::tls_dir(&cli.data_dir);
            let api = if join_token.is_some()
                || tls_dir.join(tugboat::agent::identity::NODE_FILE).exists()
            {
                // A node with a certificate: TLS, no token.
                let addr = cli
                    .addr
                    .clone()
                    .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
                let join = match (join_token, ca_hash) {
                    (Some(token), Some(hash)) => Some(tugboat::agent::identity::JoinSettings {
                        token: token.clone(),
                        ca_hash: hash.clone(),
                    }),
                    (Some(_), None) => bail!(
                        "--join-token needs --ca-hash sha256:... (tugboat describe cluster prints it): a join must know which server it trusts"
                    ),
                    _ => None,
                };
                let mut names = vec!["127.0.0.1".to_string()];
                names.extend(address.map(|a| a.to_string()));
                if !*dial_out && !api_listen.ip().is_unspecified() {
                    names.push(api_listen.ip().to_string());
                }
                let identity = tugboat::agent::identity::ensure(
                    &addr,
                    node,
                    &cli.data_dir,
                    join.as_ref(),
                    &names,
                )
                .await
                .map_err(anyhow::Error::msg)?;
                let api = ApiClient::with_tls(&addr, None, &identity.client)?;
                config.identity = Some(identity);
                api
            } else {
                let api = client(&cli)?;
                config.token = api.token().map(str::to_string);
                api
            };
            config.allow_host_paths = allow_host_paths.clone();
            config.insecure_no_auth = *insecure_no_auth;
            if let Some(text) = reserve {
                config.reserve =
                    tugboat::agent::parse_reserve(text, tugboat::agent::host_capacity())
                        .map_err(anyhow::Error::msg)?;
            }
            config.log_mode = *log_mode;
            config.api_listen = (!*dial_out).then_some(*api_listen);
            config.dial_out = *dial_out;
            config.labels = labels.iter().cloned().collect();
            config.address = address.map(|a| a.to_string());
            config.subnet = subnet
                .parse()
                .with_context(|| format!("--subnet {subnet}"))?;
            config.peer_mode = match (overlay, address) {
                (Overlay::HostGw, _) => tug_netns::PeerMode::HostGw,
                (Overlay::Vxlan | Overlay::Auto, Some(local)) => {
                    if *vni == 0 || *vni >= 1 << 24 {
                        bail!("--vni {vni}: a VXLAN network identifier is 1 to 16777215");
                    }
                    let vxlan = tug_netns::VxlanConfig::new(*vni, *local);
                    match overlay {
                        Overlay::Vxlan => tug_netns::PeerMode::Vxlan(vxlan),
                        _ => tug_netns::PeerMode::Auto(vxlan),
                    }
                }
                (Overlay::Vxlan | Overlay::Auto, None) => {
                    bail!(
                        "--overlay vxlan and auto need --address: the tunnel's source on this node"
                    )
                }
            };
            let images =
                tugboat::agent::images::open_source(&cli.data_dir, images.as_deref(), import)?;
            tugboat::agent::run_until_signal(config, api, images).await?;
        }
        Command::Up {
            file,
            listen,
            node,
            images,
            import,
            deadline,
            log_mode,
        } => {
            let log_mode = *log_mode;
            let config = tugboat::up::UpConfig {
                file: file.clone(),
                data_dir: cli.data_dir.clone(),
                listen: *listen,
                node: node.clone(),
                images: tugboat::agent::images::open_source(
                    &cli.data_dir,
                    images.as_deref(),
                    import,
                )?,
                adjust_agent: Box::new(move |agent| agent.log_mode = log_mode),
                deadline: *deadline,
            };
            tugboat::up::up(config, tugboat::up::interrupted()).await?;
        }
        Command::Monitor { .. } | Command::Nsexec { .. } | Command::Build { .. } => {
            unreachable!("handled before the async runtime starts")
        }
    }
    Ok(())
}

/// Builds the images a spec file's `build:` entries name and the store lacks. A file that
/// does not parse is left to the command itself, which reports it fully.
fn build_for_spec(file: &std::path::Path, data_dir: &std::path::Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    let Ok(spec) = tugboat::spec::parse_spec_file(&file.display().to_string(), &text, &|_| true)
    else {
        return Ok(());
    };
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    tugboat::spec_build::build_missing(&spec, dir, data_dir)?;
    Ok(())
}

/// `tugboat build`: the image lands in the store under --data-dir, as `image import`'s do.
fn build_image(cli: &Cli) -> std::process::ExitCode {
    let Command::Build {
        context,
        tags,
        file,
        build_args,
        target,
        oci,
        quiet,
    } = &cli.command
    else {
        unreachable!("called for build")
    };
    let mut args = std::collections::BTreeMap::new();
    for a in build_args {
        // NAME alone takes the value from the environment, as docker build does.
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(a) {
                Ok(v) => (a.clone(), v),
                Err(_) => continue,
            },
        };
        args.insert(k, v);
    }
    let opts = tug_build::BuildOptions {
        context: context.clone(),
        dockerfile: file.clone(),
        tags: tags.clone(),
        build_args: args,
        target: target.clone(),
        output: oci.clone(),
        data_dir: cli.data_dir.clone(),
        tug: None,
        quiet: *quiet,
    };
    match tug_build::build(&opts) {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            if !quiet {
                eprintln!(
                    "{} layers built, {} from cache; stored as {}",
                    report.layers_built,
                    report.cache_hits,
                    report.references.join(", ")
                );
            }
            println!("{}", report.digest);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
