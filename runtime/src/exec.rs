//! `exec`: a new process in a running container, in every namespace and the cgroup of its
//! init, with the capabilities, rlimits and user its process description gives.
//!
//! The parent joins the container's pid namespace (which only affects its children), clones,
//! moves the child into the cgroup (or clones it there on v2), and tells it so; the child joins
//! the other namespaces (mount last), prepares the process as init does and execs. The channel
//! is close-on-exec: end of file means the exec happened, a message is the child's error.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{Capability, Process, Spec};

use crate::channel::{Channel, InitMsg, ParentMsg};
use crate::clone::{clone_child, single_threaded, Forked};
use crate::container::{forwarded_signals, io_err, live_status, wait_forwarding, Error};
use crate::finalize::{self, Finalize};
use crate::placement::AffinityStage;
use crate::seccomp::notify::{self, Agent};
use crate::spec::MountNamespace;
use crate::state::{check_transition, write_atomic, Operation};
use crate::Runtime;

/// What `tug exec` runs.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// What to run: a whole process description, or flags on top of the container's own.
    pub process: ExecProcess,
    pub console_socket: Option<PathBuf>,
    /// A connected socket to send the terminal's master to, instead of a path to connect
    /// to (for a caller that holds the other end, like tugboat's agent). Taken over
    /// `console_socket` when both are set.
    pub console_fd: Option<std::sync::Arc<OwnedFd>>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
    /// Exec into a paused container too (runc's `--ignore-paused`): the process is frozen
    /// with the container and runs once it is resumed; `exec` waits for that.
    pub ignore_paused: bool,
}

/// What `exec` runs.
#[derive(Debug, Clone)]
pub enum ExecProcess {
    /// A whole OCI process (`--process FILE`, see [`process_from_file`]).
    Full(Box<Process>),
    /// The container's own process with these changes (see [`process_from_flags`]).
    Flags(ExecFlags),
}

impl Default for ExecProcess {
    fn default() -> Self {
        ExecProcess::Flags(ExecFlags::default())
    }
}

/// Flags of `tug exec` that build a process from the container's own.
#[derive(Debug, Clone, Default)]
pub struct ExecFlags {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `uid[:gid]`.
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
}

/// The namespaces `exec` joins, in order: the user namespace first (it owns the others), the
/// mount namespace last.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Reads a `--process` file: an OCI process object; errors name the file and the field.
pub fn process_from_file(path: &Path) -> Result<Process, Error> {
    let text = fs::read(path).map_err(io_err(format!("--process {}", path.display())))?;
    let process: Process = crate::jsonpath::from_slice(&text).map_err(|(field, message)| {
        Error::Usage(format!("--process {}: {field}: {message}", path.display()))
    })?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Usage(format!(
            "--process {}: args: at least one argument is needed",
            path.display()
        )));
    }
    Ok(process)
}

/// Builds the process of `tug exec ARGS...` from the container's own process and the flags,
/// as runc does: its env plus `--env`, its cwd, user and capabilities unless overridden.
pub fn process_from_flags(spec: &Spec, flags: &ExecFlags) -> Result<Process, Error> {
    if flags.args.is_empty() {
        return Err(Error::Usage(
            "exec: give the command to run, or --process FILE".into(),
        ));
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(flags.args.clone()));
    let mut env = p.env().clone().unwrap_or_default();
    for e in &flags.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &flags.cwd {
        if !cwd.is_absolute() {
            return Err(Error::Usage(format!(
                "--cwd {}: must be an absolute path",
                cwd.display()
            )));
        }
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &flags.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u.as_str(), None),
        };
        let num = |s: &str, what: &str| -> Result<u32, Error> {
            let id = s
                .parse::<u32>()
                .map_err(|_| Error::Usage(format!("--user {u}: {what} \"{s}\" is not a number")))?;
            crate::procattr::check_id(id, what)
                .map_err(|m| Error::Usage(format!("--user {u}: {m}")))?;
            Ok(id)
        };
        let mut user = p.user().clone();
        user.set_uid(num(uid, "uid")?);
        user.set_gid(match gid {
            Some(g) => num(g, "gid")?,
            None => 0,
        });
        for g in &flags.additional_gids {
            crate::procattr::check_id(*g, "gid")
                .map_err(|m| Error::Usage(format!("--additional-gids {g}: {m}")))?;
        }
        if !flags.additional_gids.is_empty() {
            user.set_additional_gids(Some(flags.additional_gids.clone()));
        }
        p.set_user(user);
    }
    if !flags.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &flags.caps {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap: Capability = serde_json::from_value(serde_json::Value::String(full))
                .map_err(|_| Error::Usage(format!("--cap {name}: not a capability")))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    if flags.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    p.set_terminal(Some(flags.tty));
    Ok(p)
}

impl Runtime {
    /// Runs a new process in a running container. In the foreground, waits for it (forwarding
    /// signals) and returns its exit code; with `detach`, returns 0 once it has exec'd.
    ///
    /// Must be called from a single-threaded process (the `tug` binary is one).
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32, Error> {
        let st = self.load(id)?;
        let status = live_status(&st);
        if !(opts.ignore_paused && status == crate::Status::Paused) {
            check_transition(id, status, Operation::Exec)?;
        }
        let init_pid = st.pid.expect("a running container has a pid");
        // The container's config, read once: its seccomp filter applies to what is exec'd into
        // it, as in runc, and its process is the base of one given by flags.
        let bundle = crate::spec::Bundle::load(&st.bundle)?;
        let built;
        let process = match &opts.process {
            ExecProcess::Full(p) => p,
            ExecProcess::Flags(flags) => {
                built = process_from_flags(&bundle.spec, flags)?;
                &built
            }
        };
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(Error::Usage("exec: process.args is empty".into()));
        }
        // The checks config.json's process had at create: ids in range, capabilities that
        // can be raised, an LSM the host has.
        if let Err((field, message)) = crate::procattr::check(process) {
            return Err(Error::Usage(format!("exec: {field}: {message}")));
        }
        let terminal = process.terminal() == Some(true);
        if terminal && opts.console_socket.is_none() && opts.console_fd.is_none() && opts.detach {
            return Err(Error::Usage(
                "exec --detach with a terminal (-t or process.terminal) needs --console-socket"
                    .into(),
            ));
        }
        if !single_threaded() {
            return Err(Error::Usage(
                "exec must be called from a single-threaded process".into(),
            ));
        }

        // Namespaces of the container that differ from ours.
        let ns_fd = |name: &str| -> Result<OwnedFd, Error> {
            let path = format!("/proc/{init_pid}/ns/{name}");
            open(
                path.as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(format!("container {id}: open {path}"))(e.into()))
        };
        let same = |name: &str| {
            let a = fs::read_link(format!("/proc/{init_pid}/ns/{name}"));
            let b = fs::read_link(format!("/proc/self/ns/{name}"));
            matches!((a, b), (Ok(a), Ok(b)) if a == b)
        };
        let mut join = Vec::new();
        for (name, flag) in NAMESPACES {
            if !same(name) {
                join.push((ns_fd(name)?, *flag));
            }
        }
        // A container without a mount namespace of its own is chrooted into its rootfs; the
        // process joins that root (opened here, before any join, through the host's /proc).
        let root = if crate::spec::mount_namespace(&bundle.spec) == MountNamespace::Shared {
            let path = format!("/proc/{init_pid}/root");
            Some(
                open(
                    path.as_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(format!("container {id}: open {path}"))(e.into()))?,
            )
        } else {
            None
        };
        let pid_ns = if same("pid") {
            None
        } else {
            Some(ns_fd("pid")?)
        };

        // With a terminal and no --console-socket, tug receives the pty and relays it.
        let mut ours = None;
        let console = match (&opts.console_fd, &opts.console_socket) {
            (Some(fd), _) if terminal => Some(
                fd.as_fd()
                    .try_clone_to_owned()
                    .map_err(io_err("the console fd"))?,
            ),
            (None, Some(path)) if terminal => {
                let s = std::os::unix::net::UnixStream::connect(path)
                    .map_err(io_err(format!("--console-socket {}", path.display())))?;
                Some(OwnedFd::from(s))
            }
            (None, None) if terminal => {
                let (a, b) =
                    std::os::unix::net::UnixStream::pair().map_err(io_err("socketpair"))?;
                ours = Some(OwnedFd::from(a));
                Some(OwnedFd::from(b))
            }
            _ => None,
        };

        let mut cg = crate::cgroups::open(&st.cgroup_path)?;
        let cgroup_fd = cg.clone_into_fd();
        let forwarded = forwarded_signals();
        if !opts.detach {
            forwarded
                .thread_block()
                .map_err(|e| io_err("block signals")(e.into()))?;
        }
        let seccomp_agent = crate::container::seccomp_agent(&bundle)?;
        let (parent_ch, child_ch) = Channel::pair().map_err(io_err("socketpair"))?;
        let own_pid_ns = match &pid_ns {
            Some(target) => {
                let own = open(
                    "/proc/self/ns/pid",
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err("open /proc/self/ns/pid")(e.into()))?;
                nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWPID)
                    .map_err(|e| io_err(format!("container {id}: join pid namespace"))(e.into()))?;
                Some(own)
            }
            None => None,
        };
        // process.execCPUAffinity.initial: where this parent, and so the child until it is in
        // the container's cgroup, runs.
        if let Some(a) = process.exec_cpu_affinity() {
            crate::placement::apply_exec_cpu_affinity(a, AffinityStage::Initial)
                .map_err(|m| Error::Usage(format!("exec: {m}")))?;
        }
        let forked = clone_child(0, cgroup_fd.as_ref().map(|f| f.as_fd()));
        if let Some(own) = &own_pid_ns {
            let _ = nix::sched::setns(own.as_fd(), CloneFlags::CLONE_NEWPID);
        }
        let (pid, placed) = match forked.map_err(io_err("clone the exec process"))? {
            (Forked::Child, _) => {
                drop(parent_ch);
                child(ChildConfig {
                    channel: child_ch,
                    join,
                    root,
                    console,
                    process,
                    preserve_fds: opts.preserve_fds,
                    forwarded: (!opts.detach).then_some(forwarded),
                    seccomp: bundle.seccomp.as_ref(),
                    linux: bundle.spec.linux().as_ref(),
                    seccomp_agent,
                })
            }
            (Forked::Parent { child }, placed) => (child, placed),
        };
        drop((child_ch, join, root, console, cgroup_fd));
        // The process state for the agent: this process's pid and the container's state.
        let process_state = match &seccomp_agent {
            Some(_) => {
                let metadata = bundle
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.seccomp().as_ref())
                    .and_then(|s| s.listener_metadata().clone())
                    .unwrap_or_default();
                notify::process_state(pid, &metadata, st.to_oci(status))
            }
            None => String::new(),
        };
        drop(seccomp_agent);
        let fail = |e: Error| {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            e
        };
        if !placed {
            cg.add_process(pid).map_err(|e| fail(e.into()))?;
        }
        parent_ch
            .send(&ParentMsg::CgroupJoined {
                state: process_state,
            })
            .map_err(|e| fail(io_err("tell the exec process it joined")(e)))?;
        // End of file: the exec closed the child's end. A message: it failed.
        if let Ok(InitMsg::Error(message)) = parent_ch.recv::<InitMsg>() {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            return Err(Error::Init {
                id: id.to_string(),
                message: format!("exec: {message}"),
            });
        }
        if let Some(pf) = &opts.pid_file {
            write_atomic(pf, pid.to_string().as_bytes())?;
        }
        if opts.detach {
            return Ok(0);
        }
        if let Some(sock) = ours {
            let master = crate::tty::receive_master(&sock)
                .map_err(|e| fail(io_err("receive the exec's terminal")(e)))?;
            return crate::tty::relay(master, Pid::from_raw(pid), &forwarded)
                .map_err(io_err("relay the terminal"));
        }
        wait_forwarding(&forwarded, Pid::from_raw(pid))
    }
}

struct ChildConfig<'a> {
    channel: Channel,
    join: Vec<(OwnedFd, CloneFlags)>,
    /// The container's root, for a container chrooted without a mount namespace of its own.
    root: Option<OwnedFd>,
    console: Option<OwnedFd>,
    process: &'a Process,
    preserve_fds: u32,
    /// Signals the parent blocked (foreground), to unblock before exec.
    forwarded: Option<nix::sys::signal::SigSet>,
    /// The container's linux.seccomp, compiled by the parent.
    seccomp: Option<&'a crate::seccomp::Program>,
    /// The container's linux section (its personality applies to exec'd processes too).
    linux: Option<&'a oci_spec::runtime::Linux>,
    /// Connected to linux.seccomp.listenerPath, when the filter notifies.
    seccomp_agent: Option<OwnedFd>,
}

fn child(cfg: ChildConfig) -> ! {
    let err = match prepare_and_exec(&cfg) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = cfg.channel.send(&InitMsg::Error(err));
    // SAFETY: _exit ends this child without running the parent's atexit handlers.
    unsafe { libc::_exit(127) }
}

/// Joins the container's namespaces. Those owned by the host's user namespace (a network
/// namespace the container joined by path, with a user namespace of its own) can be joined
/// only before the container's user namespace, where this process has no capability over
/// them; those owned by the container's can be joined either way. So, as runc does: every
/// other namespace first, the ones refused (EPERM) again after the user namespace.
fn join_namespaces(join: &[(OwnedFd, CloneFlags)]) -> Result<(), String> {
    let setns = |fd: &OwnedFd, flag: CloneFlags| {
        nix::sched::setns(fd.as_fd(), flag).map_err(|e| (e, format!("join {flag:?}: {e}")))
    };
    let mut later = Vec::new();
    for (fd, flag) in join.iter().filter(|(_, f)| *f != CloneFlags::CLONE_NEWUSER) {
        match setns(fd, *flag) {
            Ok(()) => {}
            Err((nix::errno::Errno::EPERM, _)) => later.push((fd, *flag)),
            Err((_, message)) => return Err(message),
        }
    }
    for (fd, flag) in join.iter().filter(|(_, f)| *f == CloneFlags::CLONE_NEWUSER) {
        setns(fd, *flag).map_err(|(_, m)| m)?;
    }
    for (fd, flag) in later {
        setns(fd, flag).map_err(|(_, m)| m)?;
    }
    Ok(())
}

fn prepare_and_exec(cfg: &ChildConfig) -> Result<std::convert::Infallible, String> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let process_state = match cfg.channel.recv::<ParentMsg>() {
        Ok(ParentMsg::CgroupJoined { state }) => state,
        Ok(other) => return Err(format!("protocol: expected CgroupJoined, got {other:?}")),
        Err(e) => return Err(format!("waiting for the parent: {e}")),
    };
    // In the container's cgroup now: process.execCPUAffinity.final, if any.
    if let Some(a) = cfg.process.exec_cpu_affinity() {
        crate::placement::apply_exec_cpu_affinity(a, AffinityStage::Final)?;
    }
    // Through the host's /proc, before the container's mount namespace hides it.
    finalize::set_oom_score_adj(cfg.process)?;
    join_namespaces(&cfg.join)?;
    if let Some(root) = &cfg.root {
        nix::unistd::fchdir(root).map_err(|e| format!("enter the container's root: {e}"))?;
        nix::unistd::chroot(".").map_err(|e| format!("chroot to the container's root: {e}"))?;
    }
    let command = finalize::finalize(&Finalize {
        process: cfg.process,
        linux: cfg.linux,
        seccomp: cfg.seccomp,
        console: cfg.console.as_ref(),
        agent: cfg.seccomp_agent.as_ref().map(|s| Agent {
            socket: s.as_fd(),
            process_state,
        }),
    })?;
    // The process outlives `tug exec --detach`.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    finalize::exec(&command, cfg.preserve_fds, cfg.forwarded.as_ref())
}
