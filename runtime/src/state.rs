//! Container state on disk and the lifecycle state machine.
//!
//! `<root>/<id>/state.json` is written to a temporary file and renamed, so a reader sees the
//! old state or the new one, never half of one. The init pid is stored with its start time
//! (field 22 of /proc/<pid>/stat), so a pid the kernel has reused for another process is never
//! taken for the container.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The OCI lifecycle states, plus `paused` as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// What a command wants to do to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Kill,
    Delete,
    ForceDelete,
    Pause,
    Resume,
    Exec,
    Update,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Kill => "kill",
            Operation::Delete | Operation::ForceDelete => "delete",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Exec => "exec into",
            Operation::Update => "update",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {id} is {status}: cannot {verb} it ({hint})")]
    IllegalTransition {
        id: String,
        status: Status,
        verb: &'static str,
        hint: &'static str,
    },
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("\"{0}\" is not a valid container id: use letters, digits, '_', '-' and '.', and do not start with '.'")]
    BadId(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Refuses an operation the container's current status does not allow.
pub fn check_transition(id: &str, status: Status, op: Operation) -> Result<(), StateError> {
    use Operation::*;
    use Status::*;
    let allowed = match op {
        Start => status == Created,
        Kill => matches!(status, Created | Running | Paused),
        Delete => matches!(status, Stopped | Created | Creating),
        ForceDelete => true,
        Pause => status == Running,
        Resume => status == Paused,
        Exec => matches!(status, Created | Running),
        Update => matches!(status, Created | Running | Paused),
    };
    if allowed {
        return Ok(());
    }
    let hint = match (op, status) {
        (Start, _) => "only a created container can be started",
        (Kill, _) => "it has no process to signal",
        (Delete, _) => "stop it first, or use --force",
        (Pause, _) => "only a running container can be paused",
        (Resume, _) => "only a paused container can be resumed",
        (Exec, Paused) => "resume it first, or exec with --ignore-paused",
        _ => "it is not running",
    };
    Err(StateError::IllegalTransition {
        id: id.to_string(),
        status,
        verb: op.verb(),
        hint,
    })
}

/// Refuses ids that could escape the state directory or confuse tools.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// What tug keeps about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub oci_version: String,
    pub id: String,
    /// The status as last written; [`crate::container`] derives the live one.
    pub status: Status,
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot.
    pub pid_start_time: Option<u64>,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The cgroup path below each hierarchy's root.
    pub cgroup_path: String,
    #[serde(default)]
    pub owner: String,
    /// The config's hooks, kept for `start` (poststart) and `delete` (poststop).
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// linux.netDevices moved into the container, for `delete` to move back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<crate::netdev::NetDevice>,
}

impl ContainerState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> Result<ContainerState, StateError> {
        let path = Self::path(dir);
        let bytes = fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the state to a temporary file in the same directory and renames it into place.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(self).expect("state serialises");
        write_atomic(&Self::path(dir), &bytes)
    }

    /// The OCI state document, with runc's extra fields.
    pub fn to_oci(&self, status: Status) -> serde_json::Value {
        let pid = match status {
            Status::Stopped => 0,
            _ => self.pid.unwrap_or(0),
        };
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status,
            "pid": pid,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        })
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e)
    })
}

/// Start time of a process in clock ticks since boot, or None when it does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|s| s.start_time)
}

/// The fields of /proc/<pid>/stat that tug reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

/// Parses /proc/<pid>/stat; the command name may hold spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    let state = fields.next()?.chars().next()?;
    // after the name: state is field 3, starttime is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// True when `pid` still is the process that was recorded, and has not exited.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match parse_stat(&stat) {
        Some(s) => s.start_time == start_time && s.state != 'Z' && s.state != 'X',
        None => false,
    }
}

/// Current time as RFC 3339 in UTC, with nanoseconds, as runc writes `created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_created_containers_start() {
        for s in [
            Status::Creating,
            Status::Running,
            Status::Paused,
            Status::Stopped,
        ] {
            let e = check_transition("c1", s, Operation::Start).unwrap_err();
            assert!(e.to_string().contains(&format!("c1 is {s}")), "{e}");
        }
        check_transition("c1", Status::Created, Operation::Start).unwrap();
    }

    #[test]
    fn running_containers_need_force_to_delete() {
        let e = check_transition("c1", Status::Running, Operation::Delete).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        check_transition("c1", Status::Running, Operation::ForceDelete).unwrap();
        check_transition("c1", Status::Stopped, Operation::Delete).unwrap();
        check_transition("c1", Status::Created, Operation::Delete).unwrap();
    }

    #[test]
    fn stopped_containers_cannot_be_signalled() {
        assert!(check_transition("c", Status::Stopped, Operation::Kill).is_err());
        for s in [Status::Created, Status::Running, Status::Paused] {
            check_transition("c", s, Operation::Kill).unwrap();
        }
    }

    #[test]
    fn pause_and_resume_follow_each_other() {
        check_transition("c", Status::Running, Operation::Pause).unwrap();
        assert!(check_transition("c", Status::Paused, Operation::Pause).is_err());
        check_transition("c", Status::Paused, Operation::Resume).unwrap();
        assert!(check_transition("c", Status::Running, Operation::Resume).is_err());
        assert!(check_transition("c", Status::Paused, Operation::Exec).is_err());
    }

    #[test]
    fn ids_that_escape_are_refused() {
        for bad in ["", "..", "a/b", ".hidden", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "a-b_c.1", "0123456789abcdef"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn stat_with_odd_command_names_parses() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn own_process_is_alive_and_reused_pid_is_not() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).unwrap();
        assert!(process_alive(me, t));
        assert!(!process_alive(me, t + 1));
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let st = ContainerState {
            oci_version: "1.2.0".into(),
            id: "c".into(),
            status: Status::Created,
            pid: Some(42),
            pid_start_time: Some(7),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            annotations: HashMap::new(),
            net_devices: Vec::new(),
            cgroup_path: "/tug/c".into(),
            owner: "root".into(),
            hooks: None,
        };
        st.save(dir.path()).unwrap();
        let back = ContainerState::load(dir.path()).unwrap();
        assert_eq!(back.pid, Some(42));
        assert_eq!(back.status, Status::Created);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let oci = back.to_oci(Status::Stopped);
        assert_eq!(oci["pid"], 0);
        assert_eq!(oci["status"], "stopped");
    }

    #[test]
    fn rfc3339_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
