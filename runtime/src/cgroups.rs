//! Cgroups: one manager trait, the choice of v1 or v2 made once by probing the host.
//!
//! [`FsCgroup`] drives cgroupfs through cgroups-rs, which probes the host: a pure v2 host
//! (cgroup2 at /sys/fs/cgroup) gets v2; a hybrid host (controllers on v1 hierarchies, a
//! cgroup2 mount with few or none) and a legacy host get v1. [`RecordingCgroup`] is the test
//! double for the container logic.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use cgroups_rs::manager::{FsManager, Manager};
use cgroups_rs::{CgroupPid, FreezerState};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use crate::rootfs::CgroupMounts;

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {what}: {message}")]
pub struct CgroupError {
    pub path: String,
    pub what: &'static str,
    pub message: String,
}

/// What the container lifecycle needs from a cgroup.
pub trait CgroupManager {
    /// The path below each hierarchy's root, e.g. `/tug/<id>`.
    fn path(&self) -> &str;
    /// Creates the cgroup (idempotent) and applies the limits.
    fn create(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError>;
    /// Changes limits of an existing cgroup.
    fn update(&mut self, resources: &LinuxResources) -> Result<(), CgroupError>;
    /// A directory fd for clone3's CLONE_INTO_CGROUP, where the host offers it (v2).
    fn clone_into_fd(&self) -> Option<OwnedFd>;
    /// Moves a process into the cgroup.
    fn add_process(&mut self, pid: i32) -> Result<(), CgroupError>;
    /// The processes in the cgroup.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    fn freeze(&self, frozen: bool) -> Result<(), CgroupError>;
    /// Removes the cgroup (and tug's own `tug` parent once empty), if it exists.
    fn destroy(&mut self) -> Result<(), CgroupError>;
    /// Where the `cgroup` mount type finds the container's cgroup on the host.
    fn mounts(&self) -> CgroupMounts;
    fn is_v2(&self) -> bool;
    /// How many processes the OOM killer has killed in the cgroup.
    fn oom_kills(&self) -> u64;
}

/// A container without a cgroup: rootless tug on a host that delegates none to the user.
/// It takes no limits; pause and stats are refused.
pub struct NoCgroup;

const NO_CGROUP: &str =
    "no cgroup (a rootless container on a host that delegates none to this user)";

impl CgroupManager for NoCgroup {
    fn path(&self) -> &str {
        ""
    }
    fn create(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        match resources.and_then(limit_asked) {
            Some(field) => Err(CgroupError {
                path: String::new(),
                what: "apply limits",
                message: format!(
                    "linux.resources.{field} needs a cgroup, and there is {NO_CGROUP}"
                ),
            }),
            None => Ok(()),
        }
    }
    fn update(&mut self, _: &LinuxResources) -> Result<(), CgroupError> {
        Err(CgroupError {
            path: String::new(),
            what: "update",
            message: NO_CGROUP.into(),
        })
    }
    fn clone_into_fd(&self) -> Option<OwnedFd> {
        None
    }
    fn add_process(&mut self, _: i32) -> Result<(), CgroupError> {
        Ok(())
    }
    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Err(CgroupError {
            path: String::new(),
            what: "list processes",
            message: NO_CGROUP.into(),
        })
    }
    fn freeze(&self, _: bool) -> Result<(), CgroupError> {
        Err(CgroupError {
            path: String::new(),
            what: "freeze",
            message: NO_CGROUP.into(),
        })
    }
    fn destroy(&mut self) -> Result<(), CgroupError> {
        Ok(())
    }
    fn mounts(&self) -> CgroupMounts {
        CgroupMounts::default()
    }
    fn is_v2(&self) -> bool {
        host_is_v2()
    }
    fn oom_kills(&self) -> u64 {
        0
    }
}

/// The first limit `resources` asks for, by its field name (device rules are not limits).
pub fn limit_asked(r: &LinuxResources) -> Option<&'static str> {
    if r.memory().is_some() {
        Some("memory")
    } else if r.cpu().is_some() {
        Some("cpu")
    } else if r.pids().is_some() {
        Some("pids")
    } else if r.block_io().is_some() {
        Some("blockIO")
    } else if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        Some("hugepageLimits")
    } else {
        None
    }
}

/// The manager of a container's saved cgroup path ("" for none).
pub fn open(path: &str) -> Result<Box<dyn CgroupManager>, CgroupError> {
    if path.is_empty() {
        Ok(Box::new(NoCgroup))
    } else {
        Ok(Box::new(FsCgroup::new(path)?))
    }
}

/// Whether this process may make cgroups (root, or a user the host delegates them to).
pub fn can_make_cgroups() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let root = if host_is_v2() {
        PathBuf::from(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    nix::unistd::access(&root, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The default cgroup path of a container with no `linux.cgroupsPath`.
pub fn default_path(id: &str) -> String {
    format!("/{TUG_PARENT}/{id}")
}

/// The parent directory tug makes for containers that give no cgroupsPath (and for
/// tugboat's, which use it too); removed with its last container.
const TUG_PARENT: &str = "tug";

/// Removes tug's `tug` parent from every cgroup hierarchy mounted here (v1 controllers and
/// a hybrid host's unified tree) where it is empty; one still holding a container stays
/// (EBUSY). For containers another runtime made under `/tug/<id>`: runc, for one, also makes
/// the parent in the unified tree of a hybrid host and never removes it.
pub fn remove_empty_tug_parents() {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in mountinfo.lines() {
        let Some((fields, fs_part)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = fs_part.split_whitespace().next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mount_point) = fields.split_whitespace().nth(4) {
            let _ = fs::remove_dir(Path::new(mount_point).join(TUG_PARENT));
        }
    }
}

/// True on a pure cgroup v2 host.
pub fn host_is_v2() -> bool {
    cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode()
}

/// cgroupfs through cgroups-rs.
pub struct FsCgroup {
    path: String,
    mgr: FsManager,
}

impl FsCgroup {
    pub fn new(path: &str) -> Result<FsCgroup, CgroupError> {
        // cgroups-rs joins this onto each hierarchy's mount point: it must be relative.
        let rel = path.trim_start_matches('/');
        let mgr = FsManager::new(rel).map_err(|e| err(path, "probe the host", e))?;
        Ok(FsCgroup {
            path: path.to_string(),
            mgr,
        })
    }

    /// What the kernel counts for this cgroup (cpu, memory, pids, blkio, hugetlb).
    pub fn stats(&self) -> cgroups_rs::stats::CgroupStats {
        self.mgr.stats()
    }

    /// cgroup v2's CPU time from cpu.stat as (total, user, system) nanoseconds: cgroups-rs
    /// fills its cpuacct figures on v1 only, and `events --stats` had no CPU usage on v2.
    pub fn v2_cpu_usage(&self) -> Option<(u64, u64, u64)> {
        if !self.mgr.v2() {
            return None;
        }
        let dir = Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
            .join(self.path.trim_start_matches('/'));
        let text = fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let nanos = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok().map(|us| us * 1000))?
            })
        };
        Some((
            nanos("usage_usec")?,
            nanos("user_usec")?,
            nanos("system_usec")?,
        ))
    }

    /// How many processes the OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = if self.mgr.v2() {
            (
                Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
                    .join(self.path.trim_start_matches('/')),
                "memory.events",
            )
        } else {
            match self
                .hierarchy_dirs()
                .into_iter()
                .find(|(name, _)| name == "memory")
            {
                Some((_, d)) => (d, "memory.oom_control"),
                None => return 0,
            }
        };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the kernel says the cgroup is frozen: v1's freezer passes through
    /// FREEZING while tasks are being stopped (under load, for a while), and `pause` must
    /// not report "paused" before they are, as runc does not. On v1 the state is written
    /// again while waiting (a task that forked meanwhile); after 2 s the cgroup is thawed
    /// and the pause fails with what it saw.
    fn wait_frozen(&self) -> Result<(), CgroupError> {
        let (file, done): (PathBuf, fn(&str) -> bool) = if self.mgr.v2() {
            (
                Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
                    .join(self.path.trim_start_matches('/'))
                    .join("cgroup.events"),
                |s| s.lines().any(|l| l.trim() == "frozen 1"),
            )
        } else {
            let Some((_, dir)) = self
                .hierarchy_dirs()
                .into_iter()
                .find(|(n, _)| n == "freezer")
            else {
                return Ok(());
            };
            (dir.join("freezer.state"), |s| s.trim() == "FROZEN")
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut wait = std::time::Duration::from_micros(200);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            last = fs::read_to_string(&file).unwrap_or_default();
            if done(&last) {
                return Ok(());
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(std::time::Duration::from_millis(20));
            if !self.mgr.v2() {
                let _ = fs::write(&file, "FROZEN");
            }
        }
        let _ = self.mgr.freeze(FreezerState::Thawed);
        Err(err(
            &self.path,
            "freeze",
            format!(
                "{} still says {:?} after 2 s; thawed again",
                file.display(),
                last.trim()
            ),
        ))
    }

    fn hierarchy_dirs(&self) -> Vec<(String, PathBuf)> {
        hierarchy_dirs(self.mgr.mounts(), &self.path)
    }

    fn devices_dir(&self) -> Option<PathBuf> {
        let mp = self.mgr.mounts().get("devices")?;
        Some(Path::new(mp).join(self.path.trim_start_matches('/')))
    }

    /// When `e` is v1's refusal (EBUSY) of a memory limit below what the cgroup uses now,
    /// the message naming the field, the limit and the usage (as runc says it).
    fn memory_below_usage(&self, e: &cgroups_rs::manager::Error) -> Option<String> {
        use cgroups_rs::fs::error::ErrorKind;
        let cgroups_rs::manager::Error::Cgroupfs(e) = e else {
            return None;
        };
        let ErrorKind::WriteFailed(file, value) = e.kind() else {
            return None;
        };
        let field = match file.as_str() {
            "memory.limit_in_bytes" => "linux.resources.memory.limit",
            "memory.memsw.limit_in_bytes" => "linux.resources.memory.swap",
            _ => return None,
        };
        let busy = std::error::Error::source(e)
            .and_then(|c| c.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY));
        if !busy {
            return None;
        }
        let dirs = self.hierarchy_dirs();
        let dir = &dirs.iter().find(|(n, _)| n == "memory")?.1;
        let read = |f: &str| {
            fs::read_to_string(dir.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into())
        };
        let (usage, peak) = if field.ends_with("swap") {
            (
                "memory.memsw.usage_in_bytes",
                "memory.memsw.max_usage_in_bytes",
            )
        } else {
            ("memory.usage_in_bytes", "memory.max_usage_in_bytes")
        };
        Some(format!(
            "{field} {value} is below what the container uses now (current usage: {} bytes, peak usage: {} bytes)",
            read(usage),
            read(peak)
        ))
    }

    /// Applies the limits, and with `devices` the device rules of [`device_rules`]. An update
    /// that gives no device rules leaves the container's as they are.
    fn set(&mut self, resources: &LinuxResources, devices: bool) -> Result<(), CgroupError> {
        let mut r = resources.clone();
        let config_rules = r.devices().clone();
        // Device rules are written below: cgroups-rs turns a missing major/minor into 0.
        r.set_devices(None);
        self.mgr
            .set(&r)
            .map_err(|e| match self.memory_below_usage(&e) {
                Some(message) => CgroupError {
                    path: self.path.clone(),
                    what: "apply limits",
                    message,
                },
                None => err(&self.path, "apply limits", e),
            })?;
        if !devices {
            return Ok(());
        }
        let rules = device_rules(config_rules.as_deref().unwrap_or(&[]));
        if self.mgr.v2() {
            // No devices controller on v2: an eBPF program enforces the same rules.
            let dir = Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
                .join(self.path.trim_start_matches('/'));
            crate::devices_bpf::attach(&dir, &rules)
                .map_err(|e| err(&self.path, "device rules", e))?;
        } else if let Some(dir) = self.devices_dir() {
            for rule in &rules {
                let (file, line) = device_rule_line(rule);
                fs::write(dir.join(file), &line).map_err(|e| CgroupError {
                    path: self.path.clone(),
                    what: "write device rule",
                    message: format!("{line}: {e}"),
                })?;
            }
        }
        Ok(())
    }
}

fn err(path: &str, what: &'static str, e: impl std::fmt::Display) -> CgroupError {
    CgroupError {
        path: path.to_string(),
        what,
        message: e.to_string(),
    }
}

/// (name under /sys/fs/cgroup, container directory) per mounted v1 hierarchy.
pub fn hierarchy_dirs(
    mounts: &std::collections::HashMap<String, String>,
    path: &str,
) -> Vec<(String, PathBuf)> {
    let mut by_mount: BTreeMap<&str, ()> = BTreeMap::new();
    for mp in mounts.values() {
        by_mount.insert(mp.as_str(), ());
    }
    by_mount
        .keys()
        .filter_map(|mp| {
            let name = Path::new(mp).file_name()?.to_string_lossy().into_owned();
            Some((name, Path::new(mp).join(path.trim_start_matches('/'))))
        })
        .collect()
}

/// The device rules of a container, in order, for the v1 devices controller and the v2 eBPF
/// program alike: deny everything, then the config's `linux.resources.devices`, then the
/// devices every container gets ([`default_device_rules`]). As in runc: an empty list (what
/// `tug spec` writes) still denies what is not allowed, and the defaults come after the
/// config's rules, since configs from podman or docker begin with their own deny-all.
pub fn device_rules(config: &[LinuxDeviceCgroup]) -> Vec<LinuxDeviceCgroup> {
    let deny_all = serde_json::json!({"allow": false, "access": "rwm"});
    let deny_all = serde_json::from_value::<LinuxDeviceCgroup>(deny_all).expect("static rule");
    std::iter::once(deny_all)
        .chain(config.iter().cloned())
        .chain(default_device_rules())
        .collect()
}

/// The device rules every container gets after the config's, as runc allows them.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        let v = serde_json::json!({"allow": true, "type": typ, "major": major, "minor": minor, "access": access});
        serde_json::from_value::<LinuxDeviceCgroup>(v).expect("static rule")
    };
    vec![
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"),
        rule("c", Some(1), Some(5), "rwm"),
        rule("c", Some(1), Some(7), "rwm"),
        rule("c", Some(1), Some(8), "rwm"),
        rule("c", Some(1), Some(9), "rwm"),
        rule("c", Some(5), Some(0), "rwm"),
        rule("c", Some(5), Some(1), "rwm"),
        rule("c", Some(5), Some(2), "rwm"),
        rule("c", Some(136), None, "rwm"),
    ]
}

/// The devices.allow or devices.deny line for a rule, e.g. `c 1:3 rwm` or `a`.
pub fn device_rule_line(rule: &LinuxDeviceCgroup) -> (&'static str, String) {
    let file = if rule.allow() {
        "devices.allow"
    } else {
        "devices.deny"
    };
    let typ = rule
        .typ()
        .map(|t| t.as_str().to_string())
        .unwrap_or_else(|| "a".into());
    let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
    let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
    let line = if typ == "a" && rule.major().is_none() && rule.minor().is_none() {
        format!("a *:* {access}")
    } else {
        format!("{typ} {}:{} {access}", num(rule.major()), num(rule.minor()))
    };
    (file, line)
}

impl CgroupManager for FsCgroup {
    fn path(&self) -> &str {
        &self.path
    }

    fn create(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        // add_proc creates the directories; an empty create goes through the same path.
        // (A delete removing the empty `tug` parent meanwhile is survived: the directories
        // are made with create_dir_all, which makes a vanished parent again.)
        if !self.mgr.exists() {
            let cg = cgroups_rs::fs::Cgroup::new(
                cgroups_rs::fs::hierarchies::auto(),
                self.path.trim_start_matches('/'),
            )
            .map_err(|e| err(&self.path, "create", e))?;
            drop(cg);
        }
        // Device rules apply even when config.json gives no resources.
        let none = LinuxResources::default();
        self.set(resources.unwrap_or(&none), true)?;
        Ok(())
    }

    fn update(&mut self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let devices = resources.devices().as_ref().is_some_and(|d| !d.is_empty());
        self.set(resources, devices)
    }

    fn clone_into_fd(&self) -> Option<OwnedFd> {
        if !self.mgr.v2() {
            return None;
        }
        let dir = Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
            .join(self.path.trim_start_matches('/'));
        nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    }

    fn add_process(&mut self, pid: i32) -> Result<(), CgroupError> {
        self.mgr
            .add_proc(CgroupPid::from(pid as u64))
            .map_err(|e| err(&self.path, "add process", e))
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        // Read cgroup.procs of a hierarchy every host has: pids on v1, the directory on v2.
        let file = if self.mgr.v2() {
            Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
                .join(self.path.trim_start_matches('/'))
                .join("cgroup.procs")
        } else {
            let dirs = self.hierarchy_dirs();
            let dir = dirs
                .iter()
                .find(|(n, _)| n == "pids")
                .or_else(|| dirs.iter().find(|(n, _)| n == "memory"))
                .or(dirs.first())
                .map(|(_, d)| d.clone())
                .ok_or_else(|| err(&self.path, "list processes", "no cgroup hierarchy mounted"))?;
            dir.join("cgroup.procs")
        };
        match fs::read_to_string(&file) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(err(&self.path, "list processes", e)),
        }
    }

    fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.mgr
            .freeze(state)
            .map_err(|e| err(&self.path, "freeze", e))?;
        if frozen {
            self.wait_frozen()?;
        }
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), CgroupError> {
        let dirs: Vec<PathBuf> = if self.mgr.v2() {
            vec![Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
                .join(self.path.trim_start_matches('/'))]
        } else {
            self.hierarchy_dirs().into_iter().map(|(_, d)| d).collect()
        };
        // An exiting process can keep a cgroup busy for a moment after it is reaped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for dir in &dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(err(&self.path, "remove", format!("{}: {e}", dir.display())))
                    }
                }
            }
            // tug's own parent goes with its last container (busy while others remain);
            // other parents (podman's, containerd's) are not tug's to remove.
            if let Some(parent) = dir.parent() {
                if parent.file_name().is_some_and(|n| n == TUG_PARENT)
                    && self.path.starts_with(&format!("/{TUG_PARENT}/"))
                {
                    let _ = fs::remove_dir(parent);
                }
            }
        }
        Ok(())
    }

    fn mounts(&self) -> CgroupMounts {
        if self.mgr.v2() {
            CgroupMounts {
                unified: Some(
                    Path::new(cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT)
                        .join(self.path.trim_start_matches('/')),
                ),
                v1: vec![],
            }
        } else {
            CgroupMounts {
                unified: None,
                v1: self.hierarchy_dirs(),
            }
        }
    }

    fn is_v2(&self) -> bool {
        self.mgr.v2()
    }
    fn oom_kills(&self) -> u64 {
        FsCgroup::oom_kills(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn v1_hierarchies_are_listed_once_each() {
        let mut m = HashMap::new();
        m.insert("cpu".to_string(), "/sys/fs/cgroup/cpu,cpuacct".to_string());
        m.insert(
            "cpuacct".to_string(),
            "/sys/fs/cgroup/cpu,cpuacct".to_string(),
        );
        m.insert("memory".to_string(), "/sys/fs/cgroup/memory".to_string());
        m.insert(
            "name=systemd".to_string(),
            "/sys/fs/cgroup/systemd".to_string(),
        );
        let d = hierarchy_dirs(&m, "/tug/c1");
        assert_eq!(
            d,
            vec![
                (
                    "cpu,cpuacct".to_string(),
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/tug/c1")
                ),
                (
                    "memory".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/tug/c1")
                ),
                (
                    "systemd".to_string(),
                    PathBuf::from("/sys/fs/cgroup/systemd/tug/c1")
                ),
            ]
        );
    }

    #[test]
    fn device_rules_use_wildcards() {
        let deny: LinuxDeviceCgroup =
            serde_json::from_value(serde_json::json!({"allow": false, "access": "rwm"})).unwrap();
        assert_eq!(
            device_rule_line(&deny),
            ("devices.deny", "a *:* rwm".to_string())
        );
        let lines: Vec<_> = default_device_rules()
            .iter()
            .map(|r| device_rule_line(r).1)
            .collect();
        assert!(lines.contains(&"c *:* m".to_string()));
        assert!(lines.contains(&"c 1:3 rwm".to_string()));
        assert!(lines.contains(&"c 136:* rwm".to_string()));
    }

    #[test]
    fn device_rules_start_from_deny_all_even_when_the_config_has_none() {
        // What `tug spec` writes: no linux.resources.devices at all.
        let rules = device_rules(&[]);
        assert_eq!(
            device_rule_line(&rules[0]),
            ("devices.deny", "a *:* rwm".into())
        );
        assert_eq!(rules[1..].len(), default_device_rules().len());
        // The config's rules come between the deny-all and the defaults, so a config that
        // begins with its own deny-all (podman, docker) cannot take /dev/null away.
        let fuse: LinuxDeviceCgroup = serde_json::from_value(serde_json::json!(
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
        ))
        .unwrap();
        let lines: Vec<String> = device_rules(std::slice::from_ref(&fuse))
            .iter()
            .map(|r| device_rule_line(r).1)
            .collect();
        assert_eq!(lines[0], "a *:* rwm");
        assert_eq!(lines[1], "c 10:229 rw");
        assert_eq!(
            lines[2..],
            default_device_rules()
                .iter()
                .map(|r| device_rule_line(r).1)
                .collect::<Vec<_>>()[..]
        );
    }
}
