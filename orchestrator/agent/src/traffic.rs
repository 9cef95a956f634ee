//! What the node's service balancing and health probes did, counted for `/metrics`: per
//! service, the connections the kernel balanced (made, active, and those whose instance
//! never accepted them), and per instance the probes that failed.
//!
//! The balancing is DNAT in the kernel ([`super::services`]), so no process of ours is on a
//! connection's path; the agent learns of each connection from conntrack's events
//! ([`tug_netns::nft::ConnEvents`]), on a thread of its own, and counts with atomics. A
//! connection is a service's when it was translated and its destination is one of the
//! service's frontends (the virtual address and port, or an ingress port). Counting starts
//! with the agent: connections made before it are not counted. Limits: when the kernel
//! drops events (a burst larger than the socket's 8 MB buffer, counted in
//! `tugboat_service_connection_events_lost_total`), a connection whose end was lost stays
//! counted as active; a deleted service's series stay until the agent restarts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use tug_netns::nft::ConnEvent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub service: String,
    pub id: String,
    pub probe: &'static str,
}

/// The node's counters (cheap to clone: each family shares its metrics).
#[derive(Clone, Default)]
pub struct Traffic {
    pub connections: Family<ServiceLabels, Counter>,
    pub active: Family<ServiceLabels, Gauge>,
    pub upstream_failures: Family<ServiceLabels, Counter>,
    pub probe_failures: Family<ProbeLabels, Counter>,
    /// Conntrack events the kernel dropped because the reader fell behind.
    pub events_lost: Counter,
}

/// Which probe failed.
pub const LIVENESS: &str = "liveness";
pub const READINESS: &str = "readiness";

impl Traffic {
    pub fn probe_failed(&self, service: &str, id: &str, probe: &'static str) {
        self.probe_failures
            .get_or_create(&ProbeLabels {
                service: service.into(),
                id: id.into(),
                probe,
            })
            .inc();
    }

    /// The instance is gone: its series go too.
    pub fn forget_instance(&self, service: &str, id: &str) {
        for probe in [LIVENESS, READINESS] {
            self.probe_failures.remove(&ProbeLabels {
                service: service.into(),
                id: id.into(),
                probe,
            });
        }
    }
}

/// Follows the connections of one network namespace: which service each is, whether it is
/// still open.
pub struct ConnectionBook {
    traffic: Traffic,
    /// Open connections of a service: conntrack id -> (service, still counted as active).
    open: HashMap<u32, (Arc<ServiceLabels>, bool)>,
}

impl ConnectionBook {
    pub fn new(traffic: Traffic) -> ConnectionBook {
        ConnectionBook {
            traffic,
            open: HashMap::new(),
        }
    }

    /// Counts one event; `service_of(protocol, destination)` names the service whose
    /// frontend that is.
    pub fn record(
        &mut self,
        event: ConnEvent,
        service_of: impl Fn(u8, SocketAddrV4) -> Option<String>,
    ) {
        match event {
            ConnEvent::New {
                id,
                protocol,
                destination,
                translated_to,
            } => {
                if destination == translated_to {
                    return;
                }
                let Some(service) = service_of(protocol, destination) else {
                    return;
                };
                let labels = Arc::new(ServiceLabels { service });
                self.traffic.connections.get_or_create(&labels).inc();
                self.traffic.active.get_or_create(&labels).inc();
                self.open.insert(id, (labels, true));
            }
            ConnEvent::Closing { id } => {
                if let Some((labels, active)) = self.open.get_mut(&id) {
                    if *active {
                        *active = false;
                        self.traffic.active.get_or_create(labels).dec();
                    }
                }
            }
            ConnEvent::Gone { id, established } => {
                let Some((labels, active)) = self.open.remove(&id) else {
                    return;
                };
                if active {
                    self.traffic.active.get_or_create(&labels).dec();
                }
                if !established {
                    self.traffic.upstream_failures.get_or_create(&labels).inc();
                }
            }
        }
    }
}

/// Runs on its own thread (opened in the calling thread's network namespace, the node's):
/// counts every service connection until the process ends. Returns at once, with the
/// error, when conntrack's events cannot be had (no ctnetlink): the figures then stay at 0.
pub fn follow_connections(
    traffic: Traffic,
    services: Arc<super::services::ServiceTable>,
) -> std::io::Result<()> {
    let mut events = tug_netns::nft::ConnEvents::open()?;
    std::thread::Builder::new()
        .name("service-conns".into())
        .spawn(move || {
            let mut book = ConnectionBook::new(traffic.clone());
            let mut batch = vec![];
            loop {
                batch.clear();
                if let Err(e) = events.read(&mut batch) {
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        traffic.events_lost.inc();
                        continue;
                    }
                    eprintln!("tugboat agent: conntrack events: {e}; service connections are no longer counted");
                    return;
                }
                for event in batch.drain(..) {
                    book.record(event, |p, d| services.service_at(p, d));
                }
            }
        })?;
    Ok(())
}

/// Adds the counters to a scrape's registry.
pub fn register(registry: &mut prometheus_client::registry::Registry, traffic: &Traffic) {
    registry.register(
        "service_connections",
        "Connections the node's balancing sent to one of the service's instances",
        traffic.connections.clone(),
    );
    registry.register(
        "service_active_connections",
        "Service connections through this node's balancing that are open now",
        traffic.active.clone(),
    );
    registry.register(
        "service_upstream_failures",
        "Service connections whose instance never accepted them (refused or unanswered)",
        traffic.upstream_failures.clone(),
    );
    registry.register(
        "service_connection_events_lost",
        "Connection events the kernel dropped before the agent read them (figures undercount)",
        traffic.events_lost.clone(),
    );
    registry.register(
        "instance_probe_failures",
        "Health probes of the instance that failed",
        traffic.probe_failures.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, line_start: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().to_string()))
    }

    #[test]
    fn connections_are_counted_per_service_until_they_close_and_refused_ones_fail() {
        let traffic = Traffic::default();
        let mut book = ConnectionBook::new(traffic.clone());
        let vip: SocketAddrV4 = "10.89.0.1:80".parse().unwrap();
        let backend: SocketAddrV4 = "10.88.0.2:80".parse().unwrap();
        let service_of = |_p: u8, d: SocketAddrV4| (d == vip).then(|| "web".to_string());
        let new = |id, destination, translated_to| ConnEvent::New {
            id,
            protocol: 6,
            destination,
            translated_to,
        };
        for id in 1..=3 {
            book.record(new(id, vip, backend), service_of);
        }
        // Not translated, or not a service's: not counted.
        book.record(new(4, vip, vip), service_of);
        book.record(new(5, backend, "10.88.0.3:80".parse().unwrap()), service_of);
        book.record(ConnEvent::Closing { id: 1 }, service_of);
        book.record(
            ConnEvent::Gone {
                id: 1,
                established: true,
            },
            service_of,
        );
        book.record(
            ConnEvent::Gone {
                id: 2,
                established: false,
            },
            service_of,
        );
        // Gone twice, or never seen: nothing more.
        book.record(
            ConnEvent::Gone {
                id: 2,
                established: false,
            },
            service_of,
        );
        book.record(
            ConnEvent::Gone {
                id: 9,
                established: false,
            },
            service_of,
        );
        let l = ServiceLabels {
            service: "web".into(),
        };
        assert_eq!(traffic.connections.get_or_create(&l).get(), 3);
        assert_eq!(traffic.active.get_or_create(&l).get(), 1);
        assert_eq!(traffic.upstream_failures.get_or_create(&l).get(), 1);
        assert_eq!(
            traffic
                .connections
                .get_or_create(&ServiceLabels {
                    service: "other".into()
                })
                .get(),
            0
        );

        traffic.probe_failed("web", "web-1", READINESS);
        traffic.probe_failed("web", "web-1", READINESS);
        let mut registry = prometheus_client::registry::Registry::with_prefix("tugboat");
        register(&mut registry, &traffic);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert_eq!(
            value(&text, r#"tugboat_instance_probe_failures_total{service="web",id="web-1",probe="readiness"}"#).as_deref(),
            Some("2"),
            "{text}"
        );
        traffic.forget_instance("web", "web-1");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("web-1"), "{text}");
    }
}
