//! Container logs kept in memory (`tugboat agent --log-mode ring`): on a device whose flash
//! wears out, a container that prints a line a second (a web server logging each readiness
//! probe) should not cost a disk write a second.
//!
//! The monitor keeps the container's output in a [`LogRing`] of at most `--log-max-bytes`
//! and serves it on a unix socket in the instance directory (`log.sock`), one request per
//! connection, one line each:
//!
//! - `logs TAIL FOLLOW\n` (`TAIL` a number of lines or `all`, `FOLLOW` 0 or 1): the last
//!   lines, then (following) what the container prints next, until it ends;
//! - `persist\n`: from now on the output also goes to `container.log` (the ring first),
//!   answered with `ok\n`.
//!
//! When the container ends, the monitor writes the ring to `container.log` once (the output
//! of a container that crashed is what one reads logs for), and the next monitor of the
//! instance starts its ring from that file, so `tugboat logs` shows the earlier runs as it
//! does in file mode. While the container runs and nobody asks, nothing is written.
//!
//! The agent's side of the socket (async, tokio) is in tugboat-agent's `logring`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::supervise::LogWriter;

/// The monitor's socket in the instance directory.
pub const SOCKET_FILE: &str = "log.sock";

/// Where a container's output goes: a size-capped file (rotated once), or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogMode {
    /// `container.log`, rotated to `container.log.1` past the cap (the default).
    #[default]
    File,
    /// A bounded ring in the monitor's memory; written to disk on request and at exit.
    Ring,
}

impl std::str::FromStr for LogMode {
    type Err = String;
    fn from_str(s: &str) -> Result<LogMode, String> {
        match s {
            "file" => Ok(LogMode::File),
            "ring" => Ok(LogMode::Ring),
            other => Err(format!("log mode must be `file` or `ring`, not `{other}`")),
        }
    }
}

impl std::fmt::Display for LogMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogMode::File => "file",
            LogMode::Ring => "ring",
        })
    }
}

/// The last `cap` bytes written, cut at a line start when it can be. Offsets count every
/// byte ever written, so a reader that fell behind knows what it missed.
#[derive(Debug)]
pub struct LogRing {
    buf: VecDeque<u8>,
    cap: usize,
    /// Offset just past the last byte written.
    end: u64,
}

impl LogRing {
    pub fn new(cap: usize) -> LogRing {
        LogRing {
            buf: VecDeque::new(),
            cap: cap.max(1),
            end: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.end += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(self.cap)..];
        self.buf.extend(bytes);
        let over = self.buf.len().saturating_sub(self.cap);
        if over > 0 {
            let cut_mid_line = self.buf[over - 1] != b'\n';
            self.buf.drain(..over);
            // A line whose start was dropped is dropped whole (when another line follows).
            if cut_mid_line {
                if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                    if nl + 1 < self.buf.len() {
                        self.buf.drain(..=nl);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.end - self.buf.len() as u64
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// What is kept from `from` on (from the oldest byte kept when `from` was dropped).
    pub fn read_from(&self, from: u64) -> Vec<u8> {
        let skip = from.saturating_sub(self.start()).min(self.buf.len() as u64) as usize;
        self.buf.range(skip..).copied().collect()
    }
}

/// The ring as the monitor's threads share it.
pub struct SharedRing {
    inner: Mutex<RingState>,
    grew: Condvar,
}

struct RingState {
    ring: LogRing,
    /// The container's output is closed: followers end.
    closed: bool,
    /// Set by `persist`: the output goes to the file too.
    file: Option<LogWriter>,
}

impl SharedRing {
    /// A ring of `cap` bytes, started from `seed` (the earlier runs' saved output).
    pub fn new(cap: usize, seed: &[u8]) -> Arc<SharedRing> {
        let mut ring = LogRing::new(cap);
        ring.push(seed);
        Arc::new(SharedRing {
            inner: Mutex::new(RingState {
                ring,
                closed: false,
                file: None,
            }),
            grew: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RingState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self, bytes: &[u8]) {
        let mut s = self.lock();
        s.ring.push(bytes);
        if let Some(f) = s.file.as_mut() {
            f.write(bytes);
        }
        drop(s);
        self.grew.notify_all();
    }

    /// The output ended: followers get what is left and then the end.
    pub fn close(&self) {
        self.lock().closed = true;
        self.grew.notify_all();
    }

    /// Whether `persist` was asked (the file is then current already).
    pub fn persisted(&self) -> bool {
        self.lock().file.is_some()
    }

    /// Writes what the ring holds to `path` (temp file and rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let bytes = {
            let s = self.lock();
            s.ring.read_from(0)
        };
        let tmp = path.with_extension("log.tmp");
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, path)
    }

    /// From now on, the output goes to `path` too (after what the ring holds).
    pub fn persist(&self, path: &Path, max: u64) -> io::Result<()> {
        let mut s = self.lock();
        if s.file.is_some() {
            return Ok(());
        }
        let bytes = s.ring.read_from(0);
        let tmp = path.with_extension("log.tmp");
        fs::write(&tmp, &bytes)?;
        fs::rename(&tmp, path)?;
        s.file = Some(LogWriter::open(path.to_path_buf(), max));
        Ok(())
    }

    /// Answers one connection (see the module's doc).
    fn answer(&self, stream: UnixStream, log_path: &Path, max: u64) -> io::Result<()> {
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let mut out = &stream;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["persist"] => match self.persist(log_path, max) {
                Ok(()) => out.write_all(b"ok\n"),
                Err(e) => out.write_all(format!("error {e}\n").as_bytes()),
            },
            ["logs", lines, follow] => {
                let count = match *lines {
                    "all" => None,
                    n => Some(n.parse::<usize>().map_err(io::Error::other)?),
                };
                let mut s = self.lock();
                let all = s.ring.read_from(0);
                let mut pos = s.ring.end();
                drop(s);
                out.write_all(tail(&all, count))?;
                if *follow != "1" {
                    return Ok(());
                }
                loop {
                    s = self.lock();
                    while s.ring.end() == pos && !s.closed {
                        s = self.grew.wait(s).unwrap_or_else(|p| p.into_inner());
                    }
                    let chunk = s.ring.read_from(pos);
                    pos = s.ring.end();
                    let closed = s.closed;
                    drop(s);
                    if !chunk.is_empty() {
                        out.write_all(&chunk)?;
                    }
                    if closed {
                        return Ok(());
                    }
                }
            }
            _ => out.write_all(b"error unknown request\n"),
        }
    }
}

/// The socket's path, short enough for `sockaddr_un` (108 bytes): a long instance directory
/// is reached through an fd of it (`/proc/self/fd/N/log.sock`); keep the fd while the path
/// is used.
pub fn socket_path(dir: &Path) -> io::Result<(PathBuf, Option<fs::File>)> {
    let path = dir.join(SOCKET_FILE);
    if path.as_os_str().len() < 100 {
        return Ok((path, None));
    }
    let handle = fs::File::open(dir)?;
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}/{SOCKET_FILE}",
        std::os::fd::AsRawFd::as_raw_fd(&handle)
    ));
    Ok((short, Some(handle)))
}

/// Serves `ring` on `dir/log.sock` from a thread per connection, for as long as the process
/// lives.
pub fn serve(ring: Arc<SharedRing>, dir: &Path, log_max_bytes: u64) -> io::Result<()> {
    let _ = fs::remove_file(dir.join(SOCKET_FILE));
    let (path, _handle) = socket_path(dir)?;
    let listener = UnixListener::bind(&path)?;
    let log_path = dir.join(crate::LOG_FILE);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (ring, log_path) = (ring.clone(), log_path.clone());
            std::thread::spawn(move || {
                let _ = ring.answer(stream, &log_path, log_max_bytes);
            });
        }
    });
    Ok(())
}

/// The last `lines` lines of `text` (all when `None`).
pub fn tail(text: &[u8], lines: Option<usize>) -> &[u8] {
    let Some(n) = lines else { return text };
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 {
        &text[text.len()..]
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_at_most_its_cap_and_whole_lines() {
        let mut ring = LogRing::new(64);
        for i in 0..1000 {
            ring.push(format!("GET /healthz {i}\n").as_bytes());
            assert!(ring.len() <= 64, "{} bytes kept", ring.len());
        }
        let kept = String::from_utf8(ring.read_from(0)).unwrap();
        assert!(kept.ends_with("GET /healthz 999\n"), "{kept}");
        assert!(kept.starts_with("GET /healthz "), "cut mid-line: {kept:?}");
        // A write larger than the ring keeps its end.
        ring.push(&[b'x'; 200]);
        assert_eq!(ring.len(), 64);
        assert_eq!(ring.read_from(0), vec![b'x'; 64]);
        // Offsets: a reader that fell behind gets what is kept; one that is current, nothing.
        assert_eq!(ring.read_from(0).len(), 64);
        assert!(ring.read_from(ring.end()).is_empty());
        assert_eq!(ring.end() - ring.start(), 64);
    }

    #[test]
    fn log_modes_read_as_they_print() {
        assert_eq!("ring".parse::<LogMode>(), Ok(LogMode::Ring));
        assert_eq!("file".parse::<LogMode>(), Ok(LogMode::File));
        assert!("disk".parse::<LogMode>().is_err());
        assert_eq!(LogMode::Ring.to_string(), "ring");
    }

    fn ask(dir: &Path, line: &str) -> UnixStream {
        let mut stream = UnixStream::connect(dir.join(SOCKET_FILE)).unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        stream
    }

    #[test]
    fn the_socket_serves_the_tail_follows_and_persists_on_request() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let ring = SharedRing::new(1024, b"old\n");
        ring.write(b"one\ntwo\n");
        serve(ring.clone(), dir.path(), 1 << 20).unwrap();
        let mut tail = String::new();
        ask(dir.path(), "logs 2 0\n")
            .read_to_string(&mut tail)
            .unwrap();
        assert_eq!(tail, "one\ntwo\n");
        let log = dir.path().join(crate::LOG_FILE);
        assert!(!log.exists(), "nothing on disk while nobody asks");
        let mut follow = ask(dir.path(), "logs 1 1\n");
        ring.write(b"three\n");
        let mut got = vec![];
        while !got.ends_with(b"three\n") {
            let mut chunk = [0u8; 64];
            let n = follow.read(&mut chunk).unwrap();
            assert!(n > 0, "ended early: {got:?}");
            got.extend(&chunk[..n]);
        }
        assert!(got == b"three\n" || got == b"two\nthree\n", "{got:?}");
        let mut answer = String::new();
        ask(dir.path(), "persist\n")
            .read_to_string(&mut answer)
            .unwrap();
        assert_eq!(answer, "ok\n");
        ring.write(b"four\n");
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            "old\none\ntwo\nthree\nfour\n"
        );
        let mut unknown = String::new();
        ask(dir.path(), "shout\n")
            .read_to_string(&mut unknown)
            .unwrap();
        assert_eq!(unknown, "error unknown request\n");
        ring.close();
        let mut rest = String::new();
        follow.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "four\n", "the end of the output ends a follower");
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(2)), b"b\nc");
        assert_eq!(tail(b"a\nb\n", Some(5)), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", None), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", Some(0)), b"");
    }
}
