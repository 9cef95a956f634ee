//! Each HTTP request is parsed into an [`ApiRequest`] before anything else happens.

use super::error::ApiError;
use super::routes::RouteId;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::time::Duration;
use tugboat_api::model::ObjectKind;
use tugboat_api::spec::{ServiceSpec, SpecFile};
use tugboat_api::wire::{
    CertificateRequest, CreateServiceBody, InstanceStatusReport, NodeRegistration, Revision,
    ScaleBody, SecretRequest, TokenRequest, VolumeRequest, VolumeUsageReport, WatchKind,
};

/// Longest a watch waits for a change.
pub const MAX_WATCH: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    Healthz,
    Apply(SpecFile),
    ListServices,
    CreateService(CreateServiceBody),
    GetService {
        name: String,
    },
    ReplaceService {
        name: String,
        spec: ServiceSpec,
    },
    ScaleService {
        name: String,
        replicas: u32,
    },
    DeleteService {
        name: String,
    },
    RolloutStatus {
        name: String,
    },
    RolloutUndo {
        name: String,
    },
    ListInstances {
        service: Option<String>,
        node: Option<String>,
    },
    GetInstance {
        id: String,
    },
    DeleteInstance {
        id: String,
    },
    /// Run by the instance's agent.
    InstanceExec {
        id: String,
        body: serde_json::Value,
    },
    /// Streamed from the instance's agent, not answered with JSON.
    InstanceLogs {
        id: String,
        options: tugboat_api::wire::LogOptions,
    },
    ReportInstanceStatus {
        id: String,
        report: InstanceStatusReport,
    },
    ListNodes,
    RegisterNode(NodeRegistration),
    GetNode {
        name: String,
    },
    DeleteNode {
        name: String,
    },
    Heartbeat {
        name: String,
        beat: tugboat_api::wire::Heartbeat,
    },
    ScheduleNode {
        name: String,
        action: crate::controlplane::NodeScheduling,
    },
    ListEvents {
        kind: Option<ObjectKind>,
        name: Option<String>,
    },
    Watch {
        kind: WatchKind,
        from: Revision,
        timeout: Duration,
        node: Option<String>,
    },
    DescribeCluster,
    ListServers,
    ClusterCa,
    Join(CertificateRequest),
    RenewNodeCertificate {
        name: String,
        request: CertificateRequest,
    },
    ListTokens,
    CreateToken(TokenRequest),
    RevokeToken {
        id: String,
    },
    ListSecrets,
    PutSecret(SecretRequest),
    DeleteSecret {
        name: String,
    },
    InstanceSecrets {
        id: String,
    },
    ListVolumes,
    CreateVolume(VolumeRequest),
    GetVolume {
        name: String,
    },
    DeleteVolume {
        name: String,
    },
    /// The volume's contents as a tar archive, streamed from its node's agent.
    SnapshotVolume {
        name: String,
        /// Pause the volume's users on its node while the archive is written (the default).
        freeze: bool,
    },
    /// A tar archive restored into the volume by its node's agent; the archive is the
    /// request's body, streamed (not read into this enum).
    RestoreVolume {
        name: String,
        /// Where a local volume that is on no node yet is to live.
        node: Option<String>,
        /// Replace what the volume holds.
        force: bool,
    },
    /// A node's measurements of the volumes it has mounted.
    ReportVolumeUsage {
        name: String,
        report: VolumeUsageReport,
    },
    Metrics,
    /// What a node's containers use, from its agent (Prometheus text).
    NodeMetrics {
        name: String,
    },
    /// A dial-out node's agent keeps this stream open ([`super::tunnel`]).
    NodeTunnel {
        name: String,
    },
    /// The agent's connection for one dial of its tunnel.
    NodeTunnelConnection {
        name: String,
        id: String,
    },
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "this request needs a JSON body".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or_default();
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::bad_request(format!(
            "request body: {at}{message} (line {}, column {})",
            inner.line(),
            inner.column()
        ))
    })
}

struct Query<'a> {
    params: &'a HashMap<String, String>,
    allowed: &'static [&'static str],
}

impl<'a> Query<'a> {
    fn new(
        params: &'a HashMap<String, String>,
        allowed: &'static [&'static str],
    ) -> Result<Query<'a>, ApiError> {
        if let Some(unknown) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
            let allowed = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{unknown}`; allowed: {allowed}"
            )));
        }
        Ok(Query { params, allowed })
    }
    fn text(&self, name: &str) -> Option<String> {
        debug_assert!(self.allowed.contains(&name));
        self.params.get(name).cloned()
    }
    fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        tugboat_api::wire::query_flag(name, self.text(name).as_deref(), default)
            .map_err(ApiError::bad_request)
    }
    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.params
            .get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter `{name}` must be a non-negative integer, got `{v}`"
                    ))
                })
            })
            .transpose()
    }
}

fn no_body(bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request("this request takes no body".into()))
    }
}

impl ApiRequest {
    pub fn parse(
        route: RouteId,
        path: &HashMap<String, String>,
        query: &HashMap<String, String>,
        bytes: &[u8],
    ) -> Result<ApiRequest, ApiError> {
        let param = |name: &str| path.get(name).cloned().unwrap_or_default();
        let name = || param("name");
        let id = || param("id");
        let no_query = || Query::new(query, &[]);
        let request = match route {
            RouteId::Healthz => ApiRequest::Healthz,
            RouteId::Apply => ApiRequest::Apply(body(bytes)?),
            RouteId::ListServices => ApiRequest::ListServices,
            RouteId::CreateService => ApiRequest::CreateService(body(bytes)?),
            RouteId::GetService => ApiRequest::GetService { name: name() },
            RouteId::ReplaceService => ApiRequest::ReplaceService {
                name: name(),
                spec: body(bytes)?,
            },
            RouteId::ScaleService => ApiRequest::ScaleService {
                name: name(),
                replicas: body::<ScaleBody>(bytes)?.replicas,
            },
            RouteId::DeleteService => ApiRequest::DeleteService { name: name() },
            RouteId::RolloutStatus => ApiRequest::RolloutStatus { name: name() },
            RouteId::RolloutUndo => ApiRequest::RolloutUndo { name: name() },
            RouteId::ListInstances => {
                let q = Query::new(query, &["service", "node"])?;
                ApiRequest::ListInstances {
                    service: q.text("service"),
                    node: q.text("node"),
                }
            }
            RouteId::GetInstance => ApiRequest::GetInstance { id: id() },
            RouteId::DeleteInstance => ApiRequest::DeleteInstance { id: id() },
            RouteId::InstanceExec => ApiRequest::InstanceExec {
                id: id(),
                body: body(bytes)?,
            },
            RouteId::InstanceLogs => {
                let q = Query::new(query, &tugboat_api::wire::LOG_QUERY)?;
                ApiRequest::InstanceLogs {
                    id: id(),
                    options: tugboat_api::wire::LogOptions::from_query(|name| q.text(name))
                        .map_err(ApiError::bad_request)?,
                }
            }
            RouteId::ReportInstanceStatus => ApiRequest::ReportInstanceStatus {
                id: id(),
                report: body(bytes)?,
            },
            RouteId::ListNodes => ApiRequest::ListNodes,
            RouteId::RegisterNode => ApiRequest::RegisterNode(body(bytes)?),
            RouteId::GetNode => ApiRequest::GetNode { name: name() },
            RouteId::DeleteNode => ApiRequest::DeleteNode { name: name() },
            RouteId::CordonNode => ApiRequest::ScheduleNode {
                name: name(),
                action: crate::controlplane::NodeScheduling::Cordon,
            },
            RouteId::UncordonNode => ApiRequest::ScheduleNode {
                name: name(),
                action: crate::controlplane::NodeScheduling::Uncordon,
            },
            RouteId::DrainNode => ApiRequest::ScheduleNode {
                name: name(),
                action: crate::controlplane::NodeScheduling::Drain,
            },
            RouteId::Heartbeat => ApiRequest::Heartbeat {
                name: name(),
                // An agent of an earlier version sends no body.
                beat: if bytes.is_empty() {
                    Default::default()
                } else {
                    body(bytes)?
                },
            },
            RouteId::ListEvents => {
                let q = Query::new(query, &["kind", "name"])?;
                let kind = q
                    .text("kind")
                    .map(|k| {
                        serde_json::from_value(serde_json::Value::String(k.clone())).map_err(|_| {
                            ApiError::bad_request(format!(
                                "kind `{k}` is not one of service, instance, node, volume"
                            ))
                        })
                    })
                    .transpose()?;
                ApiRequest::ListEvents {
                    kind,
                    name: q.text("name"),
                }
            }
            RouteId::Watch => {
                let q = Query::new(query, &["revision", "timeout_seconds", "node"])?;
                let kind_text = param("kind");
                let kind = WatchKind::parse(&kind_text).ok_or_else(|| {
                    ApiError::not_found(format!(
                        "cannot watch `{kind_text}`: watch services, instances, nodes or events"
                    ))
                })?;
                let timeout =
                    Duration::from_secs(q.number("timeout_seconds")?.unwrap_or(30)).min(MAX_WATCH);
                ApiRequest::Watch {
                    kind,
                    from: q.number("revision")?.unwrap_or(0),
                    timeout,
                    node: q.text("node"),
                }
            }
            RouteId::DescribeCluster => ApiRequest::DescribeCluster,
            RouteId::ListServers => ApiRequest::ListServers,
            RouteId::ClusterCa => ApiRequest::ClusterCa,
            RouteId::Join => ApiRequest::Join(body(bytes)?),
            RouteId::RenewNodeCertificate => ApiRequest::RenewNodeCertificate {
                name: name(),
                request: body(bytes)?,
            },
            RouteId::ListTokens => ApiRequest::ListTokens,
            RouteId::CreateToken => ApiRequest::CreateToken(body(bytes)?),
            RouteId::RevokeToken => ApiRequest::RevokeToken { id: id() },
            RouteId::ListSecrets => ApiRequest::ListSecrets,
            RouteId::PutSecret => ApiRequest::PutSecret(body(bytes)?),
            RouteId::DeleteSecret => ApiRequest::DeleteSecret { name: name() },
            RouteId::InstanceSecrets => ApiRequest::InstanceSecrets { id: id() },
            RouteId::ListVolumes => ApiRequest::ListVolumes,
            RouteId::CreateVolume => ApiRequest::CreateVolume(body(bytes)?),
            RouteId::GetVolume => ApiRequest::GetVolume { name: name() },
            RouteId::DeleteVolume => ApiRequest::DeleteVolume { name: name() },
            RouteId::SnapshotVolume => {
                let q = Query::new(query, &["freeze"])?;
                ApiRequest::SnapshotVolume {
                    name: name(),
                    freeze: q.flag("freeze", true)?,
                }
            }
            RouteId::RestoreVolume => {
                let q = Query::new(query, &["node", "force"])?;
                ApiRequest::RestoreVolume {
                    name: name(),
                    node: q.text("node"),
                    force: q.flag("force", false)?,
                }
            }
            RouteId::ReportVolumeUsage => ApiRequest::ReportVolumeUsage {
                name: name(),
                report: body(bytes)?,
            },
            RouteId::Metrics => ApiRequest::Metrics,
            RouteId::NodeMetrics => ApiRequest::NodeMetrics { name: name() },
            RouteId::NodeTunnel => ApiRequest::NodeTunnel { name: name() },
            RouteId::NodeTunnelConnection => ApiRequest::NodeTunnelConnection {
                name: name(),
                id: id(),
            },
        };
        let takes_body = matches!(
            route,
            RouteId::Apply
                | RouteId::CreateService
                | RouteId::ReplaceService
                | RouteId::ScaleService
                | RouteId::ReportInstanceStatus
                | RouteId::RegisterNode
                | RouteId::InstanceExec
                | RouteId::Heartbeat
                | RouteId::Join
                | RouteId::RenewNodeCertificate
                | RouteId::CreateToken
                | RouteId::PutSecret
                | RouteId::CreateVolume
                | RouteId::ReportVolumeUsage
        );
        if !takes_body {
            no_body(bytes)?;
        }
        if !matches!(
            route,
            RouteId::ListInstances
                | RouteId::ListEvents
                | RouteId::Watch
                | RouteId::InstanceLogs
                | RouteId::RestoreVolume
                | RouteId::SnapshotVolume
        ) {
            no_query()?;
        }
        Ok(request)
    }
}
