//! The controllers' copy of the cluster: services, instances and nodes, decoded once and
//! kept current from one store watch.
//!
//! A controller pass used to list and decode every object of the cluster four times, after
//! every change: at 100,000 instances that was most of the server's time, and each pass grew
//! with the cluster (the control-plane benchmark in bench/controlplane measured it). Like a
//! Kubernetes informer or Nomad's in-memory state store, the cache decodes each object once,
//! when it changes.
//!
//! A read is never older than the store was when it began: [`ObjectCache::load`] asks the
//! store for its revision, then waits until the cache has caught up with it, so a pass sees
//! its own earlier writes as a list did. Until the cache has listed (or while it lists again
//! after a compacted watch), and if it does not catch up in time, reads go to the store.
//! Catching up relies on every revision having an event under the cluster's prefix: true of
//! the embedded store (a transaction that changes nothing raises no revision, as in etcd) and
//! of an etcd of the cluster's own. On an etcd shared with other users, their writes raise
//! the revision too, and a pass then waits [`CATCH_UP`] and lists (slower, never wrong);
//! etcd's progress notifications would fix that.

use crate::objects::{self, Versioned};
use crate::store::{EventKind, Revision, Store, StoreError};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tugboat_api::model::{Instance, Node, Service, INSTANCES, NODES, SERVICES};

/// How long a read waits for the cache to catch up before it lists the store itself.
const CATCH_UP: Duration = Duration::from_secs(2);
/// How long a read waits for the cache's first listing.
const LISTING: Duration = Duration::from_secs(60);
/// How often changes nobody has read yet are decoded anyway: a follower's controllers read
/// nothing, and a new leader's first pass would otherwise decode everything that changed
/// since the server started (at 100,000 instances, about a second of a failover). Changes
/// to one key in between are decoded once.
const SETTLE_EVERY: Duration = Duration::from_millis(500);

type Map<T> = BTreeMap<String, Arc<Versioned<T>>>;

#[derive(Default)]
struct Objects {
    services: Map<Service>,
    instances: Map<Instance>,
    nodes: Map<Node>,
    /// Changes not decoded yet, by key (None: deleted): the watch only files them, and a
    /// read decodes each key once however often it changed in between. A watcher that
    /// decoded as it went fell behind the store's history in a burst of writes.
    changed: HashMap<String, Option<crate::store::KeyValue>>,
}

impl Objects {
    fn settle(&mut self) {
        for (key, kv) in std::mem::take(&mut self.changed) {
            match kv {
                Some(kv) if key.starts_with(SERVICES) => upsert(&mut self.services, &kv),
                Some(kv) if key.starts_with(INSTANCES) => upsert(&mut self.instances, &kv),
                Some(kv) if key.starts_with(NODES) => upsert(&mut self.nodes, &kv),
                Some(_) => {}
                None => {
                    self.services.remove(&key);
                    self.instances.remove(&key);
                    self.nodes.remove(&key);
                }
            }
        }
    }
}

/// The cluster as the controllers read it: shared with the cache, never copied (a pass
/// that deep-copied 100,000 instances, each with its service's spec, spent most of its time
/// in malloc and memmove).
pub type Loaded = (
    Vec<Arc<Versioned<Service>>>,
    Vec<Arc<Versioned<Instance>>>,
    Vec<Arc<Versioned<Node>>>,
);

pub struct ObjectCache {
    objects: Mutex<Objects>,
    /// The store revision the cache reflects (None: not listed yet).
    revision: watch::Sender<Option<Revision>>,
    /// Whether [`ObjectCache::run`] keeps it (a control plane in a unit test has none).
    running: std::sync::atomic::AtomicBool,
}

impl Default for ObjectCache {
    fn default() -> Self {
        ObjectCache {
            objects: Mutex::default(),
            revision: watch::channel(None).0,
            running: Default::default(),
        }
    }
}

fn shared<T>(map: &Map<T>) -> Vec<Arc<Versioned<T>>> {
    map.values().cloned().collect()
}

fn upsert<T: DeserializeOwned>(map: &mut Map<T>, kv: &crate::store::KeyValue) {
    // An object that does not decode is left out, as a list would have failed on it; the
    // pass that reads the store directly reports it.
    match objects::decode::<T>(kv) {
        Ok(object) => {
            map.insert(kv.key.clone(), Arc::new(object));
        }
        Err(_) => {
            map.remove(&kv.key);
        }
    }
}

impl ObjectCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the cache current until `shutdown`: list, then follow the store's changes; list
    /// again after any error.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
        use std::sync::atomic::Ordering::SeqCst;
        self.running.store(true, SeqCst);
        let settler = {
            let cache = self.clone();
            async move {
                let mut tick = tokio::time::interval(SETTLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let mut objects = cache.lock();
                    if !objects.changed.is_empty() {
                        objects.settle();
                    }
                }
            }
        };
        tokio::pin!(settler);
        loop {
            let outcome = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = &mut settler => unreachable!("the settler never ends"),
                r = self.follow(store.as_ref()) => r,
            };
            if let Err(e) = outcome {
                self.revision.send_replace(None);
                eprintln!("tugboat server: controllers' cache: {e}; listing again");
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        // Stopped (the server is shutting down): reads go to the store.
        self.running.store(false, SeqCst);
        self.revision.send_replace(None);
        *self.lock() = Objects::default();
    }

    async fn follow(&self, store: &dyn Store) -> Result<(), StoreError> {
        // One listing at one revision for all three kinds.
        let listing = store.list("/").await?;
        {
            let mut objects = Objects::default();
            for kv in &listing.items {
                if kv.key.starts_with(SERVICES) {
                    upsert(&mut objects.services, kv);
                } else if kv.key.starts_with(INSTANCES) {
                    upsert(&mut objects.instances, kv);
                } else if kv.key.starts_with(NODES) {
                    upsert(&mut objects.nodes, kv);
                }
            }
            *self.lock() = objects;
        }
        self.revision.send_replace(Some(listing.revision));
        let mut watcher = store.watch("/", listing.revision + 1).await?;
        loop {
            let events = watcher.next().await?;
            let mut last = 0;
            {
                let mut objects = self.lock();
                for crate::store::WatchEvent { kind, kv } in events {
                    last = last.max(kv.mod_revision);
                    let key = &kv.key;
                    if !(key.starts_with(SERVICES)
                        || key.starts_with(INSTANCES)
                        || key.starts_with(NODES))
                    {
                        continue;
                    }
                    match kind {
                        EventKind::Put => objects.changed.insert(kv.key.clone(), Some(kv)),
                        EventKind::Delete => objects.changed.insert(kv.key, None),
                    };
                }
            }
            self.revision
                .send_modify(|revision| *revision = revision.map(|r| r.max(last)));
        }
    }

    /// Services, instances and nodes, at least as new as the store is now.
    pub async fn load(&self, store: &dyn Store) -> Result<Loaded, objects::ObjectError> {
        if !self.running.load(std::sync::atomic::Ordering::SeqCst) {
            return list_all(store).await;
        }
        let target = store.current_revision().await?;
        let mut revision = self.revision.subscribe();
        // Still listing (a new leader's first pass, at 100,000 instances several seconds on
        // etcd): listing again beside it is never faster, and three such lists at once made
        // a failover take 17 s. Wait for it.
        let listing = revision.borrow().is_none();
        let wait = if listing { LISTING } else { CATCH_UP };
        let caught_up = tokio::time::timeout(wait, async {
            revision
                .wait_for(|r| r.is_some_and(|r| r >= target))
                .await
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if caught_up {
            let mut objects = self.lock();
            objects.settle();
            return Ok((
                shared(&objects.services),
                shared(&objects.instances),
                shared(&objects.nodes),
            ));
        }
        eprintln!(
            "tugboat server: controllers' cache at revision {:?} did not reach the store's {target} within {wait:?}: listing the store",
            *self.revision.borrow()
        );
        list_all(store).await
    }
}

async fn list_all(store: &dyn Store) -> Result<Loaded, objects::ObjectError> {
    fn arcs<T>(items: Vec<Versioned<T>>) -> Vec<Arc<Versioned<T>>> {
        items.into_iter().map(Arc::new).collect()
    }
    let (services, _) = objects::list::<Service>(store, SERVICES).await?;
    let (instances, _) = objects::list::<Instance>(store, INSTANCES).await?;
    let (nodes, _) = objects::list::<Node>(store, NODES).await?;
    Ok((arcs(services), arcs(instances), arcs(nodes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{delete, put, EmbeddedStore};
    use tugboat_api::model::{node_key, service_key};

    #[tokio::test]
    async fn a_load_sees_every_write_made_before_it() {
        let store = EmbeddedStore::in_memory();
        let cache = Arc::new(ObjectCache::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(cache.clone().run(Arc::new(store.clone()), stopped));
        while cache.revision.borrow().is_none() {
            tokio::task::yield_now().await;
        }
        let mut service = Service::new("web", tugboat_api::spec::ServiceSpec::new("app:1"), 0);
        put(&store, &service_key("web"), objects::encode(&service))
            .await
            .unwrap();
        let (services, instances, nodes) = cache.load(&store).await.unwrap();
        assert_eq!(services.len(), 1);
        assert!(instances.is_empty() && nodes.is_empty());
        // A change, then a read at once: the read waits for the cache, never older.
        for replicas in 2..20 {
            service.spec.replicas = replicas;
            let revision = put(&store, &service_key("web"), objects::encode(&service))
                .await
                .unwrap();
            let (services, _, _) = cache.load(&store).await.unwrap();
            assert_eq!(services[0].object.spec.replicas, replicas);
            assert_eq!(services[0].revision, revision);
        }
        // Deletes and other prefixes.
        put(&store, &node_key("n1"), b"not a node".to_vec())
            .await
            .unwrap();
        delete(&store, &service_key("web")).await.unwrap();
        let (services, _, nodes) = cache.load(&store).await.unwrap();
        assert!(services.is_empty());
        assert!(nodes.is_empty(), "an undecodable node is left out");
    }
}
