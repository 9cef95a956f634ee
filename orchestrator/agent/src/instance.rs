//! One instance on this node: the ordered, idempotent steps that make it (image, rootfs,
//! volumes, network namespace, network, /etc/hosts, config.json, monitor), then its
//! supervision (exit and restart policy with back-off, probes, status reports), then its
//! teardown. Every step can run again after an agent restart or a reboot: each checks what
//! is there and makes only what is missing.

use super::bundle::{build_spec, BindMount, BundleInputs};
use super::monitor::{self, ExitRecord, MonitorArgs, MonitorRecord, EXIT_FILE, MONITOR_FILE};
use super::probes::{probe, ProbeState};
use super::services::Endpoint;
use super::{netns_file, NodeContext};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tug_netns::{AttachRequest, NetnsRef, PortMapping};
use tugboat_api::model::{Instance, LastExit};
use tugboat_api::spec::{ProbeSpec, RestartPolicy, VolumeKind};
use tugboat_api::wire::{InstanceStatusReport, ReportedPhase};

/// Where an instance's files live: `<data-dir>/instances/<id>/`.
#[derive(Debug, Clone)]
pub struct InstancePaths {
    pub dir: PathBuf,
}

impl InstancePaths {
    pub fn new(data_dir: &Path, id: &str) -> InstancePaths {
        InstancePaths {
            dir: data_dir.join("instances").join(id),
        }
    }
    /// The instance as last received from the server.
    pub fn record(&self) -> PathBuf {
        self.dir.join("instance.json")
    }
    pub fn local_state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn netns(&self) -> PathBuf {
        self.dir.join("netns")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join(monitor::LOG_FILE)
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join(EXIT_FILE)
    }
    pub fn monitor(&self) -> PathBuf {
        self.dir.join(MONITOR_FILE)
    }
}

/// What the agent keeps about an instance across its own restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalState {
    pub restarts: u32,
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Whether it was ready when last probed: a restarted agent serves it again at once
    /// instead of taking it out of its service until the next probe passes.
    #[serde(default)]
    pub ready: bool,
    /// Whether it has been ready since its container last started: while its container
    /// runs it stays a last resort of its service (see [`super::services::Endpoint`]).
    #[serde(default)]
    pub served: bool,
    /// Exits since it last ran for [`RAN_LONG_ENOUGH`]: the back-off and the crash loop
    /// count these; `restarts` only grows.
    #[serde(default)]
    pub failures_in_a_row: u32,
    #[serde(default)]
    pub last_exit: Option<LastExit>,
}

/// A container that ran this long earns a fresh back-off (and leaves its crash loop).
pub const RAN_LONG_ENOUGH: Duration = Duration::from_secs(30);

/// From this many exits in a row, each soon after its start, the instance is crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;

/// How an exit reads in the instance's status: a reason in one word and a message. A
/// container the OOM killer hit says so with its memory limit; a liveness kill says why.
pub fn last_exit(
    exit: &ExitRecord,
    memory_limit: Option<tugboat_api::spec::Memory>,
    liveness_error: Option<&str>,
) -> LastExit {
    let (reason, message) = if let Some(e) = liveness_error {
        ("LivenessFailed", format!("liveness probe failed ({e})"))
    } else if exit.error.is_some() {
        ("StartFailed", exit.describe())
    } else if exit.oom_kills > 0 && !exit.succeeded() {
        let limit = match memory_limit {
            Some(m) => format!("memory limit {m}"),
            None => "no memory limit (the host ran out of memory)".into(),
        };
        ("OOMKilled", format!("OOMKilled: {limit}"))
    } else if exit.signal.is_some() {
        ("Killed", exit.describe())
    } else if exit.succeeded() {
        ("Completed", exit.describe())
    } else {
        ("Error", exit.describe())
    };
    LastExit {
        code: exit.code,
        reason: reason.into(),
        message,
        at_ms: exit.finished_at_ms,
    }
}

/// How long a status report may take before the server counts as away.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Back-off before restart number `restarts` (1-based, counted over the exits in a row):
/// 250 ms doubling to 5 minutes, Kubernetes' CrashLoopBackOff cap, so a container that never
/// stays up costs a start (and two events) every 5 minutes, not every few seconds.
pub fn backoff(restarts: u32) -> Duration {
    let exp = restarts.saturating_sub(1).min(11);
    Duration::from_millis(250u64 << exp).min(Duration::from_secs(300))
}

/// How long a serving instance stays up after it leaves the balancing, before its stop
/// signal: its requests in flight finish (at most its stop grace).
pub const DRAIN: Duration = Duration::from_secs(1);

/// Whether the restart policy runs the container again after `exit`.
pub fn should_restart(
    policy: RestartPolicy,
    limit: Option<u32>,
    restarts: u32,
    exit: &ExitRecord,
) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !exit.succeeded() && limit.is_none_or(|l| restarts <= l),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// The monitor was started (or found) at this time.
    Running {
        since: Instant,
    },
    BackingOff {
        until: Instant,
    },
    Failed,
}

struct Supervisor {
    ctx: Arc<NodeContext>,
    instance: Instance,
    paths: InstancePaths,
    state: LocalState,
    address: Option<Ipv4Addr>,
    message: String,
    exit_code: Option<i32>,
    liveness: ProbeState,
    readiness: ProbeState,
    next_liveness: Instant,
    next_readiness: Instant,
    last_report: Option<InstanceStatusReport>,
    /// Last cgroup reading and when it was taken; stats go out every 10 s.
    usage: Option<(super::stats::Usage, Instant)>,
    stats_due: Instant,
}

/// Runs an instance until `stop` says so (or the server says it is no longer ours), then
/// tears it down. `keep` (set by a detaching agent) leaves it running instead.
pub async fn supervise(
    ctx: Arc<NodeContext>,
    instance: Instance,
    mut stop: watch::Receiver<StopMode>,
) {
    let paths = InstancePaths::new(&ctx.data_dir, &instance.id);
    let _ = std::fs::create_dir_all(&paths.dir);
    let _ = monitor::write_json(&paths.record(), &instance);
    let state: LocalState = monitor::read_json(&paths.local_state()).unwrap_or_default();
    let now = Instant::now();
    let mut s = Supervisor {
        ctx,
        instance,
        paths,
        state,
        address: None,
        message: "starting".into(),
        exit_code: None,
        liveness: ProbeState {
            passing: true,
            ..Default::default()
        },
        readiness: ProbeState::default(),
        next_liveness: now,
        next_readiness: now,
        last_report: None,
        usage: None,
        stats_due: now,
    };
    let mut phase = s.start().await;
    loop {
        let mode = *stop.borrow_and_update();
        if matches!(mode, StopMode::Stop | StopMode::Detach) {
            if mode == StopMode::Stop {
                s.teardown().await;
            }
            return;
        }
        if s.report(&phase).await == Some(409) {
            s.teardown().await;
            return;
        }
        tokio::select! {
            _ = stop.changed() => {
                if *stop.borrow() == StopMode::Report {
                    s.last_report = None;
                }
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        phase = s.step(phase).await;
    }
}

/// What the agent wants of an instance's supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Run,
    /// Stop and remove the container and everything made for it.
    Stop,
    /// Leave it running (the agent is going away; a new one re-attaches).
    Detach,
    /// Run, and report the status again now: the server marked the instance lost while its
    /// node was away, and this report brings it back.
    Report,
}

impl Supervisor {
    fn id(&self) -> &str {
        &self.instance.id
    }

    fn save_state(&self) {
        let _ = monitor::write_json(&self.paths.local_state(), &self.state);
    }

    /// At first: re-attach to a running monitor, take a finished one's exit, or start one.
    async fn start(&mut self) -> Phase {
        if let Err(message) = self.prepare().await {
            return self.fail(message);
        }
        if monitor_running(&self.paths.dir) {
            self.message = "running".into();
            // Re-attached: ready as it was (the next probe, due now, confirms it).
            self.readiness.passing = self.state.ready;
            self.set_endpoint(self.state.ready);
            return Phase::Running {
                since: Instant::now(),
            };
        }
        if self.paths.exit().exists() || self.paths.monitor().exists() {
            // It ran and ended while no agent watched: the exit path decides.
            return self.on_exit().await;
        }
        self.launch().await
    }

    /// Steps, in order; each is idempotent. Returns a reason in words on failure.
    async fn prepare(&mut self) -> Result<(), String> {
        let ctx = self.ctx.clone();
        let spec = self.instance.spec.clone();
        let id = self.id().to_string();
        // The instance's own ids, when it has a user namespace.
        let userns = if spec.security.user_namespace {
            let instances = self.paths.dir.parent().unwrap_or(&self.paths.dir);
            Some(super::userns::assign(instances, &self.paths.dir)?)
        } else {
            None
        };
        // Image and rootfs.
        let images = ctx.images.clone();
        let (image, rootfs) = tokio::task::spawn_blocking(move || {
            let image = images.resolve(&spec.image).map_err(|e| e.to_string())?;
            let namespace = userns.map(|r| r.namespace()).transpose()?;
            let mapped = userns
                .zip(namespace.as_ref())
                .map(|(r, ns)| tug_image::Mapped {
                    userns: std::os::fd::AsFd::as_fd(ns),
                    root_uid: r.host_id,
                    root_gid: r.host_id,
                });
            let rootfs = images
                .prepare_rootfs(&image, &id, mapped.as_ref())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((image, rootfs))
        })
        .await
        .map_err(|e| format!("image step: {e}"))??;
        // Volumes.
        let mut binds = vec![];
        for v in &self.instance.spec.volumes {
            let source = match v.kind {
                VolumeKind::Bind => ctx.allowed_host_path(&v.source)?,
                VolumeKind::Volume => super::volume_drivers::prepare(&ctx, &v.source).await?,
            };
            binds.push(BindMount {
                source,
                target: v.target.clone(),
                read_only: v.read_only,
            });
        }
        // Secrets: files on a tmpfs, owned by the container's user, mounted read-only.
        if !self.instance.spec.secrets.is_empty() {
            let user = self
                .instance
                .spec
                .security
                .user
                .as_deref()
                .or(image.defaults.user.as_deref());
            let (uid, gid) = super::bundle::resolve_user(user, &rootfs)?;
            for (source, target) in
                super::secrets::prepare(&ctx.client, &self.instance, &self.paths.dir, uid, gid)
                    .await?
            {
                binds.push(BindMount {
                    source,
                    target,
                    read_only: true,
                });
            }
        }
        // Network namespace and network.
        netns_file::ensure(&self.paths.netns()).map_err(|e| e.to_string())?;
        if userns.is_some() {
            super::userns::allow_low_ports(&self.paths.netns())?;
        }
        let mut request = AttachRequest::new(self.id(), NetnsRef::Path(self.paths.netns()));
        for p in &self.instance.spec.ports {
            if let Some(host) = p.host_port() {
                request.ports.push(PortMapping {
                    protocol: match p.protocol {
                        tugboat_api::spec::Protocol::Tcp => tug_netns::Protocol::Tcp,
                        tugboat_api::spec::Protocol::Udp => tug_netns::Protocol::Udp,
                    },
                    host_port: host,
                    container_port: p.container.0,
                });
            }
        }
        let _net = ctx.net_lock.lock().await;
        let attached = ctx.network.attachments().ok().and_then(|list| {
            list.into_iter()
                .find(|a| a.container_id == self.instance.id)
        });
        // An attach cut short (agent killed half-way) leaves a lease and a veth that
        // `attach` takes as done: check the inside, and start over when it is not whole.
        // Only a check that found the attachment broken starts over: a netlink call that
        // failed says nothing about the container, whose traffic a detach would cut.
        if attached.is_some() {
            match ctx.network.check(self.id(), &request.netns).await {
                Err(tug_netns::NetworkError::Broken { .. }) => {
                    let _ = ctx.network.detach(self.id()).await;
                }
                Err(e) => eprintln!(
                    "tugboat agent: {}: checking the network of {} (kept as it is): {e}",
                    ctx.node,
                    self.id()
                ),
                Ok(_) => {}
            }
        }
        if attached.is_none() {
            for m in &request.ports {
                host_port_free(m).map_err(|e| {
                    let proto = match m.protocol {
                        tug_netns::Protocol::Tcp => "tcp",
                        tug_netns::Protocol::Udp => "udp",
                    };
                    format!(
                        "host port {}/{proto} is already in use on node {}: {e}",
                        m.host_port, ctx.node
                    )
                })?;
            }
        }
        let attachment = ctx
            .network
            .attach(&request)
            .await
            .map_err(|e| e.to_string())?;
        drop(_net);
        let address = attachment.address.ip();
        self.address = Some(address);
        ctx.services
            .set_source(&self.instance.service, self.id(), Some(address));
        if self.state.address != Some(address) {
            self.state.address = Some(address);
            self.save_state();
        }
        // Names.
        ctx.services
            .register_hosts_file(self.id(), &self.paths.hosts(), address)
            .map_err(|e| format!("{}: {e}", self.paths.hosts().display()))?;
        binds.push(BindMount {
            source: self.paths.hosts(),
            target: "/etc/hosts".into(),
            read_only: true,
        });
        // config.json.
        let netns = self.paths.netns();
        let inputs = BundleInputs {
            instance: self.id(),
            spec: &self.instance.spec,
            image: &image.defaults,
            rootfs: &rootfs,
            netns: &netns,
            binds,
            block_device: ctx.block_device,
            io_weight: super::bundle::io_weight_supported(),
            userns,
        };
        let oci = build_spec(&inputs).map_err(|e| e.to_string())?;
        let bundle = self.paths.bundle();
        std::fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        oci.save(bundle.join("config.json"))
            .map_err(|e| format!("{}: {e}", bundle.display()))?;
        Ok(())
    }

    /// The OCI runtime the service names, on this node.
    fn oci(&self) -> Result<super::oci::Oci, String> {
        super::oci::Oci::for_name(
            self.instance.spec.runtime.as_deref(),
            &self.ctx.runtime_root,
            &self.ctx.node,
        )
    }

    /// For signals and removal: the named runtime, or tug when it is missing (then nothing
    /// was made by it).
    fn oci_or_tug(&self) -> super::oci::Oci {
        self.oci().unwrap_or_else(|_| super::oci::Oci::Tug {
            root: self.ctx.runtime_root.clone(),
        })
    }

    /// Starts a monitor, which creates and starts the container.
    async fn launch(&mut self) -> Phase {
        if let Err(message) = self.prepare().await {
            return self.fail(message);
        }
        let oci = match self.oci() {
            Ok(oci) => oci,
            Err(message) => return self.fail(message),
        };
        let args = MonitorArgs {
            id: self.id().to_string(),
            bundle: self.paths.bundle(),
            runtime_root: self.ctx.runtime_root.clone(),
            dir: self.paths.dir.clone(),
            log_max_bytes: self.ctx.log_max_bytes,
            oci: match oci {
                super::oci::Oci::Tug { .. } => None,
                super::oci::Oci::External { exe, root } => Some((exe, root)),
            },
            log_mode: self.ctx.log_mode,
        };
        let _ = std::fs::remove_file(self.paths.monitor());
        let exe = self.ctx.monitor_exe.clone();
        let spawned = tokio::task::spawn_blocking(move || monitor::spawn(&exe, &args)).await;
        match spawned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return self.fail(format!("cannot start the monitor: {e}")),
            Err(e) => return self.fail(format!("cannot start the monitor: {e}")),
        }
        self.message = "started".into();
        self.readiness = ProbeState::default();
        self.liveness = ProbeState {
            passing: true,
            ..Default::default()
        };
        let now = Instant::now();
        let delay = |p: &Option<ProbeSpec>| {
            now + Duration::from_secs(p.as_ref().map_or(0, |p| u64::from(p.initial_delay_seconds)))
        };
        self.next_liveness = delay(&self.instance.spec.health.liveness);
        self.next_readiness = delay(&self.instance.spec.health.readiness);
        Phase::Running { since: now }
    }

    fn fail(&mut self, message: String) -> Phase {
        self.message = message;
        self.take_out();
        Phase::Failed
    }

    /// Its place in its service: ready or not; once ready, a last resort until its
    /// container ends ([`Supervisor::take_out`]).
    fn set_endpoint(&mut self, ready: bool) {
        self.place(ready, ready || self.state.served);
    }

    /// Its container ended or will not run: no connection goes to it, not even as a last
    /// resort.
    fn take_out(&mut self) {
        self.place(false, false);
    }

    fn place(&mut self, ready: bool, served: bool) {
        if self.state.ready != ready || self.state.served != served {
            self.state.ready = ready;
            self.state.served = served;
            self.save_state();
        }
        if let Some(address) = self.address {
            self.ctx.services.set_endpoint(
                &self.instance.service,
                self.id(),
                Endpoint {
                    address,
                    ready,
                    last_resort: served,
                },
            );
        }
    }

    /// The container ended (or its monitor is gone): restart policy and back-off.
    async fn on_exit(&mut self) -> Phase {
        let exit: ExitRecord = monitor::read_json(&self.paths.exit()).unwrap_or(ExitRecord {
            code: None,
            signal: None,
            error: Some("its monitor is gone".into()),
            finished_at_ms: tugboat_api::model::now_ms(),
            oom_kills: 0,
        });
        let _ = std::fs::remove_file(self.paths.exit());
        let _ = std::fs::remove_file(self.paths.monitor());
        // A container whose monitor died is still there: remove it so none runs twice.
        delete_container(self.oci_or_tug(), self.id()).await;
        self.take_out();
        self.exit_code = exit.code;
        let liveness_error = match self.liveness.last_error.take() {
            Some(e) if !self.liveness.passing => Some(e),
            _ => None,
        };
        let last = last_exit(
            &exit,
            self.instance.spec.resources.limits.memory,
            liveness_error.as_deref(),
        );
        let what = last.message.clone();
        self.state.last_exit = Some(last);
        self.state.restarts += 1;
        self.state.failures_in_a_row += 1;
        self.save_state();
        let in_a_row = self.state.failures_in_a_row;
        let restart = &self.instance.spec.restart;
        if exit.error.is_some() && in_a_row > 3 {
            return self.fail(what);
        }
        if should_restart(restart.policy, restart.limit, in_a_row, &exit) {
            let wait = backoff(in_a_row);
            self.message = if in_a_row >= CRASH_LOOP_AFTER {
                format!(
                    "crash-looping: {what}; back-off {:.1}s ({in_a_row} exits in a row)",
                    wait.as_secs_f32()
                )
            } else {
                format!("{what}; restarting in {:.1}s", wait.as_secs_f32())
            };
            Phase::BackingOff {
                until: Instant::now() + wait,
            }
        } else {
            let policy = match restart.policy {
                RestartPolicy::Always => "always",
                RestartPolicy::OnFailure => "on-failure",
                RestartPolicy::Never => "never",
            };
            self.fail(format!("{what}; restart policy {policy} gives up"))
        }
    }

    async fn step(&mut self, phase: Phase) -> Phase {
        match phase {
            Phase::Failed => Phase::Failed,
            Phase::BackingOff { until } if Instant::now() < until => phase,
            Phase::BackingOff { .. } => self.launch().await,
            Phase::Running { since } => {
                if !monitor_running(&self.paths.dir) {
                    return self.on_exit().await;
                }
                // A container that ran a while earns a fresh back-off.
                if since.elapsed() > RAN_LONG_ENOUGH && self.state.failures_in_a_row > 0 {
                    self.state.failures_in_a_row = 0;
                    self.save_state();
                }
                self.run_probes().await;
                phase
            }
        }
    }

    /// One probe: HTTP and TCP from the agent, exec inside the container.
    async fn probe(&self, spec: &ProbeSpec, address: Ipv4Addr) -> Result<(), String> {
        let Some(command) = &spec.exec else {
            return probe(spec, address).await;
        };
        let limit = Duration::from_secs(u64::from(spec.timeout_seconds.max(1)));
        let target = super::nsexec::ExecTarget {
            exe: self.ctx.monitor_exe.clone(),
            runtime_root: self.ctx.runtime_root.clone(),
            dir: self.paths.dir.clone(),
            id: self.id().to_string(),
        };
        let result = super::nsexec::exec_in(&target, command, limit).await?;
        if result.exit_code == 0 {
            Ok(())
        } else {
            Err(format!(
                "exec {}: exit code {}{}",
                command.join(" "),
                result.exit_code,
                match result.stderr.lines().last() {
                    Some(line) => format!(": {line}"),
                    None => String::new(),
                }
            ))
        }
    }

    fn probe_failed(&self, probe: &'static str) {
        self.ctx
            .traffic
            .probe_failed(&self.instance.service, self.id(), probe);
    }

    async fn run_probes(&mut self) {
        let Some(address) = self.address else { return };
        let now = Instant::now();
        let health = self.instance.spec.health.clone();
        if let Some(spec) = &health.liveness {
            if now >= self.next_liveness {
                self.next_liveness =
                    now + Duration::from_secs(u64::from(spec.interval_seconds.max(1)));
                let r = self.probe(spec, address).await;
                if r.is_err() {
                    self.probe_failed(super::traffic::LIVENESS);
                }
                if !self.liveness.record(spec, r) {
                    // Kill it: the exit path restarts it and says why.
                    let _ =
                        self.oci_or_tug()
                            .kill(self.id(), nix::sys::signal::Signal::SIGKILL, true);
                }
            }
        }
        let ready = match &health.readiness {
            None => true,
            Some(spec) => {
                if now >= self.next_readiness {
                    // Until it first passes, probe every 250 ms: an instance is ready as
                    // soon as it answers, not an interval later.
                    let interval = if self.readiness.passing {
                        Duration::from_secs(u64::from(spec.interval_seconds.max(1)))
                    } else {
                        Duration::from_millis(250)
                            .min(Duration::from_secs(u64::from(spec.interval_seconds.max(1))))
                    };
                    self.next_readiness = now + interval;
                    let r = self.probe(spec, address).await;
                    if r.is_err() {
                        self.probe_failed(super::traffic::READINESS);
                    }
                    self.readiness.record(spec, r);
                }
                self.readiness.passing
            }
        };
        self.set_endpoint(ready);
        self.message = if ready {
            "running".into()
        } else {
            match &self.readiness.last_error {
                Some(e) => format!("not ready: readiness probe: {e}"),
                None => "running; waiting for the readiness probe".into(),
            }
        };
    }

    fn ready(&self, phase: &Phase) -> bool {
        matches!(phase, Phase::Running { .. })
            && (self.instance.spec.health.readiness.is_none() || self.readiness.passing)
            && self.message == "running"
    }

    /// CPU (over the time since the last reading), memory and pids from the cgroup.
    fn read_stats(&mut self) -> Option<tugboat_api::model::InstanceStats> {
        let usage = super::stats::read_usage(Path::new("/sys/fs/cgroup"), self.id())?;
        let now = Instant::now();
        let cpu_millis = match self.usage {
            Some((before, at)) => {
                super::stats::cpu_millis(&before, &usage, now.duration_since(at).as_millis() as u64)
            }
            None => 0,
        };
        self.usage = Some((usage, now));
        Some(tugboat_api::model::InstanceStats {
            cpu_millis,
            memory_bytes: usage.memory_bytes,
            pids: usage.pids,
            at_ms: tugboat_api::model::now_ms(),
        })
    }

    /// Sends the status when it changed. Returns the HTTP status of a refused report.
    async fn report(&mut self, phase: &Phase) -> Option<u16> {
        let report = InstanceStatusReport {
            node: self.ctx.node.clone(),
            phase: if *phase == Phase::Failed {
                ReportedPhase::Failed
            } else {
                ReportedPhase::Running
            },
            ready: self.ready(phase),
            message: self.message.clone(),
            exit_code: self.exit_code,
            restarts: self.state.restarts,
            stats: self.last_report.as_ref().and_then(|r| r.stats),
            address: self.address.map(|a| a.to_string()),
            last_exit: self.state.last_exit.clone(),
            crash_looping: *phase != Phase::Failed
                && self.state.failures_in_a_row >= CRASH_LOOP_AFTER,
        };
        let mut report = report;
        if Instant::now() >= self.stats_due {
            // Until the cgroup exists (the container is starting), try again next time.
            if let Some(stats) = self.read_stats() {
                // An autoscaled service's autoscaler decides on these: every 2 s for it.
                let every = if self.instance.spec.autoscale.is_some() {
                    2
                } else {
                    10
                };
                self.stats_due = Instant::now() + Duration::from_secs(every);
                report.stats = Some(stats);
            }
        }
        if self.last_report.as_ref() == Some(&report) {
            return None;
        }
        // While the server is away, reports wait (a report to an unreachable address would
        // hold up this instance's probes and restarts for the connect timeout).
        if !self.ctx.server.available() {
            return None;
        }
        let sent = tokio::time::timeout(
            REPORT_TIMEOUT,
            self.ctx.client.report_status(self.id(), &report),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.ctx.server.answered();
                self.last_report = Some(report);
                None
            }
            Ok(Err(e)) => match e.status() {
                Some(s @ (404 | 409)) => Some(if s == 404 { 409 } else { s }),
                Some(_) => None,
                None => {
                    self.ctx.server.unreachable();
                    None
                }
            },
            Err(_) => {
                self.ctx.server.unreachable();
                None
            }
        }
    }

    /// Stops the container (configured signal, grace period, then SIGKILL) and removes
    /// everything made for the instance.
    async fn teardown(&mut self) {
        let id = self.id().to_string();
        let serving = self.state.ready;
        self.ctx
            .services
            .remove_endpoint(&self.instance.service, &id);
        let runtime = self.oci_or_tug();
        if monitor_running(&self.paths.dir) {
            let stop = &self.instance.spec.stop;
            // Out of the balancing first; then the requests it was serving get a moment to
            // finish before the signal (a server that exits on SIGTERM, busybox httpd for
            // one, takes its requests in flight with it). Bounded by the stop grace.
            if serving {
                let drain = DRAIN.min(Duration::from_secs(u64::from(stop.grace_seconds)));
                tokio::time::sleep(drain).await;
            }
            let signal = tug_runtime::signal::parse_signal(&stop.signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let _ = runtime.kill(&id, signal, false);
            let grace = Duration::from_secs(u64::from(stop.grace_seconds));
            if !wait_until(grace, || !monitor_running(&self.paths.dir)).await {
                let _ = runtime.kill(&id, nix::sys::signal::Signal::SIGKILL, true);
                wait_until(Duration::from_secs(10), || {
                    !monitor_running(&self.paths.dir)
                })
                .await;
            }
        }
        delete_container(runtime, &id).await;
        self.ctx
            .services
            .set_source(&self.instance.service, &id, None);
        self.ctx
            .traffic
            .forget_instance(&self.instance.service, &id);
        {
            let _net = self.ctx.net_lock.lock().await;
            let _ = self.ctx.network.detach(&id).await;
        }
        let _ = netns_file::remove(&self.paths.netns());
        let images = self.ctx.images.clone();
        let rid = id.clone();
        let _ = tokio::task::spawn_blocking(move || images.remove_rootfs(&rid)).await;
        super::secrets::remove(&self.paths.dir);
        let _ = std::fs::remove_dir_all(&self.paths.dir);
    }
}

/// Removes what is left of an instance that has no supervisor and whose record cannot be
/// read (a power cut before it reached the disk), once the server's list shows it is not
/// this node's: the container's runtime state (tug's), its network, its network namespace,
/// its rootfs, its secrets and its directory. A live monitor is left alone.
pub async fn remove_leftovers(ctx: &Arc<NodeContext>, id: &str) {
    let paths = InstancePaths::new(&ctx.data_dir, id);
    if monitor_running(&paths.dir) {
        return;
    }
    let runtime = super::oci::Oci::Tug {
        root: ctx.runtime_root.clone(),
    };
    delete_container(runtime, id).await;
    {
        let _net = ctx.net_lock.lock().await;
        let _ = ctx.network.detach(id).await;
    }
    let _ = netns_file::remove(&paths.netns());
    let images = ctx.images.clone();
    let rid = id.to_string();
    let _ = tokio::task::spawn_blocking(move || images.remove_rootfs(&rid)).await;
    super::secrets::remove(&paths.dir);
    let _ = std::fs::remove_dir_all(&paths.dir);
}

/// Deletes the container if the runtime has it, on a blocking thread: a delete may wait up
/// to 10 s for the container's processes, which must not hold an async worker (a node with
/// one CPU has one).
async fn delete_container(runtime: super::oci::Oci, id: &str) {
    let id = id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        if runtime.exists(&id) {
            let _ = runtime.delete(&id);
        }
    })
    .await;
}

/// Is a host port free for publishing? A listening socket of another program would be
/// shadowed by the published port without anyone noticing.
fn host_port_free(m: &PortMapping) -> std::io::Result<()> {
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], m.host_port));
    match m.protocol {
        tug_netns::Protocol::Tcp => std::net::TcpListener::bind(addr).map(|_| ()),
        tug_netns::Protocol::Udp => std::net::UdpSocket::bind(addr).map(|_| ()),
    }
}

/// Polls `done` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Is a monitor alive in `dir`? It holds `monitor.lock` for as long as it lives.
pub fn monitor_running(dir: &Path) -> bool {
    monitor::lock_held(&dir.join(monitor::LOCK_FILE))
}

/// The monitor's pid and the container's, if it runs.
pub fn monitor_record(dir: &Path) -> Option<MonitorRecord> {
    monitor::read_json(&dir.join(MONITOR_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitRecord {
        ExitRecord {
            code: Some(code),
            signal: None,
            error: None,
            finished_at_ms: 0,
            oom_kills: 0,
        }
    }

    #[test]
    fn exits_read_as_their_reason() {
        let limit = Some(tugboat_api::spec::Memory(32 << 20));
        let oom = ExitRecord {
            code: Some(137),
            signal: Some(9),
            oom_kills: 1,
            ..exit(137)
        };
        let e = last_exit(&oom, limit, None);
        assert_eq!(e.reason, "OOMKilled");
        assert_eq!(e.message, "OOMKilled: memory limit 32Mi");
        assert_eq!(e.code, Some(137));
        let killed = ExitRecord {
            oom_kills: 0,
            ..oom.clone()
        };
        assert_eq!(
            last_exit(&killed, limit, None).message,
            "killed by signal 9"
        );
        assert_eq!(last_exit(&exit(0), limit, None).reason, "Completed");
        assert_eq!(last_exit(&exit(3), limit, None).reason, "Error");
        let probe = last_exit(&killed, limit, Some("connection refused"));
        assert_eq!(probe.reason, "LivenessFailed");
        assert_eq!(probe.message, "liveness probe failed (connection refused)");
        let failed = ExitRecord {
            code: None,
            error: Some("no such file".into()),
            ..exit(0)
        };
        assert_eq!(last_exit(&failed, limit, None).reason, "StartFailed");
    }

    #[test]
    fn back_off_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(7), Duration::from_secs(16));
        assert_eq!(backoff(12), Duration::from_secs(300));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }

    #[test]
    fn restart_policies() {
        use RestartPolicy::*;
        assert!(should_restart(Always, None, 9, &exit(0)));
        assert!(!should_restart(Never, None, 1, &exit(1)));
        assert!(should_restart(OnFailure, Some(2), 2, &exit(1)));
        assert!(!should_restart(OnFailure, Some(2), 3, &exit(1)));
        assert!(!should_restart(OnFailure, None, 1, &exit(0)));
    }
}
