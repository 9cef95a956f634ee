//! The node API's volume archive (`GET|PUT /v1/volumes/{name}/archive`): the server
//! forwards `tugboat volume snapshot|restore` here, to the node that holds the volume. The
//! volume is mounted for the call if no instance has it mounted ([`super::volume_drivers::
//! open_for_archive`]) and the tar stream is made or read by [`super::volume_archive`] on
//! a blocking thread, fed through a channel. A snapshot pauses the volume's users on this
//! node while it is written ([`super::volume_freeze`]).

use super::node_api::{authorized, NodeApiState, Peer};
use super::volume_archive::{self, ArchiveError};
use super::volume_drivers::{open_for_archive, AccessError};
use super::volume_freeze;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;

type Chunk = Result<Bytes, io::Error>;

/// What the tar writer makes, sent on in chunks of [`CHUNK`] bytes.
struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 << 10;

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader of the archive went away",
            )
        })
    }
}

/// The request body, read by the tar reader on a blocking thread.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => self.current = chunk?,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn text(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, format!("{message}\n")).into_response()
}

fn refused(state: &NodeApiState, headers: &HeaderMap, peer: &Peer) -> Option<Response> {
    if !authorized(state, headers, peer) {
        return Some(text(StatusCode::UNAUTHORIZED, "only the server calls a node's API: missing or wrong bearer token, or no server certificate"));
    }
    if state.node.is_none() {
        return Some(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node API serves no volumes",
        ));
    }
    None
}

/// Reads and drops a request body that is refused, so the answer reaches the caller
/// (closing the connection under an upload would leave it only a broken pipe).
pub async fn drain(body: axum::body::Body) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    while stream.next().await.is_some_and(|c| c.is_ok()) {}
}

fn access_failed(e: AccessError) -> Response {
    match e {
        AccessError::Unknown(_) => text(StatusCode::NOT_FOUND, e),
        AccessError::Failed(_) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The volume's contents as a tar stream: point-in-time by default, the instances on this
/// node that mount the volume paused until the archive is written ([`volume_freeze`]);
/// `?freeze=false` archives while they run.
pub(crate) async fn snapshot(
    State(state): State<Arc<NodeApiState>>,
    peer: Peer,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(answer) = refused(&state, &headers, &peer) {
        return answer;
    }
    let freeze = match tugboat_api::wire::query_flag(
        "freeze",
        query.get("freeze").map(String::as_str),
        true,
    ) {
        Ok(freeze) => freeze,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let ctx = state.node.clone().expect("checked");
    let access = match open_for_archive(&ctx, &name).await {
        Ok(access) => access,
        Err(e) => return access_failed(e),
    };
    let users = if freeze { access.users.clone() } else { vec![] };
    let freezer = volume_freeze::InstanceFreezer {
        data_dir: ctx.data_dir.clone(),
        runtime_root: ctx.runtime_root.clone(),
        node: ctx.node.clone(),
    };
    let volume = name.clone();
    let frozen =
        tokio::task::spawn_blocking(move || volume_freeze::freeze(freezer, &volume, &users)).await;
    let frozen = match frozen {
        Ok(Ok(frozen)) => frozen,
        Ok(Err(e)) => {
            let _ = access.finish(&ctx).await;
            return text(StatusCode::CONFLICT, e);
        }
        Err(e) => {
            let _ = access.finish(&ctx).await;
            return text(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    };
    let paused = frozen.instances().join(",");
    let (tx, mut rx) = mpsc::channel::<Chunk>(8);
    tokio::spawn(async move {
        let path = access.path.clone();
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        // The freeze ends with the archive, written or failed (the guard resumes on drop
        // too, should the blocking task panic).
        let packed = tokio::task::spawn_blocking(move || {
            let packed = volume_archive::pack(&path, writer);
            (packed, frozen.thaw())
        })
        .await;
        let failed = match packed {
            Ok((packed, thawed)) => {
                if !thawed.instances.is_empty() {
                    eprintln!(
                        "tugboat agent: snapshot of volume {name}: instances {} paused for {} ms",
                        thawed.instances.join(", "),
                        thawed.paused_for.as_millis()
                    );
                }
                for f in &thawed.failures {
                    eprintln!(
                        "tugboat agent: after the snapshot of volume {name}: could not resume {f}"
                    );
                }
                packed.err().map(|e| e.to_string())
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            eprintln!("tugboat agent: snapshot of volume {name}: {e}");
            // An error in the body: the receiver sees a broken transfer, not a short archive.
            let _ = tx.send(Err(io::Error::other(e))).await;
        }
        if let Err(e) = access.finish(&ctx).await {
            eprintln!("tugboat agent: after the snapshot of volume {name}: {e}");
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
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
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Restores a tar stream into the volume (`?force=true` replaces what it holds).
pub(crate) async fn restore(
    State(state): State<Arc<NodeApiState>>,
    peer: Peer,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> Response {
    if let Some(answer) = refused(&state, &headers, &peer) {
        return answer;
    }
    let force = query.get("force").is_some_and(|f| f == "true");
    let ctx = state.node.clone().expect("checked");
    let access = match open_for_archive(&ctx, &name).await {
        Ok(access) => access,
        Err(e) => {
            drain(body).await;
            return access_failed(e);
        }
    };
    if let Some(user) = access.users.first() {
        let answer = text(
            StatusCode::CONFLICT,
            format!("volume {name} is in use by instance {user} on node {}: stop it (scale its service to 0) before a restore", ctx.node),
        );
        let _ = access.finish(&ctx).await;
        drain(body).await;
        return answer;
    }
    let (tx, rx) = mpsc::channel::<Chunk>(8);
    let feed = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(io::Error::other);
            let stop = chunk.is_err();
            if stop {
                let _ = tx.send(chunk).await;
                return;
            }
            if tx.send(chunk).await.is_err() {
                // The archive was refused, or ended before the body did (tar's padding):
                // the rest is read and dropped, so the caller gets the answer instead of
                // a connection closed under its upload.
                while stream.next().await.is_some_and(|c| c.is_ok()) {}
                return;
            }
        }
    });
    let path = access.path.clone();
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let unpacked =
        tokio::task::spawn_blocking(move || volume_archive::unpack(&path, reader, force)).await;
    let _ = feed.await;
    let finished = access.finish(&ctx).await;
    let restored = match unpacked {
        Ok(Ok(restored)) => restored,
        Ok(Err(e)) => {
            let status = match e {
                ArchiveError::NotEmpty { .. } => StatusCode::CONFLICT,
                ArchiveError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
                ArchiveError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            return text(status, format!("volume {name} on node {}: {e}", ctx.node));
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let Err(e) = finished {
        eprintln!("tugboat agent: after the restore of volume {name}: {e}");
    }
    axum::Json(tugboat_api::wire::VolumeRestored {
        volume: name,
        node: ctx.node.clone(),
        entries: restored.entries,
        bytes: restored.bytes,
    })
    .into_response()
}
