//! The other nodes, as this node's agent needs them: their ready instances (endpoints for
//! this node's service proxy, next to its own) and their container subnets (routes).
//!
//! The agent lists the nodes about every two seconds and follows the instances with a watch
//! (listed once, then every change as it happens; not at all while the node is alone):
//!
//! * Endpoints: every instance on another node that is running, ready and has reported its
//!   address, on a node the server sees as ready. The list replaces the previous one, so an
//!   instance the server no longer calls ready loses its traffic as soon as the change
//!   arrives. When the
//!   server does not answer for [`STALE_AFTER`], the remote endpoints are dropped (their
//!   nodes may be as unreachable as the server is) and the node serves its own instances
//!   only: an edge node whose uplink drops keeps answering with what it runs itself.
//! * Routes: host-gw, `peer subnet via peer address`, for every node that is not lost and
//!   registered both (tug-netns [`tug_netns::Network::set_peers`], which also removes the
//!   routes of nodes that went away). Routes are kept while the server is unreachable: they
//!   cost nothing and are right again when it answers. Host-gw needs the nodes on one link.

use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tug_netns::Peer;
use tugboat_api::model::{Instance, InstancePhase, Node, NodeStatus};

/// How long remote endpoints are kept after the server last answered.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Service -> instance id -> address.
pub type RemoteEndpoints = BTreeMap<String, BTreeMap<String, Ipv4Addr>>;

/// The ready instances on nodes other than `own`, per service.
pub fn remote_endpoints(own: &str, nodes: &[Node], instances: &[Instance]) -> RemoteEndpoints {
    let status: HashMap<&str, NodeStatus> =
        nodes.iter().map(|n| (n.name.as_str(), n.status)).collect();
    let mut out = RemoteEndpoints::new();
    for i in instances {
        let Some(node) = i.node.as_deref() else {
            continue;
        };
        if node == own
            || status.get(node) != Some(&NodeStatus::Ready)
            || i.phase != InstancePhase::Running
            || !i.ready
        {
            continue;
        }
        let Some(address) = i.address.as_deref().and_then(|a| a.parse().ok()) else {
            continue;
        };
        out.entry(i.service.clone())
            .or_default()
            .insert(i.id.clone(), address);
    }
    out
}

/// The peers to route: every other node that is not lost, with a subnet and an address.
/// Nodes that cannot be routed come back as problems (a person can act on them).
pub fn peers(own: &str, own_subnet: Ipv4Network, nodes: &[Node]) -> (Vec<Peer>, Vec<String>) {
    let mut peers = vec![];
    let mut problems = vec![];
    for n in nodes {
        if n.name == own || n.status == NodeStatus::Lost {
            continue;
        }
        let Some(subnet) = n.subnet else {
            problems.push(format!(
                "node {}: registered no container subnet; not routed",
                n.name
            ));
            continue;
        };
        let Some(host_addr) = n.address.as_deref().and_then(|a| a.parse().ok()) else {
            problems.push(format!(
                "node {}: no IPv4 address (tugboat agent --address); its subnet {subnet} is not routed",
                n.name
            ));
            continue;
        };
        if subnet.overlaps(own_subnet) {
            problems.push(format!(
                "node {}: subnet {subnet} overlaps this node's {own_subnet}; not routed",
                n.name
            ));
            continue;
        }
        peers.push(Peer { subnet, host_addr });
    }
    peers.sort_by_key(|p| (p.subnet, p.host_addr));
    (peers, problems)
}

/// What the agent's refresh remembers between rounds.
#[derive(Debug, Default)]
pub struct RemoteView {
    /// When the server last answered.
    pub last_heard: Option<Instant>,
    /// The peers last routed successfully.
    pub routed: Option<Vec<Peer>>,
}

impl RemoteView {
    /// The server did not answer: are the remote endpoints now too old to keep?
    pub fn stale(&self, now: Instant) -> bool {
        self.last_heard
            .is_none_or(|t| now.saturating_duration_since(t) >= STALE_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::model::Resources;
    use tugboat_api::spec::ServiceSpec;

    fn node(name: &str, subnet: Option<&str>, address: Option<&str>, status: NodeStatus) -> Node {
        Node {
            name: name.into(),
            labels: Default::default(),
            capacity: Resources::default(),
            address: address.map(str::to_string),
            subnet: subnet.map(|s| s.parse().unwrap()),
            status,
            registered_at_ms: 0,
            last_heartbeat_ms: 0,
            volumes: vec![],
            agent_url: None,
        }
    }

    fn instance(
        id: &str,
        node: &str,
        phase: InstancePhase,
        ready: bool,
        address: &str,
    ) -> Instance {
        Instance {
            id: id.into(),
            service: "web".into(),
            template_hash: "t".into(),
            spec: ServiceSpec::new("x"),
            node: Some(node.into()),
            phase,
            ready,
            pending_reason: None,
            created_at_ms: 0,
            ready_since_ms: None,
            message: String::new(),
            exit_code: None,
            restarts: 0,
            failed_at_ms: None,
            stats: None,
            address: (!address.is_empty()).then(|| address.to_string()),
        }
    }

    #[test]
    fn only_ready_running_instances_of_other_ready_nodes_with_an_address() {
        let nodes = [
            node("a", None, None, NodeStatus::Ready),
            node("b", None, None, NodeStatus::Ready),
            node("c", None, None, NodeStatus::NotReady),
        ];
        let r = InstancePhase::Running;
        let instances = [
            instance("web-1", "a", r, true, "10.88.1.2"),
            instance("web-2", "b", r, true, "10.88.2.2"),
            instance("web-3", "b", r, false, "10.88.2.3"),
            instance("web-4", "b", InstancePhase::Failed, true, "10.88.2.4"),
            instance("web-5", "b", r, true, ""),
            instance("web-6", "c", r, true, "10.88.3.2"),
            instance("web-7", "gone", r, true, "10.88.4.2"),
        ];
        let got = remote_endpoints("a", &nodes, &instances);
        let want = BTreeMap::from([(
            "web".to_string(),
            BTreeMap::from([("web-2".to_string(), "10.88.2.2".parse().unwrap())]),
        )]);
        assert_eq!(got, want);
    }

    #[test]
    fn peers_are_the_other_routable_nodes() {
        let nodes = [
            node(
                "a",
                Some("10.88.1.0/24"),
                Some("192.168.1.1"),
                NodeStatus::Ready,
            ),
            node(
                "b",
                Some("10.88.2.0/24"),
                Some("192.168.1.2"),
                NodeStatus::NotReady,
            ),
            node(
                "c",
                Some("10.88.3.0/24"),
                Some("192.168.1.3"),
                NodeStatus::Lost,
            ),
            node("d", Some("10.88.4.0/24"), None, NodeStatus::Ready),
            node(
                "e",
                Some("10.88.0.0/16"),
                Some("192.168.1.5"),
                NodeStatus::Ready,
            ),
        ];
        let (peers, problems) = peers("a", "10.88.1.0/24".parse().unwrap(), &nodes);
        assert_eq!(
            peers,
            [Peer {
                subnet: "10.88.2.0/24".parse().unwrap(),
                host_addr: "192.168.1.2".parse().unwrap()
            }]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("node d") && problems[0].contains("--address"));
        assert!(problems[1].contains("node e") && problems[1].contains("10.88.0.0/16"));
    }

    #[test]
    fn remote_endpoints_go_stale_after_a_while_without_the_server() {
        let now = Instant::now();
        assert!(RemoteView::default().stale(now));
        let view = RemoteView {
            last_heard: Some(now),
            routed: None,
        };
        assert!(!view.stale(now + Duration::from_secs(5)));
        assert!(view.stale(now + STALE_AFTER));
    }
}
