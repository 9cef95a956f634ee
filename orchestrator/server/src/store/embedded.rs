//! The default store: everything in memory, every write in an fsynced log (see [`super::log`]).
//!
//! Group commit: a commit checks its compares, writes its record and applies it under the
//! store's lock, then waits, outside the lock, until a syncer thread's `fdatasync` has
//! covered it. One fsync covers every record written before it started, so under many
//! concurrent writers (thousands of agents reporting) the fsyncs are shared instead of taken
//! one at a time under the lock. Nothing undurable is ever shown: commits return, watches
//! deliver and reads answer only up to the durable revision. The log is a sequence, so what
//! a crash can lose is a suffix of writes that nobody was told about.

use super::log::{LogFile, Record};
use super::{
    Compare, EventKind, KeyValue, Listing, Operation, Revision, Store, StoreError, WatchEvent,
    Watcher,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct EmbeddedStoreOptions {
    /// Events always kept for watches that start in the past (or that fall behind).
    pub history_events: usize,
    /// Beyond `history_events`, events younger than this are kept too, up to
    /// `history_max_events`: a burst (100,000 instances applied at once makes ~300,000
    /// events in a minute) does not outrun the server's own watchers (the controllers'
    /// cache, the instance feed), which would then list everything again, and make every
    /// agent list, at the worst moment. etcd keeps all history until it is compacted;
    /// Kubernetes compacts every 5 minutes.
    pub history_keep: Duration,
    pub history_max_events: usize,
    /// Compact when the log is larger than this and than 4x the live data.
    pub compact_min_bytes: u64,
}

impl Default for EmbeddedStoreOptions {
    fn default() -> Self {
        EmbeddedStoreOptions {
            history_events: 20_000,
            history_keep: Duration::from_secs(60),
            history_max_events: 500_000,
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
    /// When each revision in the history was made, oldest first.
    history_times: VecDeque<(Revision, std::time::Instant)>,
    live_bytes: u64,
    log: Option<LogFile>,
    options: EmbeddedStoreOptions,
    metrics: super::StoreMetrics,
}

/// What the syncer has made durable, and what is waiting for it.
#[derive(Default)]
struct Durability {
    /// The highest revision written to the file.
    written: Revision,
    /// Every revision up to this one is on disk.
    durable: Revision,
    /// An fsync failed: the file's state is unknown, and no later write is acknowledged.
    failed: Option<(PathBuf, String)>,
}

#[derive(Default)]
struct Syncing {
    state: Mutex<Durability>,
    /// Wakes the syncer (something written) and blocking waiters (something durable).
    changed: Condvar,
}

impl Syncing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Durability> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Shared {
    state: Mutex<State>,
    /// The durable revision: what watches deliver up to and reads wait for.
    revision_tx: watch::Sender<Revision>,
    syncing: Arc<Syncing>,
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
        let syncing = Arc::new(Syncing::default());
        {
            let mut durability = syncing.lock();
            durability.written = state.revision;
            durability.durable = state.revision;
        }
        let logged = state.log.is_some();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            revision_tx,
            syncing,
        });
        if logged {
            let weak = Arc::downgrade(&shared);
            let syncing = shared.syncing.clone();
            let latency = shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .metrics
                .append_latency
                .clone();
            std::thread::Builder::new()
                .name("store-sync".into())
                .spawn(move || run_syncer(weak, syncing, latency))
                .expect("the store's sync thread starts");
        }
        EmbeddedStore { shared }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (writes apply after the log).
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Check, write and apply a commit; it is durable once [`Self::durable`] reaches it.
    fn commit_unsynced(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        let syncing = &self.shared.syncing;
        if let Some(failed) = &syncing.lock().failed {
            return Err(sync_failed(failed));
        }
        let mut state = self.lock();
        let revision = state.commit(compares, operations)?;
        if state.log.is_none() {
            drop(state);
            let mut durability = syncing.lock();
            durability.durable = durability.durable.max(revision);
            self.shared
                .revision_tx
                .send_modify(|durable| *durable = (*durable).max(revision));
        } else {
            drop(state);
            let mut durability = syncing.lock();
            durability.written = durability.written.max(revision);
            syncing.changed.notify_all();
        }
        Ok(revision)
    }

    /// Wait until `revision` is durable.
    async fn durable(&self, revision: Revision) -> Result<Revision, StoreError> {
        let mut rx = self.shared.revision_tx.subscribe();
        loop {
            if *rx.borrow_and_update() >= revision {
                return Ok(revision);
            }
            if let Some(failed) = &self.shared.syncing.lock().failed {
                return Err(sync_failed(failed));
            }
            rx.changed().await.map_err(|_| StoreError::Closed)?;
        }
    }

    /// Synchronous form of [`Store::commit`], for the crash test's writer and the benchmark.
    pub fn commit_now(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        let revision = self.commit_unsynced(compares, operations)?;
        let syncing = &self.shared.syncing;
        let mut durability = syncing.lock();
        loop {
            if durability.durable >= revision {
                return Ok(revision);
            }
            if let Some(failed) = &durability.failed {
                return Err(sync_failed(failed));
            }
            durability = syncing
                .changed
                .wait(durability)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Synchronous form of [`Store::get`] (what is applied, durable or about to be).
    pub fn get_now(&self, key: &str) -> Option<KeyValue> {
        self.lock().data.get(key).cloned()
    }
}

fn sync_failed((path, error): &(PathBuf, String)) -> StoreError {
    StoreError::Io {
        path: path.clone(),
        source: std::io::Error::other(format!(
            "an earlier fsync failed ({error}); restart the server to replay the log"
        )),
    }
}

/// The syncer: while something is written and not yet durable, fsync the log and publish
/// the revision it covers. Ends when the store is dropped.
fn run_syncer(
    store: Weak<Shared>,
    syncing: Arc<Syncing>,
    latency: prometheus_client::metrics::histogram::Histogram,
) {
    loop {
        {
            let mut durability = syncing.lock();
            while durability.written <= durability.durable || durability.failed.is_some() {
                if store.strong_count() == 0 {
                    return;
                }
                durability = syncing
                    .changed
                    .wait_timeout(durability, Duration::from_millis(200))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let Some(shared) = store.upgrade() else {
            return;
        };
        // Everything up to `target` is written: the fsync that starts now covers it.
        let (target, file, path) = {
            let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let log = state.log.as_ref().expect("a logged store");
            (state.revision, log.handle(), log.path().to_path_buf())
        };
        let started = std::time::Instant::now();
        let result = file.sync_data();
        latency.observe(started.elapsed().as_secs_f64());
        let durable = {
            let mut durability = syncing.lock();
            match &result {
                Ok(()) => durability.durable = durability.durable.max(target),
                Err(e) => durability.failed = Some((path, e.to_string())),
            }
            syncing.changed.notify_all();
            durability.durable
        };
        // On failure too: the waiters wake and see it.
        shared.revision_tx.send_replace(durable);
    }
}

impl State {
    fn empty(options: EmbeddedStoreOptions, log: Option<LogFile>) -> State {
        State {
            data: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            history_floor: 0,
            history_times: VecDeque::new(),
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
                self.history_times.clear();
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
        // As in etcd, a transaction that changes nothing (deletes of keys that are not
        // there) raises no revision: every revision has an event, so a watcher that has
        // seen revision R has seen everything up to R.
        let changes = operations.iter().any(|op| match op {
            Operation::Put { .. } => true,
            Operation::Delete { key } => self.data.contains_key(key),
        });
        if !changes {
            return Ok(self.revision);
        }
        let revision = self.revision + 1;
        let record = Record::Commit {
            revision,
            operations,
        };
        if let Some(log) = self.log.as_mut() {
            log.write(std::slice::from_ref(&record))?;
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
        let now = std::time::Instant::now();
        self.history_times.push_back((revision, now));
        while self.history.len() > self.options.history_events {
            let young = self
                .history_times
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) < self.options.history_keep);
            if young && self.history.len() <= self.options.history_max_events {
                break;
            }
            let dropped = self.history.pop_front().expect("non-empty");
            self.history_floor = dropped.kv.mod_revision;
            while self
                .history_times
                .front()
                .is_some_and(|(r, _)| *r <= self.history_floor)
            {
                self.history_times.pop_front();
            }
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

    /// Events under `prefix` with revisions in [from, to].
    fn events_between(
        &self,
        prefix: &str,
        from: Revision,
        to: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
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
            .take_while(|e| e.kv.mod_revision <= to)
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
            let durable = *self.revision_rx.borrow_and_update();
            if durable >= self.next {
                let events = self
                    .store
                    .lock()
                    .events_between(&self.prefix, self.next, durable)?;
                self.next = durable + 1;
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
    // Reads wait until what they saw is durable: nothing a crash could take back is shown.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (value, revision) = {
            let state = self.lock();
            (state.data.get(key).cloned(), state.revision)
        };
        self.durable(revision).await?;
        Ok(value)
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let listing = {
            let state = self.lock();
            let items = state
                .data
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            Listing {
                items,
                revision: state.revision,
            }
        };
        self.durable(listing.revision).await?;
        Ok(listing)
    }

    async fn commit(
        &self,
        compares: Vec<Compare>,
        operations: Vec<Operation>,
    ) -> Result<Revision, StoreError> {
        let revision = self.commit_unsynced(compares, operations)?;
        self.durable(revision).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watcher>, StoreError> {
        let revision_rx = self.shared.revision_tx.subscribe();
        let durable = *revision_rx.borrow();
        let state = self.lock();
        let next = if from == 0 { durable + 1 } else { from };
        state.events_between(prefix, next, next)?;
        drop(state);
        Ok(Box::new(EmbeddedWatcher {
            store: self.clone(),
            prefix: prefix.into(),
            next,
            revision_rx,
        }))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(*self.shared.revision_tx.borrow())
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
            while state
                .history_times
                .front()
                .is_some_and(|(r, _)| *r <= floor)
            {
                state.history_times.pop_front();
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
            history_keep: Duration::ZERO,
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
    async fn a_burst_is_kept_for_watchers_that_fall_behind_up_to_the_cap() {
        let options = EmbeddedStoreOptions {
            history_events: 2,
            history_keep: Duration::from_secs(600),
            history_max_events: 6,
            ..Default::default()
        };
        let store = EmbeddedStore::from_state(State::empty(options, None));
        for i in 0..6 {
            put(&store, &format!("/k/{i}"), vec![]).await.unwrap();
        }
        // Six young events: all kept beyond history_events.
        let mut watcher = store.watch("/k/", 1).await.unwrap();
        assert_eq!(watcher.next().await.unwrap().len(), 6);
        // Past the cap, the oldest go, young or not.
        put(&store, "/k/6", vec![]).await.unwrap();
        assert!(matches!(
            store.watch("/k/", 1).await.err(),
            Some(StoreError::Compacted { oldest: 2, .. })
        ));
        assert!(store.watch("/k/", 2).await.is_ok());
    }

    #[tokio::test]
    async fn reopening_replays_the_log_through_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let options = EmbeddedStoreOptions {
            history_events: 100,
            compact_min_bytes: 512,
            ..Default::default()
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_fsyncs_and_all_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let store = EmbeddedStore::open(&path, EmbeddedStoreOptions::default()).unwrap();
        let mut watcher = store.watch("/k/", 1).await.unwrap();
        let writers: Vec<_> = (0..200u32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    put(&store, &format!("/k/{i:03}"), i.to_le_bytes().to_vec()).await
                })
            })
            .collect();
        let mut revisions = vec![];
        for writer in writers {
            revisions.push(writer.await.unwrap().unwrap());
        }
        revisions.sort_unstable();
        assert_eq!(revisions, (1..=200).collect::<Vec<_>>());
        // A watch sees every one, in order, once durable.
        let mut seen = vec![];
        while seen.len() < 200 {
            let events = tokio::time::timeout(Duration::from_secs(5), watcher.next())
                .await
                .unwrap()
                .unwrap();
            seen.extend(events.iter().map(|e| e.kv.mod_revision));
        }
        assert_eq!(seen, (1..=200).collect::<Vec<_>>());
        assert_eq!(store.current_revision().await.unwrap(), 200);
        let before = store.list("/").await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(&path, EmbeddedStoreOptions::default()).unwrap();
        assert_eq!(store.list("/").await.unwrap(), before);
    }

    #[tokio::test]
    async fn a_commit_that_changes_nothing_raises_no_revision() {
        let store = EmbeddedStore::in_memory();
        let r1 = put(&store, "/k/a", b"1".to_vec()).await.unwrap();
        assert_eq!(delete(&store, "/k/missing").await.unwrap(), r1);
        assert_eq!(store.current_revision().await.unwrap(), r1);
        assert_eq!(delete(&store, "/k/a").await.unwrap(), r1 + 1);
    }
}
