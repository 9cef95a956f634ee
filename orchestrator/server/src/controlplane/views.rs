//! Reads: lists, descriptions and watches.

use super::{feed, ControlPlane, Result};
use crate::objects;
use crate::store::{EventKind, Revision};
use std::time::Duration;
use tugboat_api::model::{Event, Instance, Node, Service, EVENTS, INSTANCES, NODES, SERVICES};
use tugboat_api::wire::{
    InstanceDescription, Listed, NodeDescription, ObjectChange, ServiceDescription, WatchKind,
};

/// Events shown by describe.
const RECENT_EVENTS: usize = 20;

impl ControlPlane {
    pub async fn list_services(&self) -> Result<Listed<Service>> {
        let (items, revision) = objects::list::<Service>(self.store(), SERVICES).await?;
        Ok(Listed {
            revision,
            items: items.into_iter().map(|v| v.object).collect(),
        })
    }

    pub async fn list_instances(
        &self,
        service: Option<&str>,
        node: Option<&str>,
    ) -> Result<Listed<Instance>> {
        if let (None, Some(node)) = (service, node) {
            if let Some(listed) = self.list_node_instances(node).await? {
                return Ok(listed);
            }
        }
        let prefix = service.map_or_else(|| INSTANCES.to_string(), |s| format!("{INSTANCES}{s}/"));
        let (items, revision) = objects::list::<Instance>(self.store(), &prefix).await?;
        if service.is_none() && node.is_none() {
            self.prune_usage(&items.iter().map(|v| v.object.id.as_str()).collect());
        }
        let items = items
            .into_iter()
            .map(|v| self.with_usage(v.object))
            .filter(|i| node.is_none() || i.node.as_deref() == node)
            .collect();
        Ok(Listed { revision, items })
    }

    /// An agent's list (at its start, and after a 410): the node's instances by the feed's
    /// index, each read by its key, instead of decoding every instance of the cluster (at
    /// 5,000 nodes, 5,000 agents listing at once after a re-list of the feed did that
    /// 5,000 times). None until the feed has listed. The revision is the index's: a change
    /// after it is in the node's queue, so the agent's poll from it + 1 misses none; a value
    /// read here may be newer than that revision, and comes again in the poll (agents apply
    /// changes idempotently).
    async fn list_node_instances(&self, node: &str) -> Result<Option<Listed<Instance>>> {
        let Some((revision, keys)) = self.feed.instances_on(node) else {
            return Ok(None);
        };
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(kv) = self.store().get(&key).await? else {
                continue;
            };
            let instance = objects::decode::<Instance>(&kv)?.object;
            // Moved to another node since the index's revision: not this node's any more.
            if instance.node.as_deref() == Some(node) {
                items.push(self.with_usage(instance));
            }
        }
        Ok(Some(Listed { revision, items }))
    }

    pub async fn list_nodes(&self) -> Result<Listed<Node>> {
        let (items, revision) = objects::list::<Node>(self.store(), NODES).await?;
        let heartbeats = self.heartbeats();
        let items = items
            .into_iter()
            .map(|v| {
                let mut node = v.object;
                if let Some(at) = heartbeats.get(&node.name) {
                    node.last_heartbeat_ms = node.last_heartbeat_ms.max(*at);
                }
                node
            })
            .collect();
        Ok(Listed { revision, items })
    }

    pub async fn list_events(
        &self,
        kind: Option<tugboat_api::model::ObjectKind>,
        name: Option<&str>,
    ) -> Result<Listed<Event>> {
        let (items, revision) = objects::list::<Event>(self.store(), EVENTS).await?;
        let items = items
            .into_iter()
            .map(|v| v.object)
            .filter(|e| kind.is_none_or(|k| e.kind == k) && name.is_none_or(|n| e.name == n))
            .collect();
        Ok(Listed { revision, items })
    }

    async fn recent_events(&self, filter: impl Fn(&Event) -> bool) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = self
            .list_events(None, None)
            .await?
            .items
            .into_iter()
            .filter(|e| filter(e))
            .collect();
        let skip = events.len().saturating_sub(RECENT_EVENTS);
        Ok(events.split_off(skip))
    }

    pub async fn describe_service(&self, name: &str) -> Result<ServiceDescription> {
        let service = self.get_service(name).await?.object;
        let instances = self.list_instances(Some(name), None).await?.items;
        let ids: std::collections::HashSet<&str> =
            instances.iter().map(|i| i.id.as_str()).collect();
        let events = self
            .recent_events(|e| e.name == name || ids.contains(e.name.as_str()))
            .await?;
        let autoscale = service.spec.autoscale.as_ref().map(|_| {
            self.autoscale_status(name)
                .unwrap_or_else(|| "no decision yet".into())
        });
        Ok(ServiceDescription {
            service,
            instances,
            events,
            autoscale,
        })
    }

    pub async fn describe_instance(&self, id: &str) -> Result<InstanceDescription> {
        let instance = self.with_usage(self.get_instance(id).await?.object);
        let events = self.recent_events(|e| e.name == id).await?;
        Ok(InstanceDescription { instance, events })
    }

    pub async fn describe_node(&self, name: &str) -> Result<NodeDescription> {
        let node = self.get_node(name).await?.object;
        let instances = self.list_instances(None, Some(name)).await?.items;
        let events = self.recent_events(|e| e.name == name).await?;
        Ok(NodeDescription {
            node,
            instances,
            events,
        })
    }

    /// Long-poll: changes of `kind` from revision `from` on, waiting up to `timeout`.
    /// For instances, `node` keeps the changes of instances on that node, served by the
    /// instance feed ([`feed`]) once it covers `from`; before that by the store, where
    /// deletes of any node pass (the agent ignores ids it does not run).
    pub async fn watch(
        &self,
        kind: WatchKind,
        from: Revision,
        timeout: Duration,
        node: Option<&str>,
    ) -> Result<feed::WatchBatch> {
        let from = from.max(1);
        if let (WatchKind::Instances, Some(node)) = (kind, node) {
            if let feed::Poll::Batch(batch) = self.feed.poll(node, from, timeout).await? {
                return Ok(batch);
            }
        }
        let mut watcher = self.store.watch(kind.prefix(), from).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = from - 1;
        loop {
            let events = match tokio::time::timeout_at(deadline, watcher.next()).await {
                Ok(events) => events?,
                Err(_) => {
                    return Ok(feed::WatchBatch {
                        revision: seen,
                        changes: vec![],
                    })
                }
            };
            let mut changes = vec![];
            for event in events {
                seen = seen.max(event.kv.mod_revision);
                // The stored JSON text as it is (a value that is not JSON goes as null).
                let object = match event.kind {
                    EventKind::Put => String::from_utf8(event.kv.value)
                        .ok()
                        .and_then(|text| serde_json::value::RawValue::from_string(text).ok())
                        .unwrap_or_else(feed::null),
                    EventKind::Delete => feed::null(),
                };
                if let (Some(node), EventKind::Put) = (node, event.kind) {
                    if feed::node_of(object.get().as_bytes()).as_deref() != Some(node) {
                        continue;
                    }
                }
                changes.push(ObjectChange {
                    kind: event.kind,
                    key: event.kv.key,
                    revision: event.kv.mod_revision,
                    object,
                });
            }
            if !changes.is_empty() {
                return Ok(feed::WatchBatch {
                    revision: seen,
                    changes,
                });
            }
        }
    }
}
