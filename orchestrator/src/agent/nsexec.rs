//! `tugboat nsexec`: run a command inside a running container, for `tugboat exec` and exec
//! probes, until the runtime has `tug exec`. A helper process (single-threaded: a mount
//! namespace cannot be joined by a threaded process) joins the container's cgroup, then its
//! ipc, uts, net, pid and mount namespaces, forks (the child is in the pid namespace), takes
//! the uid/gid and environment of the container's init and execs the command. Its exit code
//! is the command's.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::Path;

fn fail(what: &str, e: impl std::fmt::Display) -> i32 {
    eprintln!("tugboat nsexec: {what}: {e}");
    126
}

/// Joins `id`'s cgroup (every hierarchy that has `tug/<id>`).
fn join_cgroup(id: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<std::path::PathBuf> = hierarchies
        .flatten()
        .map(|h| h.path().join("tug").join(id))
        .collect();
    dirs.push(Path::new("/sys/fs/cgroup/tug").join(id));
    for dir in dirs {
        let procs = dir.join("cgroup.procs");
        if procs.exists() {
            let _ = std::fs::write(procs, "0");
        }
    }
}

fn ids_of(pid: i32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

/// The helper's body. Called before any async runtime exists.
pub fn run(pid: i32, id: &str, command: &[String]) -> i32 {
    if command.is_empty() {
        return fail("command", "nothing to run");
    }
    let env: Vec<CString> = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| CString::new(s).ok())
        .collect();
    let (uid, gid) = ids_of(pid);
    join_cgroup(id);
    use nix::sched::CloneFlags;
    let mut namespaces = vec![];
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        match std::fs::File::open(format!("/proc/{pid}/ns/{name}")) {
            Ok(f) => namespaces.push((name, f, flag)),
            Err(e) => return fail(&format!("namespace {name} of pid {pid}"), e),
        }
    }
    for (name, file, flag) in &namespaces {
        if let Err(e) = nix::sched::setns(file.as_fd(), *flag) {
            return fail(&format!("join the {name} namespace"), e);
        }
    }
    // SAFETY: single-threaded; the child only execs (or exits).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::chdir("/");
            let _ = nix::unistd::setgroups(&[]);
            let _ = nix::unistd::setgid(nix::unistd::Gid::from_raw(gid));
            let _ = nix::unistd::setuid(nix::unistd::Uid::from_raw(uid));
            let args: Vec<CString> = command
                .iter()
                .filter_map(|a| CString::new(a.as_bytes()).ok())
                .collect();
            let e = nix::unistd::execvpe(&args[0], &args, &env).unwrap_err();
            eprintln!("tugboat nsexec: {}: {e}", command[0]);
            std::process::exit(127);
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => loop {
            use nix::sys::wait::{waitpid, WaitStatus};
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return fail("wait", e),
            }
        },
        Err(e) => fail("fork", e),
    }
}

/// What an exec returns through the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` in the instance whose monitor records its container pid in `dir`
/// (from the agent: a `tugboat nsexec` process), with a time limit.
pub async fn exec_in(
    exe: &Path,
    dir: &Path,
    id: &str,
    command: &[String],
    limit: std::time::Duration,
) -> Result<ExecResult, String> {
    let record: super::monitor::MonitorRecord =
        super::monitor::read_json(&dir.join(super::monitor::MONITOR_FILE))
            .ok_or_else(|| format!("instance {id} is not running"))?;
    let pid = record
        .container_pid
        .ok_or_else(|| format!("instance {id} is still starting"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("nsexec")
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--id")
        .arg(id)
        .arg("--")
        .args(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| format!("no exit within {}s", limit.as_secs()))?
        .map_err(|e| format!("cannot run the exec helper: {e}"))?;
    Ok(ExecResult {
        exit_code: out.status.code().unwrap_or(128),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
