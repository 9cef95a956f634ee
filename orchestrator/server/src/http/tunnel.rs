//! Nodes that only dial out (a device behind NAT or a carrier network): the server never
//! opens a connection to such an agent. The agent keeps `GET /v1/nodes/{name}/tunnel` open;
//! when the server has a request for the node's API (exec, logs), it writes a dial line with a
//! one-time id on that stream, and the agent opens a new connection, `POST
//! /v1/nodes/{name}/tunnel/{id}` upgraded to [`TUNNEL_PROTOCOL`], on which the roles turn: the
//! server speaks HTTP/1.1 as the client and the agent serves its node API. One connection per
//! request, each made by the agent and authenticated like all of its calls (its certificate),
//! so nothing new listens on the node and exec streams keep their HTTP upgrade.
//!
//! Chosen over one multiplexed connection (k3s' remotedialer, KubeEdge's hub) for having no
//! framing of its own to get wrong; the price is an agent-to-server handshake per request,
//! milliseconds on a LAN, which exec and logs do not notice.

use super::ApiError;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tugboat_api::wire::TunnelDial;
pub use tugboat_api::wire::TUNNEL_PROTOCOL;

/// How long the agent has to answer a dial before the request fails.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive line on an idle tunnel stream this often, so that both ends notice a dead
/// link (the agent reconnects when nothing came for three of these).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Dials a node may have waiting; more are refused at once rather than queued.
const DIAL_QUEUE: usize = 64;

/// The tunnels of the nodes that keep one open, and the requests waiting for their agent's
/// connection.
#[derive(Default)]
pub struct Tunnels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    open: HashMap<String, Open>,
    waiting: HashMap<String, Waiting>,
    generation: u64,
}

struct Open {
    generation: u64,
    dials: mpsc::Sender<String>,
}

struct Waiting {
    node: String,
    reply: oneshot::Sender<hyper::upgrade::Upgraded>,
}

/// An open tunnel stream's end in the server: the dial ids to send, and its removal from
/// [`Tunnels`] when the stream is dropped (the agent went away).
pub struct Stream {
    tunnels: Arc<Tunnels>,
    node: String,
    generation: u64,
    pub dials: mpsc::Receiver<String>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut inner = self.tunnels.lock();
        if inner
            .open
            .get(&self.node)
            .is_some_and(|o| o.generation == self.generation)
        {
            inner.open.remove(&self.node);
        }
    }
}

fn unreachable(node: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "agent_unreachable",
        format!("node {node}'s agent (through its tunnel): {why}"),
    )
}

impl Tunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's agent opened its tunnel stream: it replaces an older one of the same node
    /// (that one's stream ends).
    pub fn open(self: &Arc<Self>, node: &str) -> Stream {
        let (tx, rx) = mpsc::channel(DIAL_QUEUE);
        let mut inner = self.lock();
        inner.generation += 1;
        let generation = inner.generation;
        inner.open.insert(
            node.to_string(),
            Open {
                generation,
                dials: tx,
            },
        );
        Stream {
            tunnels: self.clone(),
            node: node.to_string(),
            generation,
            dials: rx,
        }
    }

    /// Whether the node's agent keeps a tunnel open now.
    pub fn connected(&self, node: &str) -> bool {
        self.lock()
            .open
            .get(node)
            .is_some_and(|o| !o.dials.is_closed())
    }

    /// Asks the node's agent for a connection and waits for it (at most [`DIAL_TIMEOUT`]).
    pub async fn dial(&self, node: &str) -> Result<hyper::upgrade::Upgraded, ApiError> {
        let id = crate::controlplane::access::random_hex(16);
        let (tx, rx) = oneshot::channel();
        let dials = {
            let mut inner = self.lock();
            let dials = inner
                .open
                .get(node)
                .map(|o| o.dials.clone())
                .ok_or_else(|| unreachable(node, "no tunnel open"))?;
            inner.waiting.insert(
                id.clone(),
                Waiting {
                    node: node.to_string(),
                    reply: tx,
                },
            );
            dials
        };
        let sent = dials.try_send(id.clone());
        let answer = match sent {
            Ok(()) => tokio::time::timeout(DIAL_TIMEOUT, rx).await,
            Err(_) => {
                self.lock().waiting.remove(&id);
                return Err(unreachable(
                    node,
                    "the tunnel is closed or has too many requests waiting",
                ));
            }
        };
        match answer {
            Ok(Ok(io)) => Ok(io),
            _ => {
                self.lock().waiting.remove(&id);
                Err(unreachable(
                    node,
                    &format!(
                        "no connection came back within {} s",
                        DIAL_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }

    /// The agent's connection for dial `id`: taken only by the node the dial was sent to.
    /// Returns where to hand the upgraded connection.
    pub fn accept(
        &self,
        node: &str,
        id: &str,
    ) -> Result<oneshot::Sender<hyper::upgrade::Upgraded>, ApiError> {
        let mut inner = self.lock();
        match inner.waiting.get(id) {
            Some(w) if w.node == node => Ok(inner.waiting.remove(id).expect("present").reply),
            _ => Err(ApiError::not_found(format!(
                "no request waits for node {node} under dial id `{id}` (it timed out, or was never sent)"
            ))),
        }
    }
}

/// The tunnel stream's body: a dial line per request for the node, a blank line every
/// [`KEEPALIVE`]; it ends when the tunnel is replaced or the server stops.
pub fn body(stream: Stream) -> axum::body::Body {
    let lines = futures_util::stream::unfold(stream, |mut stream| async move {
        let line = tokio::select! {
            dial = stream.dials.recv() => {
                let dial = dial?;
                let mut line = serde_json::to_vec(&TunnelDial { dial }).expect("serializes");
                line.push(b'\n');
                line
            }
            _ = tokio::time::sleep(KEEPALIVE) => b"\n".to_vec(),
        };
        Some((
            Ok::<_, std::io::Error>(axum::body::Bytes::from(line)),
            stream,
        ))
    });
    axum::body::Body::from_stream(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_reaches_only_the_open_tunnel_of_its_node_and_fails_without_one() {
        let tunnels = Arc::new(Tunnels::default());
        let err = tunnels.dial("edge").await.unwrap_err();
        assert!(err.message.contains("no tunnel open"), "{err:?}");
        let mut stream = tunnels.open("edge");
        assert!(tunnels.connected("edge"));
        let dialer = tunnels.clone();
        let dialing = tokio::spawn(async move { dialer.dial("edge").await.map(|_| ()) });
        let id = stream.dials.recv().await.unwrap();
        assert_eq!(id.len(), 32);
        // Another node cannot take the edge node's connection, nor a made-up id.
        assert!(tunnels.accept("other", &id).is_err());
        assert!(tunnels.accept("edge", "0000").is_err());
        // The right node can, once; dropping the sender fails the dial rather than hang.
        drop(tunnels.accept("edge", &id).unwrap());
        assert!(tunnels.accept("edge", &id).is_err());
        let err = dialing.await.unwrap().unwrap_err();
        assert!(err.message.contains("no connection came back"), "{err:?}");
        // A newer stream of the same node replaces the old one; dropping the old one
        // leaves the new one in place.
        let newer = tunnels.open("edge");
        drop(stream);
        assert!(tunnels.connected("edge"));
        drop(newer);
        assert!(!tunnels.connected("edge"));
    }
}
