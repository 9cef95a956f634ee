//! An instance's log as a byte stream: the last lines of `container.log`, then (when
//! following) what the monitor appends, across rotations, until the instance is gone.
//! A monitor that keeps the output in memory ([`super::logring`]) is asked on its socket
//! instead, and a follower waits for the next monitor when one ends.
//! The log holds records (time, stream, line: `tugboat_monitor::logfmt`); what is sent is
//! their lines, with their times under `timestamps`. `previous` sends the run before the
//! latest one, found by the times in `runs.json`.
//! The agent serves it on its node API; the server forwards `GET /v1/instances/ID/logs`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::logring::tail;
use tugboat_api::wire::LogOptions;
use tugboat_monitor::logfmt::{LineView, Runs, Window, RUNS_FILE};

/// An instance's log as its reader sees it: lines, not records.
pub struct LogReader {
    raw: RawLog,
    view: LineView,
    ended: bool,
}

impl LogReader {
    /// The whole log (every run kept), its last `tail` lines, followed when `follow`.
    pub fn new(instance_dir: &Path, options: &LogOptions) -> LogReader {
        LogReader {
            raw: RawLog::new(
                instance_dir,
                options.tail.map(|n| n as usize),
                options.follow,
            ),
            view: LineView::new(Window::default(), options.timestamps),
            ended: false,
        }
    }

    /// The next lines; `None` at the end (not following, or the instance is gone).
    pub async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let mut out = vec![];
        while !self.ended {
            match self.raw.next_chunk().await {
                Some(records) => self.view.push(&records, &mut out),
                None => {
                    self.view.finish(&mut out);
                    self.ended = true;
                }
            }
            if !out.is_empty() {
                return Some(out);
            }
        }
        None
    }
}

/// The run before the latest one (`logs --previous`): its lines, the last `tail` of them.
/// An instance that has run once has none: the error says so.
pub async fn previous(
    instance_dir: &Path,
    id: &str,
    options: &LogOptions,
) -> Result<Vec<u8>, String> {
    let runs: Option<Runs> = tugboat_monitor::read_json(&instance_dir.join(RUNS_FILE));
    let Some(Runs {
        current,
        previous: Some(previous),
    }) = runs
    else {
        return Err(format!(
            "instance {id} has no previous run: its container has not been restarted"
        ));
    };
    let mut view = LineView::new(
        Window {
            from: Some(previous),
            until: Some(current),
        },
        options.timestamps,
    );
    let mut out = vec![];
    // A file log that grew past its cap was moved to `.1`: the older records are there.
    let log = instance_dir.join(super::monitor::LOG_FILE);
    if let Ok(older) = std::fs::read(log.with_extension("log.1")) {
        view.push(&older, &mut out);
        view.finish(&mut out);
    }
    let mut raw = RawLog::new(instance_dir, None, false);
    while let Some(records) = raw.next_chunk().await {
        view.push(&records, &mut out);
    }
    view.finish(&mut out);
    let lines = options.tail.map(|n| n as usize);
    Ok(tail(&out, lines).to_vec())
}

/// The log's records in `dir` from the start (after `tail`), then as they come when
/// `follow`.
struct RawLog {
    path: PathBuf,
    dir: PathBuf,
    pos: u64,
    tail: Option<usize>,
    started: bool,
    follow: bool,
    /// The monitor's socket, while one answers (ring mode).
    socket: Option<tokio::net::UnixStream>,
    /// A monitor kept the output in memory: follow the next one, not the file.
    ring: bool,
}

impl RawLog {
    fn new(instance_dir: &Path, tail: Option<usize>, follow: bool) -> RawLog {
        RawLog {
            path: instance_dir.join(super::monitor::LOG_FILE),
            dir: instance_dir.into(),
            pos: 0,
            tail,
            started: false,
            follow,
            socket: None,
            ring: false,
        }
    }

    /// From the monitor's ring: the next chunk, or `None` once it is done (not following)
    /// or no monitor serves one. `Err(())`: keep going with the next monitor or the file.
    async fn next_from_ring(&mut self) -> Result<Option<Vec<u8>>, ()> {
        use tokio::io::AsyncReadExt;
        if self.socket.is_none() {
            // The first connection takes the tail asked for; a later one (the next run of
            // the container) only what is new.
            let tail = match (self.started, self.tail) {
                (true, _) => "0".to_string(),
                (false, Some(n)) => n.to_string(),
                (false, None) => "all".to_string(),
            };
            let line = format!("logs {tail} {}\n", u8::from(self.follow));
            match super::logring::request(&self.dir, &line).await {
                Some(stream) => {
                    self.socket = Some(stream);
                    self.started = true;
                    self.ring = true;
                }
                None => return Err(()),
            }
        }
        let Some(stream) = self.socket.as_mut() else {
            return Err(());
        };
        let mut chunk = vec![0u8; 65536];
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => {
                chunk.truncate(n);
                Ok(Some(chunk))
            }
            _ => {
                self.socket = None;
                if self.follow {
                    Err(())
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The next chunk; `None` at the end (not following, or the instance is gone).
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.next_from_ring().await {
                Ok(chunk) => return chunk,
                Err(()) if self.ring => {
                    // Between two runs of the container: wait for its next monitor.
                    if !self.follow || !self.dir.exists() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(()) => {}
            }
            let mut file = std::fs::File::open(&self.path).ok();
            if !self.started {
                self.started = true;
                let mut all = vec![];
                if let Some(f) = file.as_mut() {
                    let _ = f.read_to_end(&mut all);
                }
                self.pos = all.len() as u64;
                let out = tail(&all, self.tail).to_vec();
                if !out.is_empty() {
                    return Some(out);
                }
                continue;
            }
            if let Some(f) = file.as_mut() {
                let len = f.metadata().map_or(0, |m| m.len());
                if len < self.pos {
                    // Rotated: the new file starts over.
                    self.pos = 0;
                }
                if len > self.pos {
                    let mut chunk = vec![];
                    if f.seek(SeekFrom::Start(self.pos)).is_ok()
                        && f.take(1 << 20).read_to_end(&mut chunk).is_ok()
                        && !chunk.is_empty()
                    {
                        self.pos += chunk.len() as u64;
                        return Some(chunk);
                    }
                }
            }
            if !self.follow || !self.dir.exists() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(tail: Option<u64>, follow: bool) -> LogOptions {
        LogOptions {
            tail,
            follow,
            ..Default::default()
        }
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(2)), b"b\nc");
        assert_eq!(tail(b"a\nb\n", Some(5)), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", None), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", Some(0)), b"");
    }

    #[tokio::test]
    async fn following_sees_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(super::super::monitor::LOG_FILE);
        std::fs::write(&log, "one\ntwo\n").unwrap();
        let mut r = LogReader::new(dir.path(), &options(Some(1), true));
        assert_eq!(r.next_chunk().await.unwrap(), b"two\n");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(r.next_chunk().await.unwrap(), b"three\n");
        std::fs::write(&log, "new\n").unwrap();
        assert_eq!(r.next_chunk().await.unwrap(), b"new\n");
        let mut once = LogReader::new(dir.path(), &options(None, false));
        assert_eq!(once.next_chunk().await.unwrap(), b"new\n");
        assert!(once.next_chunk().await.is_none());
    }

    /// Writes `line` to `ring` every 20 ms (a follower that has not connected yet would miss
    /// a single write) and reads `reader` until `line` comes, for at most 5 s. Returns what
    /// was read.
    async fn read_while_writing(
        reader: &mut LogReader,
        ring: &super::super::logring::SharedRing,
        line: &[u8],
    ) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut got = vec![];
        while !got.windows(line.len()).any(|w| w == line) {
            ring.write(line);
            let read = tokio::time::timeout(Duration::from_millis(20), reader.next_chunk());
            if let Ok(chunk) = read.await {
                got.extend(chunk.expect("a chunk"));
            }
            assert!(tokio::time::Instant::now() < deadline, "read {got:?}");
        }
        got
    }

    #[tokio::test]
    async fn a_ring_is_read_through_its_monitor_and_followed_across_runs() {
        use super::super::logring::{serve, SharedRing, SOCKET_FILE};
        use super::super::monitor::LOG_FILE;
        let dir = tempfile::tempdir().unwrap();
        let ring = SharedRing::new(1024, b"");
        ring.write(b"a\nb\nc\n");
        serve(ring.clone(), dir.path(), 1 << 20).unwrap();
        let mut once = LogReader::new(dir.path(), &options(Some(2), false));
        assert_eq!(once.next_chunk().await.unwrap(), b"b\nc\n");
        assert!(once.next_chunk().await.is_none());
        // Nothing of it reached the disk.
        assert!(!dir.path().join(LOG_FILE).exists());
        let mut follow = LogReader::new(dir.path(), &options(Some(0), true));
        let got = read_while_writing(&mut follow, &ring, b"d\n").await;
        assert!(got.starts_with(b"d\n"), "{got:?}");
        // The container ends (its monitor saves the output and goes), the next run's monitor
        // serves a new ring started from the saved output: the follower goes on with what is
        // new only.
        ring.save(&dir.path().join(LOG_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(SOCKET_FILE)).unwrap();
        ring.close();
        let saved = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert!(saved.starts_with(b"a\nb\nc\nd\n"));
        let second = SharedRing::new(1024, &saved);
        serve(second.clone(), dir.path(), 1 << 20).unwrap();
        let got = read_while_writing(&mut follow, &second, b"e\n").await;
        assert!(!got.windows(2).any(|w| w == b"c\n"), "{got:?}");
    }
}
