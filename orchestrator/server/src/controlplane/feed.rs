//! The instance feed: one store watch per server on the instances, each change read once
//! and handed to the watches of the node it is for.
//!
//! Every agent long-polls `GET /v1/watch/instances?node=N`. Served straight from the store,
//! each of those polls was a store watch of its own that woke on every instance change in
//! the cluster and decoded each one to look at its node: with 5,000 agents, 5,000 decodes
//! per change (and on etcd, 5,000 etcd watches each sent every change). The feed is what
//! Nomad's per-node blocking queries and Kubernetes' watch cache are to their agents: a
//! single watch, a queue per node, and a wake-up only for the node a change is for.
//!
//! - A put goes to the node named in the instance; a delete to the node the instance was
//!   last seen on (an instance that never had a node concerns no agent).
//! - A node's queue keeps its changes for [`KEEP`] and at most [`PER_NODE`] of them. A poll
//!   from a revision the queue no longer covers answers `Compacted` (410): the agent lists
//!   its instances again, as after any compaction. A poll from before the feed started (the
//!   server just started or re-listed) is served by the store, as before.
//! - Values are kept as the store's JSON text, not decoded: the queues cost what the text
//!   does.

use crate::store::{EventKind, Revision, Store, StoreError, WatchEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tugboat_api::model::INSTANCES;
use tugboat_api::wire::ObjectChange;

/// What a watch answers, the objects as their stored JSON text.
pub type WatchBatch = tugboat_api::wire::WatchBatch<Box<RawValue>>;

/// JSON `null`: a delete's object.
pub fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// How long a change stays in its node's queue: longer than an agent takes to poll again,
/// or to move to another server.
pub const KEEP: Duration = Duration::from_secs(30);
/// At most this many changes per node; older ones are dropped (a poll that needed them
/// lists again).
pub const PER_NODE: usize = 512;

struct Change {
    revision: Revision,
    kind: EventKind,
    key: String,
    /// The instance's JSON (None for a delete).
    object: Option<Box<RawValue>>,
    at: Instant,
}

struct NodeQueue {
    changes: VecDeque<Arc<Change>>,
    /// Changes with revisions up to this one may have been dropped.
    floor: Revision,
    wake: watch::Sender<Revision>,
}

impl NodeQueue {
    fn new(floor: Revision) -> NodeQueue {
        NodeQueue {
            changes: VecDeque::new(),
            floor,
            wake: watch::channel(floor).0,
        }
    }

    fn trim(&mut self, now: Instant) {
        while let Some(front) = self.changes.front() {
            if self.changes.len() > PER_NODE || now.duration_since(front.at) > KEEP {
                self.floor = front.revision;
                self.changes.pop_front();
            } else {
                break;
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// None until the feed has listed the instances: polls go to the store meanwhile.
    start: Option<Revision>,
    /// Every change up to this revision has been routed.
    seen: Revision,
    nodes: HashMap<String, NodeQueue>,
    /// Instance key -> the node it was last seen on, to route its delete.
    homes: HashMap<String, String>,
    /// The other way: node -> the keys of its instances, to answer an agent's list without
    /// reading every instance of the cluster.
    on_node: HashMap<String, BTreeSet<String>>,
}

impl State {
    /// `key` is on `node` now (None: deleted); returns the node it was on.
    fn rehome(&mut self, key: &str, node: Option<&str>) -> Option<String> {
        let old = match node {
            Some(node) => self.homes.insert(key.to_string(), node.to_string()),
            None => self.homes.remove(key),
        };
        if old.as_deref() == node {
            return old;
        }
        if let Some(old) = &old {
            if let Some(keys) = self.on_node.get_mut(old) {
                keys.remove(key);
                if keys.is_empty() {
                    self.on_node.remove(old);
                }
            }
        }
        if let Some(node) = node {
            self.on_node
                .entry(node.to_string())
                .or_default()
                .insert(key.to_string());
        }
        old
    }
}

/// What a poll gets from the feed.
pub enum Poll {
    Batch(WatchBatch),
    /// The feed does not cover this revision yet (or any more, since it re-listed): ask
    /// the store.
    NotCovered,
}

#[derive(Default)]
pub struct InstanceFeed {
    state: Mutex<State>,
}

/// The node an instance's stored JSON names, read without decoding the rest of it.
pub fn node_of(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Home {
        #[serde(default)]
        node: Option<String>,
    }
    serde_json::from_slice::<Home>(json).ok()?.node
}

impl InstanceFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the feed current until `shutdown`: list, watch, route; list again after a
    /// store error (a compacted watch, a lost etcd connection).
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let outcome = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                r = self.follow(store.as_ref()) => r,
            };
            if let Err(e) = outcome {
                self.lock().start = None;
                eprintln!("tugboat server: instance feed: {e}; listing again");
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn follow(&self, store: &dyn Store) -> Result<(), StoreError> {
        let listing = store.list(INSTANCES).await?;
        {
            let mut state = self.lock();
            state.homes.clear();
            state.on_node.clear();
            for kv in &listing.items {
                state.rehome(&kv.key, node_of(&kv.value).as_deref());
            }
            // Polls from before this listing go to the store: the queues start empty.
            for queue in state.nodes.values_mut() {
                queue.changes.clear();
                queue.floor = listing.revision;
            }
            state.start = Some(listing.revision);
            state.seen = listing.revision;
        }
        let mut watcher = store.watch(INSTANCES, listing.revision + 1).await?;
        let mut sweep = Instant::now();
        loop {
            let events = watcher.next().await?;
            self.route(events);
            if sweep.elapsed() > KEEP {
                self.sweep();
                sweep = Instant::now();
            }
        }
    }

    fn route(&self, events: Vec<WatchEvent>) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut touched: Vec<String> = vec![];
        let mut seen = state.seen;
        for event in events {
            seen = seen.max(event.kv.mod_revision);
            let key = event.kv.key;
            let (node, object) = match event.kind {
                EventKind::Put => {
                    let Some(node) = node_of(&event.kv.value) else {
                        continue;
                    };
                    state.rehome(&key, Some(&node));
                    let object = String::from_utf8(event.kv.value)
                        .ok()
                        .and_then(|text| RawValue::from_string(text).ok());
                    (node, object)
                }
                EventKind::Delete => match state.rehome(&key, None) {
                    Some(node) => (node, None),
                    None => continue,
                },
            };
            let change = Arc::new(Change {
                revision: event.kv.mod_revision,
                kind: event.kind,
                key,
                object,
                at: now,
            });
            let floor = state.start.unwrap_or(0);
            let queue = state
                .nodes
                .entry(node.clone())
                .or_insert_with(|| NodeQueue::new(floor));
            queue.changes.push_back(change);
            queue.trim(now);
            touched.push(node);
        }
        state.seen = seen;
        touched.sort_unstable();
        touched.dedup();
        for node in touched {
            if let Some(queue) = state.nodes.get(&node) {
                queue.wake.send_replace(seen);
            }
        }
    }

    /// Drop old changes everywhere, and the queues of nodes nobody polls that hold none.
    fn sweep(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.nodes.retain(|_, queue| {
            queue.trim(now);
            !queue.changes.is_empty() || queue.wake.receiver_count() > 0
        });
    }

    /// The keys of the instances on `node` as of the revision returned with them (None
    /// until the feed has listed). An agent that lists, then polls from that revision + 1,
    /// misses nothing: a change after it is in its node's queue.
    pub fn instances_on(&self, node: &str) -> Option<(Revision, Vec<String>)> {
        let state = self.lock();
        state.start?;
        let keys = state
            .on_node
            .get(node)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        Some((state.seen, keys))
    }

    /// Changes for `node` from revision `from` on, waiting up to `timeout` for one.
    pub async fn poll(
        &self,
        node: &str,
        from: Revision,
        timeout: Duration,
    ) -> Result<Poll, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The revision this check covered: on a timeout, the poll answers with it, not
            // with what the feed has seen since (a change routed in between would be
            // skipped by the agent's next poll).
            let checked;
            let mut wake = {
                let mut state = self.lock();
                let Some(start) = state.start else {
                    return Ok(Poll::NotCovered);
                };
                if from <= start {
                    return Ok(Poll::NotCovered);
                }
                let seen = state.seen;
                let queue = state
                    .nodes
                    .entry(node.to_string())
                    .or_insert_with(|| NodeQueue::new(start));
                if from <= queue.floor {
                    return Err(StoreError::Compacted {
                        requested: from,
                        oldest: queue.floor + 1,
                    });
                }
                let first = queue.changes.partition_point(|c| c.revision < from);
                if first < queue.changes.len() {
                    let changes = queue.changes.range(first..).map(|c| to_wire(c)).collect();
                    return Ok(Poll::Batch(WatchBatch {
                        revision: seen,
                        changes,
                    }));
                }
                checked = seen;
                queue.wake.subscribe()
            };
            if tokio::time::timeout_at(deadline, wake.changed())
                .await
                .is_err()
            {
                return Ok(Poll::Batch(WatchBatch {
                    revision: checked.max(from - 1),
                    changes: vec![],
                }));
            }
        }
    }
}

fn to_wire(change: &Change) -> ObjectChange<Box<RawValue>> {
    ObjectChange {
        kind: change.kind,
        key: change.key.clone(),
        revision: change.revision,
        object: change.object.clone().unwrap_or_else(null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{delete, put, EmbeddedStore};

    fn instance(node: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"node": node, "spec": {"image": "x"}})).unwrap()
    }

    async fn started(store: &EmbeddedStore) -> (Arc<InstanceFeed>, watch::Sender<bool>) {
        let feed = Arc::new(InstanceFeed::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(feed.clone().run(Arc::new(store.clone()), stopped));
        while feed.lock().start.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (feed, stop)
    }

    async fn poll(feed: &InstanceFeed, node: &str, from: Revision) -> WatchBatch {
        match feed
            .poll(node, from, Duration::from_millis(300))
            .await
            .unwrap()
        {
            Poll::Batch(batch) => batch,
            Poll::NotCovered => panic!("revision {from} not covered"),
        }
    }

    fn keys(batch: &WatchBatch) -> Vec<(EventKind, &str)> {
        batch
            .changes
            .iter()
            .map(|c| (c.kind, c.key.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn each_node_gets_its_own_changes_and_the_deletes_of_its_instances() {
        let store = EmbeddedStore::in_memory();
        let before = put(&store, "/instances/web/old", instance(Some("a")))
            .await
            .unwrap();
        let (feed, _stop) = started(&store).await;
        // From before the feed's listing: the store answers.
        assert!(matches!(
            feed.poll("a", before, Duration::ZERO).await.unwrap(),
            Poll::NotCovered
        ));
        let from = before + 1;
        put(&store, "/instances/web/1", instance(Some("a")))
            .await
            .unwrap();
        put(&store, "/instances/web/2", instance(Some("b")))
            .await
            .unwrap();
        put(&store, "/instances/web/3", instance(None))
            .await
            .unwrap();
        delete(&store, "/instances/web/old").await.unwrap();
        let last = delete(&store, "/instances/web/2").await.unwrap();
        delete(&store, "/instances/web/3").await.unwrap();
        let a = poll(&feed, "a", from).await;
        assert_eq!(
            keys(&a),
            [
                (EventKind::Put, "/instances/web/1"),
                (EventKind::Delete, "/instances/web/old")
            ]
        );
        let object: serde_json::Value = serde_json::from_str(a.changes[0].object.get()).unwrap();
        assert_eq!(object["node"], "a");
        let b = poll(&feed, "b", from).await;
        assert_eq!(
            keys(&b),
            [
                (EventKind::Put, "/instances/web/2"),
                (EventKind::Delete, "/instances/web/2")
            ]
        );
        assert!(b.revision >= last);
        // Nothing new for c: the poll times out with the revision moved on, so its next poll
        // does not look at these changes again.
        let c = poll(&feed, "c", from).await;
        assert!(c.changes.is_empty());
        assert!(c.revision >= last, "{} < {last}", c.revision);
    }

    #[tokio::test]
    async fn the_index_by_node_follows_puts_moves_and_deletes() {
        let store = EmbeddedStore::in_memory();
        put(&store, "/instances/web/1", instance(Some("a")))
            .await
            .unwrap();
        let (feed, _stop) = started(&store).await;
        put(&store, "/instances/web/2", instance(Some("a")))
            .await
            .unwrap();
        put(&store, "/instances/web/3", instance(Some("b")))
            .await
            .unwrap();
        put(&store, "/instances/web/4", instance(None))
            .await
            .unwrap();
        // 2 moves from a to b; 1 is deleted.
        put(&store, "/instances/web/2", instance(Some("b")))
            .await
            .unwrap();
        let last = delete(&store, "/instances/web/1").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while feed.lock().seen < last {
            assert!(Instant::now() < deadline, "the feed never saw {last}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (revision, a) = feed.instances_on("a").unwrap();
        assert!(a.is_empty(), "{a:?}");
        assert!(revision >= last);
        let (_, b) = feed.instances_on("b").unwrap();
        assert_eq!(b, ["/instances/web/2", "/instances/web/3"]);
        assert!(feed.instances_on("c").unwrap().1.is_empty());
        assert!(
            !feed.lock().on_node.contains_key("a"),
            "empty sets are dropped"
        );
    }

    #[tokio::test]
    async fn a_poll_waits_for_its_node_only() {
        let store = EmbeddedStore::in_memory();
        let (feed, _stop) = started(&store).await;
        let from = crate::store::Store::current_revision(&store).await.unwrap() + 1;
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.poll("a", from, Duration::from_secs(10)).await })
        };
        put(&store, "/instances/web/1", instance(Some("b")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "woken by another node's change");
        put(&store, "/instances/web/2", instance(Some("a")))
            .await
            .unwrap();
        let batch = match tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by its node's change")
            .unwrap()
            .unwrap()
        {
            Poll::Batch(batch) => batch,
            Poll::NotCovered => panic!("not covered"),
        };
        assert_eq!(keys(&batch), [(EventKind::Put, "/instances/web/2")]);
    }

    #[tokio::test]
    async fn a_poll_older_than_its_nodes_queue_is_told_to_list_again() {
        let store = EmbeddedStore::in_memory();
        let (feed, _stop) = started(&store).await;
        let from = crate::store::Store::current_revision(&store).await.unwrap() + 1;
        for i in 0..PER_NODE + 10 {
            put(&store, &format!("/instances/web/{i}"), instance(Some("a")))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match feed.poll("a", from, Duration::ZERO).await {
                Err(StoreError::Compacted { requested, .. }) => {
                    assert_eq!(requested, from);
                    break;
                }
                _ => assert!(Instant::now() < deadline, "never compacted"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The newest changes are still there.
        let recent = poll(&feed, "a", from + 20).await;
        assert_eq!(recent.changes.len(), PER_NODE - 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polls_that_time_out_while_changes_arrive_miss_none() {
        let store = EmbeddedStore::in_memory();
        let (feed, _stop) = started(&store).await;
        let mut from = crate::store::Store::current_revision(&store).await.unwrap() + 1;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    put(&store, &format!("/instances/web/{i}"), instance(Some("a")))
                        .await
                        .unwrap();
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 300 {
            assert!(Instant::now() < deadline, "only {} of 300 seen", seen.len());
            // A zero timeout, as a client asking for `timeout_seconds=0` gets.
            let batch = match feed.poll("a", from, Duration::ZERO).await.unwrap() {
                Poll::Batch(batch) => batch,
                Poll::NotCovered => panic!("not covered"),
            };
            from = batch.revision + 1;
            seen.extend(batch.changes.into_iter().map(|c| c.key));
        }
        writer.await.unwrap();
    }
}
