//! The files a monitor keeps in the instance directory, and how the agent reads them.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The monitor's own record: written when it starts, so the agent can find it alive.
pub const MONITOR_FILE: &str = "monitor.json";
/// Written once, when the container has exited (or could not start).
pub const EXIT_FILE: &str = "exit.json";
/// The container's output.
pub const LOG_FILE: &str = "container.log";
/// Held (flock) by the monitor for as long as it lives: the agent's liveness check, and what
/// keeps a second monitor of the same instance from starting.
pub const LOCK_FILE: &str = "monitor.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    pub pid: i32,
    pub start_time: u64,
    /// The container's init, once created.
    #[serde(default)]
    pub container_pid: Option<i32>,
}

/// How the container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Set when the container could not be created or started.
    #[serde(default)]
    pub error: Option<String>,
    pub finished_at_ms: u64,
    /// Processes the OOM killer killed in its cgroup (read before the cgroup went).
    #[serde(default)]
    pub oom_kills: u64,
}

impl ExitRecord {
    /// In words, for the instance's status.
    pub fn describe(&self) -> String {
        match (&self.error, self.signal, self.code) {
            (Some(e), _, _) => format!("could not start: {e}"),
            (None, Some(s), _) => format!("killed by signal {s}"),
            (None, None, Some(c)) => format!("exited with code {c}"),
            _ => "exited".into(),
        }
    }
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.code == Some(0)
    }
}

/// Writes `value` as JSON to `path` through a temp file and a rename.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    // On the disk before the rename: a power cut must not leave an empty record in place of
    // the old one (ext4 orders only a rename over an existing file), which the agent, after
    // the reboot, could not read (these are written on changes, not periodically).
    file.sync_data()?;
    fs::rename(&tmp, path)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Is the monitor of this record still the live process it was?
pub fn monitor_alive(record: &MonitorRecord) -> bool {
    tug_runtime::state::process_alive(record.pid, record.start_time)
}

/// Takes the exclusive lock on `path`; `None` when another process holds it.
pub fn take_lock(path: &Path) -> io::Result<Option<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // SAFETY: flock on an fd we own (opened close-on-exec by std).
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(file))
}

/// Does a live process hold the lock at `path`?
pub fn lock_held(path: &Path) -> bool {
    matches!(take_lock(path), Ok(None))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Processes the OOM killer killed in container `id`'s cgroup under `root` (a cgroup2
/// mount, or the root of v1 hierarchies).
pub fn oom_kills(root: &Path, id: &str) -> Option<u64> {
    let oom_kill_line = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let v2 = root.join("tug").join(id).join("memory.events");
    if let Ok(text) = fs::read_to_string(&v2) {
        return Some(oom_kill_line(text).unwrap_or(0));
    }
    let v1 = root.join("memory").join("tug").join(id);
    let text = fs::read_to_string(v1.join("memory.oom_control")).ok()?;
    oom_kill_line(text).or_else(|| {
        fs::read_to_string(v1.join("memory.failcnt"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|n| n.min(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_say_what_happened() {
        let e = ExitRecord {
            code: Some(137),
            signal: Some(9),
            error: None,
            finished_at_ms: 0,
            oom_kills: 0,
        };
        assert_eq!(e.describe(), "killed by signal 9");
        assert!(!e.succeeded());
        let failed = ExitRecord {
            error: Some("no such file: /bin/web".into()),
            ..e
        };
        assert_eq!(failed.describe(), "could not start: no such file: /bin/web");
    }

    #[test]
    fn a_held_lock_is_seen_and_released_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let held = take_lock(&path).unwrap().expect("free at first");
        assert!(lock_held(&path));
        drop(held);
        assert!(!lock_held(&path));
    }
}
