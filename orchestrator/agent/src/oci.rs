//! The OCI runtime an instance runs under (`runtime:` in its service, like Kubernetes'
//! RuntimeClass): `tug`, in-process through tug-runtime, or any runtime with runc's command
//! line (runc, crun, runsc, youki, a path), driven through that command line with a state
//! root of the agent's (`<data>/runtime-<name>`).

use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runtimes with runc's command line an agent looks for on its PATH and reports.
pub const KNOWN: &[&str] = &["runc", "crun", "runsc", "youki"];

/// The runtimes this node can run: `tug`, and the known ones on its PATH.
pub fn available() -> Vec<String> {
    let mut out = vec!["tug".to_string()];
    out.extend(
        KNOWN
            .iter()
            .filter(|n| find_on_path(n).is_some())
            .map(|n| n.to_string()),
    );
    out
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// How an instance's container is made, signalled and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Oci {
    /// tug, in this process (its state under `root`).
    Tug { root: PathBuf },
    /// Another runtime's executable, with its state under `root`.
    External { exe: PathBuf, root: PathBuf },
}

impl Oci {
    /// The runtime `name` (None or `tug`: tug) on this node; `tug_root` is tug's state root.
    pub fn for_name(name: Option<&str>, tug_root: &Path, node: &str) -> Result<Oci, String> {
        let name = match name {
            None | Some("tug") => {
                return Ok(Oci::Tug {
                    root: tug_root.to_path_buf(),
                })
            }
            Some(name) => name,
        };
        let exe = if name.starts_with('/') {
            let p = PathBuf::from(name);
            if !p.is_file() {
                return Err(format!(
                    "runtime {name} is not installed on node {node} (no such file)"
                ));
            }
            p
        } else {
            find_on_path(name).ok_or_else(|| {
                format!("runtime {name} is not installed on node {node} (not on its PATH)")
            })?
        };
        let base = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "oci".into());
        let root = tug_root.with_file_name(format!("runtime-{base}"));
        Ok(Oci::External { exe, root })
    }

    /// The monitor's `--oci-runtime` argument: None for tug.
    pub fn exe(&self) -> Option<&Path> {
        match self {
            Oci::Tug { .. } => None,
            Oci::External { exe, .. } => Some(exe),
        }
    }

    /// Runs a subcommand of an external runtime; its stderr in the error.
    fn run(exe: &Path, root: &Path, args: &[&str]) -> Result<(), String> {
        tugboat_monitor::external::run(exe, root, args)
    }

    /// Whether the runtime knows a container `id`.
    pub fn exists(&self, id: &str) -> bool {
        match self {
            Oci::Tug { root } => tug_runtime::Runtime::new(root).load(id).is_ok(),
            Oci::External { exe, root } => Self::run(exe, root, &["state", id]).is_ok(),
        }
    }

    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), String> {
        match self {
            Oci::Tug { root } => tug_runtime::Runtime::new(root)
                .kill(id, signal, all)
                .map_err(|e| e.to_string()),
            Oci::External { exe, root } => {
                let sig = (signal as i32).to_string();
                if all {
                    Self::run(exe, root, &["kill", "--all", id, &sig])
                } else {
                    Self::run(exe, root, &["kill", id, &sig])
                }
            }
        }
    }

    pub fn delete(&self, id: &str) -> Result<(), String> {
        match self {
            Oci::Tug { root } => tug_runtime::Runtime::new(root)
                .delete(id, true)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Oci::External { exe, root } => tugboat_monitor::external::delete(exe, root, id),
        }
    }

    /// Freezes container `id` (the cgroup freezer): `Ok(true)` when this call froze it,
    /// `Ok(false)` when it was not running (stopped, or paused already), so not ours to
    /// resume.
    pub fn pause(&self, id: &str) -> Result<bool, String> {
        let state = match self {
            Oci::Tug { root } => tug_runtime::Runtime::new(root)
                .state(id)
                .map_err(|e| e.to_string())?,
            Oci::External { exe, root } => {
                let out = tugboat_monitor::external::command(exe, root)
                    .args(["state", id])
                    .output()
                    .map_err(|e| format!("{}: {e}", exe.display()))?;
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
                serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("{} state {id}: {e}", exe.display()))?
            }
        };
        if state.get("status").and_then(|s| s.as_str()) != Some("running") {
            return Ok(false);
        }
        match self {
            Oci::Tug { root } => tug_runtime::Runtime::new(root)
                .pause(id)
                .map_err(|e| e.to_string())?,
            Oci::External { exe, root } => Self::run(exe, root, &["pause", id])?,
        }
        Ok(true)
    }

    /// Thaws a container [`Oci::pause`] froze.
    pub fn resume(&self, id: &str) -> Result<(), String> {
        match self {
            Oci::Tug { root } => tug_runtime::Runtime::new(root)
                .resume(id)
                .map_err(|e| e.to_string()),
            Oci::External { exe, root } => Self::run(exe, root, &["resume", id]),
        }
    }

    /// Arguments for running `command` in container `id` with an external runtime (no
    /// terminal: its stdio are the caller's).
    pub fn exec_command(exe: &Path, root: &Path, id: &str, command: &[String]) -> Command {
        let mut cmd = tugboat_monitor::external::command(exe, root);
        // No `--`: runc takes everything after the id as the command (and 1.1 would run `--`).
        cmd.arg("exec").arg(id).args(command);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tug_is_built_in_and_a_missing_runtime_names_itself_and_the_node() {
        let root = Path::new("/var/lib/tugboat/runtime");
        assert_eq!(
            Oci::for_name(None, root, "n1").unwrap(),
            Oci::Tug { root: root.into() }
        );
        assert_eq!(
            Oci::for_name(Some("tug"), root, "n1").unwrap(),
            Oci::Tug { root: root.into() }
        );
        let err = Oci::for_name(Some("no-such-runtime-x"), root, "n1").unwrap_err();
        assert_eq!(
            err,
            "runtime no-such-runtime-x is not installed on node n1 (not on its PATH)"
        );
        let err = Oci::for_name(Some("/opt/nothing/runsc"), root, "n1").unwrap_err();
        assert!(
            err.contains("/opt/nothing/runsc is not installed on node n1"),
            "{err}"
        );
        // A path that exists: its own state root beside tug's.
        let sh = Oci::for_name(Some("/bin/sh"), root, "n1").unwrap();
        assert_eq!(
            sh,
            Oci::External {
                exe: "/bin/sh".into(),
                root: "/var/lib/tugboat/runtime-sh".into()
            }
        );
        assert!(available().contains(&"tug".to_string()));
    }
}
