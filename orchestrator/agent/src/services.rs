//! Services on the node's network: a stable virtual address per service, a name for it in
//! every container's /etc/hosts, and a small TCP balancer on that address.
//!
//! Each service has an address from the service range (default 10.89.0.0/24), given by the
//! server's service controller, so it is the same on every node and for the service's life.
//! The agent keeps the last list in `<data-dir>/services.json` (names keep resolving while
//! the server is away). The address is added (as a /32) to the node's bridge, so containers reach it through their default
//! route and the host reaches it directly. On each of the service's container ports (and on
//! its ingress ports, on the host) the node's proxy ([`super::proxy`]) listens and passes
//! every connection to the next ready instance; this table says what it serves, and an
//! instance whose readiness probe fails is taken out of it at once. Names: the agent writes
//! every instance's /etc/hosts (a file bind-mounted into the container) with the names and
//! addresses of all services, and rewrites it in place when a service appears.
//!
//! The balancer's endpoints are this node's ready instances (set by their supervisors, so a
//! failed readiness probe counts at once) plus the ready instances on other nodes, which the
//! agent learns from the server ([`super::remote`]) and replaces wholesale on each refresh.

use super::proxy::{ProxyListener, ProxyTable};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One instance of a service as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub ready: bool,
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
    /// What the proxy listens on: address -> (service, instances' port).
    listeners: BTreeMap<SocketAddr, (String, u16)>,
    /// /etc/hosts files of instances: id -> (path, own address).
    hosts_files: BTreeMap<String, (PathBuf, Ipv4Addr)>,
    /// Services whose address was put on the bridge by this process.
    on_bridge: std::collections::HashSet<String>,
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
}

/// The node's services: addresses, endpoints, balancers, hosts files.
pub struct ServiceTable {
    file: PathBuf,
    inner: Mutex<Inner>,
}

impl ServiceTable {
    /// Loads the saved addresses from `file`.
    pub fn open(file: &Path) -> Arc<ServiceTable> {
        let vips = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Arc::new(ServiceTable {
            file: file.into(),
            inner: Mutex::new(Inner {
                vips,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the services' addresses from the server (service -> address; a service not
    /// listed is gone). Returns the services whose address is new or moved: their address
    /// must go on the bridge. When anything changed: saved, and every /etc/hosts rewritten.
    pub fn set_addresses(
        &self,
        wanted: BTreeMap<String, Ipv4Addr>,
    ) -> Result<Vec<String>, ServiceError> {
        let mut inner = self.lock();
        if inner.vips == wanted {
            return Ok(vec![]);
        }
        let changed: Vec<String> = wanted
            .iter()
            .filter(|(name, a)| inner.vips.get(*name) != Some(*a))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &changed {
            inner.on_bridge.remove(name);
        }
        // A deleted service's address leaves the bridge (the agent sweeps it off).
        inner.on_bridge.retain(|name| wanted.contains_key(name));
        inner.vips = wanted;
        let tmp = self.file.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&inner.vips).expect("addresses serialize");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &self.file))
            .map_err(|source| ServiceError::Save {
                path: self.file.clone(),
                source,
            })?;
        drop(inner);
        self.refresh_hosts_files();
        Ok(changed)
    }

    pub fn has_address_on_bridge(&self, service: &str) -> bool {
        self.lock().on_bridge.contains(service)
    }

    pub fn mark_on_bridge(&self, service: &str) {
        self.lock().on_bridge.insert(service.into());
    }

    /// Every service and its address.
    pub fn addresses(&self) -> BTreeMap<String, Ipv4Addr> {
        self.lock().vips.clone()
    }

    /// Has the proxy listen on `addr` for `service` (to its instances' `port`): the
    /// service's virtual address, or a host address for an ingress port.
    pub fn listen(&self, service: &str, addr: SocketAddr, port: u16) {
        self.lock()
            .listeners
            .insert(addr, (service.to_string(), port));
    }

    /// Replaces everything the proxy listens on.
    pub fn set_listeners(&self, listeners: BTreeMap<SocketAddr, (String, u16)>) {
        self.lock().listeners = listeners;
    }

    /// Takes what the proxy last served (its saved table) while the server is away: the
    /// listeners, and the endpoints that are not this node's (`is_local`) as endpoints on
    /// other nodes. This node's own endpoints come from their supervisors, as always.
    pub fn restore(&self, saved: &ProxyTable, is_local: impl Fn(Ipv4Addr) -> bool) {
        let mut inner = self.lock();
        inner.listeners = saved
            .listeners
            .iter()
            .map(|l| (l.listen, (l.service.clone(), l.target_port)))
            .collect();
        let mut remote: BTreeMap<String, BTreeMap<String, Ipv4Addr>> = BTreeMap::new();
        for l in &saved.listeners {
            for a in l.endpoints.iter().filter(|a| !is_local(**a)) {
                remote
                    .entry(l.service.clone())
                    .or_default()
                    .insert(format!("saved-{a}"), *a);
            }
        }
        inner.remote = remote;
    }

    /// What the proxy should serve now.
    pub fn proxy_table(&self) -> ProxyTable {
        let inner = self.lock();
        let listeners = inner
            .listeners
            .iter()
            .map(|(addr, (service, port))| ProxyListener {
                service: service.clone(),
                listen: *addr,
                target_port: *port,
                endpoints: inner.ready(service),
            })
            .collect();
        ProxyTable { listeners }
    }

    /// Replaces the endpoints on other nodes: service -> instance id -> address.
    pub fn set_remote_endpoints(&self, remote: BTreeMap<String, BTreeMap<String, Ipv4Addr>>) {
        self.lock().remote = remote;
    }

    pub fn set_endpoint(&self, service: &str, instance: &str, endpoint: Endpoint) {
        self.lock()
            .endpoints
            .entry(service.into())
            .or_default()
            .insert(instance.into(), endpoint);
    }

    pub fn remove_endpoint(&self, service: &str, instance: &str) {
        let mut inner = self.lock();
        if let Some(e) = inner.endpoints.get_mut(service) {
            e.remove(instance);
        }
        inner.hosts_files.remove(instance);
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
    fn the_servers_addresses_are_taken_saved_and_marked_for_the_bridge() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.json");
        let table = ServiceTable::open(&file);
        let (a, b): (Ipv4Addr, Ipv4Addr) =
            ("10.89.0.1".parse().unwrap(), "10.89.0.2".parse().unwrap());
        let map = |pairs: &[(&str, Ipv4Addr)]| -> BTreeMap<String, Ipv4Addr> {
            pairs.iter().map(|(n, a)| (n.to_string(), *a)).collect()
        };
        let changed = table
            .set_addresses(map(&[("catalog", a), ("cart", b)]))
            .unwrap();
        assert_eq!(changed, ["cart", "catalog"]);
        table.mark_on_bridge("catalog");
        table.mark_on_bridge("cart");
        assert!(table
            .set_addresses(map(&[("catalog", a), ("cart", b)]))
            .unwrap()
            .is_empty());
        // A restarted agent knows the names before the server answers.
        let again = ServiceTable::open(&file);
        assert!(again
            .hosts_text("front-1", "10.88.0.2".parse().unwrap())
            .contains(&format!("{a}\tcatalog\n")));
        // cart deleted, its address given to orders: orders moves onto the bridge, cart's
        // name no longer resolves.
        let changed = table
            .set_addresses(map(&[("catalog", a), ("orders", b)]))
            .unwrap();
        assert_eq!(changed, ["orders"]);
        assert!(!table.has_address_on_bridge("orders") && table.has_address_on_bridge("catalog"));
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

    #[test]
    fn a_saved_table_gives_the_listeners_and_other_nodes_endpoints_back() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        let (local, remote): (Ipv4Addr, Ipv4Addr) =
            ("10.88.1.2".parse().unwrap(), "10.88.2.2".parse().unwrap());
        let saved = ProxyTable {
            listeners: vec![ProxyListener {
                service: "web".into(),
                listen: "10.89.0.1:80".parse().unwrap(),
                target_port: 8080,
                endpoints: vec![local, remote],
            }],
        };
        let own: ipnetwork::Ipv4Network = "10.88.1.0/24".parse().unwrap();
        table.restore(&saved, |a| own.contains(a));
        // Until this node's instance is re-attached, only the other node's is served.
        let now = table.proxy_table();
        assert_eq!(now.listeners.len(), 1);
        assert_eq!(now.listeners[0].target_port, 8080);
        assert_eq!(now.listeners[0].endpoints, [remote]);
        table.set_endpoint(
            "web",
            "w1",
            Endpoint {
                address: local,
                ready: true,
            },
        );
        assert_eq!(table.proxy_table(), saved);
    }

    #[test]
    fn only_ready_endpoints_get_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        let a: Ipv4Addr = "10.88.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.88.0.3".parse().unwrap();
        table.listen("web", "10.89.0.1:80".parse().unwrap(), 80);
        let endpoints = |t: &ServiceTable| t.proxy_table().listeners[0].endpoints.clone();
        let at = |address, ready| Endpoint { address, ready };
        table.set_endpoint("web", "w1", at(a, true));
        table.set_endpoint("web", "w2", at(b, false));
        assert_eq!(endpoints(&table), [a]);
        table.set_endpoint("web", "w2", at(b, true));
        assert_eq!(endpoints(&table), [a, b]);
        table.remove_endpoint("web", "w1");
        table.remove_endpoint("web", "w2");
        assert!(endpoints(&table).is_empty());
    }

    #[test]
    fn remote_endpoints_join_the_local_ones_and_are_replaced_wholesale() {
        let dir = tempfile::tempdir().unwrap();
        let table = ServiceTable::open(&dir.path().join("s"));
        let local: Ipv4Addr = "10.88.1.2".parse().unwrap();
        let remote: Ipv4Addr = "10.88.2.2".parse().unwrap();
        table.listen("web", "10.89.0.1:80".parse().unwrap(), 80);
        let endpoints = |t: &ServiceTable| t.proxy_table().listeners[0].endpoints.clone();
        table.set_endpoint(
            "web",
            "w1",
            Endpoint {
                address: local,
                ready: true,
            },
        );
        let one = |id: &str, a| BTreeMap::from([(id.to_string(), a)]);
        table.set_remote_endpoints(BTreeMap::from([("web".to_string(), one("w2", remote))]));
        assert_eq!(endpoints(&table), [local, remote]);
        // A local readiness failure counts at once, whatever the server last said.
        table.set_endpoint(
            "web",
            "w1",
            Endpoint {
                address: local,
                ready: false,
            },
        );
        assert_eq!(endpoints(&table), [remote]);
        table.set_remote_endpoints(BTreeMap::new());
        assert!(endpoints(&table).is_empty());
    }
}
