//! The container's init: runs in the cloned child, sets the container up, waits for `start`,
//! then becomes the container's process with execve.
//!
//! Every failure before `start` is sent to the parent as [`InitMsg::Error`] with its context;
//! the parent then kills this process and undoes what it made.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxCapabilities, Process, Spec};

use crate::channel::{Channel, InitMsg, ParentMsg};
use crate::hooks;
use crate::rootfs::{self, CgroupMounts};
use crate::spec::Bundle;
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

struct Prepared {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    state_json: String,
}

fn setup(cfg: &InitConfig) -> Result<Prepared, String> {
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
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("process.oomScoreAdj {adj}: {e}"))?;
    }

    rootfs::prepare_with(
        &sys,
        spec,
        &cfg.bundle.rootfs,
        &cfg.bundle.dir,
        &cfg.cgroup_mounts,
        &cfg.idmaps,
    )
    .map_err(|e| e.to_string())?;

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

    rootfs::pivot(&sys, &cfg.bundle.rootfs, cfg.no_pivot).map_err(|e| e.to_string())?;
    rootfs::finalize(&sys, spec).map_err(|e| e.to_string())?;

    let cwd = process.cwd();
    sys.chdir(cwd)
        .map_err(|e| format!("process.cwd {}: {e}", cwd.display()))?;

    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(process.user().uid())));
    }
    let args = process.args().clone().unwrap_or_default();
    let program = find_executable(&args[0], &env)?;

    set_rlimits(process)?;

    if let Some(console) = &cfg.console {
        setup_terminal(console, process)?;
    }

    if !joined_early {
        join_cgroup(&mut state_json)?;
    }
    let state_json = state_json.unwrap_or_default();

    let to_c = |s: &str| CString::new(s).map_err(|_| format!("\"{s}\" contains a NUL byte"));
    Ok(Prepared {
        program: to_c(&program.to_string_lossy())?,
        args: args.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?,
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

    let spec: &Spec = &cfg.bundle.spec;
    let process = spec.process().as_ref().ok_or("config has no process")?;
    if let Some(list) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().as_ref())
    {
        hooks::run_hooks("startContainer", list, &p.state_json).map_err(|e| e.to_string())?;
    }

    // Before the capabilities go: a real-time scheduler needs CAP_SYS_NICE.
    crate::procattr::apply_personality(spec.linux().as_ref())?;
    crate::procattr::apply_io_priority(process)?;
    crate::procattr::apply_scheduler(process)?;
    // A filter needs no_new_privs or CAP_SYS_ADMIN: without no_new_privs it goes on while
    // init still has its capabilities (as in runc), and then also filters become_user.
    let nnp = process.no_new_privileges() == Some(true);
    if let (false, Some(p)) = (nnp, &cfg.bundle.seccomp) {
        crate::seccomp::install(p).map_err(|e| e.to_string())?;
    }
    become_user(process)?;
    crate::procattr::apply_lsm(process)?;
    if nnp {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "process.noNewPrivileges: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(mask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    reset_signals();
    close_fds_on_exec(3 + cfg.preserve_fds);
    if let (true, Some(p)) = (nnp, &cfg.bundle.seccomp) {
        crate::seccomp::install(p).map_err(|e| e.to_string())?;
    }
    let e = nix::unistd::execve(&p.program, &p.args, &p.env).unwrap_err();
    Err(format!("exec {}: {e}", p.program.to_string_lossy()))
}

/// Finds `name` the way execvp does, but in the container's PATH.
pub(crate) fn find_executable(name: &str, env: &[String]) -> Result<PathBuf, String> {
    let check = |p: &Path| -> Result<(), String> {
        let m =
            std::fs::metadata(p).map_err(|e| format!("process.args[0] {}: {e}", p.display()))?;
        use std::os::unix::fs::PermissionsExt;
        if m.is_dir() || m.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "process.args[0] {}: not an executable file",
                p.display()
            ));
        }
        Ok(())
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        check(&p)?;
        return Ok(p);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if check(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(format!(
        "process.args[0] \"{name}\": executable file not found in $PATH ({path})"
    ))
}

pub(crate) fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| "/".to_string())
}

pub(crate) fn set_rlimits(process: &Process) -> Result<(), String> {
    for r in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let resource = rlimit_resource(&name).ok_or(format!("process.rlimits: unknown {name}"))?;
        nix::sys::resource::setrlimit(resource, r.soft(), r.hard())
            .map_err(|e| format!("process.rlimits {name}: {}", std::io::Error::from(e)))?;
    }
    Ok(())
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource;
    Some(match name {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Converts the config's capability names into the caps crate's set.
fn cap_set(list: &Option<oci_spec::runtime::Capabilities>) -> caps::CapsHashSet {
    list.iter()
        .flatten()
        .filter_map(|c| caps::to_canonical(&c.to_string()).parse().ok())
        .collect()
}

/// Drops the bounding set, switches to the config's user and sets the other capability sets.
pub(crate) fn become_user(process: &Process) -> Result<(), String> {
    use caps::CapSet;
    let fallback = LinuxCapabilities::default();
    let c = process.capabilities().as_ref().unwrap_or(&fallback);
    let bounding = cap_set(c.bounding());
    for cap in caps::runtime::thread_all_supported() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("process.capabilities.bounding: drop {cap}: {e}"))?;
        }
    }
    let user = process.user();
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1) };
    let groups: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // A rootless user namespace with one mapping has setgroups denied: no groups is all it has.
    let denied = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    if !(groups.is_empty() && denied) {
        nix::unistd::setgroups(&groups).map_err(|e| format!("process.user.additionalGids: {e}"))?;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("process.user.gid {gid}: {e}"))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("process.user.uid {uid}: {e}"))?;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0) };

    let sets = [
        (CapSet::Effective, cap_set(c.effective()), "effective"),
        (CapSet::Inheritable, cap_set(c.inheritable()), "inheritable"),
        (CapSet::Permitted, cap_set(c.permitted()), "permitted"),
    ];
    for (set, value, name) in sets {
        caps::set(None, set, &value).map_err(|e| format!("process.capabilities.{name}: {e}"))?;
    }
    // An ambient capability must also be permitted and inheritable; runc's default spec
    // lists some that are not inheritable, and runc goes on, so tug does the same.
    for cap in cap_set(c.ambient()) {
        if let Err(e) = caps::raise(None, CapSet::Ambient, cap) {
            tracing::debug!("process.capabilities.ambient: cannot raise {cap}: {e}");
        }
    }
    Ok(())
}

/// A pty for the container: the master goes to the console socket, the slave becomes stdio.
pub(crate) fn setup_terminal(console: &OwnedFd, process: &Process) -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let size = process.console_size().map(|b| nix::pty::Winsize {
        ws_row: b.height() as u16,
        ws_col: b.width() as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None).map_err(|e| format!("open pty: {e}"))?;
    let fds = [pty.master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(
        console.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("send pty to console socket: {e}"))?;
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: TIOCSCTTY on a pty slave we own.
    if unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!(
            "make pty the controlling terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard fds.
        if unsafe { libc::dup2(pty.slave.as_raw_fd(), target) } < 0 {
            return Err(format!(
                "dup pty to fd {target}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Undoes what tug did to signal state: the blocked mask of `run`, Rust's ignored SIGPIPE.
pub(crate) fn reset_signals() {
    // SAFETY: resetting dispositions and the mask of this single-threaded process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Marks every fd from `first` up close-on-exec, so nothing of tug's leaks into the container.
pub(crate) fn close_fds_on_exec(first: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_in_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            find_executable("sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = find_executable("no-such-program-tug", &env).unwrap_err();
        assert!(e.contains("not found in $PATH"), "{e}");
        let e = find_executable("/etc/passwd", &env).unwrap_err();
        assert!(e.contains("not an executable"), "{e}");
    }

    #[test]
    fn rlimit_names_map() {
        assert_eq!(
            rlimit_resource("RLIMIT_NOFILE"),
            Some(nix::sys::resource::Resource::RLIMIT_NOFILE)
        );
        assert_eq!(rlimit_resource("RLIMIT_BOGUS"), None);
    }
}
