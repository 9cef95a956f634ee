//! Network policy on this node: from the services' `network` rules and where every
//! instance is, the [`tug_netns::Policy`] of this node's instances, which tug-netns programs
//! in nftables. A pure function ([`compute`]); the agent's balance loop calls it whenever
//! an instance comes or goes (here or on another node) or a service's rules change, and
//! hands the result to `Network::set_policy`, which changes only set elements when only
//! membership changed.
//!
//! A rule's `from: {service: S}` is a group `service/S` holding the address of every
//! instance of S on any node (running or starting, ready or not: a client need not be
//! ready); `from: {labels: ...}` is a group of the instances of every service whose labels
//! include those; `from: {cidr: ...}` is the range itself. The nodes' own addresses (host
//! address, and the container subnet's network and gateway addresses, which a node's
//! masquerade may use) are always let in: health probes and ingress ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use tug_netns::{InstancePolicy, Peers, PolicyRule};
use tugboat_api::spec::{NetworkPolicySpec, PeerSpec};

/// Service -> instance id -> address.
pub type Addresses = BTreeMap<String, BTreeMap<String, Ipv4Addr>>;

/// A service's labels and rules, as the server last said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServicePolicy {
    pub labels: BTreeMap<String, String>,
    pub network: NetworkPolicySpec,
}

/// What the policy is computed from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyInputs {
    /// `None` until the server's services are known: nothing is programmed before.
    pub services: Option<BTreeMap<String, ServicePolicy>>,
    /// This node's instances.
    pub local: Addresses,
    /// Instances on other nodes.
    pub remote: Addresses,
    pub nodes: BTreeSet<Ipv4Addr>,
    /// The cluster denies ingress to services without ingress rules.
    pub default_deny: bool,
}

/// Do bridged IPv4 packets pass the IP hooks here (br_netfilter)? Without it, two
/// containers on one bridge talking by instance address are switched at layer 2 and never
/// reach the forward hook where policy is enforced.
pub fn bridge_filtered() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

/// The group name of a peer (`None` for a range or anyone).
pub fn group_name(peer: &PeerSpec) -> Option<String> {
    if let Some(s) = &peer.service {
        return Some(format!("service/{s}"));
    }
    if peer.labels.is_empty() {
        return None;
    }
    let text: Vec<String> = peer
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let name = format!("labels/{}", text.join(","));
    if name.len() <= 64 {
        return Some(name);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(format!("labels/#{h:016x}"))
}

fn peers(peer: Option<&PeerSpec>) -> Peers {
    match peer {
        None => Peers::Any,
        Some(p) => match (group_name(p), p.cidr) {
            (Some(g), _) => Peers::Group(g),
            (None, Some(net)) => Peers::Cidr(net),
            (None, None) => Peers::Any,
        },
    }
}

/// The node's policy, or `None` before the services are known.
pub fn compute(i: &PolicyInputs) -> Option<tug_netns::Policy> {
    let services = i.services.as_ref()?;
    let mut out = tug_netns::Policy {
        nodes: i.nodes.clone(),
        ..Default::default()
    };
    let mut wanted_peers: Vec<PeerSpec> = vec![];
    for (service, instances) in &i.local {
        let Some(sp) = services.get(service) else {
            continue;
        };
        let ingress = match &sp.network.ingress {
            Some(rules) => Some(
                rules
                    .iter()
                    .map(|r| {
                        wanted_peers.extend(r.from.clone());
                        PolicyRule {
                            peers: peers(r.from.as_ref()),
                            ports: r.ports.iter().map(|p| p.0).collect(),
                        }
                    })
                    .collect(),
            ),
            None if i.default_deny => Some(vec![]),
            None => None,
        };
        let egress = sp.network.egress.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| {
                    wanted_peers.extend(r.to.clone());
                    PolicyRule {
                        peers: peers(r.to.as_ref()),
                        ports: r.ports.iter().map(|p| p.0).collect(),
                    }
                })
                .collect()
        });
        if ingress.is_none() && egress.is_none() {
            continue;
        }
        for address in instances.values() {
            if out.instances.iter().any(|p| p.address == *address) {
                continue;
            }
            out.instances.push(InstancePolicy {
                address: *address,
                ingress: ingress.clone(),
                egress: egress.clone(),
            });
        }
    }
    for peer in wanted_peers {
        let Some(name) = group_name(&peer) else {
            continue;
        };
        if out.groups.contains_key(&name) {
            continue;
        }
        let members = resolve(&peer, services, &i.local, &i.remote);
        out.groups.insert(name, members.into_values().collect());
    }
    out.instances.sort_by_key(|p| p.address);
    Some(out)
}

/// The instances a peer names: instance id -> address, on any node.
pub fn resolve(
    peer: &PeerSpec,
    services: &BTreeMap<String, ServicePolicy>,
    local: &Addresses,
    remote: &Addresses,
) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for (name, sp) in services {
        if !peer.matches_service(name, &sp.labels) {
            continue;
        }
        for m in [local.get(name), remote.get(name)].into_iter().flatten() {
            out.extend(m.iter().map(|(id, a)| (id.clone(), *a)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::spec::{IngressRule, Port};

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn addrs(list: &[(&str, &str, &str)]) -> Addresses {
        let mut out = Addresses::new();
        for (svc, id, ip) in list {
            out.entry(svc.to_string())
                .or_default()
                .insert(id.to_string(), a(ip));
        }
        out
    }

    fn from_service(s: &str) -> IngressRule {
        IngressRule {
            from: Some(PeerSpec {
                service: Some(s.into()),
                ..Default::default()
            }),
            ports: vec![],
        }
    }

    fn shop() -> BTreeMap<String, ServicePolicy> {
        let mut m = BTreeMap::new();
        m.insert(
            "payments".into(),
            ServicePolicy {
                labels: BTreeMap::new(),
                network: NetworkPolicySpec {
                    ingress: Some(vec![from_service("orders")]),
                    egress: None,
                },
            },
        );
        m.insert(
            "orders".into(),
            ServicePolicy {
                labels: BTreeMap::new(),
                network: NetworkPolicySpec {
                    ingress: Some(vec![IngressRule {
                        from: Some(PeerSpec {
                            labels: [("tier".to_string(), "web".to_string())].into(),
                            ..Default::default()
                        }),
                        ports: vec![Port(8080)],
                    }]),
                    egress: None,
                },
            },
        );
        m.insert(
            "front".into(),
            ServicePolicy {
                labels: [("tier".to_string(), "web".to_string())].into(),
                network: NetworkPolicySpec::default(),
            },
        );
        m
    }

    #[test]
    fn groups_hold_every_instance_of_the_named_services_on_any_node() {
        let inputs = PolicyInputs {
            services: Some(shop()),
            local: addrs(&[
                ("payments", "p1", "10.88.1.2"),
                ("front", "f1", "10.88.1.3"),
            ]),
            remote: addrs(&[
                ("orders", "o1", "10.88.2.2"),
                ("orders", "o2", "10.88.3.2"),
                ("front", "f2", "10.88.2.3"),
            ]),
            nodes: [a("192.168.1.1")].into(),
            default_deny: false,
        };
        let p = compute(&inputs).unwrap();
        // Only payments is local and restricted; front has no rules.
        assert_eq!(p.instances.len(), 1);
        assert_eq!(p.instances[0].address, a("10.88.1.2"));
        assert_eq!(
            p.instances[0].ingress.as_ref().unwrap()[0].peers,
            Peers::Group("service/orders".into())
        );
        assert_eq!(
            p.groups["service/orders"],
            [a("10.88.2.2"), a("10.88.3.2")].into()
        );
        assert_eq!(p.nodes, [a("192.168.1.1")].into());
        tug_netns::policy::validate(&p).unwrap();
    }

    #[test]
    fn labels_match_services_whose_labels_include_them() {
        let inputs = PolicyInputs {
            services: Some(shop()),
            local: addrs(&[("orders", "o1", "10.88.1.2")]),
            remote: addrs(&[("front", "f2", "10.88.2.3"), ("payments", "p", "10.88.2.4")]),
            ..Default::default()
        };
        let p = compute(&inputs).unwrap();
        let rule = &p.instances[0].ingress.as_ref().unwrap()[0];
        assert_eq!(rule.peers, Peers::Group("labels/tier=web".into()));
        assert_eq!(rule.ports, vec![8080]);
        assert_eq!(p.groups["labels/tier=web"], [a("10.88.2.3")].into());
    }

    #[test]
    fn default_deny_closes_services_without_ingress_rules_and_nothing_before_the_services() {
        let mut inputs = PolicyInputs {
            services: Some(shop()),
            local: addrs(&[("front", "f1", "10.88.1.3")]),
            ..Default::default()
        };
        assert!(compute(&inputs).unwrap().instances.is_empty());
        inputs.default_deny = true;
        let p = compute(&inputs).unwrap();
        assert_eq!(p.instances[0].ingress, Some(vec![]));
        inputs.services = None;
        assert!(compute(&inputs).is_none());
    }

    #[test]
    fn an_instance_that_moves_stays_in_its_groups() {
        let mut inputs = PolicyInputs {
            services: Some(shop()),
            local: addrs(&[("payments", "p1", "10.88.1.2")]),
            remote: addrs(&[("orders", "o1", "10.88.2.2")]),
            ..Default::default()
        };
        let before = compute(&inputs).unwrap();
        inputs.remote = addrs(&[("orders", "o1", "10.88.3.9")]);
        let after = compute(&inputs).unwrap();
        assert_eq!(after.groups["service/orders"], [a("10.88.3.9")].into());
        // Only membership changed: tug-netns changes set elements, nothing else.
        let b = tug_netns::policy::change("t", &before, &after).unwrap();
        assert!(b.ops.iter().all(|op| matches!(
            op,
            tug_netns::nft::Op::AddSetElements { .. } | tug_netns::nft::Op::DelElements { .. }
        )));
    }

    #[test]
    fn long_label_selectors_get_a_short_stable_name() {
        let peer = PeerSpec {
            labels: [("k".repeat(80), "v".to_string())].into(),
            ..Default::default()
        };
        let n = group_name(&peer).unwrap();
        assert!(n.len() <= 64 && n.starts_with("labels/#"), "{n}");
        assert_eq!(group_name(&peer), Some(n));
    }
}
