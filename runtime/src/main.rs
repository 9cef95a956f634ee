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
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/tug")]
    root: PathBuf,
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
    /// Print what this runtime supports, as JSON.
    Features,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init(cli.log.as_deref(), cli.log_format == "json", cli.debug);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
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
    let rt = Runtime::new(&cli.root);
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
                writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                )?;
                for c in &list {
                    let pid = match c.status {
                        tug_runtime::Status::Stopped => 0,
                        _ => c.state.pid.unwrap_or(0),
                    };
                    writeln!(
                        out,
                        "{:<20} {:<8} {:<10} {:<40} {}",
                        c.state.id,
                        pid,
                        c.status,
                        c.state.bundle.display(),
                        c.state.created
                    )?;
                }
            }
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
