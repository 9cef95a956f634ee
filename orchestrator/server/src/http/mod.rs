//! The HTTP API under /v1: JSON in and out, bearer-token auth, bounded bodies. Requests are
//! parsed into [`ApiRequest`] first; [`handle`] works on that type only. The dashboard's
//! static files ([`ui`]) are served beside it, at /ui.

mod archive;
pub mod auth;
pub mod error;
mod forward;
pub mod metrics;
pub mod request;
pub mod routes;
pub mod tunnel;
pub mod ui;

pub use error::ApiError;
pub use request::ApiRequest;
pub use routes::{routes, Route, RouteId};

use crate::controlplane::ControlPlane;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, RawPathParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest request body accepted (a spec file of many services fits with room to spare).
pub const MAX_BODY_BYTES: usize = 4 << 20;

pub struct ApiState {
    pub control: Arc<ControlPlane>,
    /// The admin token. None: authentication explicitly disabled.
    pub token: Option<String>,
    /// The cluster's TLS (CA, the server's certificate); None: plain HTTP.
    pub tls: Option<Arc<crate::pki::ServerTls>>,
    /// The key secrets are sealed with in the store.
    pub secrets: Arc<crate::controlplane::secrets::SecretBox>,
    /// The API's request counters and latencies (`GET /metrics`).
    pub metrics: Arc<metrics::ApiMetrics>,
    /// The tunnels of dial-out nodes ([`tunnel`]).
    pub tunnels: Arc<tunnel::Tunnels>,
    /// Network policy: services without ingress rules take no connections
    /// (`--default-deny-ingress`); the agents read it from `GET /v1/cluster`.
    pub default_deny_ingress: bool,
    /// This server, and where the others are listed (`GET /v1/servers`).
    pub servers: Arc<crate::servers::ServerRegistry>,
}

impl ApiState {
    /// The client for agents' APIs: over TLS, it trusts only the cluster CA and shows the
    /// server's certificate.
    fn agent_client(&self) -> reqwest::Client {
        self.tls
            .as_ref()
            .map_or_else(reqwest::Client::new, |t| t.agent_client())
    }

    /// An agent API request, with the admin token only for an agent in plain HTTP (`tugboat
    /// up`'s, or a cluster without TLS): one over TLS knows the server by its certificate,
    /// and a node never holds the admin token.
    fn to_agent(&self, request: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) if url.starts_with("http://") => request.bearer_auth(token),
            _ => request,
        }
    }
}

fn method_filter(method: &axum::http::Method) -> MethodFilter {
    match method.as_str() {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        other => unreachable!("no route uses {other}"),
    }
}

/// The router, built from [`routes()`].
pub fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new();
    for route in routes() {
        let id = route.id;
        let path_template = route.path;
        let method = route.method.clone();
        let handler = move |State(state): State<Arc<ApiState>>,
                            peer: Option<axum::Extension<tugboat_api::tls::PeerCert>>,
                            headers: HeaderMap,
                            params: RawPathParams,
                            query: Result<Query<HashMap<String, String>>, QueryRejection>,
                            upgrade: tugboat_api::execstream::Upgrade,
                            request_body: axum::body::Body| async move {
            let path: HashMap<String, String> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let query = match query {
                Ok(q) => q.0,
                Err(e) => {
                    return ApiError::bad_request(format!("malformed query string: {e}"))
                        .into_response()
                }
            };
            let peer = peer.map(|p| p.0);
            let call = Call {
                id,
                method: &method,
                headers: &headers,
                peer: peer.as_ref(),
            };
            let started = std::time::Instant::now();
            // A restore's archive streams on to the agent; every other body is read whole,
            // up to the limit.
            let body = if id == RouteId::RestoreVolume {
                RequestBody::Stream(request_body)
            } else {
                RequestBody::Read(axum::body::to_bytes(request_body, MAX_BODY_BYTES).await)
            };
            let response = dispatch(&state, call, &path, &query, upgrade, body).await;
            state.metrics.observe(
                path_template,
                method.as_str(),
                response.status().as_u16(),
                started.elapsed(),
            );
            response
        };
        router = router.route(route.path, on(method_filter(&route.method), handler));
    }
    router
        .merge(ui::router())
        .fallback(|| async {
            ApiError::not_found(
                "no such endpoint; the API is described in docs/api.yaml (paths under /v1)".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method; see docs/api.yaml".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .with_state(state)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "request body is larger than the {} MiB limit",
            MAX_BODY_BYTES >> 20
        ),
    )
}

/// Refuse a body whose declared length is over the limit before reading any of it; bodies
/// without a length are cut off by [`DefaultBodyLimit`] as they stream in.
async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let archive = request.method() == axum::http::Method::PUT
        && request.uri().path().starts_with("/v1/volumes/")
        && request.uri().path().ends_with("/archive");
    if archive {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large().into_response();
    }
    next.run(request).await
}

/// A request's body: read whole, or left to stream (a volume archive being restored).
enum RequestBody {
    Read(Result<Bytes, axum::Error>),
    Stream(axum::body::Body),
}

/// Whether reading a body failed because it passed [`MAX_BODY_BYTES`].
fn over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What a request is, apart from its path, query and body.
struct Call<'a> {
    id: RouteId,
    method: &'a axum::http::Method,
    headers: &'a HeaderMap,
    peer: Option<&'a tugboat_api::tls::PeerCert>,
}

async fn dispatch(
    state: &ApiState,
    call: Call<'_>,
    path: &HashMap<String, String>,
    query: &HashMap<String, String>,
    upgrade: tugboat_api::execstream::Upgrade,
    body: RequestBody,
) -> Response {
    let (id, headers) = (call.id, call.headers);
    let caller = if auth::open_route(id) {
        None
    } else {
        match auth::identify(state, headers, call.peer).await {
            Ok(caller) => Some(caller),
            Err(e) => return e.into_response(),
        }
    };
    let (body, stream) = match body {
        RequestBody::Read(Ok(body)) => (body, None),
        RequestBody::Read(Err(e)) if over_limit(&e) => return too_large().into_response(),
        RequestBody::Read(Err(e)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("cannot read the request body: {e}"),
            )
            .into_response();
        }
        RequestBody::Stream(stream) => (Bytes::new(), Some(stream)),
    };
    let request = ApiRequest::parse(id, path, query, &body);
    if let (Some(caller), Ok(request)) = (&caller, &request) {
        if let Err(e) = auth::permit(state, caller, call.method, request).await {
            return e.into_response();
        }
    }
    match request {
        Ok(ApiRequest::Metrics) => match metrics::render(&state.control, &state.metrics).await {
            Ok(text) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e).into_response()
            }
        },
        Ok(
            request @ (ApiRequest::DescribeCluster
            | ApiRequest::ListServers
            | ApiRequest::ClusterCa
            | ApiRequest::Join(_)
            | ApiRequest::RenewNodeCertificate { .. }
            | ApiRequest::ListTokens
            | ApiRequest::CreateToken(_)
            | ApiRequest::RevokeToken { .. }
            | ApiRequest::ListSecrets
            | ApiRequest::PutSecret(_)
            | ApiRequest::DeleteSecret { .. }
            | ApiRequest::InstanceSecrets { .. }),
        ) => match handle_access(state, request).await {
            Ok(value) => (StatusCode::OK, Json(value)).into_response(),
            Err(e) => e.into_response(),
        },
        Ok(ApiRequest::InstanceExec { id, body })
            if tugboat_api::execstream::wants_stream(headers) =>
        {
            match forward::exec_stream(state, &id, body, upgrade.0).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
        Ok(ApiRequest::InstanceExec { id, body }) => match forward::exec(state, &id, body).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        Ok(ApiRequest::SnapshotVolume { name, freeze }) => {
            match archive::snapshot(state, &name, freeze).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
        Ok(ApiRequest::RestoreVolume { name, node, force }) => {
            let stream = stream.expect("a restore's body streams");
            match archive::restore(state, &name, node.as_deref(), force, stream).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
        Ok(ApiRequest::NodeMetrics { name }) => match forward::node_metrics(state, &name).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        Ok(ApiRequest::InstanceLogs { id, options }) => {
            match forward::logs(state, &id, options).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
        Ok(ApiRequest::NodeTunnel { name }) => {
            // Only a registered node has a tunnel (a made-up name would hold a stream open).
            if let Err(e) = state.control.get_node(&name).await {
                return ApiError::from(e).into_response();
            }
            let stream = state.tunnels.open(&name);
            (
                [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
                tunnel::body(stream),
            )
                .into_response()
        }
        Ok(ApiRequest::NodeTunnelConnection { name, id }) => {
            let Some(upgrade) = upgrade.0 else {
                return ApiError::bad_request(format!(
                    "a tunnel connection must ask to upgrade to {}",
                    tunnel::TUNNEL_PROTOCOL
                ))
                .into_response();
            };
            match state.tunnels.accept(&name, &id) {
                Ok(reply) => {
                    tokio::spawn(async move {
                        if let Ok(io) = upgrade.await {
                            let _ = reply.send(io);
                        }
                    });
                    tugboat_api::execstream::switching_to(tunnel::TUNNEL_PROTOCOL)
                }
                Err(e) => e.into_response(),
            }
        }
        Ok(request) => match handle(&state.control, request).await {
            Ok((status, value)) => (status, Json(value)).into_response(),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

fn json<T: Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).expect("API responses always serialize")
}

fn no_tls() -> ApiError {
    ApiError::bad_request(
        "this server runs without TLS (--insecure-plain-http): it has no CA and issues no certificates"
            .into(),
    )
}

/// A node's name or address for its certificate: a DNS name or an IP address.
fn check_cert_names(request: &tugboat_api::wire::CertificateRequest) -> Result<(), ApiError> {
    if !tugboat_api::spec::validate::is_dns_label(&request.node) {
        return Err(ApiError::bad_request(format!(
            "node: `{}` is not a valid node name (a DNS label)",
            request.node
        )));
    }
    for (i, a) in request.addresses.iter().enumerate() {
        let dns = !a.is_empty()
            && a.len() <= 253
            && a.split('.').all(tugboat_api::spec::validate::is_dns_label);
        if a.parse::<std::net::IpAddr>().is_err() && !dns {
            return Err(ApiError::bad_request(format!(
                "addresses[{i}]: `{a}` is neither an IP address nor a DNS name"
            )));
        }
    }
    Ok(())
}

/// Signs a node's CSR and records the certificate (a join refuses a taken name).
async fn issue_node_cert(
    state: &ApiState,
    request: &tugboat_api::wire::CertificateRequest,
    join: bool,
) -> Result<serde_json::Value, ApiError> {
    let tls = state.tls.as_ref().ok_or_else(no_tls)?;
    check_cert_names(request)?;
    let mut names = vec![request.node.clone()];
    names.extend(request.addresses.iter().cloned());
    let pem = tls
        .ca
        .sign_csr(
            &request.csr,
            &tugboat_api::tls::Issue {
                common_name: &request.node,
                names: &names,
                lifetime: tls.settings.node_cert_lifetime,
            },
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let info = tugboat_api::tls::cert_info(&pem)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    state
        .control
        .record_node_cert(&request.node, &info.serial, info.not_after_ms, join)
        .await?;
    Ok(json(tugboat_api::wire::CertificateAnswer {
        certificate: pem,
        ca: tls.ca.pem().to_string(),
    }))
}

/// Tokens, certificates and the cluster's identity.
async fn handle_access(
    state: &ApiState,
    request: ApiRequest,
) -> Result<serde_json::Value, ApiError> {
    let cp = &state.control;
    match request {
        ApiRequest::ClusterCa => {
            let tls = state.tls.as_ref().ok_or_else(no_tls)?;
            Ok(json(tugboat_api::wire::ClusterCa {
                ca: tls.ca.pem().to_string(),
                hash: tls.ca.hash(),
            }))
        }
        ApiRequest::DescribeCluster => {
            let nodes = cp
                .node_certs()
                .await?
                .into_iter()
                .map(|r| tugboat_api::wire::CertificateStatus {
                    name: r.name,
                    serial: r.serials.last().cloned().unwrap_or_default(),
                    not_after_ms: r.not_after_ms,
                })
                .collect();
            Ok(json(tugboat_api::wire::ClusterDescription {
                tls: state.tls.is_some(),
                ca_hash: state.tls.as_ref().map(|t| t.ca.hash()),
                ca: state.tls.as_ref().map(|t| t.ca_status()),
                server: state.tls.as_ref().map(|t| t.server_status()),
                nodes,
                default_deny_ingress: state.default_deny_ingress,
                servers: list_servers(state).await?,
            }))
        }
        ApiRequest::ListServers => Ok(json(list_servers(state).await?)),
        ApiRequest::Join(request) => issue_node_cert(state, &request, true).await,
        ApiRequest::RenewNodeCertificate { name, request } => {
            if name != request.node {
                return Err(ApiError::bad_request(format!(
                    "node: `{}` in the body, `{name}` in the path",
                    request.node
                )));
            }
            issue_node_cert(state, &request, false).await
        }
        ApiRequest::ListTokens => Ok(json(cp.list_tokens().await?)),
        ApiRequest::CreateToken(request) => Ok(json(cp.create_token(request).await?)),
        ApiRequest::RevokeToken { id } => {
            cp.revoke_token(&id).await?;
            Ok(serde_json::json!({"deleted": id}))
        }
        ApiRequest::ListSecrets => Ok(json(cp.list_secrets().await?)),
        ApiRequest::PutSecret(request) => Ok(json(cp.put_secret(&state.secrets, request).await?)),
        ApiRequest::DeleteSecret { name } => {
            cp.delete_secret(&name).await?;
            Ok(serde_json::json!({"deleted": name}))
        }
        ApiRequest::InstanceSecrets { id } => {
            Ok(json(cp.instance_secrets(&state.secrets, &id).await?))
        }
        other => unreachable!("not an access request: {other:?}"),
    }
}

/// Carry out one typed request.
pub async fn handle(
    cp: &ControlPlane,
    request: ApiRequest,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let ok = |v| Ok((StatusCode::OK, v));
    match request {
        ApiRequest::Healthz => ok(serde_json::json!({"status": "ok"})),
        ApiRequest::Apply(file) => ok(json(cp.apply(file).await?)),
        ApiRequest::ListServices => ok(json(cp.list_services().await?)),
        ApiRequest::CreateService(body) => Ok((
            StatusCode::CREATED,
            json(cp.create_service(&body.name, body.spec).await?),
        )),
        ApiRequest::GetService { name } => ok(json(cp.describe_service(&name).await?)),
        ApiRequest::ReplaceService { name, spec } => {
            ok(json(cp.replace_service(&name, spec).await?))
        }
        ApiRequest::ScaleService { name, replicas } => {
            ok(json(cp.scale_service(&name, replicas).await?))
        }
        ApiRequest::DeleteService { name } => {
            cp.delete_service(&name).await?;
            ok(serde_json::json!({"deleted": name}))
        }
        ApiRequest::RolloutStatus { name } => ok(json(cp.rollout_status(&name).await?)),
        ApiRequest::RolloutUndo { name } => ok(json(cp.undo_rollout(&name).await?)),
        ApiRequest::ListInstances { service, node } => ok(json(
            cp.list_instances(service.as_deref(), node.as_deref())
                .await?,
        )),
        ApiRequest::GetInstance { id } => ok(json(cp.describe_instance(&id).await?)),
        ApiRequest::DeleteInstance { id } => {
            cp.delete_instance(&id).await?;
            ok(serde_json::json!({"deleted": id}))
        }
        ApiRequest::InstanceExec { .. } => Err(ApiError::bad_request(
            "exec is run by the instance's agent: call the HTTP API (POST /v1/instances/ID/exec)"
                .into(),
        )),
        ApiRequest::InstanceLogs { .. } => Err(ApiError::bad_request(
            "logs are streamed: call the HTTP API (GET /v1/instances/ID/logs)".into(),
        )),
        ApiRequest::ReportInstanceStatus { id, report } => {
            ok(json(cp.report_instance_status(&id, report).await?))
        }
        ApiRequest::ListNodes => ok(json(cp.list_nodes().await?)),
        ApiRequest::RegisterNode(registration) => ok(json(cp.register_node(registration).await?)),
        ApiRequest::GetNode { name } => ok(json(cp.describe_node(&name).await?)),
        ApiRequest::DeleteNode { name } => {
            cp.delete_node(&name).await?;
            ok(serde_json::json!({"deleted": name}))
        }
        ApiRequest::ScheduleNode { name, action } => {
            ok(json(cp.set_node_schedule(&name, action).await?))
        }
        ApiRequest::Heartbeat { name, beat } => ok(json(cp.heartbeat(&name, &beat).await?)),
        ApiRequest::ListVolumes => ok(json(cp.list_volumes().await?)),
        ApiRequest::CreateVolume(request) => {
            Ok((StatusCode::CREATED, json(cp.create_volume(request).await?)))
        }
        ApiRequest::GetVolume { name } => ok(json(cp.describe_volume(&name).await?)),
        ApiRequest::DeleteVolume { name } => {
            cp.delete_volume(&name).await?;
            ok(serde_json::json!({"deleted": name}))
        }
        ApiRequest::ReportVolumeUsage { name, report } => {
            cp.report_volume_usage(&name, report).await?;
            ok(serde_json::json!({"node": name}))
        }
        ApiRequest::ListEvents { kind, name } => {
            ok(json(cp.list_events(kind, name.as_deref()).await?))
        }
        ApiRequest::Watch {
            kind,
            from,
            timeout,
            node,
        } => ok(json(cp.watch(kind, from, timeout, node.as_deref()).await?)),
        ApiRequest::DescribeCluster
        | ApiRequest::ListServers
        | ApiRequest::ClusterCa
        | ApiRequest::Join(_)
        | ApiRequest::RenewNodeCertificate { .. }
        | ApiRequest::ListTokens
        | ApiRequest::CreateToken(_)
        | ApiRequest::RevokeToken { .. }
        | ApiRequest::ListSecrets
        | ApiRequest::PutSecret(_)
        | ApiRequest::DeleteSecret { .. }
        | ApiRequest::InstanceSecrets { .. }
        | ApiRequest::NodeTunnel { .. }
        | ApiRequest::NodeTunnelConnection { .. }
        | ApiRequest::NodeMetrics { .. }
        | ApiRequest::SnapshotVolume { .. }
        | ApiRequest::RestoreVolume { .. }
        | ApiRequest::Metrics => Err(ApiError::bad_request(
            "tokens and certificates are served by the HTTP API".into(),
        )),
    }
}

async fn list_servers(state: &ApiState) -> Result<Vec<tugboat_api::wire::ServerInfo>, ApiError> {
    let store = state.control.store.as_ref();
    Ok(state
        .servers
        .list(store)
        .await
        .map_err(crate::controlplane::ControlPlaneError::Store)?)
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[tokio::test]
    async fn a_body_read_past_the_limit_is_told_from_other_read_errors() {
        let big = axum::body::Body::from(vec![0u8; MAX_BODY_BYTES + 1]);
        let e = axum::body::to_bytes(big, MAX_BODY_BYTES).await.unwrap_err();
        assert!(over_limit(&e), "{e}");
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!over_limit(&other));
        let fits = axum::body::Body::from(vec![0u8; 10]);
        assert_eq!(
            axum::body::to_bytes(fits, MAX_BODY_BYTES)
                .await
                .unwrap()
                .len(),
            10
        );
    }
}
