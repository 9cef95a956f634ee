//! What the node's service balancing and health probes did, counted for `/metrics`: per
//! service, the connections the kernel balanced (made, active, and those whose instance
//! never accepted them), and per instance the probes that failed.
//!
//! Connections, not requests: the balancing is DNAT in the kernel ([`super::services`]), a
//! layer-4 balancer, so no process of ours is on a connection's path or reads its bytes; an
//! HTTP client that keeps its connection open sends many requests over one, and the node
//! cannot tell. The agent learns of each connection from conntrack's events
//! ([`tug_netns::nft::ConnEvents`]), on a thread of its own, and counts with atomics. A
//! connection is a service's when it was translated and its destination is one of the
//! service's frontends (the virtual address and port, or an ingress port). Counting starts
//! with the agent: connections made before it are not counted.
//!
//! Bounded: the book of open connections holds what conntrack holds. When the kernel drops
//! events (a burst larger than the socket's 8 MB buffer, counted in
//! `tugboat_service_connection_events_lost_total`), the reader asks conntrack for the ids of
//! the connections it tracks now and forgets the others, whose end it missed
//! ([`ConnectionBook::resync`]). A service the server no longer has loses its series at the
//! agent's next list of services ([`Traffic::keep_services`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
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
    /// The services that have series, and those whose series were removed and whose open
    /// connections the book must forget.
    services: Arc<Mutex<ServiceSeries>>,
}

#[derive(Default)]
struct ServiceSeries {
    counted: BTreeSet<String>,
    retired: Vec<String>,
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

    /// Removes the series of every service not in `live` (the server's services): a deleted
    /// service's figures go without an agent restart.
    pub fn keep_services<'a>(&self, live: impl IntoIterator<Item = &'a str>) {
        let live: HashSet<&str> = live.into_iter().collect();
        let mut series = self.services.lock().unwrap();
        let gone: Vec<String> = series
            .counted
            .iter()
            .filter(|s| !live.contains(s.as_str()))
            .cloned()
            .collect();
        for service in gone {
            let labels = ServiceLabels {
                service: service.clone(),
            };
            self.connections.remove(&labels);
            self.active.remove(&labels);
            self.upstream_failures.remove(&labels);
            series.counted.remove(&service);
            series.retired.push(service);
        }
    }

    /// A connection of `service` was made: its series exist from now on.
    fn opened(&self, labels: &ServiceLabels) {
        let mut series = self.services.lock().unwrap();
        if !series.counted.contains(&labels.service) {
            series.counted.insert(labels.service.clone());
            // A service of that name again: its old connections are not its.
            series.retired.push(labels.service.clone());
        }
        self.connections.get_or_create(labels).inc();
        self.active.get_or_create(labels).inc();
    }

    /// A connection of `service` its instance never accepted (unless the service's series
    /// were removed meanwhile).
    fn failed(&self, labels: &ServiceLabels) {
        let series = self.services.lock().unwrap();
        if series.counted.contains(&labels.service) {
            self.upstream_failures.get_or_create(labels).inc();
        }
    }

    /// Services whose series were removed since the last call.
    fn take_retired(&self) -> Vec<String> {
        std::mem::take(&mut self.services.lock().unwrap().retired)
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

    /// Connections followed now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Counts one event; `service_of(protocol, destination)` names the service whose
    /// frontend that is.
    pub fn record(
        &mut self,
        event: ConnEvent,
        service_of: impl Fn(u8, SocketAddrV4) -> Option<String>,
    ) {
        self.forget_retired();
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
                self.traffic.opened(&labels);
                self.forget_retired();
                // An id conntrack gives again is a new connection: the old one ended unseen.
                if let Some((old, true)) = self.open.insert(id, (labels, true)) {
                    self.deactivate(&old);
                }
            }
            ConnEvent::Closing { id } => {
                if let Some((labels, active)) = self.open.get_mut(&id) {
                    if *active {
                        *active = false;
                        let labels = labels.clone();
                        self.deactivate(&labels);
                    }
                }
            }
            ConnEvent::Gone { id, established } => {
                let Some((labels, active)) = self.open.remove(&id) else {
                    return;
                };
                if active {
                    self.deactivate(&labels);
                }
                if !established {
                    self.traffic.failed(&labels);
                }
            }
        }
    }

    /// Events were lost: forgets the connections conntrack no longer tracks (`live`: the ids
    /// it tracks now), whose end the book missed. Their service's active count drops; they
    /// count as no failure (what became of them is unknown).
    pub fn resync(&mut self, live: &HashSet<u32>) {
        let ended: Vec<u32> = self
            .open
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in ended {
            if let Some((labels, true)) = self.open.remove(&id) {
                self.deactivate(&labels);
            }
        }
    }

    /// One fewer active connection of a service whose series still exist.
    fn deactivate(&self, labels: &ServiceLabels) {
        if let Some(g) = self.traffic.active.get(labels) {
            g.dec();
        }
    }

    /// Drops the open connections of services whose series were removed.
    fn forget_retired(&mut self) {
        let retired = self.traffic.take_retired();
        if !retired.is_empty() {
            self.open
                .retain(|_, (labels, _)| !retired.contains(&labels.service));
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
    // For the ids of the connections conntrack tracks, after events were lost; opened here,
    // in the node's namespace.
    let mut tracked = tug_netns::nft::Socket::open()?;
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
                        match tracked.connection_ids() {
                            Ok(live) => book.resync(&live),
                            Err(e) => eprintln!(
                                "tugboat agent: conntrack events were lost and its connections cannot be listed ({e}); some service connections may stay counted as active"
                            ),
                        }
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
        "Connections (not requests: the balancing is layer 4, DNAT in the kernel, and one connection may carry many requests) that this node's balancing sent to one of the service's instances",
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

    fn scrape(traffic: &Traffic) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("tugboat");
        register(&mut registry, traffic);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn opened(id: u32, port: u16) -> ConnEvent {
        ConnEvent::New {
            id,
            protocol: 6,
            destination: SocketAddrV4::new("10.89.0.1".parse().unwrap(), port),
            translated_to: "10.88.0.2:80".parse().unwrap(),
        }
    }

    /// Port 80 is web's, 81 api's.
    fn service_of(_p: u8, d: SocketAddrV4) -> Option<String> {
        match d.port() {
            80 => Some("web".into()),
            81 => Some("api".into()),
            _ => None,
        }
    }

    #[test]
    fn connections_whose_end_was_lost_are_forgotten_at_the_resync_that_follows() {
        let traffic = Traffic::default();
        let mut book = ConnectionBook::new(traffic.clone());
        for id in 1..=1000 {
            book.record(opened(id, 80), service_of);
        }
        // Their ends were lost (ENOBUFS) but for the last 10, which conntrack still tracks.
        let live: HashSet<u32> = (991..=1000).chain([5000]).collect();
        book.resync(&live);
        assert_eq!(book.len(), 10);
        let text = scrape(&traffic);
        assert_eq!(
            value(
                &text,
                r#"tugboat_service_active_connections{service="web"}"#
            )
            .as_deref(),
            Some("10"),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"tugboat_service_connections_total{service="web"}"#).as_deref(),
            Some("1000")
        );
        // Nothing is a failure for having been lost.
        assert!(!text.contains("upstream_failures_total{"), "{text}");
        // A resync when nothing was lost changes nothing.
        book.resync(&live);
        assert_eq!(book.len(), 10);
        // The rest end as usual.
        for id in 991..=1000 {
            book.record(
                ConnEvent::Gone {
                    id,
                    established: true,
                },
                service_of,
            );
        }
        assert!(book.is_empty());
        assert_eq!(
            value(
                &scrape(&traffic),
                r#"tugboat_service_active_connections{service="web"}"#
            )
            .as_deref(),
            Some("0")
        );
    }

    #[test]
    fn a_deleted_services_series_go_and_its_late_events_do_not_bring_them_back() {
        let traffic = Traffic::default();
        let mut book = ConnectionBook::new(traffic.clone());
        book.record(opened(1, 80), service_of);
        book.record(opened(2, 81), service_of);
        book.record(opened(3, 81), service_of);
        assert!(scrape(&traffic).contains(r#"service="api""#));
        traffic.keep_services(["web", "other"]);
        let text = scrape(&traffic);
        assert!(!text.contains(r#"service="api""#), "{text}");
        assert!(text.contains(r#"service="web""#), "{text}");
        // api's connections end after: no series comes back.
        book.record(ConnEvent::Closing { id: 2 }, service_of);
        book.record(
            ConnEvent::Gone {
                id: 3,
                established: false,
            },
            service_of,
        );
        let text = scrape(&traffic);
        assert!(!text.contains(r#"service="api""#), "{text}");
        assert_eq!(book.len(), 1, "only web's connection is followed");
        // A new service of the same name starts from nothing; the old one's connection
        // ending later does not touch it.
        book.record(opened(4, 81), service_of);
        book.record(
            ConnEvent::Gone {
                id: 2,
                established: true,
            },
            service_of,
        );
        let text = scrape(&traffic);
        assert_eq!(
            value(
                &text,
                r#"tugboat_service_active_connections{service="api"}"#
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"tugboat_service_connections_total{service="api"}"#).as_deref(),
            Some("1")
        );
    }
}
