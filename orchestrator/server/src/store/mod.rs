//! The store: keys with revisions, compare-and-swap transactions, prefix lists and watches.
//!
//! The trait offers what etcd v3 offers and nothing more: one global revision that every write raises, per-key create and mod revisions, a
//! transaction of "these keys are still at these revisions" compares and put/delete
//! operations, and watches that start at a revision and deliver every later event for a
//! prefix, in order, or fail with [`StoreError::Compacted`] if that history is gone (the
//! watcher then lists again and watches from the list's revision).
//!
//! [`EmbeddedStore`] is the default backend: memory plus one append-only, checksummed,
//! fsynced log file (see [`log`]). [`EtcdStore`] keeps the same keys in etcd v3, for several
//! servers on one etcd cluster (see [`etcd`]).

mod embedded;
pub mod etcd;
pub mod log;
pub mod transfer;

pub use embedded::{EmbeddedStore, EmbeddedStoreOptions};
pub use etcd::{EtcdOptions, EtcdStore, DEFAULT_ETCD_PREFIX};
/// Revisions and event kinds travel in watches: the wire crate defines them.
pub use tugboat_api::wire::{EventKind, Revision};

use async_trait::async_trait;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that created this key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the transaction that last changed it.
    pub mod_revision: Revision,
}

/// A condition of a transaction. `ModRevision { revision: 0 }` means "does not exist".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    ModRevision { key: String, revision: Revision },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// One change. For a delete, `kv.value` is empty and `kv.mod_revision` is the delete's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// A consistent list: the keys under a prefix as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict on `{key}`: expected revision {expected}, found {found} (someone else changed it; read it again and retry)")]
    Conflict {
        key: String,
        expected: Revision,
        found: Revision,
    },
    #[error("revision {requested} is compacted (oldest kept is {oldest}): list again and watch from the list's revision")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("store file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store file {path} is not a tugboat store: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the store is closed")]
    Closed,
    #[error("{flag}: {reason}")]
    InvalidOption { flag: &'static str, reason: String },
    #[error("etcd {operation} of `{key}` failed: {source}")]
    Etcd {
        operation: &'static str,
        key: String,
        source: etcd_client::Error,
    },
    #[error("the watch of `{prefix}` was ended by etcd: watch again from the last revision seen")]
    WatchEnded { prefix: String },
    #[error("this server does not lead (the leader key `{key}` is not at its term's revision): its controllers write nothing")]
    NotLeader { key: String },
}

/// Keys, revisions, transactions and watches. Implemented by [`EmbeddedStore`] and
/// [`EtcdStore`] (each method is the etcd call of the same meaning); `tests/store_conformance.rs`
/// runs one suite against both.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;
    /// Apply all `operations` at one new revision if every compare holds; the new revision.
    /// A failed compare applies nothing and returns [`StoreError::Conflict`].
    async fn commit(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError>;
    /// Every event under `prefix` with revision >= `from`; `from == 0` means "from now".
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watcher>, StoreError>;
    async fn current_revision(&self) -> Result<Revision, StoreError>;
    /// Forget the history before `revision` (etcd's compaction): later watches from an
    /// earlier revision fail [`StoreError::Compacted`]; the keys' values are untouched.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// What the backend measures of its own disk (the embedded store's log); `None` when
    /// it keeps no file of its own (etcd measures itself: its `/metrics`).
    fn metrics(&self) -> Option<StoreMetrics> {
        None
    }
}

/// The embedded store's disk, for `/metrics`. Clones share the counts.
#[derive(Clone)]
pub struct StoreMetrics {
    /// One `fdatasync` of the log (with group commit, one covers many writes).
    pub append_latency: prometheus_client::metrics::histogram::Histogram,
    /// The log file's size now.
    pub log_bytes: prometheus_client::metrics::gauge::Gauge,
    /// Times the log was rewritten as a snapshot.
    pub compactions: prometheus_client::metrics::counter::Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 50 µs to ~1.6 s.
            append_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
            ),
            log_bytes: Default::default(),
            compactions: Default::default(),
        }
    }
}

#[async_trait]
pub trait Watcher: Send {
    /// The next batch of events (never empty); waits until there is one.
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError>;
}

/// Conveniences over [`Store::commit`].
pub async fn put(store: &dyn Store, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
    store
        .commit(
            vec![],
            vec![Operation::Put {
                key: key.into(),
                value,
            }],
        )
        .await
}

/// Put only if the key is still at `revision` (0: only if it does not exist).
pub async fn compare_and_put(
    store: &dyn Store,
    key: &str,
    revision: Revision,
    value: Vec<u8>,
) -> Result<Revision, StoreError> {
    store
        .commit(
            vec![Compare::ModRevision {
                key: key.into(),
                revision,
            }],
            vec![Operation::Put {
                key: key.into(),
                value,
            }],
        )
        .await
}

pub async fn delete(store: &dyn Store, key: &str) -> Result<Revision, StoreError> {
    store
        .commit(vec![], vec![Operation::Delete { key: key.into() }])
        .await
}
