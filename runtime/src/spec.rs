//! Loading and validating a bundle's config.json.
//!
//! Everything that can be checked before a process is forked is checked here, so that a bad
//! config fails with a message naming the field, and nothing is created on the host.

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

/// What is wrong with a bundle or its config.json.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// Not a `source`: the message already holds it, and `tug` prints error chains.
    #[error("{path}: {error}")]
    Seccomp {
        path: PathBuf,
        error: crate::seccomp::SeccompError,
    },
}

/// A validated config.json with the paths it names resolved against its bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute path of the root filesystem.
    pub rootfs: PathBuf,
    /// linux.seccomp compiled for this host, for init to install.
    pub seccomp: Option<crate::seccomp::Program>,
}

impl Bundle {
    /// Reads `<dir>/config.json` and validates it.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = fs::canonicalize(dir).map_err(|source| SpecError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let config = dir.join("config.json");
        let bytes = fs::read(&config).map_err(|source| SpecError::Read {
            path: config.clone(),
            source,
        })?;
        let spec = parse(&config, &bytes)?;
        let rootfs = validate(&config, &dir, &spec)?;
        let seccomp = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(crate::seccomp::compile)
            .transpose()
            .map_err(|error| SpecError::Seccomp {
                path: config.clone(),
                error,
            })?;
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            seccomp,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
}

/// Parses config.json text; a type error names the JSON path of the field.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Spec, SpecError> {
    crate::jsonpath::from_slice(bytes).map_err(|(field, message)| {
        let field = if field == "." {
            "(document)".to_string()
        } else {
            field
        };
        SpecError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        }
    })
}

struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn fail<T>(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, SpecError> {
        Err(SpecError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        })
    }

    fn absolute(&self, field: impl Into<String>, p: &Path) -> Result<(), SpecError> {
        if !p.is_absolute() {
            return self.fail(field, format!("{} must be an absolute path", p.display()));
        }
        Ok(())
    }
}

/// Namespace types this runtime can create or join today.
const SUPPORTED_NAMESPACES: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Cgroup,
];

/// Mappings must be non-empty, must not overlap on either side, and must lie inside the
/// host ids this process may map (its own /proc/self/uid_map: everything for root on the
/// host, less in a nested user namespace).
fn check_mappings(
    c: &Checker<'_>,
    field: &str,
    maps: &[oci_spec::runtime::LinuxIdMapping],
) -> Result<(), SpecError> {
    let uid = field.contains("uidMappings");
    let (ranges, own): (Vec<(u64, u64)>, &str) = if nix::unistd::geteuid().is_root() {
        let own = if uid {
            "/proc/self/uid_map"
        } else {
            "/proc/self/gid_map"
        };
        let ranges = fs::read_to_string(own)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let v: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (v.len() == 3).then(|| (v[0], v[0] + v[2]))
            })
            .collect();
        (ranges, own)
    } else {
        // Rootless: our own id, and the ranges /etc/subuid (subgid) gives us.
        let (id, file) = if uid {
            (u64::from(nix::unistd::geteuid().as_raw()), "/etc/subuid")
        } else {
            (u64::from(nix::unistd::getegid().as_raw()), "/etc/subgid")
        };
        let mut ranges = vec![(id, id + 1)];
        ranges.extend(crate::rootless::sub_ids(
            file,
            nix::unistd::geteuid().as_raw(),
        ));
        let own = if uid {
            "your uid and /etc/subuid"
        } else {
            "your gid and /etc/subgid"
        };
        (ranges, own)
    };
    for (i, m) in maps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let (cid, hid, size) = (
            u64::from(m.container_id()),
            u64::from(m.host_id()),
            u64::from(m.size()),
        );
        if size == 0 {
            return c.fail(format!("{f}.size"), "must be at least 1");
        }
        if cid + size > 1 << 32 || hid + size > 1 << 32 {
            return c.fail(f, "the range goes past the largest id (4294967295)");
        }
        if !ranges.iter().any(|&(lo, hi)| hid >= lo && hid + size <= hi) {
            return c.fail(
                format!("{f}.hostID"),
                format!(
                    "host ids {hid}..{} are not all mappable here (see {own})",
                    hid + size - 1
                ),
            );
        }
        for (j, n) in maps.iter().enumerate().take(i) {
            let overlap = |a: u64, b: u64| a < b + u64::from(n.size()) && b < a + size;
            if overlap(cid, u64::from(n.container_id())) {
                return c.fail(format!("{f}.containerID"), format!("overlaps {field}[{j}]"));
            }
            if overlap(hid, u64::from(n.host_id())) {
                return c.fail(format!("{f}.hostID"), format!("overlaps {field}[{j}]"));
            }
        }
    }
    Ok(())
}

const PROPAGATIONS: [&str; 9] = [
    "",
    "shared",
    "slave",
    "private",
    "unbindable",
    "rshared",
    "rslave",
    "rprivate",
    "runbindable",
];

/// Checks the config and returns the absolute rootfs path.
pub fn validate(config: &Path, bundle: &Path, spec: &Spec) -> Result<PathBuf, SpecError> {
    let c = Checker { path: config };

    let major = spec.version().split('.').next().unwrap_or("");
    if major != "1" {
        return c.fail(
            "ociVersion",
            format!(
                "\"{}\" is not a 1.x runtime-spec version this runtime supports",
                spec.version()
            ),
        );
    }

    let Some(root) = spec.root() else {
        return c.fail("root", "is required");
    };
    let rootfs = bundle.join(root.path());
    match fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return c.fail(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            )
        }
        Err(e) => return c.fail("root.path", format!("{}: {e}", rootfs.display())),
    }
    if fs::canonicalize(&rootfs).is_ok_and(|p| p == Path::new("/")) {
        return c.fail(
            "root.path",
            format!(
                "{} is the host's / (after following symlinks): a container needs a root filesystem of its own",
                rootfs.display()
            ),
        );
    }

    let Some(process) = spec.process() else {
        return c.fail("process", "is required");
    };
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return c.fail("process.args", "must name a program to run"),
    }
    c.absolute("process.cwd", process.cwd())?;
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') {
            return c.fail(
                format!("process.env[{i}]"),
                format!("\"{e}\" is not KEY=VALUE"),
            );
        }
    }
    let mut rlimit_types = HashSet::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if !rlimit_types.insert(format!("{:?}", r.typ())) {
            return c.fail(format!("process.rlimits[{i}].type"), "is listed twice");
        }
        if r.soft() > r.hard() {
            return c.fail(
                format!("process.rlimits[{i}]"),
                format!("soft limit {} is above hard limit {}", r.soft(), r.hard()),
            );
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return c.fail(
                "process.oomScoreAdj",
                format!("{adj} is outside -1000..1000"),
            );
        }
    }
    if let Err((field, message)) = crate::procattr::check(process) {
        return c.fail(field, message);
    }

    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        validate_mount(&c, i, m, bundle)?;
        if let Err(e) = crate::rootfs::special_mount_point(&rootfs, m) {
            return c.fail(format!("mounts[{i}].destination"), e.to_string());
        }
    }

    if let Some(hooks) = spec.hooks() {
        let stages = [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
            ("poststart", hooks.poststart()),
            ("poststop", hooks.poststop()),
        ];
        for (stage, list) in stages {
            for (i, h) in list.iter().flatten().enumerate() {
                c.absolute(format!("hooks.{stage}[{i}].path"), h.path())?;
                if h.timeout().is_some_and(|t| t <= 0) {
                    return c.fail(format!("hooks.{stage}[{i}].timeout"), "must be above zero");
                }
            }
        }
    }

    let Some(linux) = spec.linux() else {
        return c.fail("linux", "is required on Linux");
    };
    let mut seen = HashSet::new();
    let mut new_mount_ns = false;
    let mut has = HashSet::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        if !seen.insert(ns.typ()) {
            return c.fail(
                format!("{field}.type"),
                format!("{} is listed twice", ns.typ()),
            );
        }
        if !SUPPORTED_NAMESPACES.contains(&ns.typ()) {
            return c.fail(
                format!("{field}.type"),
                format!("{} namespaces are not supported by tug yet", ns.typ()),
            );
        }
        has.insert(ns.typ());
        match ns.path() {
            None => {
                if ns.typ() == LinuxNamespaceType::Mount {
                    new_mount_ns = true;
                }
            }
            Some(p) => {
                c.absolute(format!("{field}.path"), p)?;
                if let Err(e) = fs::metadata(p) {
                    return c.fail(format!("{field}.path"), format!("{}: {e}", p.display()));
                }
            }
        }
    }
    if !new_mount_ns {
        refuse_mounts_without_namespace(&c, spec)?;
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && !has.contains(&LinuxNamespaceType::Uts)
    {
        return c.fail("hostname", "setting a hostname needs a uts namespace");
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !has.contains(&LinuxNamespaceType::Uts)
    {
        return c.fail("domainname", "setting a domainname needs a uts namespace");
    }
    let new_user_ns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let new_time_ns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none());
    if let Some(offsets) = linux.time_offsets().as_ref().filter(|o| !o.is_empty()) {
        if !new_time_ns {
            return c.fail(
                "linux.timeOffsets",
                "offsets need a new time namespace (a \"time\" entry without a path)",
            );
        }
        for (clock, o) in offsets {
            if clock != "monotonic" && clock != "boottime" {
                return c.fail(
                    format!("linux.timeOffsets.{clock}"),
                    "only \"monotonic\" and \"boottime\" clocks have offsets",
                );
            }
            if o.nanosecs().unwrap_or(0) >= 1_000_000_000 {
                return c.fail(
                    format!("linux.timeOffsets.{clock}.nanosecs"),
                    "must be below 1000000000",
                );
            }
        }
    }
    if !nix::unistd::geteuid().is_root() && !new_user_ns {
        return c.fail(
            "linux.namespaces",
            format!(
                "tug runs as uid {} (rootless): the container needs a new user namespace",
                nix::unistd::geteuid()
            ),
        );
    }
    for (field, maps) in [
        ("linux.uidMappings", linux.uid_mappings()),
        ("linux.gidMappings", linux.gid_mappings()),
    ] {
        let maps = maps.as_deref().unwrap_or(&[]);
        if new_user_ns && maps.is_empty() {
            return c.fail(field, "a new user namespace needs mappings");
        }
        if !new_user_ns && !maps.is_empty() {
            return c.fail(
                field,
                "mappings need a new user namespace (a \"user\" entry without a path in linux.namespaces)",
            );
        }
        check_mappings(&c, field, maps)?;
    }
    if let Some(p) = linux.rootfs_propagation() {
        if !PROPAGATIONS.contains(&p.as_str()) {
            return c.fail(
                "linux.rootfsPropagation",
                format!("\"{p}\" is not one of {}", PROPAGATIONS[1..].join(", ")),
            );
        }
    }
    if let Err((field, message)) =
        crate::netdev::check(linux, has.contains(&LinuxNamespaceType::Network))
    {
        return c.fail(field, message);
    }
    if let Some(policy) = linux.memory_policy() {
        if let Err((field, message)) = crate::placement::check_memory_policy(policy) {
            return c.fail(field, message);
        }
    }
    if let Some(cg) = linux.cgroups_path() {
        if cg.components().any(|c| c == Component::ParentDir) {
            return c.fail(
                "linux.cgroupsPath",
                format!("{} must not contain \"..\"", cg.display()),
            );
        }
    }
    for (i, p) in linux.masked_paths().iter().flatten().enumerate() {
        c.absolute(format!("linux.maskedPaths[{i}]"), Path::new(p))?;
    }
    for (i, p) in linux.readonly_paths().iter().flatten().enumerate() {
        c.absolute(format!("linux.readonlyPaths[{i}]"), Path::new(p))?;
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}].path");
        c.absolute(&field, d.path())?;
        if !d.path().starts_with("/dev") {
            return c.fail(field, format!("{} is not under /dev", d.path().display()));
        }
    }
    for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
        let needs = sysctl_namespace(key);
        match needs {
            None => {
                return c.fail(
                    format!("linux.sysctl.{key}"),
                    "is not a namespaced sysctl, so a container may not set it",
                )
            }
            Some(ns) if !has.contains(&ns) => {
                return c.fail(
                    format!("linux.sysctl.{key}"),
                    format!("needs a {ns} namespace of the container's own"),
                )
            }
            Some(_) => {}
        }
    }
    Ok(rootfs)
}

/// Without a new mount namespace (none listed: the runtime's own; or one joined by path),
/// tug makes no mount and no device node: each would land in a namespace the host or
/// another container uses, and outlive this container. The container gets its rootfs by
/// chroot. So the fields that ask for mounts are refused, each by name, rather than ignored.
fn refuse_mounts_without_namespace(c: &Checker, spec: &Spec) -> Result<(), SpecError> {
    const WHY: &str =
        "needs a new mount namespace (\"mount\" in linux.namespaces, without a path): \
                       without one, tug makes no mounts, since they would be made in the host's \
                       (or the joined) mount namespace";
    if spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
        return c.fail("mounts", WHY);
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        return c.fail("root.readonly", WHY);
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    if linux.masked_paths().as_ref().is_some_and(|v| !v.is_empty()) {
        return c.fail("linux.maskedPaths", WHY);
    }
    if linux
        .readonly_paths()
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return c.fail("linux.readonlyPaths", WHY);
    }
    if linux.devices().as_ref().is_some_and(|v| !v.is_empty()) {
        return c.fail("linux.devices", WHY);
    }
    if linux
        .rootfs_propagation()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return c.fail("linux.rootfsPropagation", WHY);
    }
    Ok(())
}

/// How the container gets its mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountNamespace {
    /// A new one, where tug makes the container's mounts and pivots into the rootfs.
    New,
    /// The runtime's own, or one joined by path: no mounts, a chroot into the rootfs.
    Shared,
}

/// Which [`MountNamespace`] a validated spec asks for.
pub fn mount_namespace(spec: &Spec) -> MountNamespace {
    let new = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Mount && n.path().is_none());
    if new {
        MountNamespace::New
    } else {
        MountNamespace::Shared
    }
}

fn validate_mount(c: &Checker, i: usize, m: &Mount, bundle: &Path) -> Result<(), SpecError> {
    c.absolute(format!("mounts[{i}].destination"), m.destination())?;
    let opts = m.options().clone().unwrap_or_default();
    let is_bind =
        m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
    if is_bind {
        let Some(src) = m.source() else {
            return c.fail(format!("mounts[{i}].source"), "a bind mount needs a source");
        };
        let src = bundle.join(src);
        if let Err(e) = fs::metadata(&src) {
            return c.fail(
                format!("mounts[{i}].source"),
                format!("{}: {e}", src.display()),
            );
        }
    } else if m.typ().as_deref().is_none_or(str::is_empty) {
        return c.fail(
            format!("mounts[{i}].type"),
            "is required unless the mount is a bind mount",
        );
    }
    let (uids, gids) = (
        m.uid_mappings().as_deref().unwrap_or(&[]),
        m.gid_mappings().as_deref().unwrap_or(&[]),
    );
    if !uids.is_empty() || !gids.is_empty() {
        if !is_bind {
            return c.fail(
                format!("mounts[{i}].uidMappings"),
                "idmapped mounts are only for bind mounts",
            );
        }
        if uids.is_empty() || gids.is_empty() {
            return c.fail(
                format!("mounts[{i}].uidMappings"),
                "an idmapped mount needs both uidMappings and gidMappings",
            );
        }
        check_mappings(c, &format!("mounts[{i}].uidMappings"), uids)?;
        check_mappings(c, &format!("mounts[{i}].gidMappings"), gids)?;
    }
    Ok(())
}

/// The namespace a sysctl belongs to, or None when it is host-wide.
pub fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    const IPC: [&str; 6] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
    ];
    if IPC.contains(&key)
        || key == "kernel.shmmni"
        || key == "kernel.shm_rmid_forced"
        || key.starts_with("fs.mqueue.")
    {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// The default config.json `tug spec` writes: what runc's `spec` gives.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_version("1.2.0".to_string());
    spec.set_hostname(Some("tug".to_string()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(false));
    }
    if let Some(l) = spec.linux_mut() {
        l.set_seccomp(Some(crate::seccomp::default_profile()));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (tempfile::TempDir, Result<Bundle, SpecError>) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        fs::write(dir.path().join("config.json"), config).unwrap();
        let r = Bundle::load(dir.path());
        (dir, r)
    }

    fn default_json() -> serde_json::Value {
        serde_json::to_value(default_spec()).unwrap()
    }

    fn err_of(v: serde_json::Value) -> String {
        let (_d, r) = bundle_with(&v.to_string());
        r.expect_err("config should be refused").to_string()
    }

    #[test]
    fn default_spec_is_valid() {
        let (_d, r) = bundle_with(&default_json().to_string());
        let b = r.unwrap();
        assert!(b.rootfs.ends_with("rootfs"));
        assert!(b.rootfs.is_absolute());
    }

    #[test]
    fn bad_json_names_the_file() {
        let (d, r) = bundle_with("{ not json");
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains(&d.path().join("config.json").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut v = default_json();
        v["process"]["user"]["uid"] = serde_json::json!("root");
        let msg = err_of(v);
        assert!(msg.contains("process.user.uid"), "{msg}");
    }

    #[test]
    fn unknown_namespace_names_the_field() {
        let mut v = default_json();
        v["linux"]["namespaces"][1]["type"] = serde_json::json!("bogus");
        let msg = err_of(v);
        assert!(msg.contains("linux.namespaces[1].type"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn missing_rootfs_is_refused() {
        let mut v = default_json();
        v["root"]["path"] = serde_json::json!("nope");
        let msg = err_of(v);
        assert!(msg.contains("root.path") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut v = default_json();
        v["process"]["cwd"] = serde_json::json!("tmp");
        assert!(err_of(v).contains("process.cwd"));
        let mut v = default_json();
        v["mounts"][0]["destination"] = serde_json::json!("proc");
        assert!(err_of(v).contains("mounts[0].destination"));
        let mut v = default_json();
        v["hooks"] = serde_json::json!({"prestart": [{"path": "bin/true"}]});
        assert!(err_of(v).contains("hooks.prestart[0].path"));
    }

    #[test]
    fn duplicate_namespace_is_refused() {
        let mut v = default_json();
        v["linux"]["namespaces"][1]["type"] = serde_json::json!("pid");
        let msg = err_of(v);
        assert!(
            msg.contains("linux.namespaces[1].type") && msg.contains("twice"),
            "{msg}"
        );
    }

    #[test]
    fn missing_namespace_path_is_refused() {
        let mut v = default_json();
        v["linux"]["namespaces"][1]["path"] = serde_json::json!("/proc/self/ns/nope");
        let msg = err_of(v);
        assert!(msg.contains("linux.namespaces[1].path"), "{msg}");
    }

    #[test]
    fn without_a_new_mount_namespace_fields_that_mount_are_refused_by_name() {
        let without = |v: &mut serde_json::Value| {
            let ns: Vec<serde_json::Value> = v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["type"] != "mount")
                .cloned()
                .collect();
            v["linux"]["namespaces"] = serde_json::Value::Array(ns);
        };
        let mut v = default_json();
        without(&mut v);
        let msg = err_of(v.clone());
        assert!(
            msg.contains(": mounts: ") && msg.contains("mount namespace"),
            "{msg}"
        );
        v["mounts"] = serde_json::json!([]);
        assert!(err_of(v.clone()).contains("root.readonly"));
        v["root"]["readonly"] = serde_json::json!(false);
        assert!(err_of(v.clone()).contains("linux.maskedPaths"));
        v["linux"]["maskedPaths"] = serde_json::json!([]);
        assert!(err_of(v.clone()).contains("linux.readonlyPaths"));
        v["linux"]["readonlyPaths"] = serde_json::json!([]);
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/x", "type": "c", "major": 1, "minor": 3}]);
        assert!(err_of(v.clone()).contains("linux.devices"));
        v["linux"]["devices"] = serde_json::json!([]);
        v["linux"]["rootfsPropagation"] = serde_json::json!("shared");
        assert!(err_of(v.clone()).contains("linux.rootfsPropagation"));
        v["linux"]["rootfsPropagation"] = serde_json::json!("");
        let (_d, r) = bundle_with(&v.to_string());
        let b = r.unwrap();
        assert_eq!(mount_namespace(&b.spec), MountNamespace::Shared);
        // Joined by path: the same rules, and the path must exist.
        let mut ns = v["linux"]["namespaces"].as_array().unwrap().clone();
        ns.push(serde_json::json!({"type": "mount", "path": "/proc/self/ns/mnt"}));
        v["linux"]["namespaces"] = serde_json::Value::Array(ns);
        let (_d, r) = bundle_with(&v.to_string());
        assert_eq!(mount_namespace(&r.unwrap().spec), MountNamespace::Shared);
        assert_eq!(
            mount_namespace(&crate::spec::default_spec()),
            MountNamespace::New
        );
    }

    #[test]
    fn host_wide_sysctl_is_refused() {
        let mut v = default_json();
        v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "10"});
        assert!(err_of(v).contains("linux.sysctl.vm.swappiness"));
        let mut v = default_json();
        v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        assert!(bundle_with(&v.to_string()).1.is_ok());
    }

    #[test]
    fn rlimit_soft_above_hard_is_refused() {
        let mut v = default_json();
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        assert!(err_of(v).contains("process.rlimits[0]"));
    }

    #[test]
    fn bind_source_must_exist() {
        let mut v = default_json();
        v["mounts"] = serde_json::json!([{"destination": "/data", "type": "bind",
            "source": "/nonexistent/tug-test", "options": ["rbind"]}]);
        let msg = err_of(v);
        assert!(
            msg.contains("mounts[0].source") && msg.contains("/nonexistent/tug-test"),
            "{msg}"
        );
    }

    #[test]
    fn bad_version_is_refused() {
        let mut v = default_json();
        v["ociVersion"] = serde_json::json!("2.0.0");
        assert!(err_of(v).contains("ociVersion"));
    }
}
