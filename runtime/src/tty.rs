//! `tug run` of a container with `process.terminal: true` and no `--console-socket`: tug
//! receives the pty master itself and relays it to its own stdin and stdout, with the local
//! terminal in raw mode and its size passed on, as `runc run` does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Receives the pty master that init sent over `sock` (SCM_RIGHTS).
pub fn receive_master(sock: &OwnedFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 64];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this fd; we own it from here.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other("no terminal fd in the console message"))
}

/// The local terminal (stdin) in raw mode; its mode is restored when dropped. Nothing
/// happens when stdin is not a terminal.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

fn copy_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a winsize we own; failure (not a tty) is harmless.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Relays stdin to `master` and `master` to stdout until `pid` exits; forwards the signals in
/// `forwarded` (blocked by the caller) to it and terminal size changes to the pty. Returns
/// the exit code (128+n when killed by signal n).
pub fn relay(master: OwnedFd, pid: Pid, forwarded: &SigSet) -> io::Result<i32> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let _raw = RawMode::enter();
    copy_size(stdin.as_fd(), master.as_fd());
    let sfd = SignalFd::with_flags(forwarded, SfdFlags::SFD_CLOEXEC).map_err(io::Error::from)?;
    let mut stdin_open = true;
    let mut master_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if master_open {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .collect();
        drop(fds);
        let mut i = 1;
        if master_open {
            if ready[i] {
                match nix::unistd::read(&master, &mut buf) {
                    Ok(0) | Err(nix::Error::EIO) => master_open = false,
                    Ok(n) => write_all(stdout.as_fd(), &buf[..n])?,
                    Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            i += 1;
        }
        if stdin_open && ready[i] {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) => {
                    if write_all(master.as_fd(), &buf[..n]).is_err() {
                        stdin_open = false;
                    }
                }
                Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                Err(_) => stdin_open = false,
            }
        }
        if ready[0] {
            let Some(info) = sfd.read_signal().map_err(io::Error::from)? else {
                continue;
            };
            let sig = Signal::try_from(info.ssi_signo as i32).map_err(io::Error::from)?;
            match sig {
                Signal::SIGCHLD => match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, c)) => return drain(&master, c),
                    Ok(WaitStatus::Signaled(_, s, _)) => return drain(&master, 128 + s as i32),
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                },
                Signal::SIGWINCH => copy_size(stdin.as_fd(), master.as_fd()),
                other => {
                    let _ = kill(pid, other);
                }
            }
        }
    }
}

/// Writes what the pty still holds after the process exited.
fn drain(master: &OwnedFd, code: i32) -> io::Result<i32> {
    let stdout = io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {}
            _ => return Ok(code),
        }
        match nix::unistd::read(master, &mut buf) {
            Ok(n) if n > 0 => write_all(stdout.as_fd(), &buf[..n])?,
            _ => return Ok(code),
        }
    }
}
