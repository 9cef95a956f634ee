//! The etcd v3 backend: each [`Store`] call is the etcd call of the same meaning, under a
//! key prefix (`--etcd-prefix`, default `/tugboat`), so several clusters can share one etcd.
//!
//! Revisions are etcd's own (one cluster-wide counter: they rise by more than one when
//! others write to the same etcd, which the trait allows). A failed compare is reported with
//! the key and the revision found, read in the same transaction's failure branch. Lists are
//! read in pages at one revision, so a list of any size is consistent. A watch from a
//! compacted revision fails [`StoreError::Compacted`] with etcd's compaction revision.
//!
//! etcd limits a transaction to `--max-txn-ops` operations (128 by default) and a request to
//! `--max-request-bytes` (1.5 MiB): tugboat's batches (an apply of many services, pruning
//! of events) need more, so docs/ARCHITECTURE.md asks for 10000 and 8 MiB; a transaction
//! over the limit fails with etcd's message, nothing applied.

mod options;

pub use options::{EtcdOptions, EtcdTls};

use super::{
    Compare, EventKind, KeyValue, Listing, Operation, Revision, Store, StoreError, WatchEvent,
    Watcher,
};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, GetOptions, TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::HashMap;
use std::time::Duration;

pub const DEFAULT_ETCD_PREFIX: &str = "/tugboat";

/// A list is read in pages of this many keys, all at the revision of the first page.
const PAGE: i64 = 1000;
/// Large lists and watch batches: tonic's default cap of 4 MiB per message is too small.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The etcd backend. Clones share the connections.
///
/// One client per member, and requests go to one member until it cannot be reached (or has
/// no leader), then to the next: tonic's balanced channel kept sending requests to a killed
/// member. A request is tried on each member at most once; one that fails unreachable was
/// not applied by that member (and a transaction's compares make a repeat harmless).
#[derive(Clone)]
pub struct EtcdStore {
    clients: std::sync::Arc<Vec<Client>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    prefix: String,
    endpoints: String,
}

impl EtcdStore {
    /// Connect and check that etcd answers (so a wrong endpoint fails at start, by name).
    pub async fn connect(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let endpoints = options.endpoints.join(",");
        let connect_options = options.connect_options()?;
        // Without authentication connecting is lazy; with it, a member that is down now
        // cannot log in and is left out (the others serve) until the server restarts.
        let mut clients = vec![];
        let mut failed = None;
        for endpoint in &options.endpoints {
            match Client::connect([endpoint], Some(connect_options.clone())).await {
                Ok(client) => clients.push(client),
                Err(source) => failed = Some(source),
            }
        }
        if clients.is_empty() {
            return Err(StoreError::Etcd {
                operation: "connect",
                key: endpoints,
                source: failed.expect("at least one endpoint was tried"),
            });
        }
        let store = EtcdStore {
            clients: std::sync::Arc::new(clients),
            current: Default::default(),
            prefix: options.prefix.clone(),
            endpoints,
        };
        store.current_revision().await?;
        Ok(store)
    }

    /// Run `op` on the current member; when it cannot be reached, on the next ones.
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        use std::sync::atomic::Ordering;
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            match op(self.clients[i].clone()).await {
                Err(e) if unreachable(&e) => {
                    let _ = self.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.expect("at least one member was tried"))
    }

    /// The endpoints, comma separated, as given.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The current member and its client, for streams (watches, lease renewals) that
    /// outlive one call (after [`EtcdStore::call`] or [`EtcdStore::skip`] moved on, the
    /// next one): a stream's failure is reported with [`EtcdStore::skip`] and this member.
    pub(crate) fn stream_client(&self) -> (usize, Client) {
        let n = self.clients.len();
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % n;
        (i, self.clients[i].clone())
    }

    /// A stream on `member` failed: use the next member from now on, unless another
    /// caller has moved on already. (Moving blindly, two streams failing on one dead
    /// member moved two steps, and a third back onto the dead one: the leader's lease then
    /// lapsed when one member of three went.)
    pub(crate) fn skip(&self, member: usize) {
        use std::sync::atomic::Ordering;
        let n = self.clients.len();
        let _ = self
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now % n == member).then_some((member + 1) % n)
            });
    }

    /// The etcd key of a store key.
    pub(crate) fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn store_key(&self, etcd_key: &[u8]) -> String {
        let key = String::from_utf8_lossy(etcd_key);
        key.strip_prefix(self.prefix.as_str())
            .unwrap_or(&key)
            .to_string()
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.store_key(kv.key()),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision() as Revision,
            mod_revision: kv.mod_revision() as Revision,
        }
    }

    fn error(&self, operation: &'static str, key: &str, source: etcd_client::Error) -> StoreError {
        if is_compacted(&source) {
            return StoreError::Compacted {
                requested: 0,
                oldest: 0,
            };
        }
        StoreError::Etcd {
            operation,
            key: format!("{key} (etcd {})", self.endpoints),
            source,
        }
    }
}

impl EtcdStore {
    async fn list_pages(&self, prefix: &str) -> Result<Listing, StoreError> {
        let etcd_prefix = self.etcd_key(prefix);
        let end = prefix_end(etcd_prefix.as_bytes());
        let mut items = vec![];
        let mut from = etcd_prefix.clone().into_bytes();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision != 0 {
                options = options.with_revision(revision as i64);
            }
            let response = self
                .call(|client| {
                    let (from, options) = (from.clone(), options.clone());
                    async move {
                        client
                            .kv_client()
                            .max_decoding_message_size(MAX_MESSAGE_BYTES)
                            .get(from, Some(options))
                            .await
                    }
                })
                .await
                .map_err(|e| self.error("list", &etcd_prefix, e))?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            items.extend(response.kvs().iter().map(|kv| self.key_value(kv)));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing { items, revision })
    }
}

/// The member did not take the request: down, unreachable, or without a leader.
fn unreachable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC's UNAVAILABLE (14): refused connections, "no leader" (with require-leader).
        etcd_client::Error::GRpcStatus(status) => status.code() as i32 == 14,
        _ => false,
    }
}

fn is_compacted(error: &etcd_client::Error) -> bool {
    error
        .to_string()
        .contains("required revision has been compacted")
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision() as Revision)
}

/// The end of the range of keys that start with `prefix` (etcd's `with_prefix`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let etcd_key = self.etcd_key(key);
        let response = self
            .call(|client| {
                let key = etcd_key.clone();
                async move { client.kv_client().get(key, None).await }
            })
            .await
            .map_err(|e| self.error("get", &etcd_key, e))?;
        Ok(response.kvs().first().map(|kv| self.key_value(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        // A compaction between two pages makes the later pages unreadable: read it again.
        let mut attempts = 0;
        loop {
            match self.list_pages(prefix).await {
                Err(StoreError::Compacted { .. }) if attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    async fn commit(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        // etcd refuses a transaction that names a key twice; the last operation on a key
        // decides what it holds afterwards, so only that one is sent.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, op) in operations.iter().enumerate() {
            let key = match op {
                Operation::Put { key, .. } | Operation::Delete { key } => key.as_str(),
            };
            last.insert(key, i);
        }
        let ops: Vec<TxnOp> = operations
            .iter()
            .enumerate()
            .filter(|(i, op)| {
                let key = match op {
                    Operation::Put { key, .. } | Operation::Delete { key } => key.as_str(),
                };
                last[key] == *i
            })
            .map(|(_, op)| match op {
                Operation::Put { key, value } => {
                    TxnOp::put(self.etcd_key(key), value.clone(), None)
                }
                Operation::Delete { key } => TxnOp::delete(self.etcd_key(key), None),
            })
            .collect();
        let etcd_compares: Vec<EtcdCompare> = compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| {
                EtcdCompare::mod_revision(self.etcd_key(key), CompareOp::Equal, *revision as i64)
            })
            .collect();
        // On failure, read the compared keys: the error names what was found.
        let reads: Vec<TxnOp> = compares
            .iter()
            .map(|Compare::ModRevision { key, .. }| {
                TxnOp::get(self.etcd_key(key), Some(GetOptions::new().with_keys_only()))
            })
            .collect();
        let txn = etcd_client::Txn::new()
            .when(etcd_compares)
            .and_then(ops)
            .or_else(reads);
        let first_key = compares
            .first()
            .map(|Compare::ModRevision { key, .. }| key.clone())
            .or_else(|| {
                operations.first().map(|op| match op {
                    Operation::Put { key, .. } | Operation::Delete { key } => key.clone(),
                })
            })
            .unwrap_or_default();
        let response = self
            .call(|client| {
                let txn = txn.clone();
                async move { client.kv_client().txn(txn).await }
            })
            .await
            .map_err(|e| self.error("transaction", &self.etcd_key(&first_key), e))?;
        if response.succeeded() {
            return Ok(header_revision(response.header()));
        }
        for (compare, read) in compares.iter().zip(response.op_responses()) {
            let Compare::ModRevision { key, revision } = compare;
            let found = match read {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.mod_revision() as Revision),
                _ => 0,
            };
            if found != *revision {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *revision,
                    found,
                });
            }
        }
        // A compared key changed and changed back between the transaction and nothing: not
        // possible (mod revisions only rise), but say what happened rather than succeed.
        let (key, expected) = compares
            .first()
            .map(|Compare::ModRevision { key, revision }| (key.clone(), *revision))
            .unwrap_or_default();
        Err(StoreError::Conflict {
            key,
            expected,
            found: expected,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watcher>, StoreError> {
        let etcd_prefix = self.etcd_key(prefix);
        let mut options = WatchOptions::new().with_prefix();
        if from != 0 {
            options = options.with_start_revision(from as i64);
        }
        let mut stream = self
            .call(|client| {
                let (key, options) = (etcd_prefix.clone(), options.clone());
                async move {
                    client
                        .watch_client()
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .watch(key, Some(options))
                        .await
                }
            })
            .await
            .map_err(|e| self.error("watch", &etcd_prefix, e))?;
        // A watch from a compacted revision is cancelled by etcd soon after it is created;
        // a read at that revision tells at once, so the caller learns it here, as from the
        // embedded store. The cancellation then gives the oldest revision kept.
        if from != 0 {
            let probe = self
                .call(|client| {
                    let key = etcd_prefix.clone();
                    let options = GetOptions::new()
                        .with_revision(from as i64)
                        .with_count_only();
                    async move { client.kv_client().get(key, Some(options)).await }
                })
                .await;
            if let Err(e) = probe {
                if is_compacted(&e) {
                    let oldest = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(Some(response)) = stream.message().await {
                            if response.compact_revision() != 0 {
                                return response.compact_revision() as Revision;
                            }
                        }
                        0
                    })
                    .await
                    .unwrap_or(0);
                    return Err(StoreError::Compacted {
                        requested: from,
                        oldest,
                    });
                }
                // A future revision (the usual list revision + 1) cannot be read yet; fine.
            }
        }
        Ok(Box::new(EtcdWatcher {
            store: self.clone(),
            prefix: etcd_prefix,
            from,
            stream,
        }))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let compacted = self
            .call(|client| async move { client.kv_client().compact(revision as i64, None).await })
            .await;
        match compacted {
            Ok(_) => Ok(()),
            // Already compacted at or past it: nothing to forget.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) => Err(self.error("compact", &self.etcd_key("/"), e)),
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        // A one-key read returns the store's revision in its header.
        let key = self.etcd_key("/");
        let response = self
            .call(|client| {
                let key = key.clone();
                async move {
                    client
                        .kv_client()
                        .get(key, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
            .map_err(|e| self.error("read", &key, e))?;
        Ok(header_revision(response.header()))
    }
}

struct EtcdWatcher {
    store: EtcdStore,
    prefix: String,
    from: Revision,
    stream: etcd_client::WatchStream,
}

#[async_trait]
impl Watcher for EtcdWatcher {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            let response = self
                .stream
                .message()
                .await
                .map_err(|e| self.store.error("watch", &self.prefix, e))?
                .ok_or_else(|| StoreError::WatchEnded {
                    prefix: self.prefix.clone(),
                })?;
            if response.compact_revision() != 0 {
                return Err(StoreError::Compacted {
                    requested: self.from,
                    oldest: response.compact_revision() as Revision,
                });
            }
            if response.canceled() {
                return Err(StoreError::WatchEnded {
                    prefix: self.prefix.clone(),
                });
            }
            let events: Vec<WatchEvent> = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = self.store.key_value(event.kv()?);
                    let kind = match event.event_type() {
                        etcd_client::EventType::Put => EventKind::Put,
                        etcd_client::EventType::Delete => EventKind::Delete,
                    };
                    Some(WatchEvent { kind, kv })
                })
                .collect();
            if let Some(last) = events.last() {
                self.from = last.kv.mod_revision + 1;
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
