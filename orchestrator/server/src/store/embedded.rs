//! The default store: everything in memory, every write in an fsynced log (see [`super::log`]).

use super::log::{LogFile, Record};
use super::{
    Compare, EventKind, KeyValue, Listing, Operation, Revision, Store, StoreError, WatchEvent,
    Watcher,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct EmbeddedStoreOptions {
    /// Events kept for watches that start in the past.
    pub history_events: usize,
    /// Compact when the log is larger than this and than 4x the live data.
    pub compact_min_bytes: u64,
}

impl Default for EmbeddedStoreOptions {
    fn default() -> Self {
        EmbeddedStoreOptions {
            history_events: 20_000,
            compact_min_bytes: 16 << 20,
        }
    }
}

struct State {
    data: BTreeMap<String, KeyValue>,
    revision: Revision,
    /// Events with revisions in (history_floor, revision], oldest first.
    history: VecDeque<WatchEvent>,
    history_floor: Revision,
    live_bytes: u64,
    log: Option<LogFile>,
    options: EmbeddedStoreOptions,
    metrics: super::StoreMetrics,
}

struct Shared {
    state: Mutex<State>,
    revision_tx: watch::Sender<Revision>,
}

/// The embedded backend. Clones share one store.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

impl EmbeddedStore {
    /// A store that lives only in memory: for tests and the scheduler benchmark.
    pub fn in_memory() -> EmbeddedStore {
        Self::from_state(State::empty(EmbeddedStoreOptions::default(), None))
    }

    /// Open (or create) the store file at `path`, replaying its log.
    pub fn open(path: &Path, options: EmbeddedStoreOptions) -> Result<EmbeddedStore, StoreError> {
        let (log, recovery) = LogFile::open(path)?;
        let mut state = State::empty(options, None);
        for record in recovery.records {
            state.replay(record);
        }
        state.metrics.log_bytes.set(log.len() as i64);
        state.log = Some(log);
        Ok(Self::from_state(state))
    }

    fn from_state(state: State) -> EmbeddedStore {
        let (revision_tx, _) = watch::channel(state.revision);
        EmbeddedStore {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                revision_tx,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (writes apply after the log).
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Synchronous form of [`Store::commit`], for the crash test's writer and the benchmark.
    pub fn commit_now(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        let revision = {
            let mut state = self.lock();
            state.commit(compares, operations)?
        };
        self.shared.revision_tx.send_replace(revision);
        Ok(revision)
    }

    /// Synchronous form of [`Store::get`].
    pub fn get_now(&self, key: &str) -> Option<KeyValue> {
        self.lock().data.get(key).cloned()
    }
}

impl State {
    fn empty(options: EmbeddedStoreOptions, log: Option<LogFile>) -> State {
        State {
            data: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            history_floor: 0,
            live_bytes: 0,
            log,
            options,
            metrics: Default::default(),
        }
    }

    fn replay(&mut self, record: Record) {
        match record {
            Record::SnapshotStart { revision } => {
                self.data.clear();
                self.history.clear();
                self.live_bytes = 0;
                self.revision = revision;
                self.history_floor = revision;
            }
            Record::SnapshotEntry(kv) => {
                self.live_bytes += (kv.key.len() + kv.value.len()) as u64;
                self.data.insert(kv.key.clone(), kv);
            }
            Record::Commit {
                revision,
                operations,
            } => self.apply(revision, operations),
        }
    }

    fn check(&self, compares: &[Compare]) -> Result<(), StoreError> {
        for Compare::ModRevision { key, revision } in compares {
            let found = self.data.get(key).map_or(0, |kv| kv.mod_revision);
            if found != *revision {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *revision,
                    found,
                });
            }
        }
        Ok(())
    }

    fn commit(
        &mut self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        self.check(&compares)?;
        let revision = self.revision + 1;
        let record = Record::Commit {
            revision,
            operations,
        };
        if let Some(log) = self.log.as_mut() {
            let started = std::time::Instant::now();
            log.append(std::slice::from_ref(&record))?;
            self.metrics
                .append_latency
                .observe(started.elapsed().as_secs_f64());
            self.metrics.log_bytes.set(log.len() as i64);
        }
        let Record::Commit { operations, .. } = record else {
            unreachable!()
        };
        self.apply(revision, operations);
        self.maybe_compact()?;
        Ok(revision)
    }

    fn apply(&mut self, revision: Revision, operations: Vec<Operation>) {
        self.revision = revision;
        for op in operations {
            let event = match op {
                Operation::Put { key, value } => {
                    let create_revision = self
                        .data
                        .get(&key)
                        .map_or(revision, |kv| kv.create_revision);
                    if let Some(old) = self.data.get(&key) {
                        self.live_bytes -= (old.key.len() + old.value.len()) as u64;
                    }
                    self.live_bytes += (key.len() + value.len()) as u64;
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: revision,
                    };
                    self.data.insert(key, kv.clone());
                    WatchEvent {
                        kind: EventKind::Put,
                        kv,
                    }
                }
                Operation::Delete { key } => {
                    let Some(old) = self.data.remove(&key) else {
                        continue;
                    };
                    self.live_bytes -= (old.key.len() + old.value.len()) as u64;
                    let kv = KeyValue {
                        key,
                        value: vec![],
                        create_revision: old.create_revision,
                        mod_revision: revision,
                    };
                    WatchEvent {
                        kind: EventKind::Delete,
                        kv,
                    }
                }
            };
            self.history.push_back(event);
        }
        while self.history.len() > self.options.history_events {
            let dropped = self.history.pop_front().expect("non-empty");
            self.history_floor = dropped.kv.mod_revision;
        }
        // Never split one revision's events: drop the rest of a partly dropped revision.
        while self
            .history
            .front()
            .is_some_and(|e| e.kv.mod_revision <= self.history_floor)
        {
            self.history.pop_front();
        }
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        if log.len() < self.options.compact_min_bytes || log.len() < 4 * self.live_bytes {
            return Ok(());
        }
        let mut records = Vec::with_capacity(self.data.len() + 1);
        records.push(Record::SnapshotStart {
            revision: self.revision,
        });
        records.extend(self.data.values().cloned().map(Record::SnapshotEntry));
        log.rewrite(&records)?;
        self.metrics.compactions.inc();
        self.metrics.log_bytes.set(log.len() as i64);
        Ok(())
    }

    fn events_since(&self, prefix: &str, from: Revision) -> Result<Vec<WatchEvent>, StoreError> {
        if from <= self.history_floor {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: self.history_floor + 1,
            });
        }
        let start = self.history.partition_point(|e| e.kv.mod_revision < from);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.kv.key.starts_with(prefix))
            .cloned()
            .collect())
    }
}

struct EmbeddedWatcher {
    store: EmbeddedStore,
    prefix: String,
    next: Revision,
    revision_rx: watch::Receiver<Revision>,
}

#[async_trait]
impl Watcher for EmbeddedWatcher {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            {
                let state = self.store.lock();
                let events = state.events_since(&self.prefix, self.next)?;
                self.next = state.revision + 1;
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            self.revision_rx
                .changed()
                .await
                .map_err(|_| StoreError::Closed)?;
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.get_now(key))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.lock();
        let items = state
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(Listing {
            items,
            revision: state.revision,
        })
    }

    async fn commit(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        self.commit_now(compares, operations)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watcher>, StoreError> {
        let revision_rx = self.shared.revision_tx.subscribe();
        let state = self.lock();
        let next = if from == 0 { state.revision + 1 } else { from };
        state.events_since(prefix, next)?;
        drop(state);
        Ok(Box::new(EmbeddedWatcher {
            store: self.clone(),
            prefix: prefix.into(),
            next,
            revision_rx,
        }))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.lock().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = self.lock();
        let floor = revision.saturating_sub(1).min(state.revision);
        if floor > state.history_floor {
            state.history_floor = floor;
            while state
                .history
                .front()
                .is_some_and(|e| e.kv.mod_revision <= floor)
            {
                state.history.pop_front();
            }
        }
        Ok(())
    }

    fn metrics(&self) -> Option<super::StoreMetrics> {
        let state = self.lock();
        state.log.as_ref().map(|_| state.metrics.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{compare_and_put, delete, put};
    use std::time::Duration;

    #[tokio::test]
    async fn revisions_compare_and_swap_and_prefix_lists() {
        let store = EmbeddedStore::in_memory();
        let r1 = put(&store, "/services/web", b"1".to_vec()).await.unwrap();
        let r2 = put(&store, "/services/db", b"2".to_vec()).await.unwrap();
        put(&store, "/nodes/n1", b"n".to_vec()).await.unwrap();
        assert_eq!((r1, r2), (1, 2));
        let listing = store.list("/services/").await.unwrap();
        assert_eq!(listing.revision, 3);
        assert_eq!(
            listing
                .items
                .iter()
                .map(|kv| kv.key.as_str())
                .collect::<Vec<_>>(),
            ["/services/db", "/services/web"]
        );
        // Stale CAS fails and changes nothing; fresh CAS succeeds.
        let err = compare_and_put(&store, "/services/web", 0, b"x".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { found: 1, .. }),
            "{err}"
        );
        let r4 = compare_and_put(&store, "/services/web", 1, b"3".to_vec())
            .await
            .unwrap();
        let kv = store.get("/services/web").await.unwrap().unwrap();
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.value),
            (1, r4, b"3".to_vec())
        );
    }

    #[tokio::test]
    async fn a_watch_from_a_list_revision_misses_nothing() {
        let store = EmbeddedStore::in_memory();
        put(&store, "/i/a", b"1".to_vec()).await.unwrap();
        let listing = store.list("/i/").await.unwrap();
        // Writes between the list and the watch.
        put(&store, "/i/b", b"2".to_vec()).await.unwrap();
        put(&store, "/other", b"x".to_vec()).await.unwrap();
        delete(&store, "/i/a").await.unwrap();
        let mut watcher = store.watch("/i/", listing.revision + 1).await.unwrap();
        let events = watcher.next().await.unwrap();
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision))
            .collect();
        assert_eq!(
            seen,
            [(EventKind::Put, "/i/b", 2), (EventKind::Delete, "/i/a", 4)]
        );
        // And it waits for the next one.
        let store2 = store.clone();
        tokio::spawn(async move { put(&store2, "/i/c", b"3".to_vec()).await.unwrap() });
        let events = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(events[0].kv.key, "/i/c");
    }

    #[tokio::test]
    async fn a_watch_too_far_back_is_told_compacted() {
        let options = EmbeddedStoreOptions {
            history_events: 2,
            ..Default::default()
        };
        let store = EmbeddedStore::from_state(State::empty(options, None));
        for i in 0..5 {
            put(&store, &format!("/k/{i}"), vec![]).await.unwrap();
        }
        let err = store.watch("/k/", 1).await.err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::Compacted {
                    requested: 1,
                    oldest: 4
                }
            ),
            "{err}"
        );
        assert!(store.watch("/k/", 4).await.is_ok());
    }

    #[tokio::test]
    async fn reopening_replays_the_log_through_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let options = EmbeddedStoreOptions {
            history_events: 100,
            compact_min_bytes: 512,
        };
        let store = EmbeddedStore::open(&path, options.clone()).unwrap();
        for i in 0..200u32 {
            put(&store, &format!("/k/{}", i % 7), i.to_le_bytes().to_vec())
                .await
                .unwrap();
        }
        delete(&store, "/k/0").await.unwrap();
        let before = store.list("/").await.unwrap();
        drop(store);
        assert!(
            std::fs::metadata(&path).unwrap().len() < 2048,
            "the log was compacted"
        );
        let store = EmbeddedStore::open(&path, options).unwrap();
        assert_eq!(store.list("/").await.unwrap(), before);
        assert_eq!(put(&store, "/k/9", vec![]).await.unwrap(), 202);
    }
}
