//! Running a command in an instance, for `tugboat exec` and exec probes.
//!
//! The agent is multi-threaded and a mount namespace cannot be joined by a threaded process,
//! so a helper (`tugboat nsexec`, started fresh, single-threaded) calls the runtime's exec:
//! the command joins the container's namespaces and cgroup and runs as the container's own
//! process would (user, environment, working directory, capabilities, no_new_privs, seccomp
//! filter). The helper's exit code is the command's, 126 when it could not be run.
//!
//! Two ways to use it: [`exec_in`] collects the output (JSON answer, probes), [`stream`]
//! relays a live session over an upgraded connection ([`tugboat_api::execstream`]), with a pty
//! whose master the runtime sends to the agent over a socket the helper inherits.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tugboat_api::execstream::ExecResult;
use tugboat_api::execstream::{read_frame, write_frame, ExecRequest, Frame};

/// The exit code of a command that could not be run (as runc and docker use it).
pub const CANNOT_RUN: i32 = 126;

/// The fd number the helper finds the console socket at.
const CONSOLE_FD: RawFd = 3;

/// What the helper is told.
#[derive(Debug, Clone)]
pub struct HelperArgs {
    pub runtime_root: PathBuf,
    pub id: String,
    pub tty: bool,
    /// An inherited socket to send the pty's master to.
    pub console_fd: Option<RawFd>,
    pub command: Vec<String>,
    /// Another OCI runtime's executable and state root: its `exec` runs the command.
    pub oci: Option<(PathBuf, PathBuf)>,
}

/// The helper's body (`tugboat nsexec`). Called before any async runtime exists.
pub fn run(args: &HelperArgs) -> i32 {
    use tug_runtime::exec::{ExecFlags, ExecOptions, ExecProcess};
    if let Some((exe, root)) = &args.oci {
        if args.tty {
            eprintln!(
                "tugboat exec: a terminal (-t) with runtime {} is not supported yet; run without -t",
                exe.display()
            );
            return CANNOT_RUN;
        }
        use std::os::unix::process::CommandExt;
        let e = super::oci::Oci::exec_command(exe, root, &args.id, &args.command).exec();
        eprintln!("tugboat exec: {}: {e}", exe.display());
        return CANNOT_RUN;
    }
    let console_fd = match args.console_fd {
        Some(fd) => {
            // SAFETY: F_GETFD only asks whether the fd is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                eprintln!("tugboat nsexec: --console-fd {fd} is not an open fd");
                return CANNOT_RUN;
            }
            // SAFETY: the fd is open and was handed to this process to own.
            Some(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        None => None,
    };
    let opts = ExecOptions {
        process: ExecProcess::Flags(ExecFlags {
            args: args.command.clone(),
            tty: args.tty,
            ..Default::default()
        }),
        console_fd,
        ..Default::default()
    };
    match tug_runtime::Runtime::new(&args.runtime_root).exec(&args.id, &opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tugboat exec: {e}");
            CANNOT_RUN
        }
    }
}

/// Where an instance runs, for the helper.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    /// The `tugboat` binary.
    pub exe: PathBuf,
    /// The runtime's state root the instance's monitor created it under.
    pub runtime_root: PathBuf,
    /// The instance's directory (its monitor record).
    pub dir: PathBuf,
    pub id: String,
}

/// How long an exec waits for a container its monitor is still creating.
pub const STARTING_WAIT: Duration = Duration::from_secs(10);

impl ExecTarget {
    /// The runtime the instance runs under, from its record (tug when unknown).
    fn oci(&self) -> super::oci::Oci {
        let runtime = super::monitor::read_json::<tugboat_api::model::Instance>(
            &self.dir.join("instance.json"),
        )
        .and_then(|i| i.spec.runtime);
        super::oci::Oci::for_name(runtime.as_deref(), &self.runtime_root, "this node")
            .unwrap_or_else(|_| super::oci::Oci::Tug {
                root: self.runtime_root.clone(),
            })
    }

    /// Refuses an instance whose container is not up: no monitor, or a monitor gone
    /// without a container. A container its monitor is still creating is waited for (up to
    /// [`STARTING_WAIT`]): the agent reports an instance running once its monitor is
    /// spawned, so `exec` right after `get instances` says running may come first.
    pub async fn wait_running(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + STARTING_WAIT;
        loop {
            let record: super::monitor::MonitorRecord =
                super::monitor::read_json(&self.dir.join(super::monitor::MONITOR_FILE))
                    .ok_or_else(|| format!("instance {} is not running", self.id))?;
            if record.container_pid.is_some() {
                return Ok(());
            }
            if !super::monitor::monitor_alive(&record) {
                return Err(format!("instance {} is not running", self.id));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "instance {} is still starting after {} s",
                    self.id,
                    STARTING_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn helper(&self, tty: bool, command: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("nsexec")
            .arg("--runtime-root")
            .arg(&self.runtime_root)
            .arg("--id")
            .arg(&self.id);
        if tty {
            cmd.arg("--tty")
                .arg("--console-fd")
                .arg(CONSOLE_FD.to_string());
        }
        if let super::oci::Oci::External { exe, root } = self.oci() {
            cmd.arg("--oci-runtime")
                .arg(exe)
                .arg("--oci-root")
                .arg(root);
        }
        cmd.arg("--").args(command).kill_on_drop(true);
        cmd
    }
}

/// Asks the helper to end the command (it forwards SIGTERM), then kills it after `grace`.
async fn end_helper(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Runs `command` in the instance and collects its output, within `limit`.
pub async fn exec_in(
    target: &ExecTarget,
    command: &[String],
    limit: Duration,
) -> Result<ExecResult, String> {
    target.wait_running().await?;
    let mut child = target
        .helper(false, command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the exec helper {}: {e}", target.exe.display()))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let (mut o, mut e) = (vec![], vec![]);
        let read_out = async {
            if let Some(s) = &mut out {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let read_err = async {
            if let Some(s) = &mut err {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (o, e, status)
    };
    let outcome = tokio::time::timeout(limit, collect).await;
    let Ok((stdout, stderr, status)) = outcome else {
        end_helper(&mut child, Duration::from_secs(1)).await;
        return Err(format!("no exit within {}s", limit.as_secs()));
    };
    let status = status.map_err(|e| format!("wait for the exec helper: {e}"))?;
    Ok(ExecResult {
        exit_code: status.code().unwrap_or(128),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// The pty master, non-blocking, for async reads and writes.
struct Master(AsyncFd<OwnedFd>);

impl Master {
    fn new(fd: OwnedFd) -> std::io::Result<Master> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: an OwnedFd's raw fd stays the same open file until the AsyncFd drops it.
        Ok(Master(unsafe { AsyncFd::register(fd) }?))
    }

    /// Reads what the command wrote; 0 once the terminal is closed (EIO on a pty).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(Into::into)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(Into::into)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a winsize we own, on the pty master we own.
        unsafe {
            libc::ioctl(self.0.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Where the client's input goes.
enum Input {
    Pipe(Option<tokio::process::ChildStdin>),
    Terminal(Arc<Master>),
    Nowhere,
}

/// Copies a pipe of the helper into frames until it ends.
async fn pump<R: AsyncRead + Unpin>(
    mut from: R,
    make: fn(Vec<u8>) -> Frame,
    out: mpsc::Sender<Frame>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || out.send(make(buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
}

/// Runs `request.command` in the instance (checked running by the caller, before it
/// answered 101) and relays it over `io` until it exits; the last frame sent is its exit
/// code. A client that goes away ends the command (SIGTERM, then
/// SIGKILL after 5 s; with a terminal, the pty's hangup too).
pub async fn stream<S>(target: ExecTarget, request: ExecRequest, io: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
    let sender = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let last = matches!(frame, Frame::Exit(_) | Frame::Error(_));
            if write_frame(&mut writer, &frame).await.is_err() || last {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let fail = |text: String| {
        let out = out_tx.clone();
        async move {
            let _ = out.send(Frame::Error(text)).await;
        }
    };
    let mut cmd = target.helper(request.tty, &request.command);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut console = None;
    if request.tty {
        cmd.stdin(Stdio::null());
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => return fail(format!("console socket: {e}")).await,
        };
        let theirs = OwnedFd::from(theirs);
        let raw = theirs.as_raw_fd();
        // SAFETY: between fork and exec only dup2/fcntl, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if raw == CONSOLE_FD {
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, CONSOLE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        console = Some((OwnedFd::from(ours), theirs));
    } else if request.stdin {
        cmd.stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            fail(format!(
                "cannot run the exec helper {}: {e}",
                target.exe.display()
            ))
            .await;
            drop(out_tx);
            let _ = sender.await;
            return;
        }
    };
    let mut pumps = vec![];
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, Frame::Stderr, out_tx.clone())));
    }
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, Frame::Stdout, out_tx.clone())));
    }
    let input = match console {
        Some((ours, theirs)) => {
            drop(theirs);
            let received =
                tokio::task::spawn_blocking(move || tug_runtime::tty::receive_master(&ours)).await;
            match received {
                Ok(Ok(fd)) => match Master::new(fd) {
                    Ok(master) => {
                        let master = Arc::new(master);
                        if let (Some(rows), Some(cols)) = (request.rows, request.cols) {
                            master.resize(rows, cols);
                        }
                        let (m, out) = (master.clone(), out_tx.clone());
                        pumps.push(tokio::spawn(async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while let Ok(n) = m.read(&mut buf).await {
                                if n == 0
                                    || out.send(Frame::Stdout(buf[..n].to_vec())).await.is_err()
                                {
                                    break;
                                }
                            }
                        }));
                        Input::Terminal(master)
                    }
                    Err(_) => Input::Nowhere,
                },
                // The helper failed before the terminal existed: its stderr says why.
                _ => Input::Nowhere,
            }
        }
        None => Input::Pipe(child.stdin.take()),
    };

    // The client's frames: input, end of input, terminal size. `None` when it went away.
    let mut input = input;
    let client = async {
        loop {
            match read_frame(&mut reader).await {
                Ok(Some(Frame::Stdin(data))) => {
                    // A command that closed its stdin gets no more of it.
                    let closed = match &mut input {
                        Input::Pipe(Some(pipe)) => pipe.write_all(&data).await.is_err(),
                        Input::Terminal(m) => m.write_all(&data).await.is_err(),
                        _ => false,
                    };
                    if closed {
                        input = Input::Pipe(None);
                    }
                }
                Ok(Some(Frame::StdinEof)) => match &input {
                    Input::Pipe(_) => input = Input::Pipe(None),
                    // A terminal's end of input is its EOF character (^D).
                    Input::Terminal(m) => {
                        let _ = m.write_all(&[4]).await;
                    }
                    Input::Nowhere => {}
                },
                Ok(Some(Frame::Resize { rows, cols })) => {
                    if let Input::Terminal(m) = &input {
                        m.resize(rows, cols);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    let code = tokio::select! {
        status = child.wait() => status.ok().and_then(|s| s.code()).unwrap_or(128),
        _ = client => {
            // The client went away: end the command.
            end_helper(&mut child, Duration::from_secs(5)).await;
            return;
        }
    };
    drop(input);
    // What the command wrote before it exited, then the exit code. Something it left
    // running in the background may keep a pipe open: wait for that at most a moment.
    let drained = async {
        for p in &mut pumps {
            let _ = p.await;
        }
    };
    if tokio::time::timeout(Duration::from_millis(500), drained)
        .await
        .is_err()
    {
        for p in &pumps {
            p.abort();
        }
    }
    let _ = out_tx.send(Frame::Exit(code)).await;
    drop(out_tx);
    let _ = sender.await;
}

/// The instance directory and runtime root of `id` under an agent's data dir.
pub fn target_under(exe: &Path, data_dir: &Path, id: &str) -> ExecTarget {
    ExecTarget {
        exe: exe.into(),
        runtime_root: data_dir.join("runtime"),
        dir: data_dir.join("instances").join(id),
        id: id.into(),
    }
}
