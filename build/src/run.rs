//! RUN: the command runs in a `tug` container whose rootfs is an overlay of the layers so
//! far (read-only lower dirs) with a fresh upper dir, which afterwards is the step's layer.
//!
//! The container gets its own network namespace, made by a helper thread of the builder
//! (`unshare(CLONE_NEWNET)`, loopback brought up over rtnetlink) and joined by `tug` through
//! `/proc/<pid>/task/<tid>/ns/net`: only loopback, nothing of the host's network, and no
//! named namespace to leak: it ends with the thread and the container. Its pid, mount, IPC
//! and UTS namespaces and its cgroup are tug's as for any container, and `tug run`
//! (foreground) deletes the container when the command exits.
//!
//! Everything a RUN makes lives under one scratch directory (upper, work, merged mount
//! point, bundle, tug's state root) that the caller removes; the overlay is unmounted when
//! the [`Overlay`] guard drops, on every path out.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{BuildError, IoContext};

/// Docker's default capability set for RUN.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// One RUN's command and surroundings.
#[derive(Debug, Clone)]
pub struct RunRequest<'a> {
    /// The container id (unique per build step).
    pub id: String,
    /// Layer dirs, lowest first.
    pub lower: &'a [PathBuf],
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// An empty directory for this step's upper, work, merged, bundle and state dirs.
    pub scratch: &'a Path,
    /// The `tug` binary.
    pub tug: &'a Path,
}

/// An overlay mount, unmounted when dropped.
pub struct Overlay {
    pub merged: PathBuf,
}

impl Overlay {
    /// Mount `lower` (lowest first; repeats dropped) with `upper` and `work` on `merged`.
    pub fn mount(
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
        merged: &Path,
        empty: &Path,
    ) -> Result<Overlay, BuildError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for l in lower.iter().rev() {
            if !dirs.contains(l) {
                dirs.push(l.clone());
            }
        }
        dirs.reverse();
        if dirs.is_empty() {
            fs::create_dir_all(empty).at(empty)?;
            dirs.push(empty.to_path_buf());
        }
        let options = tug_image::rootfs::overlay_options(&dirs, upper, work)?;
        if options.len() > tug_image::rootfs::MAX_MOUNT_OPTIONS {
            return Err(BuildError::Other(format!(
                "{} layers are too many for one overlay mount ({} bytes of options)",
                dirs.len(),
                options.len()
            )));
        }
        mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| BuildError::io(merged, e.into()))?;
        Ok(Overlay {
            merged: merged.to_path_buf(),
        })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if umount2(&self.merged, MntFlags::empty()).is_err() {
            let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
        }
    }
}

/// A network namespace held by a parked thread; released when dropped.
pub struct FreshNetns {
    pub path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FreshNetns {
    /// A new network namespace with loopback up, never the host's.
    pub fn new() -> Result<FreshNetns, String> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<PathBuf, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("build-netns".into())
            .spawn(move || {
                let made = enter_fresh_netns();
                let ok = made.is_ok();
                let _ = ready_tx.send(made);
                if ok {
                    // Stay in the namespace until the step is over.
                    let _ = stop_rx.recv();
                }
            })
            .map_err(|e| format!("cannot start the netns thread: {e}"))?;
        let path = match ready_rx.recv() {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err("the netns thread died".into());
            }
        };
        Ok(FreshNetns {
            path,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for FreshNetns {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// In the calling thread: a new network namespace, loopback up. Returns its path.
fn enter_fresh_netns() -> Result<PathBuf, String> {
    use tug_netns::ops::NetOps;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    rt.block_on(async {
        let rtnl = tug_netns::rtnl::Rtnl::current().map_err(|e| e.to_string())?;
        if let Some(lo) = rtnl.link_index("lo").await.map_err(|e| e.to_string())? {
            rtnl.set_up(lo).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    Ok(PathBuf::from(format!(
        "/proc/{}/task/{}/ns/net",
        std::process::id(),
        nix::unistd::gettid()
    )))
}

/// config.json for the step: tug's default spec with the command, its own network
/// namespace and Docker's default capabilities.
fn config(req: &RunRequest<'_>, merged: &Path, netns: &Path) -> serde_json::Value {
    let mut spec = serde_json::to_value(tug_runtime::spec::default_spec()).expect("spec");
    spec["root"] = serde_json::json!({"path": merged, "readonly": false});
    spec["hostname"] = serde_json::json!("tug-build");
    let caps = serde_json::json!(CAPABILITIES);
    let p = &mut spec["process"];
    p["args"] = serde_json::json!(req.args);
    p["env"] = serde_json::json!(req.env);
    p["cwd"] = serde_json::json!(req.cwd);
    p["user"] = serde_json::json!({"uid": req.uid, "gid": req.gid});
    p["terminal"] = serde_json::json!(false);
    p["capabilities"] = serde_json::json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "network", "path": netns}));
    }
    spec
}

/// Run the step's command; the exit code (128+n when killed by signal n). The changes are
/// in `scratch/upper` afterwards.
pub fn run(req: &RunRequest<'_>) -> Result<i32, BuildError> {
    let s = req.scratch;
    let (upper, work, merged, bundle, state) = (
        s.join("upper"),
        s.join("work"),
        s.join("merged"),
        s.join("bundle"),
        s.join("state"),
    );
    for d in [&upper, &work, &merged, &bundle, &state] {
        fs::create_dir_all(d).at(d)?;
    }
    // Ctrl-C reaches tug too (same process group); the builder must outlive the step to
    // clean up, so from here on it only notes the signal, and stops the step itself.
    let signals = DeferSignals::install()?;
    let overlay = Overlay::mount(req.lower, &upper, &work, &merged, &s.join("empty"))?;
    let netns = FreshNetns::new().map_err(BuildError::Other)?;
    let cfg = config(req, &merged, &netns.path);
    let cfg_path = bundle.join("config.json");
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).expect("json")).at(&cfg_path)?;
    // The command's output goes to our stderr: stdout stays for the result.
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| BuildError::io("stderr", e))?;
    if signals.pending() {
        return Err(BuildError::Interrupted);
    }
    let child = Command::new(req.tug)
        .arg("--root")
        .arg(&state)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&req.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .spawn()
        .map_err(|e| BuildError::io(req.tug, e));
    let status = child.and_then(|c| wait_or_stop(c, &signals, req, &state));
    // Whatever happened, the container is gone before the overlay goes.
    let _ = Command::new(req.tug)
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &req.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    drop(netns);
    drop(overlay);
    drop(signals);
    let (status, interrupted) = status?;
    if interrupted {
        return Err(BuildError::Interrupted);
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 255,
    })
}

/// Wait for `tug run`; on SIGINT/SIGTERM/SIGHUP meanwhile, kill the step's container (its
/// command may ignore the signal: it is pid 1 of its namespace) and keep waiting. Both are
/// events (the signal pipe, the process's pidfd): no polling.
fn wait_or_stop(
    mut child: std::process::Child,
    signals: &DeferSignals,
    req: &RunRequest<'_>,
    state: &Path,
) -> Result<(std::process::ExitStatus, bool), BuildError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if raw < 0 {
        // No pidfd (Linux < 5.3): a plain wait; a signal then only reaches tug.
        return child
            .wait()
            .map(|s| (s, false))
            .map_err(|e| BuildError::io(req.tug, e));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut interrupted = false;
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.pipe.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(BuildError::io("poll", e.into())),
        }
        let exited = fds[0].revents().is_some_and(|r| !r.is_empty());
        let signalled = fds[1].revents().is_some_and(|r| !r.is_empty());
        if signalled {
            let mut buf = [0u8; 64];
            let _ = nix::unistd::read(&signals.pipe, &mut buf);
            if !interrupted {
                interrupted = true;
                eprintln!("interrupted: stopping the RUN step");
                // The container's processes, then `tug run` itself (it may still be
                // creating the container); `tug delete --force` afterwards removes
                // whatever is left of it.
                let _ = Command::new(req.tug)
                    .arg("--root")
                    .arg(state)
                    .args(["kill", "--all", &req.id, "KILL"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
            }
        }
        if exited {
            let status = child.wait().map_err(|e| BuildError::io(req.tug, e))?;
            // The same Ctrl-C may have ended tug before this loop saw the pipe.
            return Ok((status, interrupted || signals.pending()));
        }
    }
}

/// While alive, SIGINT, SIGTERM and SIGHUP are caught by a handler that writes a byte to
/// `pipe` (the child, whose handlers exec resets, still gets the default action); the old
/// actions come back when dropped.
struct DeferSignals {
    /// The read end of the signal pipe (non-blocking).
    pipe: std::os::fd::OwnedFd,
    /// The write end: open while the handler may write to it.
    _write: std::os::fd::OwnedFd,
    old: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigAction)>,
}

/// The write end of the current signal pipe, for the handler (-1: none).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn note_signal(_: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

impl DeferSignals {
    fn install() -> Result<DeferSignals, BuildError> {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        use std::os::fd::AsRawFd;
        let (pipe, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| BuildError::io("pipe", e.into()))?;
        SIGNAL_PIPE.store(write.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(note_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut old = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only calls write(2), which is async-signal-safe.
            if let Ok(prev) = unsafe { sigaction(sig, &action) } {
                old.push((sig, prev));
            }
        }
        Ok(DeferSignals {
            pipe,
            _write: write,
            old,
        })
    }
}

impl DeferSignals {
    /// Whether a signal came (the pipe has a byte), consuming it.
    fn pending(&self) -> bool {
        let mut buf = [0u8; 64];
        matches!(nix::unistd::read(&self.pipe, &mut buf), Ok(n) if n > 0)
    }
}

impl Drop for DeferSignals {
    fn drop(&mut self) {
        for (sig, prev) in self.old.drain(..) {
            // SAFETY: restores the action that was there before.
            let _ = unsafe { nix::sys::signal::sigaction(sig, &prev) };
        }
        SIGNAL_PIPE.store(-1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `tug` binary: `TUG_RUNTIME`, then `tug` next to this program, then on PATH.
pub fn find_tug() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TUG_RUNTIME") {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for cand in [dir.join("tug"), dir.join("../tug")] {
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tug"))
            .find(|p| p.is_file())
    })
}
