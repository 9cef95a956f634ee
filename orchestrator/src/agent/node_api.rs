//! The agent's own small HTTP API, for what only the node has: an instance's log
//! (`GET /v1/instances/{id}/logs?follow=true&tail=N`). Same bearer token as the server's;
//! the server forwards `tugboat logs` here (the node's `agent_url`).

use super::logs::LogReader;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub struct NodeApiState {
    pub data_dir: PathBuf,
    pub token: Option<String>,
}

pub fn router(state: Arc<NodeApiState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/instances/{id}/logs", axum::routing::get(logs))
        .with_state(state)
}

/// `follow` and `tail` from a query string (`follow=true|1`, `tail=N`).
pub fn log_options(query: &HashMap<String, String>) -> Result<(bool, Option<usize>), String> {
    let follow = matches!(query.get("follow").map(String::as_str), Some("true" | "1"));
    let tail = match query.get("tail") {
        Some(t) => Some(
            t.parse()
                .map_err(|_| format!("tail must be a number of lines, got `{t}`"))?,
        ),
        None => None,
    };
    Ok((follow, tail))
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
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(token) = &state.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(str::trim) != Some(token.as_str()) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
        }
    }
    if tug_runtime::state::validate_id(&id).is_err() {
        return (StatusCode::BAD_REQUEST, "bad instance id\n").into_response();
    }
    let dir = state.data_dir.join("instances").join(&id);
    if !dir.is_dir() {
        return (
            StatusCode::NOT_FOUND,
            format!("instance {id} does not run on this node\n"),
        )
            .into_response();
    }
    match log_options(&query) {
        Ok((follow, tail)) => stream_log(LogReader::new(&dir, tail, follow)),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}
