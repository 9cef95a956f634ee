//! An instance's OCI config.json, built with oci-spec from its service spec and its image's
//! config: the spec's command, args, env and resources win over the image's defaults.

use super::images::ImageDefaults;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, Spec, User, UserBuilder,
};
use std::path::{Path, PathBuf};
use tugboat_api::spec::{SeccompMode, ServiceSpec};

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Everything config.json is made from.
#[derive(Debug, Clone)]
pub struct BundleInputs<'a> {
    pub instance: &'a str,
    pub spec: &'a ServiceSpec,
    pub image: &'a ImageDefaults,
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    pub binds: Vec<BindMount>,
    /// The block device (major, minor) that holds the agent's data (rootfs and volumes):
    /// where `io` limits apply. None: not on a block device.
    pub block_device: Option<(i64, i64)>,
    /// Whether the kernel weighs I/O between cgroups (blkio.weight / io.weight: BFQ or
    /// io.cost); without it a `requests.io.weight` is refused by name.
    pub io_weight: bool,
    /// A user namespace of the instance's own, with these ids (`security.user_namespace`):
    /// the binds are idmapped the same way.
    pub userns: Option<super::userns::IdRange>,
}

/// Whether this host's I/O controller takes weights.
pub fn io_weight_supported() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    root.join("blkio/blkio.weight").exists()
        || root.join("blkio/blkio.bfq.weight").exists()
        || root.join("io.weight").exists()
        || root.join("io.bfq.weight").exists()
        || root.join("unified/io.weight").exists()
}

/// The whole block device (major, minor) that holds `path`: a partition's disk, since the
/// I/O controllers take whole devices. None for a filesystem without one (tmpfs, overlay).
pub fn block_device_of(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let disk = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    let text = std::fs::read_to_string(disk.join("dev")).ok()?;
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("instance {instance}: {message}")]
    Invalid { instance: String, message: String },
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments: Docker's rules. `command` replaces the image's entrypoint (and
/// drops its cmd); `args` replace the image's cmd.
pub fn process_args(spec: &ServiceSpec, image: &ImageDefaults) -> Vec<String> {
    let (entry, cmd) = if spec.command.is_empty() {
        (image.entrypoint.clone(), &image.cmd)
    } else {
        (spec.command.clone(), &Vec::new())
    };
    let args = if spec.args.is_empty() {
        cmd.clone()
    } else {
        spec.args.clone()
    };
    entry.into_iter().chain(args).collect()
}

/// The environment: PATH, the image's, then the spec's (which win), then HOSTNAME.
pub fn process_env(spec: &ServiceSpec, image: &ImageDefaults, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![];
    let mut set = |entry: &str| {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    };
    set(DEFAULT_PATH);
    for e in &image.env {
        set(e);
    }
    for (k, v) in &spec.env {
        set(&format!("{k}={v}"));
    }
    set(&format!("HOSTNAME={hostname}"));
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `user` of an image config: `uid`, `uid:gid`, or a name looked up in the rootfs's
/// /etc/passwd (and group in /etc/group).
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), String> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Option<(u32, Option<u32>)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|line| {
            let parts: Vec<&str> = line.split(':').collect();
            if parts.first() != Some(&name) {
                return None;
            }
            let id = parts.get(field)?.parse().ok()?;
            Some((id, parts.get(3).and_then(|g| g.parse().ok())))
        })
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => lookup("etc/passwd", u, 2)
            .ok_or_else(|| format!("user {u} is not in the image's /etc/passwd"))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup("etc/group", g, 2)
                    .ok_or_else(|| format!("group {g} is not in the image's /etc/group"))?
                    .0
            }
        },
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    let mut options = vec!["rbind".to_string()];
    options.push(if read_only { "ro" } else { "rw" }.into());
    MountBuilder::default()
        .destination(PathBuf::from(target))
        .typ("bind")
        .source(source.to_path_buf())
        .options(options)
        .build()
        .expect("a bind mount has every field")
}

/// The container's hostname: the instance id cut to 63 characters.
pub fn hostname(instance: &str) -> String {
    instance.chars().take(63).collect()
}

/// Builds the OCI spec.
pub fn build_spec(inputs: &BundleInputs) -> Result<Spec, BundleError> {
    let invalid = |message: String| BundleError::Invalid {
        instance: inputs.instance.into(),
        message,
    };
    let hostname = hostname(inputs.instance);
    let args = process_args(inputs.spec, inputs.image);
    if args.is_empty() {
        return Err(invalid(
            "nothing to run: the image has no entrypoint or cmd and the spec no command".into(),
        ));
    }
    let security = &inputs.spec.security;
    let user = security.user.as_deref().or(inputs.image.user.as_deref());
    let (uid, gid) = resolve_user(user, inputs.rootfs).map_err(invalid)?;
    let mut spec = Spec::default();
    spec.set_version("1.2.0".into());
    spec.set_hostname(Some(hostname.clone()));
    let root = oci_spec::runtime::RootBuilder::default()
        .path(inputs.rootfs.to_path_buf())
        .readonly(security.read_only_root)
        .build()
        .expect("root has every field");
    spec.set_root(Some(root));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_terminal(Some(false));
    process.set_args(Some(args));
    process.set_env(Some(process_env(inputs.spec, inputs.image, &hostname)));
    let cwd = inputs
        .image
        .working_dir
        .clone()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    process.set_cwd(PathBuf::from(cwd));
    let user: User = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .build()
        .expect("user has every field");
    process.set_user(user);
    process.set_capabilities(Some(
        capabilities(&security.capabilities(), uid).map_err(invalid)?,
    ));
    process.set_oom_score_adj(Some(oom_score_adj(
        inputs.spec,
        super::host_capacity().memory_bytes,
    )));
    process.set_no_new_privileges(Some(true));
    spec.set_process(Some(process));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for b in &inputs.binds {
        mounts.retain(|m| m.destination() != Path::new(&b.target));
        let mut mount = bind(&b.source, &b.target, b.read_only);
        if let Some(range) = &inputs.userns {
            // What the agent gives (volumes, secrets, /etc/hosts) belongs to the node's ids:
            // idmapped, it shows to the container as it would without a user namespace.
            mount.set_uid_mappings(Some(vec![range.mapping()]));
            mount.set_gid_mappings(Some(vec![range.mapping()]));
        }
        mounts.push(mount);
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .chain(std::iter::once(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(inputs.netns.to_path_buf())
            .build(),
    ))
    .chain(inputs.userns.map(|_| {
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
    }))
    .collect::<Result<Vec<_>, _>>()
    .expect("namespaces have every field");
    linux.set_namespaces(Some(namespaces));
    if let Some(range) = &inputs.userns {
        linux.set_uid_mappings(Some(vec![range.mapping()]));
        linux.set_gid_mappings(Some(vec![range.mapping()]));
    }
    linux.set_cgroups_path(Some(PathBuf::from(format!("/tug/{}", inputs.instance))));
    let mut res = resources(inputs.spec);
    if let Some(io) =
        block_io(inputs.spec, inputs.block_device, inputs.io_weight).map_err(invalid)?
    {
        res.set_block_io(Some(io));
    }
    linux.set_resources(Some(res));
    linux.set_seccomp(match security.seccomp {
        SeccompMode::Default => Some(tug_runtime::seccomp::default_profile()),
        SeccompMode::Unconfined => None,
    });
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The capability sets: root holds `names` in every set but the inheritable one (empty, as
/// in Docker since 20.10, so an exec'd file's capabilities cannot widen them); another user
/// holds them only in the bounding set, and `cap_add`ed ones also as ambient, so the spec's
/// explicit grant works for a non-root process too (as Docker does).
fn capabilities(names: &[String], uid: u32) -> Result<LinuxCapabilities, String> {
    let set: Capabilities = names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.clone()))
                .map_err(|_| format!("security: capability {n} is not known to this agent"))
        })
        .collect::<Result<_, _>>()?;
    let held = if uid == 0 {
        set.clone()
    } else {
        Capabilities::new()
    };
    Ok(LinuxCapabilitiesBuilder::default()
        .bounding(set)
        .effective(held.clone())
        .permitted(held)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .expect("capabilities have every field"))
}

/// `io` limits and weight as the runtime's blockIO on the data's device.
fn block_io(
    spec: &ServiceSpec,
    device: Option<(i64, i64)>,
    weight_ok: bool,
) -> Result<Option<oci_spec::runtime::LinuxBlockIo>, String> {
    use oci_spec::runtime::{LinuxBlockIoBuilder, LinuxThrottleDeviceBuilder};
    let (limits, requests) = (spec.resources.limits.io, spec.resources.requests.io);
    if limits.is_none() && requests.is_none() {
        return Ok(None);
    }
    let mut io = LinuxBlockIoBuilder::default();
    if let Some(weight) = requests.and_then(|r| r.weight) {
        if !weight_ok {
            return Err(
                "requests.io.weight: this node's kernel does not weigh I/O between cgroups (no blkio.weight or io.weight: BFQ or io.cost); leave it out".into(),
            );
        }
        io = io.weight(weight);
    }
    if let Some(l) = limits {
        let (major, minor) = device.ok_or(
            "io limits: the agent's data dir is not on a block device (tmpfs or overlay), so there is no device to limit",
        )?;
        let rule = |rate: u64| {
            vec![LinuxThrottleDeviceBuilder::default()
                .major(major)
                .minor(minor)
                .rate(rate)
                .build()
                .expect("throttle device")]
        };
        if let Some(r) = l.read_bps {
            io = io.throttle_read_bps_device(rule(r.0));
        }
        if let Some(r) = l.write_bps {
            io = io.throttle_write_bps_device(rule(r.0));
        }
        if let Some(r) = l.read_iops {
            io = io.throttle_read_iops_device(rule(r));
        }
        if let Some(r) = l.write_iops {
            io = io.throttle_write_iops_device(rule(r));
        }
    }
    Ok(Some(io.build().expect("block io")))
}

/// The QoS class of a service's instances, from its requests and limits (Kubernetes'):
/// guaranteed (cpu and memory limits set, requests equal to them), best-effort (no request
/// or limit at all), burstable (the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

pub fn qos(spec: &ServiceSpec) -> Qos {
    let (req, lim) = (&spec.resources.requests, &spec.resources.limits);
    let none =
        req.cpu.is_none() && req.memory.is_none() && lim.cpu.is_none() && lim.memory.is_none();
    if none {
        return Qos::BestEffort;
    }
    let cpu_eq = lim.cpu.is_some() && req.cpu.is_none_or(|r| Some(r) == lim.cpu);
    let mem_eq = lim.memory.is_some() && req.memory.is_none_or(|r| Some(r) == lim.memory);
    if cpu_eq && mem_eq {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

/// The kernel's OOM killer order under host memory pressure, by QoS class as the kubelet
/// sets it: best-effort first (1000), guaranteed last (-997), burstable between by how much
/// of the host's memory it asked for (2 to 999).
pub fn oom_score_adj(spec: &ServiceSpec, host_memory: u64) -> i32 {
    match qos(spec) {
        Qos::Guaranteed => -997,
        Qos::BestEffort => 1000,
        Qos::Burstable => {
            let asked = spec.resources.requests.memory.map_or(0, |m| m.0);
            let share = if host_memory == 0 {
                0
            } else {
                (1000u128 * u128::from(asked) / u128::from(host_memory)) as i32
            };
            (1000 - share).clamp(2, 999)
        }
    }
}

/// Limits become cgroup settings: memory limit, CPU quota over a 100 ms period, pids.
fn resources(spec: &ServiceSpec) -> oci_spec::runtime::LinuxResources {
    let limits = &spec.resources.limits;
    let mut r = LinuxResourcesBuilder::default();
    if let Some(memory) = limits.memory {
        r = r.memory(
            LinuxMemoryBuilder::default()
                .limit(memory.0 as i64)
                .build()
                .expect("memory"),
        );
    }
    let mut cpu = LinuxCpuBuilder::default();
    // The request is the instance's share of a busy host: 1 CPU = 1024 shares, as in
    // Kubernetes (cpu.weight on v2, converted by the runtime); 2 (the least) without one.
    let shares = spec
        .resources
        .requests
        .cpu
        .map_or(2, |c| (c.0 * 1024 / 1000).max(2));
    cpu = cpu.shares(shares);
    if let Some(limit) = limits.cpu {
        let period: u64 = 100_000;
        cpu = cpu.period(period).quota((limit.0 * period / 1000) as i64);
    }
    r = r.cpu(cpu.build().expect("cpu"));
    if let Some(pids) = limits.pids {
        r = r.pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(pids))
                .build()
                .expect("pids"),
        );
    }
    r.build().expect("resources")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::spec::{Cpu, Memory};

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["A=image".into(), "B=image".into()],
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn spec_command_and_args_override_the_image() {
        let mut spec = ServiceSpec::new("x");
        assert_eq!(process_args(&spec, &image()), ["/bin/app", "--serve"]);
        spec.args = vec!["--other".into()];
        assert_eq!(process_args(&spec, &image()), ["/bin/app", "--other"]);
        spec.command = vec!["/bin/sh".into()];
        spec.args = vec![];
        assert_eq!(process_args(&spec, &image()), ["/bin/sh"]);
    }

    #[test]
    fn spec_env_wins_over_the_image() {
        let mut spec = ServiceSpec::new("x");
        spec.env.insert("B".into(), "spec".into());
        let env = process_env(&spec, &image(), "h");
        assert!(env.contains(&"A=image".to_string()));
        assert!(env.contains(&"B=spec".to_string()));
        assert!(env.contains(&"HOSTNAME=h".to_string()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
    }

    #[test]
    fn limits_volumes_and_netns_reach_the_config() {
        let mut spec = ServiceSpec::new("x");
        spec.resources.limits.memory = Some(Memory(64 << 20));
        spec.resources.limits.cpu = Some(Cpu(500));
        spec.resources.limits.pids = Some(100);
        let dir = tempfile::tempdir().unwrap();
        let image = image();
        let inputs = BundleInputs {
            instance: "web-abc-12345",
            spec: &spec,
            image: &image,
            rootfs: dir.path(),
            netns: Path::new("/var/lib/x/netns"),
            binds: vec![BindMount {
                source: "/data/v".into(),
                target: "/data".into(),
                read_only: true,
            }],
            block_device: None,
            io_weight: true,
            userns: None,
        };
        let json = serde_json::to_value(build_spec(&inputs).unwrap()).unwrap();
        let res = &json["linux"]["resources"];
        assert_eq!(res["memory"]["limit"], 64 << 20);
        assert_eq!(res["cpu"]["quota"], 50_000);
        assert_eq!(res["pids"]["limit"], 100);
        assert_eq!(json["process"]["cwd"], "/srv");
        let net = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net["path"], "/var/lib/x/netns");
        let data = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap()
            .clone();
        assert_eq!(data["source"], "/data/v");
        assert!(data["options"].as_array().unwrap().contains(&"ro".into()));
    }

    #[test]
    fn a_user_namespace_maps_the_instance_s_ids_and_its_binds() {
        let mut spec = ServiceSpec::new("x");
        spec.security.user_namespace = true;
        let dir = tempfile::tempdir().unwrap();
        let image = image();
        let range = crate::userns::IdRange {
            host_id: crate::userns::POOL_START,
            size: crate::userns::IDS,
        };
        let bind = BindMount {
            source: "/data/v".into(),
            target: "/data".into(),
            read_only: false,
        };
        let inputs = |userns| BundleInputs {
            instance: "web-abc-12345",
            spec: &spec,
            image: &image,
            rootfs: dir.path(),
            netns: Path::new("/var/lib/x/netns"),
            binds: vec![bind.clone()],
            block_device: None,
            io_weight: true,
            userns,
        };
        let json = serde_json::to_value(build_spec(&inputs(Some(range))).unwrap()).unwrap();
        let mapping = serde_json::json!([{"containerID": 0, "hostID": 1u32 << 30, "size": 65536}]);
        assert_eq!(json["linux"]["uidMappings"], mapping);
        assert_eq!(json["linux"]["gidMappings"], mapping);
        let types: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(types.contains(&"user"), "{types:?}");
        let data = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap()
            .clone();
        assert_eq!(data["uidMappings"], mapping);
        assert_eq!(data["gidMappings"], mapping);
        // Without: no user namespace, no mapping anywhere.
        let json = serde_json::to_value(build_spec(&inputs(None)).unwrap()).unwrap();
        assert!(json["linux"]["uidMappings"].is_null());
        assert!(!json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user"));
        assert!(json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["uidMappings"].is_null()));
    }

    #[test]
    fn users_are_looked_up_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(resolve_user(Some("www"), dir.path()), Ok((33, 34)));
        assert_eq!(resolve_user(Some("5:6"), dir.path()), Ok((5, 6)));
        assert!(resolve_user(Some("nobody"), dir.path())
            .unwrap_err()
            .contains("nobody"));
    }

    fn config(spec: &ServiceSpec, rootfs: &Path) -> serde_json::Value {
        let image = image();
        let inputs = BundleInputs {
            instance: "web-abc-12345",
            spec,
            image: &image,
            rootfs,
            netns: Path::new("/var/lib/x/netns"),
            binds: vec![],
            block_device: Some((253, 0)),
            io_weight: true,
            userns: None,
        };
        serde_json::to_value(build_spec(&inputs).unwrap()).unwrap()
    }

    fn names(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|c| c.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn instances_get_dockers_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let json = config(&ServiceSpec::new("x"), dir.path());
        let caps = &json["process"]["capabilities"];
        let bounding = names(&caps["bounding"]);
        assert_eq!(bounding.len(), 14, "{bounding:?}");
        assert!(bounding.contains(&"CAP_CHOWN".to_string()));
        assert!(!bounding.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(names(&caps["effective"]), bounding);
        assert!(names(&caps["inheritable"]).is_empty());
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied: Vec<String> = json["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| names(&s["names"]))
            .collect();
        assert!(denied.contains(&"mount".to_string()), "{denied:?}");
        assert!(names(&json["linux"]["maskedPaths"]).contains(&"/proc/kcore".to_string()));
        assert!(names(&json["linux"]["readonlyPaths"]).contains(&"/proc/sys".to_string()));
        assert_eq!(json["root"]["readonly"], false);
    }

    #[test]
    fn the_security_block_narrows_or_widens_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ServiceSpec::new("x");
        spec.security.cap_drop = vec!["ALL".into()];
        spec.security.cap_add = vec!["net_admin".into()];
        spec.security.seccomp = SeccompMode::Unconfined;
        spec.security.read_only_root = true;
        spec.security.user = Some("1000:1000".into());
        let json = config(&spec, dir.path());
        let caps = &json["process"]["capabilities"];
        assert_eq!(names(&caps["bounding"]), ["CAP_NET_ADMIN"]);
        // Not root: held in the bounding set only.
        assert!(names(&caps["effective"]).is_empty());
        assert!(json["linux"]["seccomp"].is_null());
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["process"]["user"]["uid"], 1000);
    }

    #[test]
    fn requests_become_shares_and_qos_sets_the_oom_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ServiceSpec::new("x");
        assert_eq!(qos(&spec), Qos::BestEffort);
        assert_eq!(oom_score_adj(&spec, 8 << 30), 1000);
        let json = config(&spec, dir.path());
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 2);
        assert_eq!(json["process"]["oomScoreAdj"], 1000);
        spec.resources.requests.cpu = Some(Cpu(250));
        spec.resources.requests.memory = Some(Memory(2 << 30));
        assert_eq!(qos(&spec), Qos::Burstable);
        assert_eq!(oom_score_adj(&spec, 8 << 30), 750);
        let json = config(&spec, dir.path());
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 256);
        spec.resources.limits.cpu = Some(Cpu(250));
        spec.resources.limits.memory = Some(Memory(2 << 30));
        assert_eq!(qos(&spec), Qos::Guaranteed);
        assert_eq!(oom_score_adj(&spec, 8 << 30), -997);
        // Limits alone: the requests are the limits (guaranteed).
        let mut only = ServiceSpec::new("x");
        only.resources.limits.cpu = Some(Cpu(500));
        only.resources.limits.memory = Some(Memory(64 << 20));
        assert_eq!(qos(&only), Qos::Guaranteed);
        // A request of most of the host: still above guaranteed's -997.
        let mut big = ServiceSpec::new("x");
        big.resources.requests.memory = Some(Memory(8 << 30));
        assert_eq!(oom_score_adj(&big, 8 << 30), 2);
    }

    #[test]
    fn io_limits_apply_to_the_data_device() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ServiceSpec::new("x");
        spec.resources.limits.io = Some(tugboat_api::spec::IoAmounts {
            write_bps: Some(Memory(5_000_000)),
            read_iops: Some(100),
            ..Default::default()
        });
        spec.resources.requests.io = Some(tugboat_api::spec::IoAmounts {
            weight: Some(300),
            ..Default::default()
        });
        let json = config(&spec, dir.path());
        let io = &json["linux"]["resources"]["blockIO"];
        assert_eq!(io["weight"], 300);
        assert_eq!(io["throttleWriteBpsDevice"][0]["major"], 253);
        assert_eq!(io["throttleWriteBpsDevice"][0]["rate"], 5_000_000);
        assert_eq!(io["throttleReadIOPSDevice"][0]["rate"], 100);
        // Without a device: a clear error, not a silent no-limit.
        let image = image();
        let inputs = BundleInputs {
            instance: "web-abc-12345",
            spec: &spec,
            image: &image,
            rootfs: dir.path(),
            netns: Path::new("/var/lib/x/netns"),
            binds: vec![],
            block_device: None,
            io_weight: true,
            userns: None,
        };
        let err = build_spec(&inputs).unwrap_err().to_string();
        assert!(
            err.contains("io limits: the agent's data dir is not on a block device"),
            "{err}"
        );
    }
}
