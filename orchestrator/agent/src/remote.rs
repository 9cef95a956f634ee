//! The other nodes, as this node's agent needs them: their ready instances (endpoints of
//! this node's services, next to its own) and their container subnets (routes).
//!
//! The agent lists the nodes about every two seconds and follows the instances with a watch
//! (listed once, then every change as it happens; not at all while the node is alone):
//!
//! * Endpoints: every instance on another node that is running, ready and has reported its
//!   address, on a node that is not lost and that this node can reach. Reachability is this
//!   node's own: it probes each peer's agent API every [`PEER_PROBE_EVERY`], and a peer that
//!   misses [`PEER_FAILURES`] probes in a row loses its endpoints here at once, before the
//!   server declares it lost (clients stop waiting on a dead node's instances); the first
//!   probe it takes again gives them back. While the server is away the last known
//!   instances are kept for every peer that still answers: a node that runs no instance of
//!   a service reaches it on the others for as long as they are up. A node the server calls
//!   not-ready (its heartbeats are late) keeps its endpoints while this node reaches it; a
//!   node without an agent API (nothing to probe) counts only when the server calls it ready.
//! * Routes: host-gw, `peer subnet via peer address`, for every node that is not lost and
//!   registered both (tug-netns [`tug_netns::Network::set_peers`], which also removes the
//!   routes of nodes that went away). Routes are kept while the server is unreachable: they
//!   cost nothing and are right again when it answers. Host-gw needs the nodes on one link.

use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tug_netns::Peer;
use tugboat_api::model::{Instance, InstancePhase, Node, NodeStatus};
use tugboat_api::wire::PeerSeen;

/// How often the peers are probed, how long a probe may take, and how many missed probes in
/// a row make a peer unreachable: 0.55 to 0.75 s from a node's death to its endpoints
/// leaving this node's services.
///
/// Why so quick: the kernel balances a connection once, on its first packet, and does not
/// try another endpoint when that one does not answer (the userspace proxy before it did).
/// A client whose SYN went to a dead node's endpoint retransmits it 1 s later; tug-netns
/// deletes such unanswered connections when their endpoint leaves the service, so the
/// retransmission is balanced again, over the endpoints left, if the dead node was found
/// out within that second. A probe is a TCP connection to the peer's agent API, answered by
/// the peer's kernel: on a LAN it takes well under a millisecond, so 150 ms without an
/// answer three times in a row is not a slow peer. A false alarm costs little: the peer's
/// endpoints leave this node's services until its next answered probe (the server's own
/// timers, not these, decide that a node is lost).
pub const PEER_PROBE_EVERY: Duration = Duration::from_millis(200);
pub const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(150);
pub const PEER_FAILURES: u32 = 3;

/// Service -> instance id -> address.
pub type RemoteEndpoints = BTreeMap<String, BTreeMap<String, Ipv4Addr>>;

/// The ready instances on nodes other than `own`, per service, leaving out nodes that are
/// lost, that this node cannot reach (`unreachable`), and not-ready nodes it does not probe.
pub fn remote_endpoints(
    own: &str,
    nodes: &[Node],
    instances: &[Instance],
    unreachable: &HashSet<String>,
) -> RemoteEndpoints {
    let usable: HashSet<&str> = nodes
        .iter()
        .filter(|n| {
            n.name != own
                && !unreachable.contains(&n.name)
                && match n.status {
                    NodeStatus::Ready => true,
                    NodeStatus::NotReady => probe_address(n).is_some(),
                    NodeStatus::Lost => false,
                }
        })
        .map(|n| n.name.as_str())
        .collect();
    let mut out = RemoteEndpoints::new();
    for i in instances {
        let Some(node) = i.node.as_deref() else {
            continue;
        };
        if !usable.contains(node) || i.phase != InstancePhase::Running || !i.ready {
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

/// Where a node's agent takes probes: the host and port of its API.
pub fn probe_address(node: &Node) -> Option<SocketAddr> {
    let url = node.agent_url.as_deref()?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    hostport.parse().ok()
}

/// What this node knows of the others: nodes and instances as the server last told, and
/// which peers its own probes find unreachable.
#[derive(Debug, Default)]
pub struct Others {
    pub nodes: Vec<Node>,
    pub instances: HashMap<String, Instance>,
    pub unreachable: HashSet<String>,
    /// When each peer last answered a probe (for the server: a node its peers reach is not
    /// lost even when the server cannot hear it).
    pub answered: HashMap<String, std::time::Instant>,
}

impl Others {
    /// Network policy's view: every instance on another node that has an address (ready
    /// or not, reachable or not: a client of a service need not be ready), and every
    /// node's own addresses (host address, and its subnet's network and gateway
    /// addresses, which its masquerade may use).
    pub fn sources(&self, own: &str) -> (RemoteEndpoints, std::collections::BTreeSet<Ipv4Addr>) {
        let mut out = RemoteEndpoints::new();
        for i in self.instances.values() {
            if i.node.as_deref().is_none_or(|n| n == own)
                || !matches!(i.phase, InstancePhase::Running | InstancePhase::Scheduled)
            {
                continue;
            }
            if let Some(address) = i.address.as_deref().and_then(|a| a.parse().ok()) {
                out.entry(i.service.clone())
                    .or_default()
                    .insert(i.id.clone(), address);
            }
        }
        let mut nodes = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if let Some(a) = n.address.as_deref().and_then(|a| a.parse().ok()) {
                nodes.insert(a);
            }
            if let Some(net) = n.subnet {
                nodes.insert(net.network());
                nodes.insert(Ipv4Addr::from(u32::from(net.network()) + 1));
            }
        }
        (out, nodes)
    }

    pub fn endpoints(&self, own: &str) -> RemoteEndpoints {
        let instances: Vec<Instance> = self.instances.values().cloned().collect();
        remote_endpoints(own, &self.nodes, &instances, &self.unreachable)
    }

    /// The peers to probe: every other node that is not lost and has an agent API.
    pub fn probe_targets(&self, own: &str) -> Vec<(String, SocketAddr)> {
        self.nodes
            .iter()
            .filter(|n| n.name != own && n.status != NodeStatus::Lost)
            .filter_map(|n| probe_address(n).map(|a| (n.name.clone(), a)))
            .collect()
    }

    /// What this node's heartbeat tells the server of its peers: each probed peer with how
    /// long ago it last answered.
    pub fn peer_views(&self, own: &str, now: std::time::Instant) -> Vec<PeerSeen> {
        self.probe_targets(own)
            .into_iter()
            .map(|(node, _)| PeerSeen {
                seen_ago_ms: self
                    .answered
                    .get(&node)
                    .map(|at| now.saturating_duration_since(*at).as_millis() as u64),
                node,
            })
            .collect()
    }
}

/// Consecutive missed probes per peer.
#[derive(Debug, Default)]
pub struct PeerProbes {
    missed: HashMap<String, u32>,
    unreachable: HashSet<String>,
}

impl PeerProbes {
    /// Takes one round of results (peer, answered); returns the peers whose reachability
    /// changed, with their new state (true: reachable again). Peers no longer probed are
    /// forgotten.
    pub fn record(&mut self, results: &[(String, bool)]) -> Vec<(String, bool)> {
        let probed: HashSet<&String> = results.iter().map(|(n, _)| n).collect();
        self.missed.retain(|n, _| probed.contains(n));
        let mut changed = vec![];
        let forgotten: Vec<String> = self
            .unreachable
            .iter()
            .filter(|n| !probed.contains(n))
            .cloned()
            .collect();
        for n in forgotten {
            self.unreachable.remove(&n);
            changed.push((n, true));
        }
        for (node, ok) in results {
            if *ok {
                self.missed.remove(node);
                if self.unreachable.remove(node) {
                    changed.push((node.clone(), true));
                }
            } else {
                let missed = self.missed.entry(node.clone()).or_default();
                *missed += 1;
                if *missed >= PEER_FAILURES && self.unreachable.insert(node.clone()) {
                    changed.push((node.clone(), false));
                }
            }
        }
        changed
    }

    pub fn unreachable(&self) -> &HashSet<String> {
        &self.unreachable
    }
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
    /// The peers last routed successfully.
    pub routed: Option<Vec<Peer>>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tugboat_api::model::Resources;
    use tugboat_api::spec::ServiceSpec;

    fn node(name: &str, subnet: Option<&str>, address: Option<&str>, status: NodeStatus) -> Node {
        Node {
            runtimes: vec![],
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
            heartbeat_every_ms: 0,
            cordoned: false,
            draining: false,
        }
    }

    pub(crate) fn instance(
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
            slot: 0,
            carried_restarts: 0,
            last_exit: None,
            crash_looping: false,
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
        let none = HashSet::new();
        let got = remote_endpoints("a", &nodes, &instances, &none);
        let want = BTreeMap::from([(
            "web".to_string(),
            BTreeMap::from([("web-2".to_string(), "10.88.2.2".parse().unwrap())]),
        )]);
        assert_eq!(got, want);
        // A not-ready node that this node probes (it has an agent API) and reaches keeps its
        // endpoints; one it cannot reach loses them, whatever the server says.
        let mut nodes = nodes;
        nodes[2].agent_url = Some("http://192.168.1.3:7481".into());
        let got = remote_endpoints("a", &nodes, &instances, &none);
        assert_eq!(got["web"].len(), 2, "{got:?}");
        let unreachable: HashSet<String> = ["b".to_string(), "c".to_string()].into();
        assert!(remote_endpoints("a", &nodes, &instances, &unreachable).is_empty());
        nodes[2].status = NodeStatus::Lost;
        assert_eq!(
            remote_endpoints("a", &nodes, &instances, &none)["web"].len(),
            1
        );
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
    fn a_peer_is_unreachable_after_missed_probes_in_a_row_and_back_at_its_first_answer() {
        let mut p = PeerProbes::default();
        let round = |p: &mut PeerProbes, b: bool| p.record(&[("a".into(), true), ("b".into(), b)]);
        assert!(round(&mut p, false).is_empty());
        // A miss between answers does not count towards the next.
        assert!(round(&mut p, true).is_empty());
        for _ in 1..PEER_FAILURES {
            assert!(round(&mut p, false).is_empty());
        }
        assert_eq!(round(&mut p, false), [("b".to_string(), false)]);
        assert!(round(&mut p, false).is_empty(), "said once");
        assert!(p.unreachable().contains("b") && !p.unreachable().contains("a"));
        assert_eq!(round(&mut p, true), [("b".to_string(), true)]);
        assert!(p.unreachable().is_empty());
        // A peer no longer probed (removed from the cluster) is forgotten.
        for _ in 0..PEER_FAILURES {
            round(&mut p, false);
        }
        assert_eq!(p.record(&[("a".into(), true)]), [("b".to_string(), true)]);
    }

    #[test]
    fn probe_address_is_the_agent_api_host_and_port() {
        let mut n = node("b", None, None, NodeStatus::Ready);
        n.agent_url = Some("http://192.168.1.2:7481".into());
        assert_eq!(probe_address(&n), Some("192.168.1.2:7481".parse().unwrap()));
        n.agent_url = Some("http://[fd00::2]:7481/".into());
        assert_eq!(probe_address(&n), Some("[fd00::2]:7481".parse().unwrap()));
        n.agent_url = None;
        assert_eq!(probe_address(&n), None);
    }
}
