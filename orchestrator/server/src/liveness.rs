//! What agents tell a server that does not lead, relayed to the one that does.
//!
//! Heartbeats, peer views and usage live in the memory of the server an agent talks to
//! (no store write per heartbeat). On etcd that server may be a follower, while the node
//! controller and the autoscalers run on the leader: without this, the leader would declare
//! the follower's nodes lost. So a follower that heard something new writes it, at most once
//! per heartbeat period, to `/liveness/<its address>`, and the leader merges each such write
//! as it is watched. Times are sent with the follower's clock and its "now", and the leader
//! shifts them by the difference to its own clock when the write arrives, so the servers'
//! clocks need not agree. A record read later (at a change of leader) is ignored: its age is
//! unknown, and a new leader gives every node a fresh grace period anyway.
//!
//! The controllers ignore changes under [`LIVENESS`] (they would otherwise run a pass per
//! relay), and `store export` does not move them.

use crate::controlplane::{ControlPlane, Role};
use crate::store::{put, EventKind, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tugboat_api::model::{now_ms, InstanceStats};

pub const LIVENESS: &str = "/liveness/";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Relay {
    /// The relaying server's clock when it wrote this.
    pub server_now_ms: u64,
    pub heartbeats: HashMap<String, u64>,
    pub peer_seen: HashMap<String, u64>,
    pub usage: HashMap<String, InstanceStats>,
}

/// Follower side: every `every`, while this server does not lead and has heard something
/// new, write what it heard under `/liveness/<server>`.
pub async fn relay(
    store: Arc<dyn Store>,
    cp: Arc<ControlPlane>,
    server: String,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let key = format!("{LIVENESS}{server}");
    let mut sent = Relay::default();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(every) => {}
        }
        if cp.role() == Role::Leader {
            continue;
        }
        let heard = cp.liveness();
        if (&heard.heartbeats, &heard.peer_seen, &heard.usage)
            == (&sent.heartbeats, &sent.peer_seen, &sent.usage)
        {
            continue;
        }
        let relay = Relay {
            server_now_ms: now_ms(),
            ..heard
        };
        let value = serde_json::to_vec(&relay).expect("a relay serializes");
        if put(store.as_ref(), &key, value).await.is_ok() {
            sent = relay;
        }
    }
    // Gone: nothing of ours to merge any more.
    let _ = crate::store::delete(store.as_ref(), &key).await;
}

/// Leader side: merge every relay written from now on, until the watch ends.
pub async fn merge(store: Arc<dyn Store>, cp: Arc<ControlPlane>) {
    loop {
        let Ok(mut watcher) = store.watch(LIVENESS, 0).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while let Ok(events) = watcher.next().await {
            let received = now_ms();
            for event in events {
                if event.kind != EventKind::Put {
                    continue;
                }
                if let Ok(relay) = serde_json::from_slice::<Relay>(&event.kv.value) {
                    cp.merge_liveness(&relay, received);
                }
            }
        }
    }
}

/// A time on the relaying server's clock, on ours: `received` is when its write arrived.
pub(crate) fn shifted(at_ms: u64, relay: &Relay, received_ms: u64) -> u64 {
    let age = relay.server_now_ms.saturating_sub(at_ms);
    received_ms.saturating_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_times_keep_their_age_whatever_the_clocks() {
        // The follower's clock is an hour ahead; it heard node a 300 ms before writing.
        let relay = Relay {
            server_now_ms: 10_000_000 + 3_600_000,
            heartbeats: [("a".to_string(), 10_000_000 + 3_600_000 - 300)].into(),
            ..Default::default()
        };
        assert_eq!(
            shifted(relay.heartbeats["a"], &relay, 10_000_050),
            9_999_750
        );
        let cp = ControlPlane::new(
            Arc::new(crate::store::EmbeddedStore::in_memory()),
            Default::default(),
            Default::default(),
        );
        cp.merge_liveness(&relay, 10_000_050);
        assert_eq!(cp.heartbeats()["a"], 9_999_750);
        // An older relay does not move a later heartbeat back.
        let older = Relay {
            server_now_ms: 1_000,
            heartbeats: [("a".to_string(), 0)].into(),
            ..Default::default()
        };
        cp.merge_liveness(&older, 10_000_050);
        assert_eq!(cp.heartbeats()["a"], 9_999_750);
    }
}
