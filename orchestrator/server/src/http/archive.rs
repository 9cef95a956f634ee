//! `tugboat volume snapshot|restore` (docs/volumes.md): the server picks the node that
//! holds the volume (a local one's node; any ready node for nfs and exec) and passes the tar
//! stream between the client and that node's agent ([`super::forward`]), in either
//! direction, without holding it. Policy: a restore is refused while an instance uses the
//! volume, and into a volume that holds data unless `force` is given.

use super::forward::{self, AgentBody, AgentRequest};
use super::{ApiError, ApiState};
use crate::controlplane::ControlPlaneError;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tugboat_api::model::{NodeStatus, Volume};
use tugboat_api::spec::VolumeConfig;
use tugboat_api::spec::VolumeDriver;
use tugboat_api::wire::VolumeRequest;

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", message)
}

/// The node whose agent archives or restores `volume`, checked to be ready. `asked` is the
/// restore's `--node`.
async fn node_of(
    state: &ApiState,
    volume: &Volume,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let name = &volume.name;
    let node = match (volume.config.driver, volume.node.as_deref(), asked) {
        (VolumeDriver::Local, Some(home), Some(asked)) if home != asked => {
            return Err(conflict(format!(
                "volume {name} lives on node {home}, not {asked}: a local volume is restored \
                 where it is (restore into a new volume to put the data on node {asked})"
            )))
        }
        (VolumeDriver::Local, Some(home), _) => home.to_string(),
        (VolumeDriver::Local, None, Some(asked)) => asked.to_string(),
        (VolumeDriver::Local, None, None) => {
            return Err(conflict(format!(
                "volume {name} is on no node yet (no instance has used it): for a restore, \
                 name the node it is to live on (--node); a snapshot has nothing to read"
            )))
        }
        (_, _, Some(asked)) => asked.to_string(),
        (_, _, None) => {
            let nodes = state.control.list_nodes().await?.items;
            let mut ready: Vec<_> = nodes
                .into_iter()
                .filter(|n| n.status == NodeStatus::Ready)
                .map(|n| n.name)
                .collect();
            ready.sort();
            ready.into_iter().next().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "no_ready_node",
                    format!("volume {name}: no node is ready to mount it"),
                )
            })?
        }
    };
    let status = state.control.get_node(&node).await?.object.status;
    if status != NodeStatus::Ready {
        // 409, not 503: a client takes 503 as "this server cannot answer, try another".
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "node_not_ready",
            format!(
                "volume {name} is on node {node}, which is not ready ({}): its agent must be \
                 up to read or write the volume",
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(node)
}

/// The volume's contents as a tar stream from its node: with `freeze`, the volume's users
/// on that node are paused while it is written (a point-in-time archive).
pub async fn snapshot(state: &ApiState, name: &str, freeze: bool) -> Result<Response, ApiError> {
    let volume = state.control.describe_volume(name).await?;
    let node = node_of(state, &volume, None).await?;
    let (node, link) = forward::link_of_node(state, node).await?;
    let request = AgentRequest {
        method: Method::GET,
        path: format!("/v1/volumes/{name}/archive?freeze={freeze}"),
        body: AgentBody::Empty,
        upgrade: None,
    };
    let response = forward::send(state, &node, &link, request).await?;
    if !response.status().is_success() {
        let code = match response.status() {
            StatusCode::CONFLICT => "conflict",
            _ => "agent_error",
        };
        return Err(forward::refused(response, code, format!("snapshot of volume {name}")).await);
    }
    let paused = response
        .header(tugboat_api::wire::PAUSED_INSTANCES_HEADER)
        .unwrap_or_default();
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_string(),
            ),
            (
                axum::http::HeaderName::from_static(tugboat_api::wire::PAUSED_INSTANCES_HEADER),
                paused,
            ),
        ],
        response.into_body(),
    )
        .into_response())
}

/// Restores the tar stream `body` into the volume on its node.
pub async fn restore(
    state: &ApiState,
    name: &str,
    asked: Option<&str>,
    force: bool,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let mut created = false;
    let target = async {
        let volume = match (state.control.describe_volume(name).await, asked) {
            (Ok(volume), _) => volume,
            // No such volume and a node named: a local volume is made there (the second
            // half of moving one: snapshot on a, restore --node b).
            (Err(ControlPlaneError::NotFound { .. }), Some(node)) => {
                state.control.get_node(node).await?;
                let config = VolumeConfig {
                    node: Some(node.to_string()),
                    ..Default::default()
                };
                let request = VolumeRequest {
                    name: name.to_string(),
                    config,
                };
                let volume = state.control.create_volume(request).await?;
                created = true;
                volume
            }
            (Err(ControlPlaneError::NotFound { .. }), None) => {
                return Err(ApiError::not_found(format!(
                    "volume `{name}` not found: create it (tugboat volume create), or give \
                     --node to make a local volume of that name on a node"
                )))
            }
            (Err(e), _) => return Err(e.into()),
        };
        if let Some(user) = volume.users.first() {
            return Err(conflict(format!(
                "volume {name} is in use by instance {user}: a restore needs it unused (scale \
                 the services that mount it to 0 first)"
            )));
        }
        let node = node_of(state, &volume, asked).await?;
        let (node, link) = forward::link_of_node(state, node).await?;
        Ok((volume, node, link))
    };
    let (volume, node, link) = match target.await {
        Ok(target) => target,
        Err(e) => {
            // Read the upload to its end, so the client gets this answer rather than a
            // connection closed under it.
            use futures_util::StreamExt;
            let mut stream = body.into_data_stream();
            while stream.next().await.is_some_and(|c| c.is_ok()) {}
            return Err(undo(state, name, created, e).await);
        }
    };
    match unpack_on(state, name, force, &volume, node, link, body).await {
        Ok(response) => Ok(response),
        Err(e) => Err(undo(state, name, created, e).await),
    }
}

/// A failed restore removes the volume object it made, so nothing half-made is left.
async fn undo(state: &ApiState, name: &str, created: bool, e: ApiError) -> ApiError {
    if created {
        if let Err(undone) = state.control.delete_volume(name).await {
            eprintln!("tugboat server: removing volume {name} after its failed restore: {undone}");
        }
    }
    e
}

/// Sends the archive to the agent of `node` and records where a local volume now lives.
async fn unpack_on(
    state: &ApiState,
    name: &str,
    force: bool,
    volume: &Volume,
    node: String,
    link: forward::Link,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let request = AgentRequest {
        method: Method::PUT,
        path: format!("/v1/volumes/{name}/archive?force={force}"),
        body: AgentBody::Stream(body),
        upgrade: None,
    };
    let response = forward::send(state, &node, &link, request).await?;
    if !response.status().is_success() {
        let code = match response.status() {
            StatusCode::INSUFFICIENT_STORAGE => "no_space",
            StatusCode::CONFLICT => "conflict",
            StatusCode::BAD_REQUEST => "bad_archive",
            _ => "agent_error",
        };
        return Err(forward::refused(response, code, format!("restore of volume {name}")).await);
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| forward::unreachable(format!("agent of node {node}: {e}")))?;
    let restored: tugboat_api::wire::VolumeRestored = serde_json::from_slice(&bytes)
        .map_err(|e| forward::unreachable(format!("agent of node {node} answered {e}")))?;
    if volume.config.driver == VolumeDriver::Local && volume.node.is_none() {
        state.control.pin_volume(name, &node).await?;
    }
    Ok((StatusCode::OK, axum::Json(restored)).into_response())
}
