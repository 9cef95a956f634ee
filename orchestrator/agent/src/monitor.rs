//! The per-container monitor, from the agent's side: the monitor itself is the
//! `tugboat-monitor` crate (its files, records and ring are re-exported here); this module
//! starts one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use tugboat_monitor::{
    lock_held, monitor_alive, read_json, run, take_lock, write_json, ExitRecord, LogMode,
    MonitorArgs, MonitorRecord, EXIT_FILE, LOCK_FILE, LOG_FILE, MONITOR_FILE,
};

/// The program that runs a monitor, for the agent's executable `exe` (the `tugboat`
/// binary): `tugboat-monitor` next to it (a small binary, one process per running
/// container), or else `exe monitor` (the same code inside the whole tugboat binary, at
/// several times the memory).
pub fn program(exe: &Path) -> (PathBuf, Option<&'static str>) {
    let small = exe.with_file_name(tugboat_monitor::EXECUTABLE);
    if is_executable(&small) {
        (small, None)
    } else {
        (exe.to_path_buf(), Some("monitor"))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts a monitor (from the agent). Returns once the monitor has detached; the container is
/// then being created: watch `monitor.json` and `exit.json`.
pub fn spawn(exe: &Path, args: &MonitorArgs) -> io::Result<()> {
    let _ = fs::remove_file(args.dir.join(EXIT_FILE));
    let (program, subcommand) = program(exe);
    let status = std::process::Command::new(&program)
        .args(subcommand)
        .args(args.to_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", program.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "monitor for {} ({}) failed to detach ({status})",
            args.id,
            program.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_monitor_next_to_the_agent_is_preferred() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tugboat = dir.path().join("tugboat");
        fs::write(&tugboat, "").unwrap();
        assert_eq!(program(&tugboat), (tugboat.clone(), Some("monitor")));
        let small = dir.path().join("tugboat-monitor");
        fs::write(&small, "").unwrap();
        // Not executable: not a monitor.
        assert_eq!(program(&tugboat), (tugboat.clone(), Some("monitor")));
        fs::set_permissions(&small, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(program(&tugboat), (small, None));
    }
}
