//! The last steps before a container process execs, shared by init and `tug exec` so the two
//! cannot drift apart: working directory, environment and program lookup, rlimits, terminal,
//! personality, I/O priority, scheduler, memory policy, seccomp, groups, user and capabilities, LSM label,
//! no_new_privs and umask ([`finalize`]); then the signal mask, fds and execve ([`exec`]).
//!
//! Everything that can fail is in [`finalize`], which init runs before it reports `Ready`
//! (as runc's finalizeNamespace runs inside `create`): a bad user, capability set, seccomp
//! filter, personality or scheduler fails `create`, not `start`. Only the startContainer hooks
//! and the execve itself wait for `start`.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxCapabilities, Process};

use crate::seccomp::notify::{self, Agent};
use crate::seccomp::Program;

/// What the process is made from.
pub(crate) struct Finalize<'a> {
    pub process: &'a Process,
    /// The container's linux section: its personality applies to every process in it.
    pub linux: Option<&'a Linux>,
    /// The container's seccomp filter, compiled when config.json was loaded.
    pub seccomp: Option<&'a Program>,
    /// Connected console socket, when the process has a terminal.
    pub console: Option<&'a OwnedFd>,
    /// The seccomp agent a notifying filter's listener goes to (linux.seccomp.listenerPath).
    pub agent: Option<Agent<'a>>,
}

/// A finalized process, ready for [`exec`].
pub(crate) struct Command<'a> {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// With no_new_privs the filter goes on last, right before execve.
    late_seccomp: Option<&'a Program>,
}

impl Command<'_> {
    /// The environment the process will get ("KEY=value"): process.env, with HOME added.
    pub(crate) fn env(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }
}

/// Sets `process.oomScoreAdj`. Done early (before the mounts, or before `exec` joins the
/// container's namespaces), while /proc is the host's and tug still has its privileges.
pub(crate) fn set_oom_score_adj(process: &Process) -> Result<(), String> {
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("process.oomScoreAdj {adj}: {e}"))?;
    }
    Ok(())
}

/// Makes this process the container process `f.process` describes, short of exec. Runs in
/// the container's namespaces, with its root as `/`.
pub(crate) fn finalize<'a>(f: &Finalize<'a>) -> Result<Command<'a>, String> {
    let process = f.process;
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| format!("process.cwd {}: {e}", cwd.display()))?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(process.user().uid())));
    }
    let args = process.args().clone().unwrap_or_default();
    let name = args.first().ok_or("process.args is empty")?;
    let program = find_executable(name, &env)?;
    set_rlimits(process)?;
    if let Some(console) = f.console {
        setup_terminal(console, process)?;
    }
    // Before the capabilities go: a real-time scheduler needs CAP_SYS_NICE.
    crate::procattr::apply_personality(f.linux)?;
    crate::procattr::apply_io_priority(process)?;
    crate::procattr::apply_scheduler(process)?;
    if let Some(policy) = f.linux.and_then(|l| l.memory_policy().as_ref()) {
        crate::placement::apply_memory_policy(policy)?;
    }
    // A filter needs no_new_privs or CAP_SYS_ADMIN: without no_new_privs it goes on while
    // the capabilities are still held (as in runc), and then also filters become_user.
    let nnp = process.no_new_privileges() == Some(true);
    let notifies = f.seccomp.is_some_and(Program::notifies);
    if let (false, Some(p)) = (nnp, f.seccomp) {
        install_filter(p, f.agent.as_ref())?;
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
    // A notifying filter goes on here under no_new_privs too, not right before execve: its
    // listener must reach the agent during create, as in runc.
    if let (true, true, Some(p)) = (nnp, notifies, f.seccomp) {
        install_filter(p, f.agent.as_ref())?;
    }
    if let Some(mask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("\"{s}\" contains a NUL byte"));
    Ok(Command {
        program: to_c(&program.to_string_lossy())?,
        args: args.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?,
        late_seccomp: f.seccomp.filter(|_| nnp && !notifies),
    })
}

/// Installs the seccomp filter; a notifying one's listener goes to the agent at once, before
/// any other syscall the filter could hold.
fn install_filter(p: &Program, agent: Option<&Agent>) -> Result<(), String> {
    match (
        crate::seccomp::install(p).map_err(|e| e.to_string())?,
        agent,
    ) {
        (Some(listener), Some(agent)) => notify::hand_over(agent, listener),
        (Some(_), None) => {
            Err("linux.seccomp: the filter notifies, but no agent is connected".into())
        }
        (None, _) => Ok(()),
    }
}

/// Execs a finalized process: resets the signal state (and unblocks `unblock`), marks every fd
/// from 3 + `preserve_fds` close-on-exec, installs a no_new_privs seccomp filter, execve.
pub(crate) fn exec(
    cmd: &Command,
    preserve_fds: u32,
    unblock: Option<&nix::sys::signal::SigSet>,
) -> Result<Infallible, String> {
    reset_signals();
    if let Some(set) = unblock {
        let _ = set.thread_unblock();
    }
    close_fds_on_exec(3 + preserve_fds);
    if let Some(p) = cmd.late_seccomp {
        crate::seccomp::install(p).map_err(|e| e.to_string())?;
    }
    let e = nix::unistd::execve(&cmd.program, &cmd.args, &cmd.env).unwrap_err();
    Err(format!("exec {}: {e}", cmd.program.to_string_lossy()))
}

/// Finds `name` the way execvp does, but in the container's PATH.
fn find_executable(name: &str, env: &[String]) -> Result<PathBuf, String> {
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

fn home_of(uid: u32) -> String {
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

fn set_rlimits(process: &Process) -> Result<(), String> {
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
fn become_user(process: &Process) -> Result<(), String> {
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
fn setup_terminal(console: &OwnedFd, process: &Process) -> Result<(), String> {
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
fn reset_signals() {
    // SAFETY: resetting dispositions and the mask of this single-threaded process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Marks every fd from `first` up close-on-exec, so nothing of tug's leaks into the container.
fn close_fds_on_exec(first: u32) {
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
