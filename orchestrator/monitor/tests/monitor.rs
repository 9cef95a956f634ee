//! Root tests of the `tugboat-monitor` executable on its own, as the agent starts it: a busybox
//! container's output, exit status and end, and nothing left behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tugboat_monitor::logfmt::{self, Stream};
use tugboat_monitor::{
    lock_held, read_json, ExitRecord, LogMode, MonitorArgs, MonitorRecord, EXIT_FILE, LOCK_FILE,
    LOG_FILE, MONITOR_FILE,
};

/// The log's records as `tugboat logs` shows them.
fn lines(log: &[u8]) -> String {
    let mut view = logfmt::LineView::new(logfmt::Window::default(), false);
    let mut out = vec![];
    view.push(log, &mut out);
    view.finish(&mut out);
    String::from_utf8(out).unwrap()
}

fn skip() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, cgroups, mounts)");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static at /bin/busybox (tests/install-deps.sh installs it)");
    }
    None
}

/// A busybox bundle running `script`, an instance dir and a state root, in a temp dir.
struct Instance {
    tmp: tempfile::TempDir,
    id: String,
}

impl Instance {
    fn new(name: &str, script: &str) -> Instance {
        let tmp = tempfile::Builder::new().prefix("tgmon").tempdir().unwrap();
        let rootfs = tmp.path().join("bundle/rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let mut spec = serde_json::to_value(tug_runtime::spec::default_spec()).unwrap();
        spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        std::fs::write(
            tmp.path().join("bundle/config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        std::fs::create_dir_all(tmp.path().join("instance")).unwrap();
        let id = format!("tgmon{}{name}", std::process::id());
        Instance { tmp, id }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("instance")
    }

    fn state_root(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// Starts `tugboat-monitor` as the agent does; returns once it has detached.
    fn start(&self, log_mode: LogMode) {
        let args = MonitorArgs {
            id: self.id.clone(),
            bundle: self.tmp.path().join("bundle"),
            runtime_root: self.state_root(),
            dir: self.dir(),
            log_max_bytes: 1 << 16,
            oci: None,
            log_mode,
        };
        let status = Command::new(env!("CARGO_BIN_EXE_tugboat-monitor"))
            .args(args.to_args())
            .status()
            .unwrap();
        assert!(status.success(), "tugboat-monitor did not detach: {status}");
    }

    fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{} {what}: not within 20 s; log: {:?}",
                self.id,
                std::fs::read_to_string(self.dir().join(LOG_FILE)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit(&self) -> ExitRecord {
        self.wait_for("exit.json", || read_json(&self.dir().join(EXIT_FILE)))
    }

    /// After the container ended: the monitor gone (its lock free), no container in tug's
    /// state, no cgroup of the id in any hierarchy.
    fn assert_nothing_left(&self) {
        self.wait_for("monitor gone", || {
            (!lock_held(&self.dir().join(LOCK_FILE))).then_some(())
        });
        let left = tug_runtime::Runtime::new(self.state_root())
            .list()
            .unwrap_or_default();
        assert!(left.is_empty(), "containers left: {left:?}");
        let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
        hierarchies.extend(
            std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
        for h in hierarchies {
            let cgroup = h.join("tug").join(&self.id);
            assert!(!cgroup.exists(), "{} is left", cgroup.display());
        }
    }
}

#[test]
fn the_monitor_keeps_the_output_and_the_exit_code_and_leaves_nothing() {
    if let Some(why) = skip() {
        eprintln!("SKIP the_monitor_keeps_the_output_and_the_exit_code_and_leaves_nothing: {why}");
        return;
    }
    let instance = Instance::new("file", "echo to stdout; echo to stderr >&2; exit 3");
    instance.start(LogMode::File);
    let record: MonitorRecord = instance.wait_for("monitor.json", || {
        read_json(&instance.dir().join(MONITOR_FILE))
    });
    let exit = instance.exit();
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert_eq!(exit.describe(), "exited with code 3");
    // Each line is kept with its time and its stream.
    let log = std::fs::read(instance.dir().join(LOG_FILE)).unwrap();
    let records: Vec<_> = log
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(logfmt::parse)
        .collect();
    let seen: Vec<_> = records.iter().map(|r| (r.stream, r.content)).collect();
    assert!(
        seen.contains(&(Some(Stream::Stdout), &b"to stdout"[..]))
            && seen.contains(&(Some(Stream::Stderr), &b"to stderr"[..])),
        "{:?}",
        String::from_utf8_lossy(&log)
    );
    let runs: logfmt::Runs = read_json(&instance.dir().join(logfmt::RUNS_FILE)).unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.time.is_some_and(|t| t >= runs.current.as_str())),
        "a line older than its run's start ({runs:?})"
    );
    assert!(record.pid > 0);
    instance.assert_nothing_left();
}

#[test]
fn a_ring_monitor_serves_the_output_and_saves_it_when_the_container_is_killed() {
    if let Some(why) = skip() {
        eprintln!("SKIP a_ring_monitor_serves_the_output_and_saves_it_when_the_container_is_killed: {why}");
        return;
    }
    let instance = Instance::new("ring", "echo ready; exec sleep 1000");
    instance.start(LogMode::Ring);
    let socket = instance.dir().join(tugboat_monitor::logring::SOCKET_FILE);
    let logs = instance.wait_for("logs on log.sock", || {
        let mut stream = UnixStream::connect(&socket).ok()?;
        stream.write_all(b"logs all 0\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        (!text.is_empty()).then_some(text)
    });
    assert_eq!(lines(logs.as_bytes()), "ready\n");
    assert!(
        !instance.dir().join(LOG_FILE).exists(),
        "ring mode wrote the log while the container ran"
    );
    let container = instance.wait_for("the container's pid", || {
        read_json::<MonitorRecord>(&instance.dir().join(MONITOR_FILE))?.container_pid
    });
    // The monitor is this package's small executable.
    let monitor: MonitorRecord = read_json(&instance.dir().join(MONITOR_FILE)).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", monitor.pid)).unwrap();
    assert_eq!(exe.file_name().unwrap(), "tugboat-monitor");
    // SAFETY: the container's init, which this test's monitor started.
    assert_eq!(unsafe { libc::kill(container, libc::SIGKILL) }, 0);
    let exit = instance.exit();
    assert_eq!((exit.code, exit.signal), (Some(137), Some(9)), "{exit:?}");
    assert_eq!(
        lines(&std::fs::read(instance.dir().join(LOG_FILE)).unwrap()),
        "ready\n",
        "the ring is saved when the container ends"
    );
    instance.assert_nothing_left();
}
