//! The agent's own small HTTP API, for what only the node has: an instance's log
//! (`GET /v1/instances/{id}/logs?follow=true&tail=N`) and running a command in it
//! (`POST /v1/instances/{id}/exec` with `{"command": [...]}`). Same bearer token as the server's;
//! the server forwards `tugboat logs` here (the node's `agent_url`). `POST
//! /v1/instances/{id}/logs/persist` asks a monitor that keeps the output in memory (`--log-mode
//! ring`) to write it to disk from now on. `GET /metrics`: what the node's containers use
//! (`metrics.rs`).

use super::logs::LogReader;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tugboat_api::execstream::{switching, wants_stream, Upgrade};
use tugboat_api::wire::LogOptions;

pub struct NodeApiState {
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// Over TLS, the caller must show the server's certificate (from the cluster CA) and
    /// the token is not used.
    pub tls: bool,
    /// With neither TLS nor a token, serve anyone (tests on a private network only);
    /// otherwise refuse everyone.
    pub insecure_no_auth: bool,
    /// The `tugboat` binary (for the exec helper).
    pub exe: PathBuf,
    /// The node's volumes (snapshot and restore); None where only logs and exec are served.
    pub node: Option<Arc<super::NodeContext>>,
}

pub fn router(state: Arc<NodeApiState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/instances/{id}/logs", axum::routing::get(logs))
        .route(
            "/v1/instances/{id}/logs/persist",
            axum::routing::post(persist_logs),
        )
        .route("/v1/instances/{id}/exec", axum::routing::post(exec))
        .route("/metrics", axum::routing::get(metrics))
        .route(
            "/v1/volumes/{name}/archive",
            axum::routing::get(super::volume_api::snapshot).put(super::volume_api::restore),
        )
        .with_state(state)
}

pub use tugboat_api::execstream::ExecRequest;

/// Marks the requests that come over a connection the agent itself opened to the server
/// (its tunnel, `tugboat agent --dial-out`): they come from the server the agent trusts for
/// everything else (over TLS it checked the server's certificate when it connected).
#[derive(Debug, Clone, Copy)]
pub struct ViaTunnel;

/// Who a request's connection is known to come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// The TLS client certificate it showed.
    cert: Option<tugboat_api::tls::PeerCert>,
    /// It came through the agent's own tunnel.
    tunnel: bool,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer {
            cert: parts.extensions.get().cloned(),
            tunnel: parts.extensions.get::<ViaTunnel>().is_some(),
        })
    }
}

pub(crate) fn authorized(state: &NodeApiState, headers: &HeaderMap, peer: &Peer) -> bool {
    if peer.tunnel {
        return true;
    }
    if state.tls {
        return peer
            .cert
            .as_ref()
            .is_some_and(|p| p.0.common_name == tugboat_api::tls::SERVER_NAME);
    }
    let Some(token) = &state.token else {
        // No credential to check: open only when asked for (`--insecure-no-auth`).
        return state.insecure_no_auth;
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| tugboat_api::same_secret(g.trim().as_bytes(), token.as_bytes()))
}

async fn exec(
    State(state): State<Arc<NodeApiState>>,
    peer: Peer,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Upgrade(upgrade): Upgrade,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&state, &headers, &peer) {
        return (StatusCode::UNAUTHORIZED, "only the server calls a node's API: missing or wrong bearer token, or no server certificate\n").into_response();
    }
    let request: ExecRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("exec request body: {e}\n")).into_response()
        }
    };
    if tug_runtime::state::validate_id(&id).is_err() || request.command.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "bad instance id or empty command\n",
        )
            .into_response();
    }
    let target = super::nsexec::target_under(&state.exe, &state.data_dir, &id);
    if wants_stream(&headers) {
        let Some(upgrade) = upgrade else {
            return (
                StatusCode::BAD_REQUEST,
                "this connection cannot be upgraded to an exec stream\n",
            )
                .into_response();
        };
        if let Err(e) = target.wait_running().await {
            return (StatusCode::CONFLICT, format!("{e}\n")).into_response();
        }
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                super::nsexec::stream(target, request, io).await;
            }
        });
        return switching();
    }
    let limit = std::time::Duration::from_secs(request.timeout_seconds.unwrap_or(60).min(3600));
    match super::nsexec::exec_in(&target, &request.command, limit).await {
        Ok(result) => axum::Json(result).into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// A response that streams the log.
pub fn stream_log(reader: LogReader) -> Response {
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        r.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk)), r))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn logs(
    State(state): State<Arc<NodeApiState>>,
    peer: Peer,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let dir = match instance_dir(&state, &headers, &peer, &id) {
        Ok(dir) => dir,
        Err(answer) => return answer.into_response(),
    };
    let options = match LogOptions::from_query(|name| query.get(name).cloned()) {
        Ok(options) => options,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if options.previous {
        return match super::logs::previous(&dir, &id, &options).await {
            Ok(lines) => {
                ([(axum::http::header::CONTENT_TYPE, "text/plain")], lines).into_response()
            }
            Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        };
    }
    stream_log(LogReader::new(&dir, &options))
}

/// What the node's containers use (`metrics.rs`); the server forwards it as
/// `GET /v1/nodes/{name}/metrics`.
async fn metrics(
    State(state): State<Arc<NodeApiState>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state, &headers, &peer) {
        return (StatusCode::UNAUTHORIZED, "only the server calls a node's API: missing or wrong bearer token, or no server certificate\n").into_response();
    }
    let instances = state.data_dir.join("instances");
    let traffic = state.node.as_ref().map(|n| n.traffic.clone());
    let text = tokio::task::spawn_blocking(move || {
        super::metrics::render(
            &super::metrics::Roots {
                instances: &instances,
                cgroup: std::path::Path::new("/sys/fs/cgroup"),
                proc: std::path::Path::new("/proc"),
            },
            traffic.as_ref(),
        )
    })
    .await;
    match text {
        Ok(Ok(text)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                super::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The instance's directory on this node, or the status and text that say why there is
/// none.
fn instance_dir(
    state: &NodeApiState,
    headers: &HeaderMap,
    peer: &Peer,
    id: &str,
) -> Result<PathBuf, (StatusCode, String)> {
    if !authorized(state, headers, peer) {
        return Err((StatusCode::UNAUTHORIZED, "only the server calls a node's API: missing or wrong bearer token, or no server certificate\n".into()));
    }
    if tug_runtime::state::validate_id(id).is_err() {
        return Err((StatusCode::BAD_REQUEST, "bad instance id\n".into()));
    }
    let dir = state.data_dir.join("instances").join(id);
    if !dir.is_dir() {
        return Err((
            StatusCode::NOT_FOUND,
            format!("instance {id} does not run on this node\n"),
        ));
    }
    Ok(dir)
}

async fn persist_logs(
    State(state): State<Arc<NodeApiState>>,
    peer: Peer,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let dir = match instance_dir(&state, &headers, &peer, &id) {
        Ok(dir) => dir,
        Err(answer) => return answer.into_response(),
    };
    match super::logring::ask_persist(&dir).await {
        Ok(true) => format!("the output of {id} goes to disk from now on\n").into_response(),
        Ok(false) => format!("the output of {id} is on disk already (its monitor keeps no ring)\n")
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod logs_tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_is_served_by_the_api_and_persisted_on_request() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("instances/web-1");
        std::fs::create_dir_all(&dir).unwrap();
        let ring = super::super::logring::SharedRing::new(1024, b"");
        ring.write(b"one\ntwo\n");
        super::super::logring::serve(ring.clone(), &dir, 1 << 20).unwrap();
        let state = Arc::new(NodeApiState {
            data_dir: data.path().into(),
            token: Some("t".into()),
            tls: false,
            insecure_no_auth: false,
            exe: "/nonexistent".into(),
            node: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        let http = reqwest::Client::new();
        let logs = http
            .get(format!("{url}/v1/instances/web-1/logs?tail=1"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(logs.status(), 200);
        assert_eq!(logs.text().await.unwrap(), "two\n");
        let log = dir.join(super::super::monitor::LOG_FILE);
        assert!(!log.exists(), "a ring writes nothing unasked");
        let persisted = http
            .post(format!("{url}/v1/instances/web-1/logs/persist"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(persisted.status(), 200);
        ring.write(b"three\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\nthree\n");
        let missing = http
            .post(format!("{url}/v1/instances/nope/logs/persist"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    fn state(token: Option<&str>, tls: bool, insecure_no_auth: bool) -> NodeApiState {
        NodeApiState {
            data_dir: "/nonexistent".into(),
            token: token.map(str::to_string),
            tls,
            insecure_no_auth,
            exe: "/nonexistent".into(),
            node: None,
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn without_a_credential_the_node_api_refuses_unless_told_not_to() {
        let none = HeaderMap::new();
        assert!(!authorized(
            &state(None, false, false),
            &none,
            &Peer::default()
        ));
        assert!(authorized(
            &state(None, false, true),
            &none,
            &Peer::default()
        ));
        assert!(authorized(
            &state(Some("t"), false, false),
            &bearer("t"),
            &Peer::default()
        ));
        assert!(!authorized(
            &state(Some("t"), false, false),
            &bearer("u"),
            &Peer::default()
        ));
        // Over TLS only the server's certificate counts, not a token.
        assert!(!authorized(
            &state(Some("t"), true, false),
            &bearer("t"),
            &Peer::default()
        ));
        let server = |name: &str| Peer {
            cert: Some(tugboat_api::tls::PeerCert(tugboat_api::tls::CertInfo {
                common_name: name.into(),
                serial: "1".into(),
                not_before_ms: 0,
                not_after_ms: u64::MAX,
            })),
            tunnel: false,
        };
        assert!(authorized(
            &state(None, true, false),
            &none,
            &server("tugboat-server")
        ));
        assert!(!authorized(&state(None, true, false), &none, &server("n2")));
        // What comes through the agent's own tunnel to the server is the server's, with
        // TLS or a token, and only that (a direct caller without credentials is refused).
        let tunnel = Peer {
            cert: None,
            tunnel: true,
        };
        assert!(authorized(&state(None, true, false), &none, &tunnel));
        assert!(authorized(&state(Some("t"), false, false), &none, &tunnel));
        assert!(!authorized(
            &state(Some("t"), false, false),
            &none,
            &Peer::default()
        ));
    }
}
