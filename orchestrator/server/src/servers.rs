//! The cluster's servers, as `tugboat get servers` lists them (`GET /v1/servers`).
//!
//! On etcd each server keeps a record of itself (name, API URL, version, start time) under
//! `/servers/<its address>`, bound to a lease of its own that it renews: a server that dies
//! (kill -9, its host lost) drops out of the list when its lease ends, a ttl after its last
//! renewal; one that stops cleanly revokes it and drops out at once. Who leads is not kept
//! in the records, it is read from the leader key when the list is asked for, so the list
//! cannot disagree with the election. On the embedded store the one server is the list, and
//! it leads.
//!
//! The controllers ignore changes under [`SERVERS`], and `store export` does not move them.

use crate::election::LEADER_KEY;
use crate::store::{EtcdStore, Store, StoreError};
use etcd_client::PutOptions;
use std::time::Duration;
use tokio::sync::watch;
use tugboat_api::wire::{ServerInfo, ServerRole};

pub const SERVERS: &str = "/servers/";

/// This server, and whether others may share its store.
#[derive(Debug, Clone)]
pub struct ServerRegistry {
    pub this: ServerInfo,
    /// On etcd: the list is read from the store. Otherwise this server is the only one.
    pub shared: bool,
}

impl ServerRegistry {
    /// The servers, sorted by name and URL, each with its role.
    pub async fn list(&self, store: &dyn Store) -> Result<Vec<ServerInfo>, StoreError> {
        if !self.shared {
            return Ok(vec![ServerInfo {
                role: ServerRole::Leader,
                ..self.this.clone()
            }]);
        }
        let listing = store.list(SERVERS).await?;
        let leader = store
            .get(LEADER_KEY)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        Ok(with_roles(
            listing
                .items
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect(),
            leader.as_deref(),
        ))
    }
}

/// The records with the holder of the leader key as leader, the others followers.
fn with_roles(mut servers: Vec<ServerInfo>, leader: Option<&str>) -> Vec<ServerInfo> {
    for server in &mut servers {
        server.role = if Some(server.id.as_str()) == leader {
            ServerRole::Leader
        } else {
            ServerRole::Follower
        };
    }
    servers.sort_by(|a, b| (&a.name, &a.api_url).cmp(&(&b.name, &b.api_url)));
    servers
}

/// Keeps this server's record in etcd, bound to a lease of `ttl` renewed every `ttl / 4`,
/// until `shutdown` (then the lease is revoked). A lapsed lease (cut off from etcd for longer
/// than `ttl`) is granted again and the record written again.
pub async fn keep_registered(
    store: EtcdStore,
    this: ServerInfo,
    key: String,
    ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let value = serde_json::to_string(&this).expect("server records serialize");
    let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
    let etcd_key = store.etcd_key(&format!("{SERVERS}{key}"));
    loop {
        let registered = async {
            let lease = store
                .call(|mut client| async move { client.lease_grant(seconds, None).await })
                .await?
                .id();
            let (k, v) = (etcd_key.clone(), value.clone());
            store
                .call(|mut client| {
                    let (k, v) = (k.clone(), v.clone());
                    async move {
                        client
                            .put(k, v, Some(PutOptions::new().with_lease(lease)))
                            .await
                    }
                })
                .await?;
            Ok::<i64, etcd_client::Error>(lease)
        };
        let lease = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            lease = registered => lease,
        };
        if let Ok(lease) = lease {
            let renewing = renew(&store, lease, ttl);
            tokio::select! {
                _ = stopped(&mut shutdown) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        store.call(|mut client| async move { client.lease_revoke(lease).await }),
                    )
                    .await;
                    return;
                }
                _ = renewing => {}
            }
        }
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(ttl / 4) => {}
        }
    }
}

/// Returns when `shutdown` says stop (the value is not held across an await).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Renews `lease` every `ttl / 4`; returns when it has lapsed or etcd stops answering.
async fn renew(store: &EtcdStore, lease: i64, ttl: Duration) {
    let (member, mut client) = store.stream_client();
    let Ok((mut keeper, mut responses)) = client.lease_keep_alive(lease).await else {
        store.skip(member);
        return;
    };
    loop {
        let renewal = async {
            keeper.keep_alive().await?;
            responses.message().await
        };
        match tokio::time::timeout(ttl / 2, renewal).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return,
            _ => {
                store.skip(member);
                return;
            }
        }
        tokio::time::sleep(ttl / 4).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{put, EmbeddedStore, EmbeddedStoreOptions};

    fn server(name: &str, id: &str) -> ServerInfo {
        ServerInfo {
            name: name.into(),
            id: id.into(),
            api_url: format!("http://{id}"),
            version: "0.1.0".into(),
            started_ms: 1,
            role: ServerRole::Follower,
        }
    }

    #[test]
    fn the_holder_of_the_leader_key_leads() {
        let servers = with_roles(
            vec![server("b", "b:1"), server("a", "a:1"), server("c", "c:1")],
            Some("b:1"),
        );
        let roles: Vec<_> = servers.iter().map(|s| (s.name.as_str(), s.role)).collect();
        assert_eq!(
            roles,
            [
                ("a", ServerRole::Follower),
                ("b", ServerRole::Leader),
                ("c", ServerRole::Follower)
            ]
        );
        assert!(with_roles(vec![server("a", "a:1")], None)
            .iter()
            .all(|s| s.role == ServerRole::Follower));
    }

    #[tokio::test]
    async fn a_server_alone_on_its_store_is_the_list_and_leads() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("store.log"),
            EmbeddedStoreOptions::default(),
        )
        .unwrap();
        // Records on a store of one server are not read (there are none to read).
        put(&store, "/servers/x", b"{}".to_vec()).await.unwrap();
        let registry = ServerRegistry {
            this: server("a", "a:1"),
            shared: false,
        };
        let list = registry.list(&store).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].role, ServerRole::Leader);
    }

    #[tokio::test]
    async fn records_are_read_with_the_leader_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("store.log"),
            EmbeddedStoreOptions::default(),
        )
        .unwrap();
        for s in [server("a", "a:1"), server("b", "b:1")] {
            let key = format!("{SERVERS}{}", s.id);
            put(&store, &key, serde_json::to_vec(&s).unwrap())
                .await
                .unwrap();
        }
        put(&store, "/servers/garbage", b"not json".to_vec())
            .await
            .unwrap();
        put(&store, LEADER_KEY, b"a:1".to_vec()).await.unwrap();
        let registry = ServerRegistry {
            this: server("a", "a:1"),
            shared: true,
        };
        let list = registry.list(&store).await.unwrap();
        let roles: Vec<_> = list.iter().map(|s| (s.id.as_str(), s.role)).collect();
        assert_eq!(
            roles,
            [("a:1", ServerRole::Leader), ("b:1", ServerRole::Follower)]
        );
    }
}
