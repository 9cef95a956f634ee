//! The spec file: what a person writes to describe services (docs/spec.md).
//!
//! Types here are the desired state as written; [`validate`] checks what serde cannot, and
//! [`file`] reads a YAML or JSON file into a [`SpecFile`] with errors that name the file,
//! line and field.

pub mod file;
pub mod locate;
pub mod priority;
pub mod units;
pub mod validate;
pub mod volume;

pub use file::{parse_spec_file, SpecFileError};
pub use priority::Priority;
pub use units::{human_bytes, human_cpu, Cpu, Memory, Percent, Port, UpdateCount};
pub use validate::{validate_services, SpecError};
pub use volume::{AccessMode, VolumeConfig, VolumeDriver};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Does an image reference name a registry host (`host.domain/...`, `host:port/...`,
/// `localhost/...`)? Only those are pulled by an agent; short names (`shop/front:1`,
/// `busybox`) must be in the node's image store (imported or built).
pub fn names_a_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((host, _)) => host.contains('.') || host.contains(':') || host == "localhost",
        None => false,
    }
}

/// A whole spec file: services by name, in the spirit of compose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Volume objects by name (docs/volumes.md), made before the services that mount them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, VolumeConfig>,
}

/// One service: a template for identical instances, and how many of them to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub image: String,
    /// Build `image` from a Dockerfile when the image store lacks it (compose's `build:`):
    /// done by the command line (`tugboat up`, `tugboat apply`) into the image store under
    /// its --data-dir, before the spec goes to the server, which never sees this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesSpec,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub health: HealthSpec,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub update: UpdateSpec,
    #[serde(default)]
    pub placement: PlacementSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How the agent stops an instance.
    #[serde(default, skip_serializing_if = "StopSpec::is_default")]
    pub stop: StopSpec,
    /// What becomes of the instances of a node that is lost.
    #[serde(default, skip_serializing_if = "RescheduleSpec::is_default")]
    pub reschedule: RescheduleSpec,
    /// What the container may do on its host (docs/security.md).
    #[serde(default, skip_serializing_if = "SecuritySpec::is_default")]
    pub security: SecuritySpec,
    /// Secrets (`tugboat secret create`) mounted as files, read-only, from a tmpfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretMount>,
    /// The OCI runtime: `tug` (default), or one with runc's command line by name on the
    /// node's PATH (`runc`, `crun`, `runsc`) or by absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Replicas set by usage, between `min` and `max` (then `replicas` is only the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// Who gives way when nodes are full: an instance may evict strictly lower ones.
    #[serde(default, skip_serializing_if = "Priority::is_default")]
    pub priority: Priority,
    /// Who may connect to the instances and where they may connect (network policy).
    /// Applied by every node without restarting anything: not part of the template.
    #[serde(default, skip_serializing_if = "NetworkPolicySpec::is_default")]
    pub network: NetworkPolicySpec,
}

/// A service's network policy (docs/spec.md, "network"): once a direction has a list, only
/// what a rule of it allows passes (an empty list: nothing). Without one, that direction is
/// open, unless the cluster denies ingress by default (`tugboat server
/// --default-deny-ingress`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

impl NetworkPolicySpec {
    pub fn is_default(&self) -> bool {
        *self == NetworkPolicySpec::default()
    }
}

/// Connections to the instances from `from` (anyone when absent) on `ports` of the
/// instances (every port when empty), TCP and UDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PeerSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// Connections from the instances to `to` (anywhere when absent) on `ports` there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<PeerSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// The other end of a rule: exactly one of the instances of a service, the instances of
/// every service whose labels include these, or an address range (outside the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<ipnetwork::Ipv4Network>,
}

impl PeerSpec {
    /// Are the instances of service `name` (with `labels`) among this peer's? A range
    /// names no service.
    pub fn matches_service(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if let Some(s) = &self.service {
            return s == name;
        }
        !self.labels.is_empty() && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl std::fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.service {
            write!(f, "service {s}")
        } else if let Some(c) = &self.cidr {
            write!(f, "{c}")
        } else {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, "labels {}", l.join(","))
        }
    }
}

/// Replica autoscaling on usage against requests, in the manner of Kubernetes' HPA
/// (docs/spec.md): a tolerance band, a scale-down stabilization window, bounded steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    pub min: u32,
    pub max: u32,
    pub target: AutoscaleTarget,
    #[serde(default = "ScaleUpSpec::default")]
    pub scale_up: ScaleUpSpec,
    #[serde(default = "ScaleDownSpec::default")]
    pub scale_down: ScaleDownSpec,
}

/// Average use over ready instances, in % of what each requests; several: the largest
/// recommendation wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Percent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUpSpec {
    /// At most this many instances added per period.
    #[serde(default = "four")]
    pub max_step: u32,
    #[serde(default = "fifteen")]
    pub period_seconds: u32,
}

impl Default for ScaleUpSpec {
    fn default() -> Self {
        ScaleUpSpec {
            max_step: 4,
            period_seconds: 15,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDownSpec {
    /// Scale down to the highest recommendation of this window only: no flapping.
    #[serde(default = "three_hundred")]
    pub stabilization_seconds: u32,
    #[serde(default = "one")]
    pub max_step: u32,
    #[serde(default = "sixty")]
    pub period_seconds: u32,
}

impl Default for ScaleDownSpec {
    fn default() -> Self {
        ScaleDownSpec {
            stabilization_seconds: 300,
            max_step: 1,
            period_seconds: 60,
        }
    }
}

fn four() -> u32 {
    4
}
fn fifteen() -> u32 {
    15
}
fn sixty() -> u32 {
    60
}
fn three_hundred() -> u32 {
    300
}

/// `build: DIR` or `build: {context: DIR, dockerfile: FILE, args: {K: V}, target: STAGE}`;
/// a relative DIR is taken from the spec file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BuildSource", into = "BuildSource")]
pub struct BuildSpec {
    pub context: String,
    pub dockerfile: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

/// How `build:` may be written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum BuildSource {
    Context(String),
    Full {
        context: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dockerfile: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        args: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
}

impl From<BuildSource> for BuildSpec {
    fn from(source: BuildSource) -> BuildSpec {
        match source {
            BuildSource::Context(context) => BuildSpec {
                context,
                dockerfile: None,
                args: BTreeMap::new(),
                target: None,
            },
            BuildSource::Full {
                context,
                dockerfile,
                args,
                target,
            } => BuildSpec {
                context,
                dockerfile,
                args,
                target,
            },
        }
    }
}

impl From<BuildSpec> for BuildSource {
    fn from(spec: BuildSpec) -> BuildSource {
        BuildSource::Full {
            context: spec.context,
            dockerfile: spec.dockerfile,
            args: spec.args,
            target: spec.target,
        }
    }
}

impl SpecFile {
    /// The file as the server gets it: `build:` is the command line's business.
    pub fn without_build(&self) -> SpecFile {
        let mut file = self.clone();
        for spec in file.services.values_mut() {
            spec.build = None;
        }
        file
    }
}

/// A secret in the container: a directory with one file per key, at `target` (default
/// `/run/secrets/<secret>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMount {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl SecretMount {
    pub fn target(&self) -> String {
        self.target
            .clone()
            .unwrap_or_else(|| format!("/run/secrets/{}", self.secret))
    }
}

/// Docker's default capability set: what an instance's processes hold unless the spec's
/// `security.cap_add`/`cap_drop` change it (moby's `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// The seccomp filter an instance runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The runtime's default profile (`tug spec`'s): keyrings, modules, mounts, ptrace,
    /// clocks, BPF, perf and the like answer EPERM.
    #[default]
    Default,
    /// No filter, as Docker's `--security-opt seccomp=unconfined`.
    Unconfined,
}

/// An instance's privileges. The defaults are Docker's: its capability set, its kind of
/// seccomp filter, no_new_privs, /proc's sensitive paths masked or read-only; the spec can
/// only narrow them, except `cap_add` and `seccomp: unconfined`, which say so in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// Capabilities added to the default set (`NET_ADMIN` or `CAP_NET_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities taken from it (`ALL` drops every one, then `cap_add` adds back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default_seccomp")]
    pub seccomp: SeccompMode,
    /// The root filesystem mounted read-only (volumes and /tmp-like mounts stay writable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
    /// `uid`, `uid:gid`, or names from the image's /etc/passwd and /etc/group: replaces the
    /// image's USER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A user namespace of the instance's own: its root (and every id up to 65535) is an
    /// unprivileged range of the node's ids, different for every instance; the image, the
    /// volumes and the files the agent gives it are idmapped so they look as usual inside.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_namespace: bool,
}

fn is_default_seccomp(mode: &SeccompMode) -> bool {
    *mode == SeccompMode::Default
}

impl SecuritySpec {
    pub fn is_default(&self) -> bool {
        *self == SecuritySpec::default()
    }

    /// The capability set after `cap_drop` then `cap_add`, each name as `CAP_X`, sorted.
    pub fn capabilities(&self) -> Vec<String> {
        let mut set: std::collections::BTreeSet<String> =
            DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        for c in &self.cap_drop {
            if c.eq_ignore_ascii_case("ALL") {
                set.clear();
            } else {
                set.remove(&capability_name(c));
            }
        }
        for c in &self.cap_add {
            if c.eq_ignore_ascii_case("ALL") {
                set.extend(ALL_CAPABILITIES.iter().map(|c| c.to_string()));
            } else {
                set.insert(capability_name(c));
            }
        }
        set.into_iter().collect()
    }
}

/// `net_admin`, `NET_ADMIN` or `CAP_NET_ADMIN` as `CAP_NET_ADMIN`.
pub fn capability_name(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// Every capability Linux 6.x knows, by name.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// The instances of a lost node (neither the server nor any peer reached it for the
/// server's lost grace): replaced on other nodes after `after_seconds`, or (`replace:
/// false`) kept for their node, as for a service tied to a device there. A lost instance
/// stays on record until its replacement is ready: when its node returns first, it runs on
/// and the replacement not yet ready is removed; when the replacement is ready first, the
/// node stops its old copy on return. Like Nomad's `disconnect` block, and like its
/// `replace`, `lost_after` and reconcile settings, without a copy left running twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescheduleSpec {
    #[serde(default = "yes")]
    pub replace: bool,
    #[serde(default)]
    pub after_seconds: u32,
}

impl Default for RescheduleSpec {
    fn default() -> Self {
        RescheduleSpec {
            replace: true,
            after_seconds: 0,
        }
    }
}

impl RescheduleSpec {
    pub fn is_default(&self) -> bool {
        *self == RescheduleSpec::default()
    }
}

/// Stopping an instance: `signal` to its main process, then SIGKILL to all its processes
/// after `grace_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    #[serde(default = "default_stop_signal")]
    pub signal: String,
    #[serde(default = "default_grace")]
    pub grace_seconds: u32,
}

fn default_stop_signal() -> String {
    "TERM".into()
}
fn default_grace() -> u32 {
    10
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            signal: default_stop_signal(),
            grace_seconds: default_grace(),
        }
    }
}

impl StopSpec {
    pub fn is_default(&self) -> bool {
        *self == StopSpec::default()
    }
}

fn one() -> u32 {
    1
}

/// Requests are what the scheduler reserves; limits are what the runtime enforces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default)]
    pub requests: ResourceAmounts,
    #[serde(default)]
    pub limits: ResourceAmounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Disk I/O on the device that holds the instance's rootfs and volumes: rates in
    /// `limits`, a `weight` in `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoAmounts>,
}

/// Disk I/O: bytes/s (`5M`, `10Mi`) and operations/s per direction, or a relative weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
    /// 10 to 1000 (requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A container port, optionally published on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub container: Port,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Port>,
    #[serde(default)]
    pub protocol: Protocol,
    /// `host` (default): the instance's own port on its node, exclusive per node.
    /// `ingress`: the service's port on every node, balanced over its ready instances.
    #[serde(default, skip_serializing_if = "PublishMode::is_host")]
    pub mode: PublishMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    #[default]
    Host,
    Ingress,
}

impl PublishMode {
    pub fn is_host(&self) -> bool {
        *self == PublishMode::Host
    }
}

impl PortSpec {
    /// The host port this instance holds on its node (host mode only).
    pub fn host_port(&self) -> Option<u16> {
        self.published
            .filter(|_| self.mode == PublishMode::Host)
            .map(|p| p.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A path on the host, bind-mounted.
    Bind,
    /// A named volume that lives on one node.
    Volume,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    #[serde(rename = "type")]
    pub kind: VolumeKind,
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
}

/// One health check. Exactly one of `exec`, `http`, `tcp` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    #[serde(default)]
    pub initial_delay_seconds: u32,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "one")]
    pub success_threshold: u32,
}

fn default_interval() -> u32 {
    10
}
fn default_timeout() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: Port,
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// What the agent does when a container exits; `limit` only with `on-failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// How a change of the template rolls out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    #[serde(default = "one_instance")]
    pub max_surge: UpdateCount,
    #[serde(default = "no_instance")]
    pub max_unavailable: UpdateCount,
    /// A rollout with no new instance becoming ready for this long is rolled back.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: u32,
}

fn one_instance() -> UpdateCount {
    UpdateCount::Absolute(1)
}
fn no_instance() -> UpdateCount {
    UpdateCount::Absolute(0)
}

impl UpdateSpec {
    /// (max surge, max unavailable) in instances for `replicas`. Should both come to 0 (a
    /// percentage of few replicas), one may be unavailable, or no rollout could progress.
    pub fn bounds(&self, replicas: u32) -> (u32, u32) {
        let surge = self.max_surge.resolve(replicas, true);
        let unavailable = self.max_unavailable.resolve(replicas, false);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

fn default_progress_deadline() -> u32 {
    600
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            max_surge: one_instance(),
            max_unavailable: no_instance(),
            progress_deadline_seconds: default_progress_deadline(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoringStrategy {
    /// Fill the fullest node that fits: fewer nodes busy.
    #[default]
    Binpack,
    /// Prefer the emptiest node.
    Spread,
    /// Prefer the node whose CPU and memory use stay closest to each other.
    Balanced,
}

/// Where a service may run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Node labels that must match exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Run on nodes that already run these services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<AffinityRule>,
    /// Avoid nodes that already run these services (name the service itself to spread replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<AffinityRule>,
    /// Spread instances evenly across the values of this node label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    #[serde(default)]
    pub strategy: ScoringStrategy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A rule on one node label, in the style of Kubernetes node selectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub key: String,
    pub operator: ConstraintOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.operator {
            ConstraintOperator::In if self.values.len() == 1 => {
                write!(f, "{}={}", self.key, self.values[0])
            }
            ConstraintOperator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            ConstraintOperator::NotIn => {
                write!(f, "{} not in ({})", self.key, self.values.join(","))
            }
            ConstraintOperator::Exists => write!(f, "{} exists", self.key),
            ConstraintOperator::DoesNotExist => write!(f, "{} does not exist", self.key),
        }
    }
}

/// Affinity to another service. `required: false` only prefers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityRule {
    pub service: String,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

impl ServiceSpec {
    /// A minimal spec, for tests and examples.
    pub fn new(image: &str) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            build: None,
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            resources: ResourcesSpec::default(),
            replicas: 1,
            ports: vec![],
            volumes: vec![],
            health: HealthSpec::default(),
            restart: RestartSpec::default(),
            update: UpdateSpec::default(),
            placement: PlacementSpec::default(),
            labels: BTreeMap::new(),
            stop: StopSpec::default(),
            reschedule: RescheduleSpec::default(),
            security: SecuritySpec::default(),
            secrets: vec![],
            runtime: None,
            autoscale: None,
            priority: Priority::NORMAL,
            network: NetworkPolicySpec::default(),
        }
    }

    /// A hash of everything that defines an instance (all but replicas): instances made from
    /// an older template are replaced by a rollout; a change of replicas alone is a scale.
    pub fn template_hash(&self) -> String {
        let mut template = self.clone();
        template.replicas = 0;
        // Like replicas, the reschedule and autoscale policies are the service's, not its
        // instances'.
        template.reschedule = RescheduleSpec::default();
        template.autoscale = None;
        // Network policy is applied by the nodes to running instances.
        template.network = NetworkPolicySpec::default();
        let bytes = serde_json::to_vec(&template).expect("a spec always serializes");
        // FNV-1a, 64 bits: stable across runs and versions, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}
