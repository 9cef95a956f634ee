//! User namespaces of instances (`security.user_namespace`). Each such instance gets 65536
//! ids of the node's own (its root is host uid and gid `host_id`, its id N is `host_id + N`),
//! one slot of a pool no other instance of the node holds, recorded in the instance's
//! directory (`userns.json`): a restarted container or agent keeps its slot, and the slot is
//! free again when the instance's directory goes.
//!
//! The pool is [`POOL_START`] to 2^31 - 1: above what distributions give users in /etc/subuid
//! (100000 and up, 65536 each) and within the ids every tool takes (runc refuses ids from
//! 2^31). Kubernetes' user namespaces use the same slot size.

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

/// Ids per instance: 0 to 65535 inside.
pub const IDS: u32 = 65536;
/// The first host id of the pool.
pub const POOL_START: u32 = 1 << 30;
/// Slots in the pool: it ends at 2^31 - 1.
pub const SLOTS: u32 = (1 << 30) / IDS;
/// The instance's slot, in its directory.
pub const FILE: &str = "userns.json";

/// An instance's ids on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The host id of the container's root (uid and gid).
    pub host_id: u32,
    pub size: u32,
}

impl IdRange {
    /// The mapping for config.json (`linux.uidMappings`, `gidMappings`, and the idmapped
    /// mounts'): container 0.. is host `host_id`...
    pub fn mapping(&self) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(self.host_id)
            .size(self.size)
            .build()
            .expect("a mapping has every field")
    }

    /// A user namespace with this mapping, held by an fd (for the idmapped image layers).
    pub fn namespace(&self) -> Result<std::os::fd::OwnedFd, String> {
        tug_runtime::rootless::userns_fd(&[self.mapping()], &[self.mapping()])
            .map_err(|e| format!("a user namespace for ids {}: {e}", self.host_id))
    }
}

/// One assignment at a time in this agent (the supervisors prepare in parallel).
static ASSIGNING: Mutex<()> = Mutex::new(());

/// The instance's range: the one recorded in `instance_dir`, or the lowest free slot, then
/// recorded. `instances_dir` holds every instance directory of the node.
pub fn assign(instances_dir: &Path, instance_dir: &Path) -> Result<IdRange, String> {
    let path = instance_dir.join(FILE);
    let read =
        |p: &Path| -> Option<IdRange> { serde_json::from_slice(&std::fs::read(p).ok()?).ok() };
    if let Some(range) = read(&path) {
        return Ok(range);
    }
    let _one = ASSIGNING.lock().unwrap_or_else(|p| p.into_inner());
    let taken: HashSet<u32> = std::fs::read_dir(instances_dir)
        .map_err(|e| format!("{}: {e}", instances_dir.display()))?
        .flatten()
        .filter_map(|d| read(&d.path().join(FILE)))
        .map(|r| r.host_id)
        .collect();
    let host_id = (0..SLOTS)
        .map(|k| POOL_START + k * IDS)
        .find(|h| !taken.contains(h))
        .ok_or_else(|| {
            format!("security.user_namespace: all {SLOTS} id ranges of this node are taken")
        })?;
    let range = IdRange { host_id, size: IDS };
    super::monitor::write_json(&path, &range).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(range)
}

/// Lets processes of the network namespace at `netns` bind ports below 1024 without
/// CAP_NET_BIND_SERVICE over it: a container in a user namespace of its own holds its
/// capabilities only there, not over the node's namespace its network lives in (Docker sets
/// the same for every container since 20.10).
pub fn allow_low_ports(netns: &Path) -> Result<(), String> {
    use std::os::fd::AsFd;
    let file = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread only: /proc/sys/net shows the namespace of whoever opens it.
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {}: {e}", netns.display()))?;
            let sysctl = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
            std::fs::write(sysctl, "0").map_err(|e| format!("{sysctl}: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the sysctl thread panicked".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_keeps_its_own_slot_and_a_freed_one_is_taken_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = |n: &str| {
            let d = root.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let (a, b, c) = (dir("a"), dir("b"), dir("c"));
        let ra = assign(root.path(), &a).unwrap();
        let rb = assign(root.path(), &b).unwrap();
        assert_eq!(ra.host_id, POOL_START);
        assert_eq!(rb.host_id, POOL_START + IDS);
        assert_eq!(assign(root.path(), &a).unwrap(), ra, "kept across calls");
        std::fs::remove_dir_all(&a).unwrap();
        assert_eq!(
            assign(root.path(), &c).unwrap().host_id,
            POOL_START,
            "a's slot is free again"
        );
        // The pool ends below 2^31.
        assert!(u64::from(POOL_START) + u64::from(SLOTS) * u64::from(IDS) <= 1 << 31);
    }
}
