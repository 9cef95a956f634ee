//! What only a node has (an instance's log, a command run in it) is asked of the agent of
//! the instance's node: through the tunnel the agent keeps open when it has one ([`super::
//! tunnel`], a node that only dials out), else at its API address (`agent_url`). Both links
//! carry the same HTTP request; the answer is read the same way whichever carried it.

use super::{ApiError, ApiState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::{AsyncRead, AsyncWrite};

/// How the server reaches a node's agent.
pub(super) enum Link {
    Tunnel,
    Direct(String),
}

/// A bidirectional byte stream (an upgraded connection).
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// The agent's answer, from either link.
pub(super) enum AgentResponse {
    Direct(reqwest::Response),
    Tunnel(hyper::Response<hyper::body::Incoming>),
}

pub(super) fn unreachable(why: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "agent_unreachable", why)
}

impl AgentResponse {
    pub(super) fn status(&self) -> StatusCode {
        let code = match self {
            AgentResponse::Direct(r) => r.status().as_u16(),
            AgentResponse::Tunnel(r) => r.status().as_u16(),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    pub(super) async fn bytes(self) -> Result<axum::body::Bytes, String> {
        match self {
            AgentResponse::Direct(r) => r.bytes().await.map_err(|e| e.to_string()),
            AgentResponse::Tunnel(r) => {
                use http_body_util::BodyExt;
                r.into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// A header's value, as text.
    pub(super) fn header(&self, name: &str) -> Option<String> {
        let value = match self {
            AgentResponse::Direct(r) => r.headers().get(name),
            AgentResponse::Tunnel(r) => r.headers().get(name),
        };
        value.and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    /// The body as it streams in.
    pub(super) fn into_body(self) -> axum::body::Body {
        match self {
            AgentResponse::Direct(r) => {
                // An agent's stream that breaks off is passed on as an error (the client's
                // transfer fails), not as a clean end: a short archive must not look whole.
                let chunks = futures_util::stream::unfold(Some(r), |r| async move {
                    let mut r = r?;
                    match r.chunk().await {
                        Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), Some(r))),
                        Ok(None) => None,
                        Err(e) => Some((Err(std::io::Error::other(e)), None)),
                    }
                });
                axum::body::Body::from_stream(chunks)
            }
            AgentResponse::Tunnel(r) => axum::body::Body::new(r.into_body()),
        }
    }

    async fn upgrade(self) -> Result<Box<dyn Duplex>, String> {
        match self {
            AgentResponse::Direct(r) => match r.upgrade().await {
                Ok(io) => Ok(Box::new(io)),
                Err(e) => Err(e.to_string()),
            },
            AgentResponse::Tunnel(r) => match hyper::upgrade::on(r).await {
                Ok(io) => Ok(Box::new(hyper_util::rt::TokioIo::new(io))),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// The node of an instance, and how to reach its agent.
async fn link_of(state: &ApiState, id: &str) -> Result<(String, Link), ApiError> {
    let instance = state.control.get_instance(id).await?.object;
    let node = instance.node.ok_or_else(|| {
        ApiError::bad_request(format!("instance `{id}` is not placed on a node yet"))
    })?;
    link_of_node(state, node).await
}

/// How to reach the agent of `node`: its tunnel, else its API address.
pub(super) async fn link_of_node(
    state: &ApiState,
    node: String,
) -> Result<(String, Link), ApiError> {
    if state.tunnels.connected(&node) {
        return Ok((node, Link::Tunnel));
    }
    match state.control.get_node(&node).await?.object.agent_url {
        Some(url) => Ok((node, Link::Direct(url))),
        None => Err(unreachable(format!(
            "node {node} has no agent API address and its agent keeps no tunnel open (a --dial-out agent that is not connected now)"
        ))),
    }
}

/// One request to an agent's API: `path` with its query, a JSON body, and the upgrade to
/// ask for (exec streams).
pub(super) struct AgentRequest<'a> {
    pub method: Method,
    pub path: String,
    pub body: AgentBody<'a>,
    pub upgrade: Option<&'static str>,
}

/// What an agent request carries.
pub(super) enum AgentBody<'a> {
    Empty,
    Json(&'a serde_json::Value),
    /// A client's upload passed on as it arrives (a volume archive).
    Stream(axum::body::Body),
}

pub(super) async fn send(
    state: &ApiState,
    node: &str,
    link: &Link,
    request: AgentRequest<'_>,
) -> Result<AgentResponse, ApiError> {
    match link {
        Link::Direct(url) => {
            let mut http = state
                .agent_client()
                .request(request.method, format!("{url}{}", request.path));
            match request.body {
                AgentBody::Empty => {}
                AgentBody::Json(body) => http = http.json(body),
                AgentBody::Stream(body) => {
                    http = http.body(reqwest::Body::wrap_stream(body.into_data_stream()))
                }
            }
            if let Some(protocol) = request.upgrade {
                http = http
                    .header(axum::http::header::CONNECTION, "upgrade")
                    .header(axum::http::header::UPGRADE, protocol);
            }
            state
                .to_agent(http, url)
                .send()
                .await
                .map(AgentResponse::Direct)
                .map_err(|e| unreachable(format!("agent of node {node} at {url}: {e}")))
        }
        Link::Tunnel => {
            let io = state.tunnels.dial(node).await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| unreachable(format!("agent of node {node} (tunnel): {e}")))?;
            tokio::spawn(connection.with_upgrades());
            let mut http = hyper::Request::builder()
                .method(request.method)
                .uri(request.path)
                .header(axum::http::header::HOST, node);
            if let Some(protocol) = request.upgrade {
                http = http
                    .header(axum::http::header::CONNECTION, "upgrade")
                    .header(axum::http::header::UPGRADE, protocol);
            }
            let body = match request.body {
                AgentBody::Json(value) => {
                    http = http.header(axum::http::header::CONTENT_TYPE, "application/json");
                    axum::body::Body::from(serde_json::to_vec(value).expect("serializes"))
                }
                AgentBody::Stream(body) => body,
                AgentBody::Empty => axum::body::Body::empty(),
            };
            let http = http
                .body(body)
                .map_err(|e| ApiError::bad_request(format!("request to node {node}: {e}")))?;
            sender
                .send_request(http)
                .await
                .map(AgentResponse::Tunnel)
                .map_err(|e| unreachable(format!("agent of node {node} (tunnel): {e}")))
        }
    }
}

/// The agent's refusal as an error naming the instance and node.
pub(super) async fn refused(response: AgentResponse, code: &'static str, what: String) -> ApiError {
    let status = response.status();
    let text = response.bytes().await.unwrap_or_default();
    ApiError::new(
        status,
        code,
        format!("{what}: {}", String::from_utf8_lossy(&text).trim()),
    )
}

/// Sends an exec request to the agent of the instance's node (asking for the exec stream
/// when `stream`); the agent's answer when it is the expected one (101 for a stream, 2xx
/// otherwise), else its status and text as an error naming the instance and node.
async fn exec_on_agent(
    state: &ApiState,
    id: &str,
    body: &serde_json::Value,
    stream: bool,
) -> Result<(String, AgentResponse), ApiError> {
    let (node, link) = link_of(state, id).await?;
    let request = AgentRequest {
        method: Method::POST,
        path: format!("/v1/instances/{id}/exec"),
        body: AgentBody::Json(body),
        upgrade: stream.then_some(tugboat_api::execstream::PROTOCOL),
    };
    let response = send(state, &node, &link, request).await?;
    let status = response.status();
    let expected = if stream {
        status == StatusCode::SWITCHING_PROTOCOLS
    } else {
        status.is_success()
    };
    if !expected {
        let what = format!("instance `{id}` on node {node}");
        return Err(refused(response, "exec_failed", what).await);
    }
    Ok((node, response))
}

/// Runs a command in an instance, through the agent of its node.
pub async fn exec(
    state: &ApiState,
    id: &str,
    body: serde_json::Value,
) -> Result<Response, ApiError> {
    let (node, response) = exec_on_agent(state, id, &body, false).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unreachable(format!("agent of node {node}: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| unreachable(format!("agent of node {node} answered {e}")))?;
    Ok((StatusCode::OK, Json(value)).into_response())
}

/// An exec stream ([`tugboat_api::execstream`]): the same upgrade asked of the instance's agent,
/// then the two connections spliced together.
pub async fn exec_stream(
    state: &ApiState,
    id: &str,
    body: serde_json::Value,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.ok_or_else(|| {
        ApiError::bad_request("this connection cannot be upgraded to an exec stream".into())
    })?;
    let (node, response) = exec_on_agent(state, id, &body, true).await?;
    let mut agent = response
        .upgrade()
        .await
        .map_err(|e| unreachable(format!("agent of node {node}: exec stream: {e}")))?;
    tokio::spawn(async move {
        if let Ok(client) = upgrade.await {
            let mut client = hyper_util::rt::TokioIo::new(client);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        }
    });
    Ok(tugboat_api::execstream::switching())
}

/// An instance's log, streamed from the agent of its node.
pub async fn logs(
    state: &ApiState,
    id: &str,
    options: tugboat_api::wire::LogOptions,
) -> Result<Response, ApiError> {
    let (node, link) = link_of(state, id).await?;
    let path = format!("/v1/instances/{id}/logs?{}", options.to_query());
    pass_through(state, &node, &link, path, "text/plain").await
}

/// A node's container metrics (`GET /metrics` of its agent), passed through as text.
pub async fn node_metrics(state: &ApiState, node: &str) -> Result<Response, ApiError> {
    // An unknown node is a 404 that names it, before any link is looked for.
    state.control.get_node(node).await?;
    let (node, link) = link_of_node(state, node.to_string()).await?;
    let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    pass_through(state, &node, &link, "/metrics".into(), openmetrics).await
}

/// GET `path` from the agent of `node`: its body streamed back as `content_type`, or its
/// refusal as an error that names the node.
pub(super) async fn pass_through(
    state: &ApiState,
    node: &str,
    link: &Link,
    path: String,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let request = AgentRequest {
        method: Method::GET,
        path,
        body: AgentBody::Empty,
        upgrade: None,
    };
    let response = send(state, node, link, request).await?;
    if !response.status().is_success() {
        return Err(refused(response, "agent_error", format!("agent of node {node}")).await);
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, content_type)],
        response.into_body(),
    )
        .into_response())
}
