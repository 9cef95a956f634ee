//! A recording [`NetOps`]: keeps a log of every call (tagged with the namespace it was made
//! in) and a tiny model of which links exist, and fails on demand. For unit tests of the
//! order of steps and of what a failure undoes; the orchestrator's tests can use it too.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnetwork::Ipv4Network;

use crate::nft;
use crate::ops::{NetOps, Netns, OpError, Route, RouteEntry, VethSpec, VxlanSpec};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Enter(String),
    AddBridge(String),
    SetUp(String),
    AddVeth {
        host: String,
        peer: String,
        peer_ns: String,
    },
    AddVxlan(String),
    DelLink(String),
    AddAddress(String, Ipv4Network),
    DelAddress(String, Ipv4Network),
    AddRoute(Route),
    DelRoute(Route),
    AddNeighbour(Ipv4Addr),
    DelNeighbour(Ipv4Addr),
    AddFdb(Ipv4Addr),
    DelFdb(Ipv4Addr),
    Nft(nft::Batch),
    DropUnreplied(Vec<(crate::Protocol, std::net::SocketAddrV4)>),
    Sysctl(String, String),
}

type FailFn = Box<dyn Fn(&str, &Call) -> bool + Send>;

#[derive(Default)]
struct World {
    log: Vec<(String, Call)>,
    /// (namespace, link name) -> index
    links: BTreeMap<(String, String), u32>,
    next_index: u32,
    /// veth host end (namespace, name) -> its peer (namespace, name)
    pairs: BTreeMap<(String, String), (String, String)>,
    /// what `routes()` reports
    routes: Vec<RouteEntry>,
    /// what `nft_rules()` reports, by (table, chain)
    rules: BTreeMap<(String, String), Vec<nft::RuleRef>>,
    fail: Option<FailFn>,
}

/// The recording fake. Clones share one log and one model.
#[derive(Clone)]
pub struct Recorder {
    ns: String,
    world: Arc<Mutex<World>>,
}

impl Recorder {
    /// A fake "host" namespace named `ns`, with `lo` present.
    pub fn new(ns: &str) -> Recorder {
        let r = Recorder {
            ns: ns.to_string(),
            world: Arc::default(),
        };
        r.add_link_model(ns, "lo");
        r
    }

    /// Makes every later call for which `f(namespace, call)` is true fail.
    pub fn fail_when(&self, f: impl Fn(&str, &Call) -> bool + Send + 'static) {
        self.world.lock().unwrap().fail = Some(Box::new(f));
    }

    pub fn clear_failure(&self) {
        self.world.lock().unwrap().fail = None;
    }

    /// Every call so far, with the namespace it was made in.
    pub fn log(&self) -> Vec<(String, Call)> {
        self.world.lock().unwrap().log.clone()
    }

    /// Calls that change something (everything is a change here; lookups are not logged).
    pub fn calls(&self) -> Vec<Call> {
        self.log().into_iter().map(|(_, c)| c).collect()
    }

    pub fn clear_log(&self) {
        self.world.lock().unwrap().log.clear();
    }

    /// Links that exist, as (namespace, name).
    pub fn links(&self) -> Vec<(String, String)> {
        self.world.lock().unwrap().links.keys().cloned().collect()
    }

    /// Sets what `routes()` reports (the host's existing routes).
    pub fn set_routes(&self, routes: Vec<RouteEntry>) {
        self.world.lock().unwrap().routes = routes;
    }

    /// Sets what `nft_rules(_, table, chain)` reports (a chain that exists).
    pub fn set_nft_rules(&self, table: &str, chain: &str, rules: Vec<nft::RuleRef>) {
        self.world
            .lock()
            .unwrap()
            .rules
            .insert((table.to_string(), chain.to_string()), rules);
    }

    /// Pretends a link exists (a namespace's `lo`, a pre-existing bridge).
    pub fn add_link_model(&self, ns: &str, name: &str) {
        let mut w = self.world.lock().unwrap();
        w.next_index += 1;
        let i = w.next_index;
        w.links.insert((ns.to_string(), name.to_string()), i);
    }

    fn record(&self, call: Call) -> Result<(), OpError> {
        let mut w = self.world.lock().unwrap();
        let fail = w.fail.as_ref().map(|f| f(&self.ns, &call)).unwrap_or(false);
        let text = format!("{call:?}");
        w.log.push((self.ns.clone(), call));
        if fail {
            return Err(OpError::Injected(text));
        }
        Ok(())
    }

    fn name_of(&self, index: u32) -> String {
        let w = self.world.lock().unwrap();
        w.links
            .iter()
            .find(|((ns, _), i)| *ns == self.ns && **i == index)
            .map(|((_, n), _)| n.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }
}

fn ns_label(ns: &Netns) -> String {
    ns.reference.path().display().to_string()
}

impl NetOps for Recorder {
    async fn enter(&self, ns: &Netns) -> Result<Self, OpError> {
        let label = ns_label(ns);
        self.record(Call::Enter(label.clone()))?;
        let r = Recorder {
            ns: label.clone(),
            world: self.world.clone(),
        };
        if !self
            .world
            .lock()
            .unwrap()
            .links
            .contains_key(&(label.clone(), "lo".into()))
        {
            r.add_link_model(&label, "lo");
        }
        Ok(r)
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>, OpError> {
        let w = self.world.lock().unwrap();
        Ok(w.links.get(&(self.ns.clone(), name.to_string())).copied())
    }

    async fn add_bridge(&self, name: &str, _mtu: u32) -> Result<(), OpError> {
        self.record(Call::AddBridge(name.into()))?;
        self.add_link_model(&self.ns, name);
        Ok(())
    }

    async fn set_up(&self, index: u32) -> Result<(), OpError> {
        let name = self.name_of(index);
        self.record(Call::SetUp(name))
    }

    async fn add_veth(&self, spec: &VethSpec, peer_ns: &Netns) -> Result<(), OpError> {
        let peer_label = ns_label(peer_ns);
        self.record(Call::AddVeth {
            host: spec.host_name.clone(),
            peer: spec.peer_name.clone(),
            peer_ns: peer_label.clone(),
        })?;
        self.add_link_model(&self.ns, &spec.host_name);
        self.add_link_model(&peer_label, &spec.peer_name);
        self.world.lock().unwrap().pairs.insert(
            (self.ns.clone(), spec.host_name.clone()),
            (peer_label, spec.peer_name.clone()),
        );
        Ok(())
    }

    async fn add_vxlan(&self, spec: &VxlanSpec) -> Result<(), OpError> {
        self.record(Call::AddVxlan(spec.name.clone()))?;
        self.add_link_model(&self.ns, &spec.name);
        Ok(())
    }

    async fn del_link(&self, name: &str) -> Result<bool, OpError> {
        self.record(Call::DelLink(name.into()))?;
        let mut w = self.world.lock().unwrap();
        let key = (self.ns.clone(), name.to_string());
        let existed = w.links.remove(&key).is_some();
        if let Some(peer) = w.pairs.remove(&key) {
            // deleting one end of a veth deletes the other
            w.links.remove(&peer);
        }
        Ok(existed)
    }

    async fn add_address(&self, index: u32, addr: Ipv4Network) -> Result<(), OpError> {
        let name = self.name_of(index);
        self.record(Call::AddAddress(name, addr))
    }

    async fn del_address(&self, index: u32, addr: Ipv4Network) -> Result<bool, OpError> {
        let name = self.name_of(index);
        self.record(Call::DelAddress(name, addr))?;
        Ok(true)
    }

    async fn addresses(&self, _index: u32) -> Result<Vec<Ipv4Network>, OpError> {
        Ok(Vec::new())
    }

    async fn routes(&self) -> Result<Vec<RouteEntry>, OpError> {
        Ok(self.world.lock().unwrap().routes.clone())
    }

    async fn add_route(&self, route: &Route) -> Result<(), OpError> {
        self.record(Call::AddRoute(route.clone()))
    }

    async fn del_route(&self, route: &Route) -> Result<bool, OpError> {
        self.record(Call::DelRoute(route.clone()))?;
        Ok(true)
    }

    async fn add_neighbour(&self, _dev: u32, ip: Ipv4Addr, _mac: [u8; 6]) -> Result<(), OpError> {
        self.record(Call::AddNeighbour(ip))
    }

    async fn del_neighbour(&self, _dev: u32, ip: Ipv4Addr) -> Result<bool, OpError> {
        self.record(Call::DelNeighbour(ip))?;
        Ok(true)
    }

    async fn add_fdb(&self, _dev: u32, _mac: [u8; 6], remote: Ipv4Addr) -> Result<(), OpError> {
        self.record(Call::AddFdb(remote))
    }

    async fn del_fdb(&self, _dev: u32, _mac: [u8; 6], remote: Ipv4Addr) -> Result<bool, OpError> {
        self.record(Call::DelFdb(remote))?;
        Ok(true)
    }

    async fn nft(&self, batch: &nft::Batch) -> Result<(), OpError> {
        self.record(Call::Nft(batch.clone()))
    }

    async fn nft_list_chains(&self, _family: u8, _table: &str) -> Result<Vec<String>, OpError> {
        Ok(Vec::new())
    }

    async fn nft_set_len(&self, _family: u8, _table: &str, _set: &str) -> Result<usize, OpError> {
        Ok(0)
    }

    async fn drop_unreplied(
        &self,
        endpoints: &[(crate::Protocol, std::net::SocketAddrV4)],
    ) -> Result<usize, OpError> {
        self.record(Call::DropUnreplied(endpoints.to_vec()))?;
        Ok(0)
    }

    async fn sysctl(&self, key: &str, value: &str) -> Result<(), OpError> {
        self.record(Call::Sysctl(key.into(), value.into()))
    }

    async fn nft_rules(
        &self,
        _family: u8,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<nft::RuleRef>>, OpError> {
        let w = self.world.lock().unwrap();
        Ok(w.rules
            .get(&(table.to_string(), chain.to_string()))
            .cloned())
    }
}
