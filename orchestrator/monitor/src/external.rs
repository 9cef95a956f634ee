//! Another OCI runtime (runc, crun, runsc, youki, a path), driven through runc's command line
//! with a state root of the agent's. The monitor creates, starts and deletes through these;
//! the agent (its `oci` module) kills and queries through them too.

use std::path::Path;
use std::process::{Command, Stdio};

/// `exe --root root`, ready for a subcommand.
pub fn command(exe: &Path, root: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(root);
    cmd
}

/// Runs a subcommand of an external runtime; its stderr in the error.
pub fn run(exe: &Path, root: &Path, args: &[&str]) -> Result<(), String> {
    let out = command(exe, root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}: {}",
            exe.display(),
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `create` with the calling process's stdio passed on to the container (the monitor
/// has pointed them at its pipes), then the container's init pid.
pub fn create(exe: &Path, root: &Path, id: &str, bundle: &Path) -> Result<i32, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let pid_file = bundle.join("container.pid");
    let _ = std::fs::remove_file(&pid_file);
    let status = command(exe, root)
        .arg("create")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .status()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    if !status.success() {
        return Err(format!(
            "{} create exited with {status} (its words are in the instance's log)",
            exe.display()
        ));
    }
    std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "{} create wrote no pid to {}",
                exe.display(),
                pid_file.display()
            )
        })
}

pub fn start(exe: &Path, root: &Path, id: &str) -> Result<(), String> {
    run(exe, root, &["start", id])
}

/// `delete --force`, then tug's cgroup parent if it is left empty.
pub fn delete(exe: &Path, root: &Path, id: &str) -> Result<(), String> {
    let deleted = run(exe, root, &["delete", "--force", id]);
    // The container's cgroup is /tug/<id> (the agent's bundle): its parent is tug's, and
    // goes with the last container, whoever made it.
    tug_runtime::cgroups::remove_empty_tug_parents();
    deleted
}
