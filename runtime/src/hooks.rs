//! OCI hooks: each gets the container's state on stdin and may have a timeout.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook {path}: {message}")]
    Failed {
        stage: &'static str,
        path: String,
        message: String,
    },
}

/// Runs `hooks` in order; the first failure stops the rest and is returned. A hook without
/// `env` gets an empty environment.
pub fn run_hooks(stage: &'static str, hooks: &[Hook], state_json: &str) -> Result<(), HookError> {
    run_hooks_with_env(stage, hooks, state_json, &[])
}

/// [`run_hooks`], where a hook without `env` gets `default_env` ("KEY=value" entries): the
/// container process's environment for startContainer hooks, which run in the container as
/// runc runs them, after init has taken process.env (with HOME).
pub fn run_hooks_with_env(
    stage: &'static str,
    hooks: &[Hook],
    state_json: &str,
    default_env: &[String],
) -> Result<(), HookError> {
    for hook in hooks {
        run_hook(stage, hook, state_json, default_env)?;
    }
    Ok(())
}

/// Runs every hook even when some fail (poststart, poststop); returns the failures.
pub fn run_hooks_lenient(stage: &'static str, hooks: &[Hook], state_json: &str) -> Vec<HookError> {
    hooks
        .iter()
        .filter_map(|h| run_hook(stage, h, state_json, &[]).err())
        .collect()
}

fn run_hook(
    stage: &'static str,
    hook: &Hook,
    state_json: &str,
    default_env: &[String],
) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let fail = |message: String| HookError::Failed {
        stage,
        path: path.clone(),
        message,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some(arg0) = args.first() {
            cmd.arg0(arg0);
        }
        cmd.args(args.iter().skip(1));
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or(default_env) {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let timeout = hook.timeout().map(|t| Duration::from_secs(t as u64));
    let status = match timeout {
        None => child.wait().map_err(|e| fail(e.to_string()))?,
        Some(t) => {
            if !wait_exit(child.id() as i32, t) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {}s and was killed",
                    t.as_secs()
                )));
            }
            child.wait().map_err(|e| fail(e.to_string()))?
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(fail(format!("exited with {status}")))
    }
}

/// Waits up to `timeout` for the process to exit, without reaping it. Uses a pidfd.
pub fn wait_exit(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            // Already exited and reaped (a quick init or subreaper got there first).
            Some(libc::ESRCH) => true,
            // No pidfd here (old kernel): watch /proc instead.
            _ => poll_proc_gone(pid, timeout),
        };
    }
    // SAFETY: the fd was just returned to us and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Waits for /proc/PID to go or to be a zombie.
fn poll_proc_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_already_reaped_counts_as_exited() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(wait_exit(pid, Duration::from_millis(100)));
    }

    #[test]
    fn a_running_process_is_waited_for_until_the_timeout() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!wait_exit(child.id() as i32, Duration::from_millis(50)));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn hook(json: serde_json::Value) -> Hook {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_runs_in_order() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let script = format!("cat >> {0}; echo \" $1\" >> {0}", out.display());
        let hooks = vec![
            hook(
                serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script, "sh", "first"]}),
            ),
            hook(
                serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script, "sh", "second"]}),
            ),
        ];
        run_hooks("prestart", &hooks, "{\"id\":\"c\"}").unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "{\"id\":\"c\"} first\n{\"id\":\"c\"} second\n");
    }

    #[test]
    fn failing_hook_names_stage_and_path() {
        let hooks = vec![hook(serde_json::json!({"path": "/bin/false"}))];
        let e = run_hooks("createRuntime", &hooks, "{}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("createRuntime hook /bin/false") && e.contains("exit status: 1"),
            "{e}"
        );
    }

    #[test]
    fn slow_hook_is_killed_at_its_timeout() {
        let hooks = vec![hook(
            serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}),
        )];
        let t = Instant::now();
        let e = run_hooks("prestart", &hooks, "{}").unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn lenient_hooks_all_run() {
        let hooks = vec![
            hook(serde_json::json!({"path": "/bin/false"})),
            hook(serde_json::json!({"path": "/nonexistent/hook"})),
            hook(serde_json::json!({"path": "/bin/true"})),
        ];
        let errs = run_hooks_lenient("poststop", &hooks, "{}");
        assert_eq!(errs.len(), 2);
    }
}
