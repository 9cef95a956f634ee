//! The container's init: runs in the cloned child, sets the container up, waits for `start`,
//! then becomes the container's process with execve.
//!
//! Every failure before `start` is sent to the parent as [`InitMsg::Error`] with its context;
//! the parent then kills this process and undoes what it made.

use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;

use crate::channel::{Channel, InitMsg, ParentMsg};
use crate::finalize::{self, Command, Finalize};
use crate::hooks;
use crate::rootfs::{self, CgroupMounts};
use crate::seccomp::notify::{self, Agent};
use crate::spec::{Bundle, MountNamespace};
use crate::syscall::{LinuxSyscall, Syscall};

/// What the parent hands the child across the clone.
pub struct InitConfig<'a> {
    pub bundle: &'a Bundle,
    pub channel: Channel,
    /// exec.fifo opened read-write: init blocks reading it until `tug start` writes.
    pub fifo: OwnedFd,
    /// exec.done opened read-write: closed by the exec (so `tug start` knows the process
    /// runs), or given an error message if init fails after start.
    pub exec_done: OwnedFd,
    /// Namespaces to join (all but pid, which the parent joins for its children).
    pub join: Vec<(OwnedFd, CloneFlags)>,
    pub new_cgroup_ns: bool,
    /// The container has its own user namespace: init waits for its id maps before anything.
    pub new_user_ns: bool,
    /// User namespaces for idmapped bind mounts: (index in `mounts`, namespace fd).
    pub idmaps: Vec<(usize, OwnedFd)>,
    pub cgroup_mounts: CgroupMounts,
    pub no_pivot: bool,
    /// Connected console socket, when process.terminal is true.
    pub console: Option<OwnedFd>,
    /// Extra fds (3..3+n) passed to the container, as runc's --preserve-fds.
    pub preserve_fds: u32,
    pub parent_pid: i32,
    /// Connected to linux.seccomp.listenerPath, when the filter notifies.
    pub seccomp_agent: Option<OwnedFd>,
}

/// Runs init and never returns.
pub fn run(cfg: InitConfig) -> ! {
    let err = match setup(&cfg) {
        Ok(prepared) => match wait_and_exec(&cfg, prepared) {
            Ok(never) => match never {},
            Err(e) => {
                // After Ready the parent is gone: `tug start` reads the error from exec.done.
                let _ = nix::unistd::write(&cfg.exec_done, e.as_bytes());
                e
            }
        },
        Err(e) => e,
    };
    let _ = cfg.channel.send(&InitMsg::Error(err));
    // SAFETY: _exit ends this child without running the parent's atexit handlers.
    unsafe { libc::_exit(127) }
}

fn wait_joined(cfg: &InitConfig) -> Result<String, String> {
    match cfg.channel.recv::<ParentMsg>() {
        Ok(ParentMsg::CgroupJoined { state }) => Ok(state),
        Ok(other) => Err(format!("protocol: expected CgroupJoined, got {other:?}")),
        Err(e) => Err(format!("waiting for the parent: {e}")),
    }
}

struct Prepared<'a> {
    command: Command<'a>,
    state_json: String,
}

fn setup<'a>(cfg: &'a InitConfig) -> Result<Prepared<'a>, String> {
    let sys = LinuxSyscall;
    let spec = &cfg.bundle.spec;
    let process = spec.process().as_ref().ok_or("config has no process")?;

    // Die with the parent while the container is being made; cleared once it is ready.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // In a new pid namespace the parent is outside it and getppid() is 0.
    let ppid = nix::unistd::getppid().as_raw();
    if ppid != cfg.parent_pid && ppid != 0 {
        return Err("tug exited while creating the container".into());
    }

    // In a new user namespace nothing can be done as root until the parent has written the
    // id maps (it does so before CgroupJoined); then become the namespace's root.
    let mut joined = None;
    if cfg.new_user_ns {
        joined = Some(wait_joined(cfg)?);
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("become gid 0 in the user namespace: {e}"))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("become uid 0 in the user namespace: {e}"))?;
    }
    for (fd, flags) in &cfg.join {
        sys.setns(std::os::fd::AsFd::as_fd(fd), *flags)
            .map_err(|e| format!("join {flags:?} namespace: {e}"))?;
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys.sethostname(h)
            .map_err(|e| format!("hostname {h}: {e}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys.setdomainname(d)
            .map_err(|e| format!("domainname {d}: {e}"))?;
    }
    if !cfg.new_user_ns {
        // With one, inherited from tug (container.rs), as init cannot lower it from there.
        finalize::set_oom_score_adj(process)?;
    }

    let own_mount_ns = crate::spec::mount_namespace(spec) == MountNamespace::New;
    if own_mount_ns {
        rootfs::prepare_with(
            &sys,
            spec,
            &cfg.bundle.rootfs,
            &cfg.bundle.dir,
            &cfg.cgroup_mounts,
            &cfg.idmaps,
        )
        .map_err(|e| e.to_string())?;
    }

    // The parent moves this process into its cgroup while init makes its mounts (and, with no
    // hooks to run, pivots too): on a v1 host the first cgroup.procs write of a burst waits
    // for an RCU grace period (~10 ms), and this way init does not sit idle through it.
    // Nothing before the join forks or runs the user's code.
    let mut state_json = joined;
    let join_cgroup = |state_json: &mut Option<String>| -> Result<(), String> {
        if state_json.is_none() {
            *state_json = Some(wait_joined(cfg)?);
        }
        // Unshared only once joined, so the container's cgroup is its namespace's root.
        if cfg.new_cgroup_ns {
            sys.unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("unshare cgroup namespace: {e}"))?;
        }
        Ok(())
    };
    let hooks = spec.hooks().as_ref();
    let has_runtime_hooks = hooks.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    let create_container = hooks
        .and_then(|h| h.create_container().as_ref())
        .filter(|l| !l.is_empty());
    let joined_early = has_runtime_hooks || create_container.is_some();
    if joined_early {
        // Hooks get the state with the pid, and run with the container in its cgroup.
        join_cgroup(&mut state_json)?;
    }
    if has_runtime_hooks {
        cfg.channel
            .send(&InitMsg::RunHooks)
            .map_err(|e| format!("asking for hooks: {e}"))?;
        match cfg.channel.recv::<ParentMsg>() {
            Ok(ParentMsg::HooksDone) => {}
            Ok(other) => return Err(format!("protocol: expected HooksDone, got {other:?}")),
            Err(e) => return Err(format!("waiting for hooks: {e}")),
        }
    }
    if let Some(list) = create_container {
        let state = state_json.as_deref().unwrap_or_default();
        hooks::run_hooks("createContainer", list, state).map_err(|e| e.to_string())?;
    }

    if own_mount_ns {
        rootfs::pivot(
            &sys,
            &cfg.bundle.rootfs,
            cfg.no_pivot,
            rootfs::root_propagation(spec),
        )
        .map_err(|e| e.to_string())?;
        rootfs::finalize(&sys, spec).map_err(|e| e.to_string())?;
    } else {
        rootfs::enter_shared(&sys, spec, &cfg.bundle.rootfs).map_err(|e| e.to_string())?;
    }

    if !joined_early {
        join_cgroup(&mut state_json)?;
    }
    let state_json = state_json.unwrap_or_default();

    // User, capabilities, seccomp, LSM, personality, scheduler: everything that can fail
    // fails here, so `create` reports it and `start` only runs hooks and execs.
    let agent = match &cfg.seccomp_agent {
        Some(socket) => {
            let metadata = spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().as_ref())
                .and_then(|s| s.listener_metadata().as_deref())
                .unwrap_or_default();
            Some(Agent {
                socket: socket.as_fd(),
                process_state: notify::process_state_of_init(&state_json, metadata)?,
            })
        }
        None => None,
    };
    let command = finalize::finalize(&Finalize {
        process,
        linux: spec.linux().as_ref(),
        seccomp: cfg.bundle.seccomp.as_ref(),
        console: cfg.console.as_ref(),
        agent,
    })?;
    // A change of user clears the death signal; a parent that died meanwhile must not leave
    // this init waiting on exec.fifo for ever.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let ppid = nix::unistd::getppid().as_raw();
    if ppid != cfg.parent_pid && ppid != 0 {
        return Err("tug exited while creating the container".into());
    }
    Ok(Prepared {
        command,
        state_json,
    })
}

fn wait_and_exec(cfg: &InitConfig, p: Prepared) -> Result<std::convert::Infallible, String> {
    // The container outlives `tug create`, which may exit as soon as it reads Ready: clear
    // the death signal first, or a quick parent kills the init it has just made.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    cfg.channel
        .send(&InitMsg::Ready)
        .map_err(|e| format!("reporting ready: {e}"))?;

    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&cfg.fifo, &mut byte) {
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(format!("waiting for start on exec.fifo: {e}")),
        }
    }

    if let Some(list) = cfg
        .bundle
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().as_ref())
    {
        let env = p.command.env();
        hooks::run_hooks_with_env("startContainer", list, &p.state_json, &env)
            .map_err(|e| e.to_string())?;
    }
    finalize::exec(&p.command, cfg.preserve_fds, None)
}
