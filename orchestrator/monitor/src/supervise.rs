//! The monitor's work: detach, create and start the container, copy its output, reap it,
//! delete it and write how it ended.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::external;
use crate::logfmt::{self, Stream};
use crate::logring::LogMode;
use crate::records::{now_ms, take_lock, write_json, ExitRecord, MonitorRecord};
use crate::records::{EXIT_FILE, LOCK_FILE, LOG_FILE, MONITOR_FILE};
use crate::MonitorArgs;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn dup_onto(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 onto a standard fd of this process.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The monitor's body: `tugboat-monitor ...` (or `tugboat monitor ...`). Never returns to the caller in the detached
/// child; the first process returns 0 at once.
pub fn run(args: &MonitorArgs) -> i32 {
    // Taken before the fork, so it is held by the time the agent's `spawn` returns; the
    // detached child inherits it. Another live monitor of this instance: nothing to do.
    let lock = match take_lock(&args.dir.join(LOCK_FILE)) {
        Ok(Some(lock)) => lock,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("tugboat-monitor: {e}");
            return 1;
        }
    };
    // First fork: the agent waits only for this process.
    // SAFETY: the process is single-threaded here (no async runtime yet).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("tugboat-monitor: fork: {e}");
            return 1;
        }
    }
    let _lock = lock;
    let _ = nix::unistd::setsid();
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let code = match supervise(args) {
        Ok(exit) => {
            let _ = write_json(&args.dir.join(EXIT_FILE), &exit);
            0
        }
        Err(e) => {
            let exit = ExitRecord {
                code: None,
                signal: None,
                error: Some(e),
                finished_at_ms: now_ms(),
                oom_kills: 0,
            };
            let _ = write_json(&args.dir.join(EXIT_FILE), &exit);
            1
        }
    };
    std::process::exit(code);
}

fn supervise(args: &MonitorArgs) -> Result<ExitRecord, String> {
    let pid = std::process::id() as i32;
    let mut record = MonitorRecord {
        pid,
        start_time: tug_runtime::state::process_start_time(pid).unwrap_or(0),
        container_pid: None,
    };
    let record_path = args.dir.join(MONITOR_FILE);
    write_json(&record_path, &record).map_err(|e| format!("{}: {e}", record_path.display()))?;
    // Before anything of this run is logged: `logs --previous` shows the log between the
    // starts of the last two runs.
    if let Err(e) = logfmt::record_run(&args.dir, &logfmt::now()) {
        eprintln!(
            "tugboat-monitor: {}: {e}",
            args.dir.join(logfmt::RUNS_FILE).display()
        );
    }

    if let Some((exe, root)) = &args.oci {
        return supervise_external(args, exe, root, record);
    }
    let runtime = tug_runtime::Runtime::new(&args.runtime_root);
    // A container left by a monitor that died (kill -9, reboot) is removed first.
    if runtime.load(&args.id).is_ok() {
        let _ = runtime.delete(&args.id, true);
    }
    let opts = tug_runtime::CreateOptions {
        bundle: args.bundle.clone(),
        ..Default::default()
    };
    let (created, out_r, err_r) = with_output_pipes(|| runtime.create(&args.id, &opts))?;
    let state = created.map_err(|e| e.to_string())?;
    let container_pid = state.pid.unwrap_or(0);
    if let Err(e) = runtime.start(&args.id) {
        let _ = runtime.delete(&args.id, true);
        return Err(e.to_string());
    }
    record.container_pid = Some(container_pid);
    let _ = write_json(&record_path, &record);

    let (copier, ring) = start_copier(args, out_r, err_r);
    let _ = crate::trim::release_startup_memory();

    let (code, signal) = wait_for(container_pid);
    // Before delete removes the cgroup, and with it the count.
    let oom_kills = crate::oom_kills(Path::new("/sys/fs/cgroup"), &args.id).unwrap_or_default();
    let _ = copier.join();
    finish_ring(args, ring);
    if let Err(e) = runtime.delete(&args.id, true) {
        eprintln!("tugboat-monitor: delete {}: {e}", args.id);
    }
    Ok(ExitRecord {
        code: Some(code),
        signal,
        error: None,
        finished_at_ms: now_ms(),
        oom_kills,
    })
}

/// Runs `create` with this process's stdout and stderr on new pipes (the container inherits
/// them; stdin is /dev/null), then points them back at /dev/null; returns what `create`
/// returned and the pipes' read ends.
fn with_output_pipes<T>(create: impl FnOnce() -> T) -> Result<(T, OwnedFd, OwnedFd), String> {
    let (out_r, out_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    let redirect = |a: RawFd, b: RawFd, c: RawFd| -> Result<(), String> {
        dup_onto(a, 0)
            .and_then(|_| dup_onto(b, 1))
            .and_then(|_| dup_onto(c, 2))
            .map_err(|e| format!("dup2: {e}"))
    };
    redirect(null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd())?;
    let created = create();
    redirect(null.as_raw_fd(), null.as_raw_fd(), null.as_raw_fd())?;
    drop((out_w, err_w));
    Ok((created, out_r, err_r))
}

/// Starts copying the container's output to its log: the file, or (ring mode) a bounded
/// ring in memory served on the instance's log socket.
fn start_copier(
    args: &MonitorArgs,
    out_r: OwnedFd,
    err_r: OwnedFd,
) -> (
    std::thread::JoinHandle<()>,
    Option<std::sync::Arc<crate::logring::SharedRing>>,
) {
    let log_path = args.dir.join(LOG_FILE);
    let ring = match args.log_mode {
        LogMode::File => None,
        LogMode::Ring => {
            // The earlier runs' output, saved when they ended, starts the ring.
            let seed = fs::read(&log_path).unwrap_or_default();
            let ring = crate::logring::SharedRing::new(args.log_max_bytes as usize, &seed);
            if let Err(e) = crate::logring::serve(ring.clone(), &args.dir, args.log_max_bytes) {
                eprintln!("tugboat-monitor: {}: log socket: {e}", args.id);
            }
            Some(ring)
        }
    };
    let copier = match ring.clone() {
        None => {
            let mut log = LogWriter::open(log_path, args.log_max_bytes);
            std::thread::spawn(move || copy_output(out_r, err_r, |b| log.write(b)))
        }
        Some(ring) => std::thread::spawn(move || copy_output(out_r, err_r, |b| ring.write(b))),
    };
    (copier, ring)
}

/// Ring mode, once the container ended: what a crashed container printed is what one reads
/// logs for, so the ring is written out (unless it was persisted all along).
fn finish_ring(args: &MonitorArgs, ring: Option<std::sync::Arc<crate::logring::SharedRing>>) {
    if let Some(ring) = ring {
        let log_path = args.dir.join(LOG_FILE);
        if !ring.persisted() {
            if let Err(e) = ring.save(&log_path) {
                eprintln!("tugboat-monitor: {}: {e}", log_path.display());
            }
        }
        ring.close();
        let _ = fs::remove_file(args.dir.join(crate::logring::SOCKET_FILE));
    }
}

/// [`supervise`] with another OCI runtime, through its command line: `create` with our
/// pipes as its stdio (runc's pass-through mode: the container inherits them), `start`, then
/// the container's init is reaped here (it is reparented to us, the subreaper, when the
/// runtime's process exits), and `delete --force`. Threads are fine here: no clone of
/// ours.
fn supervise_external(
    args: &MonitorArgs,
    exe: &Path,
    root: &Path,
    mut record: MonitorRecord,
) -> Result<ExitRecord, String> {
    let record_path = args.dir.join(MONITOR_FILE);
    let _ = external::delete(exe, root, &args.id);
    let (created, out_r, err_r) =
        with_output_pipes(|| external::create(exe, root, &args.id, &args.bundle))?;
    let (copier, ring) = start_copier(args, out_r, err_r);
    let container_pid = match created {
        Ok(pid) => pid,
        Err(e) => {
            // The runtime's own words went to the log: say the last of them.
            let _ = copier.join();
            finish_ring(args, ring);
            let said = fs::read(args.dir.join(LOG_FILE)).unwrap_or_default();
            let last = logfmt::last_line(&said);
            return Err(if last.is_empty() {
                e
            } else {
                format!("{e}: {last}")
            });
        }
    };
    if let Err(e) = external::start(exe, root, &args.id) {
        let _ = external::delete(exe, root, &args.id);
        return Err(e);
    }
    record.container_pid = Some(container_pid);
    let _ = write_json(&record_path, &record);
    let _ = crate::trim::release_startup_memory();
    let (code, signal) = wait_for(container_pid);
    let oom_kills = crate::oom_kills(Path::new("/sys/fs/cgroup"), &args.id).unwrap_or_default();
    if let Err(e) = external::delete(exe, root, &args.id) {
        eprintln!("tugboat-monitor: delete {}: {e}", args.id);
    }
    let _ = copier.join();
    finish_ring(args, ring);
    Ok(ExitRecord {
        code: Some(code),
        signal,
        error: None,
        finished_at_ms: now_ms(),
        oom_kills,
    })
}

/// Reaps children (we are a subreaper) until the container's init has exited.
fn wait_for(pid: i32) -> (i32, Option<i32>) {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return (c, None),
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                return (128 + s as i32, Some(s as i32))
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return (255, None),
        }
    }
}

/// A log file that is moved to `<name>.1` when it outgrows its cap.
pub struct LogWriter {
    path: PathBuf,
    max: u64,
    file: Option<fs::File>,
    size: u64,
}

impl LogWriter {
    pub fn open(path: PathBuf, max: u64) -> LogWriter {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        LogWriter {
            path,
            max: max.max(1024),
            file,
            size,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.size + bytes.len() as u64 > self.max {
            let rotated = self.path.with_extension("log.1");
            let _ = fs::rename(&self.path, rotated);
            self.file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
            self.size = 0;
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(bytes).is_ok() {
                self.size += bytes.len() as u64;
            }
        }
    }
}

/// Copies the container's stdout and stderr into the log, as records with the time each
/// read was made ([`logfmt`]), until both are closed.
fn copy_output(out: OwnedFd, err: OwnedFd, mut log: impl FnMut(&[u8])) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut open = [Some(out), Some(err)];
    let streams = [Stream::Stdout, Stream::Stderr];
    let mut buf = [0u8; 16384];
    let mut records = Vec::with_capacity(buf.len() + 64);
    while open.iter().any(Option::is_some) {
        let mut fds: Vec<PollFd> = open
            .iter()
            .flatten()
            .map(|fd| PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut k = 0;
        for (slot, stream) in open.iter_mut().zip(streams) {
            let Some(fd) = slot.as_ref() else { continue };
            let is_ready = ready[k];
            k += 1;
            if !is_ready {
                continue;
            }
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    records.clear();
                    logfmt::encode(stream, &logfmt::now(), &buf[..n], &mut records);
                    log(&records);
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => *slot = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_rotated_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = LogWriter::open(path.clone(), 1024);
        for _ in 0..3 {
            log.write(&[b'a'; 600]);
        }
        let current = fs::metadata(&path).unwrap().len();
        let rotated = fs::metadata(dir.path().join("container.log.1"))
            .unwrap()
            .len();
        assert_eq!(current, 600);
        assert_eq!(rotated, 600);
    }
}
