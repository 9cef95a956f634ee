//! What the runtime's root tests share: a busybox bundle, running `tug`, finding cgroups.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why a root test cannot run here, if it cannot.
pub fn skip() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static at /bin/busybox (tests/install-deps.sh installs it)");
    }
    None
}

/// The `tug` under test: `TUG_BIN` (the test command sets it to the static musl `dist`
/// build that scripts/install.sh installs), else the one cargo built for these tests.
pub fn tug_bin() -> PathBuf {
    match std::env::var_os("TUG_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "TUG_BIN={} is not a file (build it, or unset TUG_BIN)",
                path.display()
            );
            path
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_tug")),
    }
}

/// Returns early from a test, saying why, when it cannot run here.
#[macro_export]
macro_rules! skip_unless_root {
    ($name:expr) => {
        if let Some(why) = common::skip() {
            eprintln!("SKIP {}: {why}", $name);
            return;
        }
    };
}

const APPLETS: &[&str] = &[
    "sh", "hostname", "sleep", "cat", "pwd", "env", "echo", "dd", "id", "ls", "touch", "grep",
    "seq", "true", "mount", "wc", "head", "tr", "date",
];

/// A mount the test made on the host, detached when the test ends, however it ends.
pub struct HostMount(PathBuf);

impl HostMount {
    pub fn new(
        source: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
        data: Option<&str>,
    ) -> HostMount {
        nix::mount::mount(Some(source), target, fstype, flags, data)
            .unwrap_or_else(|e| panic!("mount {}: {e}", target.display()));
        HostMount(target.to_path_buf())
    }

    /// Changes the mount: a propagation type, or MS_REMOUNT with new flags.
    pub fn change(&self, flags: nix::mount::MsFlags) {
        nix::mount::mount(None::<&str>, &self.0, None::<&str>, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("change mount {}: {e}", self.0.display()));
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A bundle in a temp dir (busybox rootfs + config.json) and a private `--root` state dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub spec: Value,
}

impl Env {
    pub fn new(args: &[&str]) -> Env {
        let dir = tempfile::Builder::new().prefix("tugt").tempdir().unwrap();
        let root = dir.path().join("bundle/rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let mut spec = serde_json::to_value(tug_runtime::spec::default_spec()).unwrap();
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin", "TUGVAR=yes"]);
        let env = Env { dir, spec };
        env.write();
        env
    }

    /// Changes config.json.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        f(&mut self.spec);
        self.write();
    }

    fn write(&self) {
        std::fs::write(
            self.bundle().join("config.json"),
            serde_json::to_string_pretty(&self.spec).unwrap(),
        )
        .unwrap();
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs tug; stdio goes through files, since a created container keeps tug's stdio open.
    pub fn tug(&self, args: &[&str]) -> Output {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let status = Command::new(tug_bin())
            .arg("--root")
            .arg(self.state_root())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(out.path()).unwrap(),
            stderr: std::fs::read(err.path()).unwrap(),
        }
    }

    /// Runs tug and panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.tug(args);
        assert!(out.status.success(), "tug {args:?}: {}", show(&out));
        out
    }

    /// `tug create` of this bundle; panics with tug's output if it fails.
    pub fn create(&self, id: &str) -> Output {
        let b = self.bundle();
        let out = self.tug(&["create", id, "--bundle", b.to_str().unwrap()]);
        assert!(out.status.success(), "create {id}: {}", show(&out));
        out
    }

    pub fn run(&self, id: &str) -> Output {
        let b = self.bundle();
        self.tug(&["run", id, "--bundle", b.to_str().unwrap()])
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.tug(&["state", id]);
        assert!(out.status.success(), "state {id}: {}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    pub fn wait_status(&self, id: &str, want: &str) {
        wait_for(
            &format!("{id} to be {want}"),
            Duration::from_secs(20),
            || self.status(id) == want,
        );
    }
}

impl Drop for Env {
    /// Whatever a failed test left: its containers are force-deleted.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.state_root()) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            let _ = self.tug(&["delete", "--force", &id]);
        }
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A container id unique to this test process.
pub fn id(name: &str) -> String {
    format!("tugt{}-{name}", std::process::id())
}

/// Polls `cond` until it holds, or panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True on a pure cgroup v2 host (cgroup2 mounted at /sys/fs/cgroup).
pub fn host_is_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The mount points of every cgroup hierarchy, with their controllers (v1) or "" (cgroup2).
pub fn cgroup_mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post = post.split_whitespace();
        let fstype = post.next().unwrap_or("");
        let _src = post.next();
        let opts = post.next().unwrap_or("");
        let mount_point = PathBuf::from(pre.split_whitespace().nth(4).unwrap_or(""));
        match fstype {
            "cgroup2" => out.push((mount_point, String::new())),
            "cgroup" => out.push((mount_point, opts.to_string())),
            _ => {}
        }
    }
    out
}

/// The directory of container `id`'s cgroup (default path /tug/<id>) for `controller`.
pub fn cgroup_dir(id: &str, controller: &str) -> PathBuf {
    if host_is_v2() {
        return Path::new("/sys/fs/cgroup/tug").join(id);
    }
    let (mp, _) = cgroup_mounts()
        .into_iter()
        .find(|(_, opts)| opts.split(',').any(|o| o == controller))
        .unwrap_or_else(|| panic!("no cgroup v1 hierarchy has the {controller} controller"));
    mp.join("tug").join(id)
}

/// Reads a cgroup file of container `id`.
pub fn cgroup_read(id: &str, controller: &str, file: &str) -> String {
    let p = cgroup_dir(id, controller).join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The value of `key` in a flat-keyed cgroup file ("key value" lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Asserts container `id` has no cgroup directory left in any hierarchy.
pub fn no_cgroup_left(id: &str) {
    for (mp, _) in cgroup_mounts() {
        let p = mp.join("tug").join(id);
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

/// The pid of a running container's init, from its state.
pub fn init_pid(env: &Env, id: &str) -> i32 {
    env.state(id)["pid"].as_i64().unwrap() as i32
}
