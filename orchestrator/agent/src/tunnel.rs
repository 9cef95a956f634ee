//! A node that only dials out (`tugboat agent --dial-out`: a device behind NAT or a carrier
//! network that nothing can connect to). The agent keeps `GET /v1/nodes/{node}/tunnel` open
//! on the server; each line on it asks for one connection, and the agent opens it (`POST
//! /v1/nodes/{node}/tunnel/{id}`, upgraded to [`TUNNEL_PROTOCOL`]) and serves its node API
//! (exec, logs) on it, the server speaking as the client. Nothing listens on the node.
//!
//! The stream is opened again after any break, 1 s then up to 10 s apart; a stream that
//! brings nothing, not even the server's keep-alive line, for [`SILENT`] is taken for a dead
//! link and opened again.

use crate::node_api::{self, NodeApiState, ViaTunnel};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tugboat_api::client::ApiClient;
use tugboat_api::wire::{TunnelDial, TUNNEL_PROTOCOL};

/// Three of the server's keep-alive periods (15 s) without a byte: the link is dead.
pub const SILENT: Duration = Duration::from_secs(45);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Keeps the node's tunnel open until `shutdown` is set.
pub async fn run(
    client: ApiClient,
    node: String,
    state: Arc<NodeApiState>,
    mut shutdown: watch::Receiver<Option<bool>>,
) {
    let mut retry = FIRST_RETRY;
    let mut said: Option<String> = None;
    loop {
        if shutdown.borrow().is_some() {
            return;
        }
        let ended = tokio::select! {
            _ = shutdown.changed() => return,
            ended = serve_one_stream(&client, &node, &state, &mut said) => ended,
        };
        match ended {
            // It was open: the server restarted or the link dropped; try again at once.
            Ok(()) => retry = FIRST_RETRY,
            Err(why) => {
                if said.as_deref() != Some(why.as_str()) {
                    eprintln!("tugboat agent: {node}: tunnel to the server: {why} (retrying)");
                    said = Some(why);
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

/// Opens the tunnel stream and answers its dials until it ends: Ok when it was open, the
/// reason it could not be opened otherwise.
async fn serve_one_stream(
    client: &ApiClient,
    node: &str,
    state: &Arc<NodeApiState>,
    said: &mut Option<String>,
) -> Result<(), String> {
    let response = client
        .open_stream(&format!("/v1/nodes/{node}/tunnel"))
        .await
        .map_err(|e| e.to_string())?;
    if said.take().is_some() {
        eprintln!("tugboat agent: {node}: tunnel to the server open");
    }
    let mut response = response;
    let mut line = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENT, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            // Ended, broken, or silent for too long.
            Ok(Err(_)) | Ok(Ok(None)) | Err(_) => return Ok(()),
        };
        for byte in chunk {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = std::mem::take(&mut line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue; // keep-alive
            }
            match serde_json::from_slice::<TunnelDial>(&text) {
                Ok(dial) => {
                    tokio::spawn(connect(
                        client.clone(),
                        node.to_string(),
                        dial.dial,
                        state.clone(),
                    ));
                }
                Err(e) => eprintln!(
                    "tugboat agent: {node}: tunnel: a line that is not a dial ({e}): {}",
                    String::from_utf8_lossy(&text)
                ),
            }
        }
    }
}

/// Opens the connection the server asked for and serves the node API on it.
async fn connect(client: ApiClient, node: String, id: String, state: Arc<NodeApiState>) {
    let path = format!("/v1/nodes/{node}/tunnel/{id}");
    match client.upgrade(&path, TUNNEL_PROTOCOL, None).await {
        Ok(io) => {
            tugboat_api::tls::serve_stream(io, node_api::router(state), Some(ViaTunnel)).await
        }
        Err(e) => eprintln!("tugboat agent: {node}: tunnel connection {id}: {e}"),
    }
}
