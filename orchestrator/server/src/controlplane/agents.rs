//! The agent-facing operations: register a node, heartbeat, report an instance's status.
//! An agent then watches `/v1/watch/instances?node=NAME` for its assignments.

use super::{service_of_instance, ControlPlane, ControlPlaneError, Result};
use crate::objects::{self, Batch, Versioned};
use tugboat_api::model::{
    instance_key, node_key, now_ms, Instance, InstancePhase, Node, NodeStatus, ObjectKind,
};
use tugboat_api::wire::{InstanceStatusReport, NodeRegistration, ReportedPhase};

/// Why `node` may not have `subnet`: it overlaps the subnet of another node that is not
/// lost (whose containers still hold those addresses, and to which the other nodes route
/// them). A lost node's subnet is free again: its instances are being replaced elsewhere.
pub fn subnet_conflict(
    node: &str,
    subnet: ipnetwork::Ipv4Network,
    nodes: &[Node],
) -> Option<String> {
    nodes
        .iter()
        .filter(|n| n.name != node && n.status != NodeStatus::Lost)
        .find_map(|n| {
            let theirs = n.subnet?;
            theirs.overlaps(subnet).then(|| {
                format!(
                    "node {node}: container subnet {subnet} overlaps subnet {theirs} of node {}; \
                     give each node its own subnet (tugboat agent --subnet)",
                    n.name
                )
            })
        })
}

/// The events a status change makes, besides `failed`, `ready` and `returned`: an exit (an
/// OOM kill named as such), a restart, the start of a crash loop, a readiness lost.
pub fn status_events(before: &Instance, after: &Instance) -> Vec<(&'static str, String)> {
    let mut events = vec![];
    if let Some(exit) = &after.last_exit {
        if before.last_exit.as_ref().map(|e| e.at_ms) != Some(exit.at_ms) {
            let reason = if exit.reason == "OOMKilled" {
                "oom-killed"
            } else if exit.reason == "LivenessFailed" {
                "liveness-failed"
            } else {
                "exited"
            };
            events.push((reason, exit.message.clone()));
        }
    }
    if after.restarts > before.restarts && after.phase == InstancePhase::Running {
        events.push((
            "restarted",
            format!("restart {}: {}", after.restarts, after.message),
        ));
    }
    if after.crash_looping && !before.crash_looping {
        events.push(("crash-looping", after.message.clone()));
    }
    if before.ready && !after.ready && after.phase == InstancePhase::Running {
        events.push(("not-ready", after.message.clone()));
    }
    events
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeScheduling {
    Cordon,
    Uncordon,
    Drain,
}

impl ControlPlane {
    pub async fn register_node(&self, registration: NodeRegistration) -> Result<Node> {
        if !tugboat_api::spec::validate::is_dns_label(&registration.name) {
            return Err(ControlPlaneError::BadRequest(format!(
                "node name `{}` is not a DNS label (a-z, 0-9, '-', at most 63)",
                registration.name
            )));
        }
        if let Some(subnet) = registration.subnet {
            let (nodes, _) = objects::list::<Node>(self.store(), tugboat_api::model::NODES).await?;
            let others: Vec<Node> = nodes.into_iter().map(|n| n.object).collect();
            if let Some(message) = subnet_conflict(&registration.name, subnet, &others) {
                return Err(ControlPlaneError::Conflict(message));
            }
        }
        let now = now_ms();
        let existing = objects::get::<Node>(self.store(), &node_key(&registration.name)).await?;
        let node = Node {
            name: registration.name.clone(),
            labels: registration.labels,
            capacity: registration.capacity,
            address: registration.address,
            subnet: registration.subnet,
            status: NodeStatus::Ready,
            registered_at_ms: existing.as_ref().map_or(now, |e| e.object.registered_at_ms),
            last_heartbeat_ms: now,
            volumes: registration.volumes,
            runtimes: registration.runtimes,
            agent_url: registration.agent_url,
            heartbeat_every_ms: self.timers.nodes.heartbeat_every_ms,
            // An operator's cordon or drain outlives the agent's restarts.
            cordoned: existing.as_ref().is_some_and(|e| e.object.cordoned),
            draining: existing.as_ref().is_some_and(|e| e.object.draining),
        };
        let mut batch = Batch::default();
        batch.put_if(
            node_key(&node.name),
            existing.as_ref().map_or(0, |e| e.revision),
            &node,
        );
        let what = if existing.is_some() {
            "re-registered"
        } else {
            "registered"
        };
        self.event(
            &mut batch,
            ObjectKind::Node,
            &node.name,
            what,
            format!("node {what}"),
        );
        batch.commit(self.store()).await?;
        self.record_heartbeat(&node.name, now);
        Ok(node)
    }

    /// At start, give every known node a fresh grace period: heartbeats live in memory, and a
    /// restarted server must not declare its whole cluster lost.
    pub async fn seed_heartbeats(&self) -> Result<()> {
        // From the controllers' cache (a new leader's is current: it ran as a follower), not
        // a listing of every node from the store in the middle of a failover.
        let (_, _, nodes) = self.cache.load(self.store()).await?;
        let now = now_ms();
        for node in nodes {
            self.record_heartbeat(&node.object.name, now);
        }
        Ok(())
    }

    pub async fn get_node(&self, name: &str) -> Result<Versioned<Node>> {
        let mut node = objects::get::<Node>(self.store(), &node_key(name))
            .await?
            .ok_or_else(|| ControlPlaneError::NotFound {
                kind: "node",
                name: name.into(),
            })?;
        if let Some(at) = self.heartbeat_of(name) {
            node.object.last_heartbeat_ms = node.object.last_heartbeat_ms.max(at);
        }
        Ok(node)
    }

    /// A heartbeat. Kept in memory; a node that was not ready is made ready at once.
    pub async fn heartbeat(&self, name: &str, beat: &tugboat_api::wire::Heartbeat) -> Result<Node> {
        let node = self.get_node(name).await?;
        let now = now_ms();
        self.record_heartbeat(name, now);
        self.record_peer_views(name, beat, now);
        if node.object.status == NodeStatus::Ready {
            return Ok(node.object);
        }
        let mut updated = node.object.clone();
        updated.status = NodeStatus::Ready;
        updated.last_heartbeat_ms = now;
        let mut batch = Batch::default();
        batch.put_if(node_key(name), node.revision, &updated);
        self.event(
            &mut batch,
            ObjectKind::Node,
            name,
            "ready",
            "heartbeats resumed".into(),
        );
        // A conflict means the node controller wrote it meanwhile; the next heartbeat retries.
        match batch.commit(self.store()).await {
            Ok(_) | Err(crate::store::StoreError::Conflict { .. }) => Ok(updated),
            Err(e) => Err(e.into()),
        }
    }

    /// `tugboat node cordon|uncordon|drain`: cordoned takes nothing new; draining also moves
    /// its instances away (the service controller replaces them first, within each
    /// service's update bounds); uncordon ends both. The node stays cordoned once drained.
    pub async fn set_node_schedule(&self, name: &str, action: NodeScheduling) -> Result<Node> {
        for _ in 0..5 {
            let node = self.get_node(name).await?;
            let mut updated = node.object.clone();
            let (cordoned, draining) = match action {
                NodeScheduling::Cordon => (true, node.object.draining),
                NodeScheduling::Uncordon => (false, false),
                NodeScheduling::Drain => (true, true),
            };
            updated.cordoned = cordoned;
            updated.draining = draining;
            if updated == node.object {
                return Ok(updated);
            }
            let mut batch = Batch::default();
            batch.put_if(node_key(name), node.revision, &updated);
            let (reason, message) = match action {
                NodeScheduling::Cordon => ("cordoned", "nothing new is placed here"),
                NodeScheduling::Uncordon => ("uncordoned", "takes new instances again"),
                NodeScheduling::Drain => (
                    "draining",
                    "cordoned; its instances move to other nodes, replacement first",
                ),
            };
            self.event(&mut batch, ObjectKind::Node, name, reason, message.into());
            match batch.commit(self.store()).await {
                Ok(_) => return Ok(updated),
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlPlaneError::Conflict(format!(
            "node `{name}` kept changing; try again"
        )))
    }

    pub async fn delete_node(&self, name: &str) -> Result<()> {
        self.get_node(name).await?;
        let mut batch = Batch::default();
        batch.delete(node_key(name));
        self.event(
            &mut batch,
            ObjectKind::Node,
            name,
            "deleted",
            "node removed; its instances will be replaced".into(),
        );
        // Its certificate goes with it, in the same transaction: a host that rejoins under
        // the name needs a new join token.
        batch.delete(format!("{}{name}", super::access::NODE_CERTS));
        batch.commit(self.store()).await?;
        self.forget_heartbeat(name);
        Ok(())
    }

    pub async fn get_instance(&self, id: &str) -> Result<Versioned<Instance>> {
        let not_found = || ControlPlaneError::NotFound {
            kind: "instance",
            name: id.into(),
        };
        let service = service_of_instance(id).ok_or_else(not_found)?;
        objects::get::<Instance>(self.store(), &instance_key(service, id))
            .await?
            .ok_or_else(not_found)
    }

    /// Delete one instance; its service controller replaces it.
    pub async fn delete_instance(&self, id: &str) -> Result<()> {
        let instance = self.get_instance(id).await?;
        let mut batch = Batch::default();
        batch.delete(instance.object.key());
        self.event(
            &mut batch,
            ObjectKind::Instance,
            id,
            "deleted",
            "deleted by request".into(),
        );
        batch.commit(self.store()).await?;
        Ok(())
    }

    pub async fn report_instance_status(
        &self,
        id: &str,
        report: InstanceStatusReport,
    ) -> Result<Instance> {
        for _ in 0..5 {
            let current = self.get_instance(id).await?;
            let mut instance = current.object.clone();
            if instance.node.as_deref() != Some(report.node.as_str()) {
                return Err(ControlPlaneError::Conflict(format!(
                    "instance `{id}` is assigned to {}, not to {}: stop it",
                    instance.node.as_deref().unwrap_or("no node"),
                    report.node
                )));
            }
            if instance.phase == InstancePhase::Failed {
                return Err(ControlPlaneError::Conflict(format!(
                    "instance `{id}` is {:?} and being replaced: stop it",
                    instance.phase
                )));
            }
            // Its node is back and the instance still on record (not replaced yet, or kept
            // for its node by the service's reschedule policy): it runs on.
            let returned = instance.phase == InstancePhase::Lost;
            if returned {
                instance.failed_at_ms = None;
            }
            let now = now_ms();
            let became_ready = report.ready && !instance.ready;
            let previous = current.object.clone();
            instance.phase = match report.phase {
                ReportedPhase::Running => InstancePhase::Running,
                ReportedPhase::Failed => InstancePhase::Failed,
            };
            instance.ready = report.ready && report.phase == ReportedPhase::Running;
            instance.ready_since_ms = if instance.ready {
                instance.ready_since_ms.or(Some(now))
            } else {
                None
            };
            instance.message = report.message.clone();
            instance.exit_code = report.exit_code;
            // The slot's earlier instances count too: a crash loop stays visible.
            instance.restarts = instance.carried_restarts.saturating_add(report.restarts);
            if report.last_exit.is_some() {
                instance.last_exit = report.last_exit.clone();
            }
            instance.crash_looping = report.crash_looping && report.phase == ReportedPhase::Running;
            // Usage stays in memory; the stored record changes only when the status does
            // (older records that carried stats lose them with their next change).
            if let Some(stats) = report.stats {
                self.record_usage(id, stats);
            }
            instance.stats = None;
            if report.address.is_some() {
                instance.address = report.address.clone();
            }
            if report.phase == ReportedPhase::Failed {
                instance.failed_at_ms = instance.failed_at_ms.or(Some(now));
            }
            let mut stored = current.object.clone();
            stored.stats = None;
            if instance == stored {
                return Ok(self.with_usage(instance));
            }
            let mut batch = Batch::default();
            batch.put_if(instance.key(), current.revision, &instance);
            if returned {
                self.event(
                    &mut batch,
                    ObjectKind::Instance,
                    id,
                    "returned",
                    format!("node {} is back and the instance runs on", report.node),
                );
            }
            if report.phase == ReportedPhase::Failed {
                self.event(
                    &mut batch,
                    ObjectKind::Instance,
                    id,
                    "failed",
                    format!("agent reports failure: {}", report.message),
                );
            } else if became_ready {
                self.event(
                    &mut batch,
                    ObjectKind::Instance,
                    id,
                    "ready",
                    format!("ready on {}", report.node),
                );
            }
            for (reason, message) in status_events(&previous, &instance) {
                self.event(&mut batch, ObjectKind::Instance, id, reason, message);
            }
            match batch.commit(self.store()).await {
                Ok(_) => return Ok(self.with_usage(instance)),
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlPlaneError::Conflict(format!(
            "instance `{id}` kept changing; report again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tugboat_api::model::Resources;

    fn node(name: &str, subnet: &str, status: NodeStatus) -> Node {
        Node {
            runtimes: vec![],
            name: name.into(),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            address: None,
            subnet: Some(subnet.parse().unwrap()),
            status,
            registered_at_ms: 0,
            last_heartbeat_ms: 0,
            volumes: vec![],
            agent_url: None,
            heartbeat_every_ms: 0,
            cordoned: false,
            draining: false,
        }
    }

    #[test]
    fn an_overlapping_subnet_names_both_nodes_and_subnets() {
        let nodes = [
            node("a", "10.88.1.0/24", NodeStatus::Ready),
            node("gone", "10.88.3.0/24", NodeStatus::Lost),
        ];
        let e = subnet_conflict("b", "10.88.0.0/16".parse().unwrap(), &nodes).unwrap();
        assert!(e.contains("node b") && e.contains("10.88.0.0/16"), "{e}");
        assert!(e.contains("node a") && e.contains("10.88.1.0/24"), "{e}");
        // Its own subnet again, a disjoint one, a lost node's: all fine.
        assert_eq!(
            subnet_conflict("a", "10.88.1.0/24".parse().unwrap(), &nodes),
            None
        );
        assert_eq!(
            subnet_conflict("b", "10.88.2.0/24".parse().unwrap(), &nodes),
            None
        );
        assert_eq!(
            subnet_conflict("b", "10.88.3.0/24".parse().unwrap(), &nodes),
            None
        );
    }

    #[tokio::test]
    async fn a_crash_loop_shows_in_events_and_its_count_outlives_a_replacement() {
        use crate::controlplane::Timers;
        use tugboat_api::model::{LastExit, INSTANCES};
        use tugboat_api::spec::ServiceSpec;
        let timers = Timers {
            replace_failed_after: std::time::Duration::ZERO,
            ..Default::default()
        };
        let cp = ControlPlane::new(
            std::sync::Arc::new(crate::store::EmbeddedStore::in_memory()),
            Default::default(),
            timers,
        );
        cp.create_service("web", ServiceSpec::new("x:1"))
            .await
            .unwrap();
        crate::controllers::runner::reconcile_once(&cp)
            .await
            .unwrap();
        let (listed, _) = objects::list::<Instance>(cp.store(), INSTANCES)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].object.slot, 0);
        // As if it were placed on n1.
        let mut placed = listed[0].object.clone();
        placed.node = Some("n1".into());
        placed.phase = InstancePhase::Scheduled;
        let mut batch = Batch::default();
        batch.put_if(placed.key(), listed[0].revision, &placed);
        batch.commit(cp.store()).await.unwrap();
        let exit = |reason: &str, message: &str, at_ms| LastExit {
            code: Some(137),
            reason: reason.into(),
            message: message.into(),
            at_ms,
        };
        let report = |phase, restarts, last_exit, crash_looping| InstanceStatusReport {
            node: "n1".into(),
            phase,
            ready: false,
            message: "crash-looping: exited with code 1; back-off 1.0s".into(),
            exit_code: Some(1),
            restarts,
            stats: None,
            address: None,
            last_exit: Some(last_exit),
            crash_looping,
        };
        let shown = cp
            .report_instance_status(
                &placed.id,
                report(
                    ReportedPhase::Running,
                    3,
                    exit("Error", "exited with code 1", 10),
                    true,
                ),
            )
            .await
            .unwrap();
        assert!(shown.crash_looping);
        assert_eq!(shown.restarts, 3);
        let reasons: Vec<String> = cp
            .list_events(Some(ObjectKind::Instance), Some(&placed.id))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.reason)
            .collect();
        for wanted in ["exited", "restarted", "crash-looping"] {
            assert!(
                reasons.iter().any(|r| r == wanted),
                "{wanted} in {reasons:?}"
            );
        }
        // The agent gives up on an OOM kill; the replacement takes slot 0 and its count.
        let oom = exit("OOMKilled", "OOMKilled: memory limit 32Mi", 20);
        cp.report_instance_status(
            &placed.id,
            report(ReportedPhase::Failed, 4, oom.clone(), false),
        )
        .await
        .unwrap();
        let events = cp
            .list_events(Some(ObjectKind::Instance), Some(&placed.id))
            .await
            .unwrap()
            .items;
        assert!(
            events
                .iter()
                .any(|e| e.reason == "oom-killed" && e.message == "OOMKilled: memory limit 32Mi"),
            "{events:?}"
        );
        crate::controllers::runner::reconcile_once(&cp)
            .await
            .unwrap();
        let (listed, _) = objects::list::<Instance>(cp.store(), INSTANCES)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let next = &listed[0].object;
        assert_ne!(next.id, placed.id);
        assert_eq!(next.slot, 0);
        assert_eq!((next.restarts, next.carried_restarts), (4, 4));
        assert_eq!(next.last_exit.as_ref(), Some(&oom));
        assert!(!next.crash_looping);
    }

    #[tokio::test]
    async fn usage_stays_in_memory_and_only_a_changed_status_is_written() {
        use tugboat_api::model::{InstanceStats, INSTANCES};
        use tugboat_api::spec::ServiceSpec;
        let cp = ControlPlane::new(
            std::sync::Arc::new(crate::store::EmbeddedStore::in_memory()),
            Default::default(),
            Default::default(),
        );
        let instance = Instance {
            id: "web-01234-abcde".into(),
            service: "web".into(),
            template_hash: "t".into(),
            spec: ServiceSpec::new("x:1"),
            node: Some("n1".into()),
            phase: InstancePhase::Scheduled,
            ready: false,
            pending_reason: None,
            created_at_ms: 0,
            ready_since_ms: None,
            message: String::new(),
            exit_code: None,
            restarts: 0,
            failed_at_ms: None,
            stats: None,
            address: None,
            slot: 0,
            carried_restarts: 0,
            last_exit: None,
            crash_looping: false,
        };
        let mut batch = Batch::default();
        batch.put_if(instance.key(), 0, &instance);
        batch.commit(cp.store()).await.unwrap();
        async fn revision(cp: &ControlPlane) -> u64 {
            objects::list::<Instance>(cp.store(), INSTANCES)
                .await
                .unwrap()
                .1
        }
        let report = |cpu_millis, ready| InstanceStatusReport {
            node: "n1".into(),
            phase: ReportedPhase::Running,
            ready,
            message: "running".into(),
            exit_code: None,
            restarts: 0,
            stats: Some(InstanceStats {
                cpu_millis,
                memory_bytes: 1 << 20,
                pids: 2,
                at_ms: cpu_millis,
            }),
            address: Some("10.88.0.2".into()),
            last_exit: None,
            crash_looping: false,
        };
        cp.report_instance_status(&instance.id, report(5, true))
            .await
            .unwrap();
        let after_first = revision(&cp).await;
        // Stats alone, report after report: no store write, the API shows the latest.
        for cpu in 6..20 {
            let shown = cp
                .report_instance_status(&instance.id, report(cpu, true))
                .await
                .unwrap();
            assert_eq!(shown.stats.map(|s| s.cpu_millis), Some(cpu));
        }
        assert_eq!(
            revision(&cp).await,
            after_first,
            "a stats report was written"
        );
        // The same status again, with no stats at all (an agent that restarted and reports
        // what it found): nothing is written either.
        let mut same = report(19, true);
        same.stats = None;
        cp.report_instance_status(&instance.id, same).await.unwrap();
        assert_eq!(
            revision(&cp).await,
            after_first,
            "an unchanged status was written"
        );
        let stored = cp.get_instance(&instance.id).await.unwrap().object;
        assert_eq!(stored.stats, None, "usage is not durable state");
        let listed = cp.list_instances(None, None).await.unwrap().items;
        assert_eq!(listed[0].stats.map(|s| s.cpu_millis), Some(19));
        // A real change (not ready any more) is written.
        cp.report_instance_status(&instance.id, report(20, false))
            .await
            .unwrap();
        assert!(revision(&cp).await > after_first);
    }
}
