//! An instance's log as a byte stream: the last lines of `container.log`, then (when
//! following) what the monitor appends, across rotations, until the instance is gone.
//! The agent serves it on its node API; the server forwards `GET /v1/instances/ID/logs`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Reads the log in `dir` from the start (after `tail`), then follows it when `follow`.
pub struct LogReader {
    path: PathBuf,
    dir: PathBuf,
    pos: u64,
    tail: Option<usize>,
    started: bool,
    follow: bool,
}

impl LogReader {
    pub fn new(instance_dir: &Path, tail: Option<usize>, follow: bool) -> LogReader {
        LogReader {
            path: instance_dir.join(super::monitor::LOG_FILE),
            dir: instance_dir.into(),
            pos: 0,
            tail,
            started: false,
            follow,
        }
    }

    /// The next chunk; `None` at the end (not following, or the instance is gone).
    pub async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
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
        let mut r = LogReader::new(dir.path(), Some(1), true);
        assert_eq!(r.next_chunk().await.unwrap(), b"two\n");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(r.next_chunk().await.unwrap(), b"three\n");
        std::fs::write(&log, "new\n").unwrap();
        assert_eq!(r.next_chunk().await.unwrap(), b"new\n");
        let mut once = LogReader::new(dir.path(), None, false);
        assert_eq!(once.next_chunk().await.unwrap(), b"new\n");
        assert!(once.next_chunk().await.is_none());
    }
}
