//! What crosses the wire between the client, the server and the agents: the bodies of the
//! HTTP API (docs/api.yaml) that are not objects of [`crate::model`] themselves. The server
//! and the agent both depend on this crate and never on each other.

use crate::model::{Event, Instance, Node, Resources, Service, EVENTS, INSTANCES, NODES, SERVICES};
use crate::spec::{ServiceSpec, SpecError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The store's logical clock: raised by one on every successful transaction.
pub type Revision = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// What an agent tells about its host when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    #[serde(default)]
    pub address: Option<String>,
    /// The node's container subnet. Refused when it overlaps another live node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ipnetwork::Ipv4Network>,
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The agent's own API (instance logs), e.g. `http://10.0.0.5:7481`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    /// The OCI runtimes the node has (`tug`, and runc, crun, ... found on its PATH).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<String>,
}

/// A heartbeat's body: what the node sees of its peers (its own direct probes). The server
/// combines it with its own heartbeats: a node is lost only when neither the server nor any
/// peer has reached it for the lost grace, so a link that drops between the server and one
/// node alone does not move that node's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Every peer this node probes, with how long ago its last probe was answered (none:
    /// never since this agent started). Durations, not times: the nodes' clocks may differ.
    #[serde(default)]
    pub peers: Vec<PeerSeen>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSeen {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_ago_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedPhase {
    /// The container runs (restarts in place under its restart policy included).
    Running,
    /// The agent gave up: restart policy exhausted, image missing, ...
    Failed,
}

/// An agent's report on one of its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatusReport {
    /// The reporting node; must be the node the instance is assigned to.
    pub node: String,
    pub phase: ReportedPhase,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub restarts: u32,
    /// Resource use read from the instance's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<crate::model::InstanceStats>,
    /// The instance's container address on the node (once its network is set up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How its container last ended (restarts in place included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<crate::model::LastExit>,
    /// It keeps exiting soon after starting and waits out a growing back-off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crash_looping: bool,
}

/// A consistent list and the revision to watch from (+1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed<T> {
    pub revision: Revision,
    pub items: Vec<T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    Services,
    Instances,
    Nodes,
    Events,
}

impl WatchKind {
    pub fn prefix(self) -> &'static str {
        match self {
            WatchKind::Services => SERVICES,
            WatchKind::Instances => INSTANCES,
            WatchKind::Nodes => NODES,
            WatchKind::Events => EVENTS,
        }
    }
    pub fn parse(text: &str) -> Option<WatchKind> {
        Some(match text {
            "services" => WatchKind::Services,
            "instances" => WatchKind::Instances,
            "nodes" => WatchKind::Nodes,
            "events" => WatchKind::Events,
            _ => return None,
        })
    }
}

/// One change seen by a watch. `object` is null for a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
///
/// `O` is how the object is held: a parsed value for clients; the server sends the stored
/// JSON text as it is (`Box<RawValue>`), without building a value tree per change per poll.
pub struct ObjectChange<O = serde_json::Value> {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub key: String,
    pub revision: Revision,
    pub object: O,
}

/// Changes after a revision. Watch again from `revision + 1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchBatch<O = serde_json::Value> {
    pub revision: Revision,
    pub changes: Vec<ObjectChange<O>>,
}

/// A service with its instances and recent events: `tugboat describe service NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceDescription {
    pub service: Service,
    pub instances: Vec<Instance>,
    pub events: Vec<Event>,
    /// The autoscaler's last decision, in words (autoscaled services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceDescription {
    pub instance: Instance,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeDescription {
    pub node: Node,
    pub instances: Vec<Instance>,
    pub events: Vec<Event>,
}

/// What apply did to each service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyOutcome {
    pub revision: Revision,
    /// service name -> "created" | "updated" | "unchanged"
    pub services: BTreeMap<String, String>,
    /// volume name -> "created" | "unchanged"
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceBody {
    pub name: String,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<SpecError>,
}

/// What a token lets its holder do (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Everything.
    Admin,
    /// Reads: lists, descriptions, events, watches, logs.
    Read,
    /// Only `POST /v1/join`: a node's first certificate.
    Join,
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenScope::Admin => "admin",
            TokenScope::Read => "read",
            TokenScope::Join => "join",
        })
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub scope: TokenScope,
    /// None: does not expire (not allowed for join tokens).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub description: String,
}

/// A token as listed: never its secret, which only its creation shows, once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub scope: TokenScope,
    #[serde(default)]
    pub description: String,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the token itself, `<id>.<secret>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST /v1/join` (with a join token) and `POST /v1/nodes/{name}/certificate` (with the
/// node's certificate): a CSR; the answer is a certificate for the node's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    pub node: String,
    /// PEM.
    pub csr: String,
    /// Addresses the node's own API answers at (put in the certificate).
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateAnswer {
    /// PEM.
    pub certificate: String,
    /// PEM: the cluster CA.
    pub ca: String,
}

/// `GET /v1/cluster/ca`: public, so a joining node can check it against its pinned hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterCa {
    pub ca: String,
    pub hash: String,
}

/// A certificate's name and expiry, for `tugboat describe cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub name: String,
    pub serial: String,
    pub not_after_ms: u64,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterDescription {
    pub tls: bool,
    #[serde(default)]
    pub ca_hash: Option<String>,
    #[serde(default)]
    pub ca: Option<CertificateStatus>,
    #[serde(default)]
    pub server: Option<CertificateStatus>,
    #[serde(default)]
    pub nodes: Vec<CertificateStatus>,
    /// Network policy: services without ingress rules are closed to all but the nodes.
    #[serde(default)]
    pub default_deny_ingress: bool,
    /// The cluster's servers (`GET /v1/servers`).
    #[serde(default)]
    pub servers: Vec<ServerInfo>,
}

/// A `tugboat server` of the cluster: `GET /v1/servers`, `tugboat get servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its host's name.
    pub name: String,
    /// How it names itself in the leader key: `ADDR (pid N, host H)`.
    pub id: String,
    pub api_url: String,
    pub version: String,
    pub started_ms: u64,
    pub role: ServerRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Holds the leader key: runs the controllers, the scheduler and the autoscalers.
    Leader,
    /// Serves the API only.
    Follower,
}

/// `POST /v1/secrets`: a secret's keys and values (base64), made or replaced whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    pub name: String,
    /// Key -> value, base64 (standard alphabet, padded).
    pub data: BTreeMap<String, String>,
}

/// A secret as listed and described: never its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub keys: Vec<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// `GET /v1/instances/{id}/secrets`: the values of the secrets an instance mounts, for the
/// node it is placed on only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSecrets {
    /// Secret name -> key -> value (base64).
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// The protocol a node's tunnel connection switches to (`POST
/// /v1/nodes/{name}/tunnel/{id}`): after the 101, the server speaks HTTP/1.1 as the client
/// and the agent serves its node API on the connection the agent opened.
pub const TUNNEL_PROTOCOL: &str = "tugboat-tunnel";

/// One line of a node's tunnel stream (`GET /v1/nodes/{name}/tunnel`): the server asks the
/// agent to open a connection for the request that waits under `dial`. An empty line is a
/// keep-alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelDial {
    pub dial: String,
}

/// `POST /v1/volumes`: make a volume object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    pub name: String,
    pub config: crate::spec::VolumeConfig,
}

/// `PUT /v1/volumes/{name}/archive`: what a restore wrote, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRestored {
    pub volume: String,
    pub node: String,
    /// Files, directories and links written (the volume's root not counted).
    pub entries: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// A true-or-false query parameter (`true`/`1`/empty, `false`/`0`), `default` when it is
/// absent; the error names it.
pub fn query_flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, String> {
    match value {
        None => Ok(default),
        Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(format!(
            "query parameter `{name}` is true or false, got `{other}`"
        )),
    }
}

/// `GET /v1/volumes/{name}/archive`: the answer's header that names the instances paused
/// while the archive was written (comma-separated, empty when none was).
pub const PAUSED_INSTANCES_HEADER: &str = "tug-paused-instances";

/// What a snapshot wrote, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSnapshot {
    /// Bytes of the archive.
    pub bytes: u64,
    /// The instances on the volume's node paused while it was written.
    pub paused: Vec<String>,
    /// From the answer's first byte (sent once they were paused) to its last (they are
    /// resumed as the archive's end leaves the node): about how long they were paused.
    pub paused_about: std::time::Duration,
}

/// `PUT /v1/nodes/{name}/volumes`: what an agent measured of the volumes it has mounted
/// (sent when it changes; kept in the server's memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeUsageReport {
    pub volumes: Vec<crate::model::VolumeUsage>,
}

/// What `GET /v1/instances/{id}/logs` is asked for (its query string), from the client
/// through the server to the instance's agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep sending what the instance prints (not with `previous`: that run has ended).
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Each line with the time its monitor read it (RFC 3339, UTC, nanoseconds).
    pub timestamps: bool,
    /// The run before the latest one (before the last restart) instead of the whole log.
    pub previous: bool,
}

impl LogOptions {
    /// The query parameters, as the server and the agent read them back with
    /// [`LogOptions::from_query`].
    pub fn to_query(&self) -> String {
        let mut q = format!("follow={}", self.follow);
        if let Some(n) = self.tail {
            q.push_str(&format!("&tail={n}"));
        }
        if self.timestamps {
            q.push_str("&timestamps=true");
        }
        if self.previous {
            q.push_str("&previous=true");
        }
        q
    }

    /// From query parameters (`follow`, `tail`, `timestamps`, `previous`); an error names
    /// the parameter. Others are refused by the caller.
    pub fn from_query(get: impl Fn(&str) -> Option<String>) -> Result<LogOptions, String> {
        let flag = |name: &str| query_flag(name, get(name).as_deref(), false);
        let tail = match get("tail") {
            None => None,
            Some(t) => Some(t.parse().map_err(|_| {
                format!("query parameter `tail` must be a non-negative integer, got `{t}`")
            })?),
        };
        Ok(LogOptions {
            follow: flag("follow")?,
            tail,
            timestamps: flag("timestamps")?,
            previous: flag("previous")?,
        })
    }
}

/// The query parameters [`LogOptions::from_query`] reads.
pub const LOG_QUERY: [&str; 4] = ["follow", "tail", "timestamps", "previous"];

#[cfg(test)]
mod log_options_tests {
    use super::*;

    fn parse(query: &str) -> Result<LogOptions, String> {
        let pairs: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogOptions::from_query(|name| pairs.get(name).cloned())
    }

    #[test]
    fn log_options_cross_the_wire_and_bad_ones_are_named() {
        let all = LogOptions {
            follow: false,
            tail: Some(3),
            timestamps: true,
            previous: true,
        };
        assert_eq!(parse(&all.to_query()), Ok(all));
        assert_eq!(
            parse(&LogOptions::default().to_query()),
            Ok(LogOptions::default())
        );
        assert!(parse("previous=maybe").unwrap_err().contains("`previous`"));
        assert!(parse("tail=-1").unwrap_err().contains("`tail`"));
    }

    #[test]
    fn a_flag_takes_its_default_when_absent_and_names_itself_when_bad() {
        assert_eq!(query_flag("freeze", None, true), Ok(true));
        assert_eq!(query_flag("force", None, false), Ok(false));
        assert_eq!(query_flag("freeze", Some("false"), true), Ok(false));
        assert_eq!(query_flag("force", Some("true"), false), Ok(true));
        let bad = query_flag("freeze", Some("yes"), true).unwrap_err();
        assert!(bad.contains("`freeze`") && bad.contains("`yes`"), "{bad}");
    }
}
