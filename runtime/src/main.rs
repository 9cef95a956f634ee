//! `tug`: the command line. It parses arguments and calls the library; runc's flag names, so
//! podman and containerd can use it as their runtime.

mod logger;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tug_runtime::{CreateOptions, Runtime};

#[derive(Parser)]
#[command(name = "tug", version, about = "A daemonless OCI container runtime")]
struct Cli {
    /// Directory for container state (default /run/tug; $XDG_RUNTIME_DIR/tug when not root).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log debug messages.
    #[arg(long, global = true)]
    debug: bool,
    /// Manage cgroups through systemd (not supported yet).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CreateArgs {
    id: String,
    /// The bundle directory (config.json and the rootfs).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's init pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the terminal's master fd.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Use a move and chroot instead of pivot_root (for ramdisk roots).
    #[arg(long)]
    no_pivot: bool,
    /// Pass this many extra fds (from 3 up) to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility; tug makes no session keyring.
    #[arg(long)]
    no_new_keyring: bool,
}

impl CreateArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start { id: String },
    /// Print a container's state as OCI JSON.
    State { id: String },
    /// Send a signal (default TERM) to a container.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
        /// Signal every process in the container's cgroup.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        id: String,
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
    },
    /// Create and start a container; in the foreground, wait for it and remove it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the container has started.
        #[arg(short, long)]
        detach: bool,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        id: String,
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Print resource usage and OOM events of a container as JSON lines.
    Events {
        id: String,
        /// Print the stats once and exit.
        #[arg(long)]
        stats: bool,
        /// Time between stats events, e.g. 5s, 500ms.
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Change the resource limits of a container.
    Update(UpdateArgs),
    /// Print what this runtime supports, as JSON.
    Features,
}

#[derive(clap::Args)]
struct ExecArgs {
    id: String,
    /// The command and its arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// An OCI process JSON file describing the process.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Allocate a terminal (its master goes to --console-socket).
    #[arg(short, long)]
    tty: bool,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Return once the process runs.
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(short, long)]
    env: Vec<String>,
    /// Working directory in the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// uid[:gid]
    #[arg(short, long)]
    user: Option<String>,
    /// Additional group ids.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// Add a capability; repeatable.
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long)]
    no_new_privs: bool,
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Exec into a paused container too: the process runs once the container is resumed.
    #[arg(long)]
    ignore_paused: bool,
    /// Accepted for runc compatibility; ignored.
    #[arg(long)]
    process_label: Option<String>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long)]
    apparmor: Option<String>,
}

#[derive(clap::Args)]
struct UpdateArgs {
    id: String,
    /// An OCI linux.resources JSON file ("-" for stdin is not supported).
    #[arg(short = 'r', long)]
    resources: Option<PathBuf>,
    /// Memory limit in bytes (or with k, m, g).
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    memory_reservation: Option<String>,
    /// Memory plus swap limit; -1 for unlimited.
    #[arg(long)]
    memory_swap: Option<String>,
    #[arg(long)]
    cpu_shares: Option<u64>,
    #[arg(long)]
    cpu_quota: Option<i64>,
    #[arg(long)]
    cpu_period: Option<u64>,
    #[arg(long)]
    cpuset_cpus: Option<String>,
    #[arg(long)]
    cpuset_mems: Option<String>,
    #[arg(long)]
    pids_limit: Option<i64>,
}

impl UpdateArgs {
    fn resources(&self) -> Result<oci_spec::runtime::LinuxResources> {
        use oci_spec::runtime::{LinuxCpu, LinuxPids};
        let mut r = match &self.resources {
            Some(p) => tug_runtime::inspect::resources_from_file(p)?,
            None => Default::default(),
        };
        if self.memory.is_some() || self.memory_reservation.is_some() || self.memory_swap.is_some()
        {
            let mut m = (*r.memory()).unwrap_or_default();
            if let Some(v) = &self.memory {
                m.set_limit(Some(bytes("--memory", v)?));
            }
            if let Some(v) = &self.memory_reservation {
                m.set_reservation(Some(bytes("--memory-reservation", v)?));
            }
            if let Some(v) = &self.memory_swap {
                m.set_swap(Some(bytes("--memory-swap", v)?));
            }
            r.set_memory(Some(m));
        }
        let cpu_set = self.cpu_shares.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some();
        if cpu_set {
            let mut c: LinuxCpu = r.cpu().clone().unwrap_or_default();
            if self.cpu_shares.is_some() {
                c.set_shares(self.cpu_shares);
            }
            if self.cpu_quota.is_some() {
                c.set_quota(self.cpu_quota);
            }
            if self.cpu_period.is_some() {
                c.set_period(self.cpu_period);
            }
            if self.cpuset_cpus.is_some() {
                c.set_cpus(self.cpuset_cpus.clone());
            }
            if self.cpuset_mems.is_some() {
                c.set_mems(self.cpuset_mems.clone());
            }
            r.set_cpu(Some(c));
        }
        if let Some(limit) = self.pids_limit {
            let mut p = LinuxPids::default();
            p.set_limit(limit);
            r.set_pids(Some(p));
        }
        Ok(r)
    }
}

/// "512m", "1g", "1048576", "-1".
fn bytes(flag: &str, v: &str) -> Result<i64> {
    let t = v.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t.as_str(), 1),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("{flag} {v}: not a size (use bytes or k, m, g)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("{flag} {v}: too large"))
}

/// "5s", "500ms", "2m", or plain seconds.
fn duration(flag: &str, v: &str) -> Result<std::time::Duration> {
    let t = v.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{flag} {v}: not a duration (e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("{flag} {v}: unknown unit \"{unit}\" (use ms, s or m)"),
    };
    if secs <= 0.0 {
        bail!("{flag} {v}: must be positive");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// An error and its causes on one line, each cause once: many errors already hold their
/// source in their own text ("config.json: cannot read: No such file"), and `{:#}` would
/// repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init(cli.log.as_deref(), cli.log_format == "json", cli.debug);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = error_text(&e);
            tracing::error!("{msg}");
            if !logger::to_stderr() {
                eprintln!("tug: {msg}");
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup: tug does not manage cgroups through systemd yet; drop the flag to use cgroupfs");
    }
    let root = cli.root.clone().unwrap_or_else(|| {
        if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/tug")
        } else {
            tug_runtime::rootless::default_root()
        }
    });
    let rt = Runtime::new(&root);
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} exists already: remove it first", path.display());
            }
            let json = serde_json::to_string_pretty(&tug_runtime::spec::default_spec())?;
            std::fs::write(&path, json + "\n")
                .with_context(|| format!("write {}", path.display()))?;
        }
        Command::Create(a) => {
            rt.create(&a.id, &a.options())?;
        }
        Command::Start { id } => rt.start(&id)?,
        Command::State { id } => {
            writeln!(out, "{}", serde_json::to_string_pretty(&rt.state(&id)?)?)?;
        }
        Command::Kill { id, signal, all } => {
            let sig = tug_runtime::signal::parse_signal(&signal)?;
            rt.kill(&id, sig, all)?;
        }
        Command::Delete { id, force } => rt.delete(&id, force)?,
        Command::Pause { id } => rt.pause(&id)?,
        Command::Resume { id } => rt.resume(&id)?,
        Command::Run { create, detach } => {
            let code = rt.run(&create.id, &create.options(), detach)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Command::List { format, quiet } => {
            let list = rt.list()?;
            if quiet {
                for c in &list {
                    writeln!(out, "{}", c.state.id)?;
                }
            } else if format == "json" {
                let v: Vec<_> = list.iter().map(|c| c.state.to_oci(c.status)).collect();
                writeln!(out, "{}", serde_json::to_string(&v)?)?;
            } else {
                write!(out, "{}", tug_runtime::container::list_table(&list))?;
            }
        }
        Command::Exec(a) => {
            use tug_runtime::exec::{ExecFlags, ExecProcess};
            let process = match &a.process {
                Some(p) => ExecProcess::Full(Box::new(tug_runtime::exec::process_from_file(p)?)),
                None => ExecProcess::Flags(ExecFlags {
                    args: a.command.clone(),
                    env: a.env.clone(),
                    cwd: a.cwd.clone(),
                    user: a.user.clone(),
                    additional_gids: a.additional_gids.clone(),
                    caps: a.cap.clone(),
                    no_new_privs: a.no_new_privs,
                    tty: a.tty,
                }),
            };
            let opts = tug_runtime::exec::ExecOptions {
                process,
                console_socket: a.console_socket,
                console_fd: None,
                detach: a.detach,
                pid_file: a.pid_file,
                preserve_fds: a.preserve_fds,
                ignore_paused: a.ignore_paused,
            };
            let code = rt.exec(&a.id, &opts)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Command::Ps { id, format } => {
            let pids = rt.ps(&id)?;
            if format == "json" {
                writeln!(out, "{}", serde_json::to_string(&pids)?)?;
            } else {
                writeln!(out, "{:<8} CMD", "PID")?;
                for pid in pids {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|b| {
                            String::from_utf8_lossy(&b)
                                .replace('\0', " ")
                                .trim()
                                .to_string()
                        })
                        .unwrap_or_default();
                    writeln!(out, "{pid:<8} {cmd}")?;
                }
            }
        }
        Command::Events {
            id,
            stats,
            interval,
        } => {
            if stats {
                let data = rt.stats(&id)?;
                let ev = tug_runtime::inspect::Event::Stats(data).to_json(&id);
                writeln!(out, "{ev}")?;
            } else {
                let every = duration("--interval", &interval)?;
                rt.events(&id, every, None, |ev| {
                    let mut o = std::io::stdout().lock();
                    writeln!(o, "{}", ev.to_json(&id))?;
                    o.flush()
                })?;
            }
        }
        Command::Update(a) => {
            let r = a.resources()?;
            rt.update(&a.id, &r)?;
        }
        Command::Features => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&tug_runtime::features::features())?
            )?;
        }
    }
    Ok(0)
}
