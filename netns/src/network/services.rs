//! Services balanced by nftables: the [`Network`] half of [`crate::services`].
//!
//! What is programmed is kept in `<data_dir>/<network>/services.json` (temp file + rename,
//! under the network's lock), like the leases: the record is the truth, the kernel is
//! rebuilt from it when they disagree (after a reboot, a flushed ruleset, a crash between a
//! transaction and the record). A change is one nftables transaction over only the services
//! that changed; then the virtual addresses are put on (or taken off) the bridge.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::*;
use crate::alloc::LeaseBook;
use crate::services::{self, Frontend, ServiceKey, ServiceSpec};

fn vips(list: &[ServiceSpec]) -> BTreeSet<Ipv4Addr> {
    list.iter()
        .filter_map(|s| match s.frontend {
            Frontend::Virtual { address, .. } => Some(address),
            Frontend::HostPort { .. } => None,
        })
        .collect()
}

fn vip_net(a: Ipv4Addr) -> Ipv4Network {
    Ipv4Network::new(a, 32).expect("a /32")
}

fn record_path(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network).join("services.json")
}

/// The services a network last programmed (its record), read without opening it: for
/// people and tests that want to see what the kernel balances. Empty when there is none.
pub fn recorded_services(data_dir: &Path, network: &str) -> Vec<ServiceSpec> {
    std::fs::read(record_path(data_dir, network))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl<N: NetOps> Network<N> {
    fn services_path(&self) -> PathBuf {
        record_path(&self.cfg.data_dir, &self.cfg.name)
    }

    fn record_err(&self, action: &'static str, source: std::io::Error) -> NetworkError {
        NetworkError::Alloc {
            network: self.cfg.name.clone(),
            source: AllocError::Io {
                action,
                path: self.services_path(),
                source,
            },
        }
    }

    /// The services as last programmed (from the record).
    pub fn services(&self) -> Result<Vec<ServiceSpec>, NetworkError> {
        let path = self.services_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| NetworkError::Alloc {
                network: self.cfg.name.clone(),
                source: AllocError::Corrupt { path, source },
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.record_err("read", e)),
        }
    }

    fn write_services(&self, list: &[ServiceSpec]) -> Result<(), NetworkError> {
        let path = self.services_path();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(list).expect("services serialise");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| self.record_err("write", e))
    }

    /// Programs one service (adds it, or replaces its endpoints and affinity): one
    /// nftables transaction that touches no other service, then its virtual address on the
    /// bridge. Established connections to an endpoint taken out continue (conntrack keeps
    /// their translation); new ones go only to the endpoints listed.
    pub async fn set_service(&self, spec: &ServiceSpec) -> Result<(), NetworkError> {
        let book = self.alloc.lock().map_err(self.alloc_err())?;
        let current = self.services()?;
        let mut wanted = current.clone();
        match wanted.iter_mut().find(|s| s.key() == spec.key()) {
            Some(s) => *s = spec.clone(),
            None => wanted.push(spec.clone()),
        }
        self.change_services(&book, &current, wanted).await
    }

    /// Removes one service; `Ok(false)` when there was none. Its virtual address leaves
    /// the bridge when no other service uses it.
    pub async fn remove_service(&self, key: &ServiceKey) -> Result<bool, NetworkError> {
        let book = self.alloc.lock().map_err(self.alloc_err())?;
        let current = self.services()?;
        if !current.iter().any(|s| s.key() == *key) {
            return Ok(false);
        }
        let wanted = current
            .iter()
            .filter(|s| s.key() != *key)
            .cloned()
            .collect();
        self.change_services(&book, &current, wanted).await?;
        Ok(true)
    }

    /// Makes the node's services exactly `wanted` (the declarative form, for an agent that
    /// lists everything, e.g. after a restart): one transaction over the services that
    /// differ from the record; the others are not touched.
    pub async fn set_services(&self, wanted: &[ServiceSpec]) -> Result<(), NetworkError> {
        let book = self.alloc.lock().map_err(self.alloc_err())?;
        let current = self.services()?;
        self.change_services(&book, &current, wanted.to_vec()).await
    }

    fn check_services(
        &self,
        book: &LeaseBook<'_>,
        wanted: &[ServiceSpec],
    ) -> Result<(), NetworkError> {
        for (i, s) in wanted.iter().enumerate() {
            services::validate(s, self.cfg.subnet).map_err(|e| NetworkError::InvalidService {
                network: self.cfg.name.clone(),
                source: e,
            })?;
            if wanted[..i].iter().any(|o| o.key() == s.key()) {
                return Err(NetworkError::InvalidService {
                    network: self.cfg.name.clone(),
                    source: services::InvalidService {
                        service: s.key().to_string(),
                        reason: "listed twice".into(),
                    },
                });
            }
            if let Frontend::HostPort { port } = s.frontend {
                let holder = book.leases().iter().find(|(_, l)| {
                    l.ports
                        .iter()
                        .any(|p| p.protocol == s.protocol && p.host_port == port)
                });
                if let Some((holder, _)) = holder {
                    return Err(NetworkError::PortInUse {
                        protocol: s.protocol,
                        port,
                        holder: holder.clone(),
                        network: self.cfg.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn change_services(
        &self,
        book: &LeaseBook<'_>,
        current: &[ServiceSpec],
        mut wanted: Vec<ServiceSpec>,
    ) -> Result<(), NetworkError> {
        self.check_services(book, &wanted)?;
        wanted.sort_by_key(|s| s.key());
        let batch = services::change(&self.svc, current, &wanted);
        if let Err(e) = self.ops.nft(&batch).await {
            // The kernel no longer matches the record (a flushed ruleset, a crash after a
            // transaction): rebuild the table. Both are atomic: a failure changed nothing.
            self.ops
                .nft(&services::resync(&self.svc, &wanted))
                .await
                .map_err(|_| self.op_err("program services")(e))?;
        }
        if let Err(e) = self.write_services(&wanted) {
            return Err(self.undo_services(current, e).await);
        }
        let (had, want) = (vips(current), vips(&wanted));
        let mut added = Vec::new();
        for a in want.difference(&had) {
            if let Err(e) = self.ops.add_address(self.bridge_index, vip_net(*a)).await {
                let cause = self.op_err(format!("address {a} on {}", self.cfg.bridge))(e);
                let mut err = self.undo_services(current, cause).await;
                for a in added {
                    if let Err(e) = self.ops.del_address(self.bridge_index, vip_net(a)).await {
                        err = with_leftover(err, format!("address {a} on the bridge: {e}"));
                    }
                }
                return Err(err);
            }
            added.push(*a);
        }
        for a in had.difference(&want) {
            self.ops
                .del_address(self.bridge_index, vip_net(*a))
                .await
                .map_err(self.op_err(format!("remove address {a} from {}", self.cfg.bridge)))?;
        }
        // Connections whose first packet went to an endpoint taken out, and that never had
        // an answer (the endpoint died, or its node went away): balanced again at their
        // next packet (a SYN retransmitted 1 s later) instead of waiting on it. Best
        // effort: the rules are in place whatever this finds; established connections are
        // left alone.
        let gone = removed_endpoints(current, &wanted);
        if !gone.is_empty() {
            let _ = self.ops.drop_unreplied(&gone).await;
        }
        Ok(())
    }

    /// Puts the rules and the record back as `previous` after a later step failed.
    async fn undo_services(&self, previous: &[ServiceSpec], cause: NetworkError) -> NetworkError {
        let mut err = cause;
        if let Err(e) = self.ops.nft(&services::resync(&self.svc, previous)).await {
            err = with_leftover(err, format!("services table {}: {e}", self.svc.table));
        }
        if let Err(e) = self.write_services(previous) {
            err = with_leftover(err, format!("services record: {e}"));
        }
        err
    }

    /// Rebuilds the services table from the record and puts the virtual addresses on the
    /// bridge (after a reboot both are gone). Called by [`Network::open_with`].
    pub(super) async fn resync_services(&self) -> Result<(), NetworkError> {
        let list = self.services()?;
        // Every open (a restarted agent, each CNI call) would otherwise rebuild the table:
        // a transaction as large as all services, and affinity entries lost. The kernel's
        // table is kept when it has exactly the record's chains and element counts.
        if !self.services_in_kernel_match(&list).await {
            self.ops
                .nft(&services::resync(&self.svc, &list))
                .await
                .map_err(self.op_err("install services table"))?;
        }
        for a in vips(&list) {
            self.ops
                .add_address(self.bridge_index, vip_net(a))
                .await
                .map_err(self.op_err(format!("address {a} on {}", self.cfg.bridge)))?;
        }
        Ok(())
    }

    /// Does the kernel's services table have the chains the record needs, and in each
    /// service's map and the dispatch maps as many elements? (Transactions are atomic: a
    /// table that has all this is what some transaction made. A flushed ruleset, a reboot,
    /// or a crash between a transaction and its record shows up here.)
    async fn services_in_kernel_match(&self, list: &[ServiceSpec]) -> bool {
        let family = crate::nft::FAMILY_IPV4;
        let table = self.svc.table.as_str();
        let Ok(chains) = self.ops.nft_list_chains(family, table).await else {
            return false;
        };
        let have: BTreeSet<&str> = chains.iter().map(String::as_str).collect();
        let keys: Vec<ServiceKey> = list.iter().map(|s| s.key()).collect();
        let names: Vec<String> = keys.iter().map(|k| k.chain()).collect();
        let mut want: BTreeSet<&str> = services::FIXED_CHAINS.into_iter().collect();
        want.extend(names.iter().map(String::as_str));
        if have != want {
            return false;
        }
        let virtuals = keys
            .iter()
            .filter(|k| matches!(k.frontend, Frontend::Virtual { .. }))
            .count();
        let mut counts = vec![
            (services::SERVICES_MAP.to_string(), virtuals),
            (services::INGRESS_MAP.to_string(), keys.len() - virtuals),
        ];
        counts.extend(
            names
                .into_iter()
                .zip(list.iter().map(|s| s.endpoints.len())),
        );
        for (set, n) in counts {
            if self.ops.nft_set_len(family, table, &set).await.ok() != Some(n) {
                return false;
            }
        }
        true
    }

    /// Removes the services table and the virtual addresses (for teardown).
    pub(super) async fn clear_services(&self) -> Result<(), NetworkError> {
        match self.ops.nft(&services::teardown(&self.svc)).await {
            Err(e) if e.errno() != Some(libc::ENOENT) => {
                return Err(self.op_err("delete services table")(e));
            }
            _ => {}
        }
        if let Some(index) = self
            .ops
            .link_index(&self.cfg.bridge)
            .await
            .map_err(self.op_err("find bridge"))?
        {
            for a in vips(&self.services()?) {
                self.ops
                    .del_address(index, vip_net(a))
                    .await
                    .map_err(self.op_err(format!("remove address {a}")))?;
            }
        }
        Ok(())
    }
}

/// The endpoints `current` balances to that `wanted` no longer does, per protocol.
fn removed_endpoints(
    current: &[ServiceSpec],
    wanted: &[ServiceSpec],
) -> Vec<(crate::Protocol, std::net::SocketAddrV4)> {
    let mut gone = BTreeSet::new();
    for old in current {
        let now = wanted.iter().find(|w| w.key() == old.key());
        for ep in &old.endpoints {
            if !now.is_some_and(|w| w.endpoints.contains(ep)) {
                gone.insert((old.protocol, *ep));
            }
        }
    }
    // Still an endpoint of another service with the same protocol: its connections there
    // are not to be disturbed.
    gone.retain(|(p, ep)| {
        !wanted
            .iter()
            .any(|w| w.protocol == *p && w.endpoints.contains(ep))
    });
    gone.into_iter().collect()
}

fn with_leftover(err: NetworkError, leftover: String) -> NetworkError {
    match err {
        NetworkError::CleanupFailed {
            cause,
            mut leftovers,
        } => {
            leftovers.push(leftover);
            NetworkError::CleanupFailed { cause, leftovers }
        }
        other => NetworkError::CleanupFailed {
            cause: Box::new(other),
            leftovers: vec![leftover],
        },
    }
}
