//! Services on the node's network: a stable virtual address per service, a name for it in
//! every container's /etc/hosts, and the kernel's balancing on that address.
//!
//! Each service has an address from the service range (default 10.89.0.0/24), given by the
//! server's service controller, so it is the same on every node and for the service's life.
//! The agent keeps the last list in `<data-dir>/services.json` (names keep resolving while
//! the server is away). What each service is reached on (its frontends: the virtual address
//! and each container port, and its ingress ports on every address of the node) is kept in
//! `<data-dir>/frontends.json`. With the service's ready endpoints they make the node's
//! nftables services ([`tug_netns::ServiceSpec`]), which tug-netns programs (DNAT in the
//! kernel: one hop from client to instance) together with the virtual addresses on the
//! bridge. An instance whose readiness probe fails leaves them at once: every change wakes
//! the agent's service loop ([`ServiceTable::changed`]). Names: the agent writes every
//! instance's /etc/hosts (a file bind-mounted into the container) with the names and
//! addresses of all services, and rewrites it in place when a service appears.
//!
//! The endpoints are this node's ready instances (set by their supervisors, so a failed
//! readiness probe counts at once) plus the ready instances on other nodes, which the agent
//! learns from the server ([`super::remote`]) and replaces wholesale on each refresh.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file, next to `services.json`, that keeps the services' frontends.
pub const FRONTENDS_FILE: &str = "frontends.json";

/// One instance of a service as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub ready: bool,
    /// Its container runs and it has been ready since it last started: when none of the
    /// service's instances is ready, the balancer sends to these rather than refuse every
    /// connection (failing open, as cloud load balancers do when all targets are unhealthy):
    /// a readiness probe that times out because every instance is busy must not take the
    /// whole service away.
    pub last_resort: bool,
}

impl Endpoint {
    /// A ready instance (which is also a last resort).
    pub fn ready(address: Ipv4Addr) -> Endpoint {
        Endpoint {
            address,
            ready: true,
            last_resort: true,
        }
    }
}

/// One way a service is reached, and the instances' port behind it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceFrontend {
    pub service: String,
    pub frontend: tug_netns::Frontend,
    pub protocol: tug_netns::Protocol,
    /// The instances' port.
    pub target_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("saving the services' addresses to {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Inner {
    /// Service name -> virtual address (persisted).
    vips: BTreeMap<String, Ipv4Addr>,
    /// Service -> instance id -> endpoint: this node's instances, from their supervisors.
    endpoints: HashMap<String, BTreeMap<String, Endpoint>>,
    /// Service -> instance id -> address: ready instances on other nodes, from the server.
    remote: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    /// What the services are reached on (persisted); `None` until known (from the server
    /// or the saved file): nothing is programmed before.
    frontends: Option<Vec<ServiceFrontend>>,
    /// /etc/hosts files of instances: id -> (path, own address).
    hosts_files: BTreeMap<String, (PathBuf, Ipv4Addr)>,
    /// Network policy's inputs besides the local endpoints: the services' rules, every
    /// instance on other nodes (ready or not), the nodes' addresses, the cluster default.
    policies: Option<BTreeMap<String, crate::policy::ServicePolicy>>,
    remote_sources: crate::policy::Addresses,
    /// Service -> instance id -> address: this node's instances that have an address, from
    /// their attach until their container is gone. An instance leaves the balancing when its
    /// stop begins, but stays a source its peers accept until then: its requests in flight
    /// (a rolling update, a scale-in) reach the services they call.
    local_sources: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    node_addresses: std::collections::BTreeSet<Ipv4Addr>,
    default_deny: bool,
}

impl Inner {
    /// The service's ready endpoints: local ones first, then remote ones, each once.
    fn ready(&self, service: &str) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .endpoints
            .get(service)
            .map(|m| m.values().filter(|e| e.ready).map(|e| e.address).collect())
            .unwrap_or_default();
        for address in self
            .remote
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if !out.contains(address) {
                out.push(*address);
            }
        }
        out
    }

    /// Where the service's connections go: its ready endpoints, or, when it has none
    /// anywhere, this node's last-resort ones (see [`Endpoint::last_resort`]).
    fn balanced(&self, service: &str) -> Vec<Ipv4Addr> {
        let ready = self.ready(service);
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints
            .get(service)
            .map(|m| {
                m.values()
                    .filter(|e| e.last_resort)
                    .map(|e| e.address)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The node's services: addresses, frontends, endpoints, hosts files.
pub struct ServiceTable {
    file: PathBuf,
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ServiceError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("services serialize");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| ServiceError::Save {
            path: path.into(),
            source,
        })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

impl ServiceTable {
    /// Loads the saved addresses from `file` and the frontends saved next to it.
    pub fn open(file: &Path) -> Arc<ServiceTable> {
        let vips = read_json(file).unwrap_or_default();
        let frontends = read_json(&file.with_file_name(FRONTENDS_FILE));
        Arc::new(ServiceTable {
            file: file.into(),
            inner: Mutex::new(Inner {
                vips,
                frontends,
                ..Default::default()
            }),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Woken whenever what should be programmed may have changed (one wake-up is kept
    /// when nobody waits).
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Takes the services' addresses from the server (service -> address; a service not
    /// listed is gone). When anything changed: saved, and every /etc/hosts rewritten.
    pub fn set_addresses(&self, wanted: BTreeMap<String, Ipv4Addr>) -> Result<(), ServiceError> {
        let mut inner = self.lock();
        if inner.vips == wanted {
            return Ok(());
        }
        inner.vips = wanted;
        save_json(&self.file, &inner.vips)?;
        drop(inner);
        self.refresh_hosts_files();
        Ok(())
    }

    /// Every service and its address.
    pub fn addresses(&self) -> BTreeMap<String, Ipv4Addr> {
        self.lock().vips.clone()
    }

    /// Takes what the services are reached on (from the server); saved when it changed.
    pub fn set_frontends(&self, mut frontends: Vec<ServiceFrontend>) -> Result<(), ServiceError> {
        frontends.sort();
        let mut inner = self.lock();
        if inner.frontends.as_ref() == Some(&frontends) {
            return Ok(());
        }
        let saved = save_json(&self.file.with_file_name(FRONTENDS_FILE), &frontends);
        inner.frontends = Some(frontends);
        drop(inner);
        self.changed.notify_one();
        saved
    }

    /// Are the frontends known (from the server, or saved by an earlier run)?
    pub fn frontends_known(&self) -> bool {
        self.lock().frontends.is_some()
    }

    /// After a restart, before the server's first word on other nodes: the endpoints on
    /// other nodes that the kernel was last given (`programmed`, tug-netns' record), so a
    /// restarted or offline agent does not take them away. This node's own endpoints
    /// (`is_local`) come from their supervisors, as always.
    pub fn restore(
        &self,
        programmed: &[tug_netns::ServiceSpec],
        is_local: impl Fn(Ipv4Addr) -> bool,
    ) {
        let mut inner = self.lock();
        let Some(frontends) = inner.frontends.clone() else {
            return;
        };
        let mut remote: BTreeMap<String, BTreeMap<String, Ipv4Addr>> = BTreeMap::new();
        for spec in programmed {
            let Some(f) = frontends
                .iter()
                .find(|f| f.frontend == spec.frontend && f.protocol == spec.protocol)
            else {
                continue;
            };
            for a in spec
                .endpoints
                .iter()
                .map(|e| *e.ip())
                .filter(|a| !is_local(*a))
            {
                remote
                    .entry(f.service.clone())
                    .or_default()
                    .insert(format!("saved-{a}"), a);
            }
        }
        inner.remote = remote;
        drop(inner);
        self.changed.notify_one();
    }

    /// What the kernel should balance now, one entry per frontend, with the problems that
    /// kept a frontend out (`host_ports_taken`: ports published by instances themselves).
    /// `None` while the frontends are not known.
    pub fn wanted(
        &self,
        host_ports_taken: &[(tug_netns::Protocol, u16)],
    ) -> Option<(Vec<tug_netns::ServiceSpec>, Vec<String>)> {
        let inner = self.lock();
        let frontends = inner.frontends.as_ref()?;
        let mut specs: Vec<tug_netns::ServiceSpec> = vec![];
        let mut problems = vec![];
        let mut owners: HashMap<tug_netns::ServiceKey, &str> = HashMap::new();
        for f in frontends {
            let key = tug_netns::ServiceKey {
                frontend: f.frontend,
                protocol: f.protocol,
            };
            if let tug_netns::Frontend::HostPort { port } = f.frontend {
                if host_ports_taken.contains(&(f.protocol, port)) {
                    problems.push(format!(
                        "service {}: ingress port {port}/{} is published by an instance on this node; not balanced here",
                        f.service, f.protocol
                    ));
                    continue;
                }
            }
            if let Some(first) = owners.get(&key) {
                problems.push(format!(
                    "service {}: {key} is already service {first}'s; not balanced for {}",
                    f.service, f.service
                ));
                continue;
            }
            owners.insert(key, f.service.as_str());
            let endpoints = inner
                .balanced(&f.service)
                .into_iter()
                .map(|a| SocketAddrV4::new(a, f.target_port))
                .collect();
            specs.push(tug_netns::ServiceSpec::new(
                f.frontend, f.protocol, endpoints,
            ));
        }
        Some((specs, problems))
    }

    /// The service whose frontend a connection to `destination` (protocol number) is: its
    /// virtual address and port, or its ingress port on any address of the node.
    pub fn service_at(&self, protocol: u8, destination: SocketAddrV4) -> Option<String> {
        let inner = self.lock();
        inner
            .frontends
            .as_ref()?
            .iter()
            .filter(|f| f.protocol.number() == protocol)
            .find(|f| match f.frontend {
                tug_netns::Frontend::Virtual { address, port } => {
                    SocketAddrV4::new(address, port) == destination
                }
                tug_netns::Frontend::HostPort { port } => port == destination.port(),
            })
            .map(|f| f.service.clone())
    }

    /// The services' labels and network rules (from the server).
    pub fn set_policies(&self, policies: BTreeMap<String, crate::policy::ServicePolicy>) {
        let mut inner = self.lock();
        if inner.policies.as_ref() != Some(&policies) {
            inner.policies = Some(policies);
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// Every instance on other nodes with an address (network policy's sources), and the
    /// nodes' own addresses.
    pub fn set_remote_sources(
        &self,
        sources: crate::policy::Addresses,
        nodes: std::collections::BTreeSet<Ipv4Addr>,
    ) {
        let mut inner = self.lock();
        if inner.remote_sources != sources || inner.node_addresses != nodes {
            inner.remote_sources = sources;
            inner.node_addresses = nodes;
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// The cluster's default for services without ingress rules (deny when true).
    pub fn set_default_deny(&self, deny: bool) {
        let mut inner = self.lock();
        if inner.default_deny != deny {
            inner.default_deny = deny;
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// This node's instance `instance` of `service` has `address` (Some, from its attach)
    /// or is gone (None, once its container is deleted): a source of network policy.
    pub fn set_source(&self, service: &str, instance: &str, address: Option<Ipv4Addr>) {
        let mut inner = self.lock();
        let sources = inner.local_sources.entry(service.into()).or_default();
        let old = match address {
            Some(a) => sources.insert(instance.into(), a),
            None => sources.remove(instance),
        };
        if sources.is_empty() {
            inner.local_sources.remove(service);
        }
        drop(inner);
        if old != address {
            self.changed.notify_one();
        }
    }

    /// What this node's network policy is computed from, now.
    pub fn policy_inputs(&self) -> crate::policy::PolicyInputs {
        let inner = self.lock();
        let mut local: crate::policy::Addresses = inner
            .endpoints
            .iter()
            .map(|(svc, m)| {
                (
                    svc.clone(),
                    m.iter().map(|(id, e)| (id.clone(), e.address)).collect(),
                )
            })
            .collect();
        for (svc, m) in &inner.local_sources {
            let entry = local.entry(svc.clone()).or_default();
            for (id, a) in m {
                entry.entry(id.clone()).or_insert(*a);
            }
        }
        crate::policy::PolicyInputs {
            services: inner.policies.clone(),
            local,
            remote: inner.remote_sources.clone(),
            nodes: inner.node_addresses.clone(),
            default_deny: inner.default_deny,
        }
    }

    /// Replaces the endpoints on other nodes: service -> instance id -> address.
    pub fn set_remote_endpoints(&self, remote: BTreeMap<String, BTreeMap<String, Ipv4Addr>>) {
        let mut inner = self.lock();
        if inner.remote != remote {
            inner.remote = remote;
            drop(inner);
            self.changed.notify_one();
        }
    }

    pub fn set_endpoint(&self, service: &str, instance: &str, endpoint: Endpoint) {
        let old = self
            .lock()
            .endpoints
            .entry(service.into())
            .or_default()
            .insert(instance.into(), endpoint);
        if old != Some(endpoint) {
            self.changed.notify_one();
        }
    }

    pub fn remove_endpoint(&self, service: &str, instance: &str) {
        let mut inner = self.lock();
        let removed = inner
            .endpoints
            .get_mut(service)
            .and_then(|e| e.remove(instance));
        inner.hosts_files.remove(instance);
        drop(inner);
        if removed.is_some() {
            self.changed.notify_one();
        }
    }

    /// Ready endpoints of a service, this node's first, then other nodes' (for status and
    /// tests).
    pub fn ready_endpoints(&self, service: &str) -> Vec<Ipv4Addr> {
        self.lock().ready(service)
    }

    /// The text of an instance's /etc/hosts.
    pub fn hosts_text(&self, hostname: &str, own: Ipv4Addr) -> String {
        let mut text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{own}\t{hostname}\n");
        for (name, addr) in self.lock().vips.iter() {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
        text
    }

    /// Writes an instance's /etc/hosts and keeps it current from now on.
    pub fn register_hosts_file(
        &self,
        instance: &str,
        path: &Path,
        own: Ipv4Addr,
    ) -> std::io::Result<()> {
        write_in_place(
            path,
            &self.hosts_text(&super::bundle::hostname(instance), own),
        )?;
        self.lock()
            .hosts_files
            .insert(instance.into(), (path.into(), own));
        Ok(())
    }

    /// Rewrites every instance's /etc/hosts (after a new service got its address). The file
    /// is bind-mounted: it is rewritten in place, never replaced.
    pub fn refresh_hosts_files(&self) {
        let files: Vec<(String, PathBuf, Ipv4Addr)> = self
            .lock()
            .hosts_files
            .iter()
            .map(|(id, (p, a))| (id.clone(), p.clone(), *a))
            .collect();
        for (id, path, own) in files {
            let _ = write_in_place(&path, &self.hosts_text(&super::bundle::hostname(&id), own));
        }
    }
}

/// The frontends of the server's services: for each TCP or UDP container port, the
/// service's virtual address and that port, and its ingress port when published so. A
/// service without an address yet has none.
pub fn frontends_of(services: &[tugboat_api::model::Service]) -> Vec<ServiceFrontend> {
    let mut out = vec![];
    for service in services {
        let Some(address) = service.address else {
            continue;
        };
        for port in &service.spec.ports {
            let protocol = match port.protocol {
                tugboat_api::spec::Protocol::Tcp => tug_netns::Protocol::Tcp,
                tugboat_api::spec::Protocol::Udp => tug_netns::Protocol::Udp,
            };
            let target_port = port.container.0;
            let mut add = |frontend| {
                out.push(ServiceFrontend {
                    service: service.name.clone(),
                    frontend,
                    protocol,
                    target_port,
                })
            };
            add(tug_netns::Frontend::Virtual {
                address,
                port: target_port,
            });
            if let (Some(p), tugboat_api::spec::PublishMode::Ingress) = (port.published, port.mode)
            {
                add(tug_netns::Frontend::HostPort { port: p.0 });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The endpoints the kernel balances `service`'s first TCP frontend over, as programmed
/// (tug-netns' record under `<data_dir>/net/<network>`): for `tugboat up` and tests.
/// `None` when the service has no frontend.
pub fn programmed_endpoints(
    data_dir: &Path,
    network: &str,
    service: &str,
) -> Option<Vec<Ipv4Addr>> {
    let frontends: Vec<ServiceFrontend> = read_json(&data_dir.join(FRONTENDS_FILE))?;
    let f = frontends.iter().find(|f| {
        f.service == service && matches!(f.frontend, tug_netns::Frontend::Virtual { .. })
    })?;
    let programmed = tug_netns::network::recorded_services(&data_dir.join("net"), network);
    Some(
        programmed
            .iter()
            .find(|s| s.frontend == f.frontend && s.protocol == f.protocol)
            .map(|s| s.endpoints.iter().map(|e| *e.ip()).collect())
            .unwrap_or_default(),
    )
}

/// Writes a bind-mounted /etc/hosts in place (it cannot be replaced by a rename: the
/// container's mount holds the old inode), so that no reader ever sees it empty or cut:
/// nothing is written when the text is the same (a restarted agent re-registers every
/// instance's file, and truncating live files made containers' name lookups fail), and a
/// changed text is written over the old one without truncating first. A shorter text is
/// padded with a comment line to the old length instead of truncating the file.
fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let mut old = Vec::new();
    f.read_to_end(&mut old)?;
    let padded = hosts_padded(text, old.len());
    if old == padded.as_bytes() {
        return Ok(());
    }
    f.write_all_at(padded.as_bytes(), 0)
}

/// `text`, padded to at least `len` bytes with a comment line (hosts files ignore those).
fn hosts_padded(text: &str, len: usize) -> String {
    let mut out = text.to_string();
    if out.len() < len {
        let fill = len - out.len();
        if fill == 1 {
            out.push('\n');
        } else {
            out.push('#');
            out.push_str(&" ".repeat(fill - 2));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_addresses_are_taken_and_saved_for_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.json");
        let table = ServiceTable::open(&file);
        let (a, b): (Ipv4Addr, Ipv4Addr) =
            ("10.89.0.1".parse().unwrap(), "10.89.0.2".parse().unwrap());
        let map = |pairs: &[(&str, Ipv4Addr)]| -> BTreeMap<String, Ipv4Addr> {
            pairs.iter().map(|(n, a)| (n.to_string(), *a)).collect()
        };
        table
            .set_addresses(map(&[("catalog", a), ("cart", b)]))
            .unwrap();
        // A restarted agent knows the names before the server answers.
        let again = ServiceTable::open(&file);
        assert!(again
            .hosts_text("front-1", "10.88.0.2".parse().unwrap())
            .contains(&format!("{a}\tcatalog\n")));
        // cart deleted, its address given to orders: cart's name no longer resolves.
        table
            .set_addresses(map(&[("catalog", a), ("orders", b)]))
            .unwrap();
        let hosts = table.hosts_text("front-1", "10.88.0.2".parse().unwrap());
        assert!(
            hosts.contains(&format!("{b}\torders\n")) && !hosts.contains("cart"),
            "{hosts}"
        );
    }

    #[test]
    fn a_hosts_file_is_never_seen_empty_or_cut_and_is_left_alone_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let long = "127.0.0.1\tlocalhost\n10.89.0.1\tcatalog\n10.89.0.2\tcart\n";
        write_in_place(&path, long).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), long);
        // The same text again (an agent restart): the file is not touched at all.
        let inode = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).unwrap();
            (m.ino(), m.mtime_nsec(), m.mtime())
        };
        let before = inode(&path);
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_in_place(&path, long).unwrap();
        assert_eq!(
            inode(&path),
            before,
            "an unchanged hosts file was rewritten"
        );
        // Shorter: the same inode, padded by a comment line, the names exactly the new ones.
        let short = "127.0.0.1\tlocalhost\n10.89.0.1\tcatalog\n";
        write_in_place(&path, short).unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert_eq!(now.len(), long.len());
        assert!(now.starts_with(short), "{now:?}");
        let names: Vec<&str> = now
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(names, ["127.0.0.1\tlocalhost", "10.89.0.1\tcatalog"]);
        assert_eq!(inode(&path).0, before.0);
        // And longer again.
        write_in_place(&path, long).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), long);
        // Padding of one byte is a newline.
        assert_eq!(hosts_padded("a\n", 3), "a\n\n");
    }

    fn web(port: u16) -> ServiceFrontend {
        ServiceFrontend {
            service: "web".into(),
            frontend: tug_netns::Frontend::Virtual {
                address: "10.89.0.1".parse().unwrap(),
                port,
            },
            protocol: tug_netns::Protocol::Tcp,
            target_port: port,
        }
    }

    fn endpoints(t: &ServiceTable) -> Vec<SocketAddrV4> {
        t.wanted(&[]).unwrap().0[0].endpoints.clone()
    }

    #[test]
    fn nothing_is_wanted_before_the_frontends_are_known_and_they_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.json");
        let table = ServiceTable::open(&file);
        assert!(table.wanted(&[]).is_none() && !table.frontends_known());
        table.set_frontends(vec![web(80)]).unwrap();
        assert_eq!(table.wanted(&[]).unwrap().0.len(), 1);
        // A restarted agent (the server away) knows them from its disk.
        let again = ServiceTable::open(&file);
        assert!(again.frontends_known());
        assert_eq!(again.wanted(&[]), table.wanted(&[]));
    }

    #[test]
    fn the_kernels_record_gives_other_nodes_endpoints_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        table.set_frontends(vec![web(80)]).unwrap();
        let (local, remote): (Ipv4Addr, Ipv4Addr) =
            ("10.88.1.2".parse().unwrap(), "10.88.2.2".parse().unwrap());
        let programmed = table.wanted(&[]).unwrap().0[0].clone();
        let programmed = tug_netns::ServiceSpec {
            endpoints: vec![SocketAddrV4::new(local, 80), SocketAddrV4::new(remote, 80)],
            ..programmed
        };
        let own: ipnetwork::Ipv4Network = "10.88.1.0/24".parse().unwrap();
        table.restore(std::slice::from_ref(&programmed), |a| own.contains(a));
        // Until this node's instance is re-attached, only the other node's is balanced to.
        assert_eq!(endpoints(&table), [SocketAddrV4::new(remote, 80)]);
        table.set_endpoint("web", "w1", Endpoint::ready(local));
        assert_eq!(table.wanted(&[]).unwrap().0, [programmed]);
    }

    #[test]
    fn ingress_ports_an_instance_publishes_itself_or_another_service_has_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        let ingress = |service: &str, port| ServiceFrontend {
            service: service.into(),
            frontend: tug_netns::Frontend::HostPort { port },
            protocol: tug_netns::Protocol::Tcp,
            target_port: 80,
        };
        table
            .set_frontends(vec![web(80), ingress("web", 8080), ingress("api", 8080)])
            .unwrap();
        let (specs, problems) = table.wanted(&[]).unwrap();
        assert_eq!(specs.len(), 2, "{specs:?}");
        assert!(
            problems.len() == 1 && problems[0].contains("already service api's"),
            "{problems:?}"
        );
        let (specs, problems) = table.wanted(&[(tug_netns::Protocol::Tcp, 8080)]).unwrap();
        assert_eq!(specs.len(), 1);
        assert!(
            problems[0].contains("published by an instance"),
            "{problems:?}"
        );
    }

    #[test]
    fn only_ready_endpoints_get_traffic_and_each_change_wakes_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        let a: Ipv4Addr = "10.88.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.88.0.3".parse().unwrap();
        table.set_frontends(vec![web(80)]).unwrap();
        let at = |address, ready| Endpoint {
            address,
            ready,
            last_resort: false,
        };
        let ep = |a| SocketAddrV4::new(a, 80);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let woken = |t: &ServiceTable| {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(10), t.changed().notified())
                    .await
                    .is_ok()
            })
        };
        assert!(woken(&table), "new frontends wake the loop");
        table.set_endpoint("web", "w1", at(a, true));
        table.set_endpoint("web", "w2", at(b, false));
        assert!(woken(&table));
        assert_eq!(endpoints(&table), [ep(a)]);
        table.set_endpoint("web", "w2", at(b, false));
        assert!(!woken(&table), "no change, no wake-up");
        table.set_endpoint("web", "w2", at(b, true));
        assert!(woken(&table));
        assert_eq!(endpoints(&table), [ep(a), ep(b)]);
        table.remove_endpoint("web", "w1");
        table.remove_endpoint("web", "w2");
        assert!(woken(&table));
        assert!(endpoints(&table).is_empty());
    }

    #[test]
    fn remote_endpoints_join_the_local_ones_and_are_replaced_wholesale() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        let local: Ipv4Addr = "10.88.1.2".parse().unwrap();
        let remote: Ipv4Addr = "10.88.2.2".parse().unwrap();
        let ep = |a| SocketAddrV4::new(a, 80);
        table.set_frontends(vec![web(80)]).unwrap();
        table.set_endpoint("web", "w1", Endpoint::ready(local));
        let one = |id: &str, a| BTreeMap::from([(id.to_string(), a)]);
        table.set_remote_endpoints(BTreeMap::from([("web".to_string(), one("w2", remote))]));
        assert_eq!(endpoints(&table), [ep(local), ep(remote)]);
        // A local readiness failure counts at once, whatever the server last said.
        table.set_endpoint(
            "web",
            "w1",
            Endpoint {
                address: local,
                ready: false,
                last_resort: true,
            },
        );
        assert_eq!(endpoints(&table), [ep(remote)]);
        // None ready anywhere: the local one that served is the last resort.
        table.set_remote_endpoints(BTreeMap::new());
        assert_eq!(endpoints(&table), [ep(local)]);
    }

    #[test]
    fn a_service_whose_every_instance_fails_readiness_fails_open_to_those_that_served() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        table.set_frontends(vec![web(80)]).unwrap();
        let (a, b, c): (Ipv4Addr, Ipv4Addr, Ipv4Addr) = (
            "10.88.0.2".parse().unwrap(),
            "10.88.0.3".parse().unwrap(),
            "10.88.0.4".parse().unwrap(),
        );
        let ep = |a| SocketAddrV4::new(a, 80);
        let busy = |address| Endpoint {
            address,
            ready: false,
            last_resort: true,
        };
        table.set_endpoint("web", "w1", Endpoint::ready(a));
        table.set_endpoint("web", "w2", busy(b));
        // Starting, never ready yet: no traffic, last resort or not.
        let starting = Endpoint {
            address: c,
            ready: false,
            last_resort: false,
        };
        table.set_endpoint("web", "w3", starting);
        assert_eq!(endpoints(&table), [ep(a)], "one ready: only it");
        table.set_endpoint("web", "w1", busy(a));
        assert_eq!(
            endpoints(&table),
            [ep(a), ep(b)],
            "none ready: those that served, not the one starting"
        );
        // One ready on another node: the busy ones here are out again.
        let remote: Ipv4Addr = "10.88.2.2".parse().unwrap();
        table.set_remote_endpoints(BTreeMap::from([(
            "web".to_string(),
            BTreeMap::from([("w9".to_string(), remote)]),
        )]));
        assert_eq!(endpoints(&table), [ep(remote)]);
        table.set_remote_endpoints(BTreeMap::new());
        // Containers that ended are no last resort: nothing is balanced.
        for (id, address) in [("w1", a), ("w2", b)] {
            let gone = Endpoint {
                address,
                ready: false,
                last_resort: false,
            };
            table.set_endpoint("web", id, gone);
        }
        assert!(endpoints(&table).is_empty());
    }
}
