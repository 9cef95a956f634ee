//! Root tests: real namespaces, cgroups and mounts on a busybox bundle.

use std::path::{Path, PathBuf};
use std::process::Command;

fn skip() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static at /bin/busybox");
    }
    None
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(args: &[&str], hostname: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bundle/rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in ["sh", "hostname", "sleep", "cat", "pwd", "env"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let mut spec = serde_json::to_value(tug_runtime::spec::default_spec()).unwrap();
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin", "TUGVAR=yes"]);
        spec["process"]["cwd"] = serde_json::json!("/tmp");
        spec["hostname"] = serde_json::json!(hostname);
        std::fs::write(
            dir.path().join("bundle/config.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        Env { dir }
    }
    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }
    /// Runs tug; stdio goes through files, since a created container keeps tug's stdio open.
    fn tug(&self, args: &[&str]) -> std::process::Output {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_tug"))
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .status()
            .unwrap();
        std::process::Output {
            status,
            stdout: std::fs::read(out.path()).unwrap(),
            stderr: std::fs::read(err.path()).unwrap(),
        }
    }
}

fn id(name: &str) -> String {
    format!("tugt{}-{name}", std::process::id())
}

fn no_cgroup_left(id: &str) {
    for h in ["memory", "pids", "cpu", "devices", "freezer"] {
        let p = Path::new("/sys/fs/cgroup").join(h).join("tug").join(id);
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn run_passes_exit_code_hostname_env_cwd() {
    if let Some(why) = skip() {
        eprintln!("SKIP run_passes_exit_code_hostname_env_cwd: {why}");
        return;
    }
    let env = Env::new(
        &["sh", "-c", "echo $(hostname) $TUGVAR $(pwd); exit 7"],
        "boxy",
    );
    let id = id("run");
    let b = env.bundle();
    let out = env.tug(&["run", &id, "--bundle", b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "boxy yes /tmp");
    assert!(!env.dir.path().join("state").join(&id).exists());
    no_cgroup_left(&id);
}

#[test]
fn create_start_kill_delete() {
    if let Some(why) = skip() {
        eprintln!("SKIP create_start_kill_delete: {why}");
        return;
    }
    let env = Env::new(&["sleep", "100"], "c");
    let id = id("life");
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&env.tug(&["state", &id]).stdout).unwrap();
    assert_eq!(state["status"], "created");
    let again = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(env.tug(&["start", &id]).status.success());
    let state: serde_json::Value =
        serde_json::from_slice(&env.tug(&["state", &id]).stdout).unwrap();
    assert_eq!(state["status"], "running");
    let del = env.tug(&["delete", &id]);
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("--force"),
        "{del:?}"
    );
    assert!(env.tug(&["kill", &id, "KILL"]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s: serde_json::Value =
            serde_json::from_slice(&env.tug(&["state", &id]).stdout).unwrap();
        if s["status"] == "stopped" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stopped");
    }
    assert!(env.tug(&["delete", &id]).status.success());
    no_cgroup_left(&id);
}

#[test]
fn bad_config_leaves_nothing() {
    if let Some(why) = skip() {
        eprintln!("SKIP bad_config_leaves_nothing: {why}");
        return;
    }
    let env = Env::new(&["no-such-program"], "c");
    let id = id("bad");
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("process.args[0]") && err.contains("no-such-program"),
        "{err}"
    );
    assert!(!env.dir.path().join("state").join(&id).exists());
    no_cgroup_left(&id);
}
