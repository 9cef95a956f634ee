//! Network policy: the [`Network`] half of [`crate::policy`].
//!
//! What is programmed is kept in `<data_dir>/<network>/policy.json` (temp file + rename,
//! under the network's lock), like the services: the record is the truth, and the kernel is
//! rebuilt from it when a transaction is refused (a flushed ruleset, a crash between a
//! transaction and the record) and when the network is opened without the table.

use super::*;
use crate::policy::{self, Policy};

fn record_path(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network).join("policy.json")
}

/// The policy a network last programmed (its record), read without opening it. Empty
/// when there is none.
pub fn recorded_policy(data_dir: &Path, network: &str) -> Policy {
    std::fs::read(record_path(data_dir, network))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl<N: NetOps> Network<N> {
    fn policy_table(&self) -> String {
        policy::table_name(&self.cfg.name)
    }

    fn policy_path(&self) -> PathBuf {
        record_path(&self.cfg.data_dir, &self.cfg.name)
    }

    fn policy_io_err(&self, action: &'static str, source: std::io::Error) -> NetworkError {
        NetworkError::Alloc {
            network: self.cfg.name.clone(),
            source: AllocError::Io {
                action,
                path: self.policy_path(),
                source,
            },
        }
    }

    /// The policy as last programmed (from the record); `None` when none ever was.
    pub fn policy(&self) -> Result<Option<Policy>, NetworkError> {
        let path = self.policy_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| NetworkError::Alloc {
                    network: self.cfg.name.clone(),
                    source: AllocError::Corrupt { path, source },
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.policy_io_err("read", e)),
        }
    }

    fn write_policy(&self, p: &Policy) -> Result<(), NetworkError> {
        let path = self.policy_path();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(p).expect("policy serialises");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| self.policy_io_err("write", e))
    }

    /// Makes the network's policy exactly `wanted`, in one nftables transaction: set
    /// element additions and deletions when only the groups' or nodes' members changed
    /// (instances coming and going), the table rebuilt otherwise. Nothing is restarted;
    /// established connections are kept (only new ones are judged).
    pub async fn set_policy(&self, wanted: &Policy) -> Result<(), NetworkError> {
        policy::validate(wanted).map_err(|e| NetworkError::InvalidConfig {
            network: self.cfg.name.clone(),
            reason: e.to_string(),
        })?;
        let _book = self.alloc.lock().map_err(self.alloc_err())?;
        let table = self.policy_table();
        let current = self.policy()?;
        let batch = match &current {
            Some(current) => policy::change(&table, current, wanted),
            None => Some(policy::resync(&table, wanted)),
        };
        if let Some(batch) = batch {
            if let Err(e) = self.ops.nft(&batch).await {
                // The kernel no longer matches the record: rebuild (atomic, as was the
                // transaction that failed).
                self.ops
                    .nft(&policy::resync(&table, wanted))
                    .await
                    .map_err(|_| self.op_err("program network policy")(e))?;
            }
        }
        self.write_policy(wanted)
    }

    /// Puts the policy table back from the record when the kernel lacks it (after a
    /// reboot, a flushed ruleset). Called by [`Network::open_with`].
    pub(super) async fn resync_policy(&self) -> Result<(), NetworkError> {
        let Some(p) = self.policy()? else {
            return Ok(());
        };
        let table = self.policy_table();
        let family = crate::nft::FAMILY_IPV4;
        if let Ok(chains) = self.ops.nft_list_chains(family, &table).await {
            let want = p
                .instances
                .iter()
                .map(|i| usize::from(i.ingress.is_some()) + usize::from(i.egress.is_some()))
                .sum::<usize>()
                + 2;
            if chains.len() == want {
                return Ok(());
            }
        }
        self.ops
            .nft(&policy::resync(&table, &p))
            .await
            .map_err(self.op_err("install network policy"))
    }

    /// Removes the policy table (for teardown).
    pub(super) async fn clear_policy(&self) -> Result<(), NetworkError> {
        match self.ops.nft(&policy::teardown(&self.policy_table())).await {
            Err(e) if e.errno() != Some(libc::ENOENT) => {
                Err(self.op_err("delete network policy table")(e))
            }
            _ => Ok(()),
        }
    }
}
