//! How a container's output is kept: CRI's log format, as containerd, CRI-O and conmon's
//! `k8s-file` driver write it, one record per line:
//!
//! ```text
//! 2026-12-07T17:01:02.123456789Z stdout F a whole line
//! 2026-12-07T17:01:02.123500000Z stderr P the start of a line with no end yet
//! ```
//!
//! The time is when the monitor read the bytes (RFC 3339, UTC, always nine fraction digits,
//! so two times compare as strings), then the stream, then `F` for a full line or `P` for a
//! part of one that the next record continues. `tugboat logs` shows the content (with the
//! time under `--timestamps`); `--previous` picks the records between the starts of the last
//! two runs ([`RUNS_FILE`]). Lines from before this format (no time) are shown as they are.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The starts of the instance's last two runs (times as in the log), written by each
/// monitor before it creates the container.
pub const RUNS_FILE: &str = "runs.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// Now, as the log writes times.
pub fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// Appends `bytes`, read from `stream` at `time`, to `out` as records: one per line, the
/// last one `P` when `bytes` does not end a line.
pub fn encode(stream: Stream, time: &str, bytes: &[u8], out: &mut Vec<u8>) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let (content, tag, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(nl) => (&rest[..nl], b'F', &rest[nl + 1..]),
            None => (rest, b'P', &rest[rest.len()..]),
        };
        out.extend_from_slice(time.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.name());
        out.push(b' ');
        out.push(tag);
        out.push(b' ');
        out.extend_from_slice(content);
        out.push(b'\n');
        rest = next;
    }
}

/// One line of the log, its newline taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// `None` for a line written before records had times.
    pub time: Option<&'a str>,
    pub stream: Option<Stream>,
    /// A part of a line that the next record continues.
    pub partial: bool,
    pub content: &'a [u8],
}

/// Reads one line (without its newline) as a record; a line that is not one is its own
/// content, with no time.
pub fn parse(line: &[u8]) -> Record<'_> {
    let plain = Record {
        time: None,
        stream: None,
        partial: false,
        content: line,
    };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return plain;
    };
    let content = parts.next().unwrap_or_default();
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return plain,
    };
    let partial = match tag {
        b"F" => false,
        b"P" => true,
        _ => return plain,
    };
    match std::str::from_utf8(time) {
        Ok(t) if looks_like_time(t) => Record {
            time: Some(t),
            stream: Some(stream),
            partial,
            content,
        },
        _ => plain,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.fffffffffZ`, as [`now`] writes it.
fn looks_like_time(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 30
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[29] == b'Z'
        && b[..4].iter().all(u8::is_ascii_digit)
}

/// The content of the last whole line in `log` (records decoded): what a runtime that
/// failed said last.
pub fn last_line(log: &[u8]) -> String {
    let mut lines = LineView::new(Window::default(), false);
    let mut out = vec![];
    lines.push(log, &mut out);
    lines.finish(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.lines().last().unwrap_or_default().to_string()
}

/// The times between which records are shown: from `from` (inclusive) to `until`
/// (exclusive); open at either end when `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub from: Option<String>,
    pub until: Option<String>,
}

impl Window {
    fn admits(&self, time: Option<&str>) -> bool {
        match time {
            // Written before times were kept: older than any run with a start time.
            None => self.from.is_none(),
            Some(t) => {
                self.from.as_deref().is_none_or(|from| t >= from)
                    && self.until.as_deref().is_none_or(|until| t < until)
            }
        }
    }
}

/// Turns the log's records, fed in chunks of any size, into what a reader sees: the lines'
/// content, each with its time in front when `timestamps`, parts joined into their line,
/// only the records inside `window`.
#[derive(Debug)]
pub struct LineView {
    window: Window,
    timestamps: bool,
    /// Bytes of a record whose newline has not come yet.
    pending: Vec<u8>,
    /// Inside a line that `P` records started: its time is already written.
    in_line: bool,
}

impl LineView {
    pub fn new(window: Window, timestamps: bool) -> LineView {
        LineView {
            window,
            timestamps,
            pending: vec![],
            in_line: false,
        }
    }

    /// Decodes the whole records in `chunk` (with what was pending) into `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
            self.record(&pending[start..start + nl], out);
            start += nl + 1;
        }
        pending.drain(..start);
        self.pending = pending;
    }

    /// The end of the log: a last record with no newline is shown as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.record(&line, out);
        }
        if self.in_line {
            out.push(b'\n');
            self.in_line = false;
        }
    }

    fn record(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let r = parse(line);
        if !self.window.admits(r.time) {
            return;
        }
        if self.timestamps && !self.in_line {
            if let Some(t) = r.time {
                out.extend_from_slice(t.as_bytes());
                out.push(b' ');
            }
        }
        out.extend_from_slice(r.content);
        self.in_line = r.partial;
        if !r.partial {
            out.push(b'\n');
        }
    }
}

/// The starts of the last two runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    pub current: String,
    #[serde(default)]
    pub previous: Option<String>,
}

/// Records that a run starts now (at `time`), in `dir`'s [`RUNS_FILE`].
pub fn record_run(dir: &Path, time: &str) -> std::io::Result<()> {
    let path = dir.join(RUNS_FILE);
    let previous = crate::read_json::<Runs>(&path).map(|r| r.current);
    crate::write_json(
        &path,
        &Runs {
            current: time.to_string(),
            previous,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(window: Window, timestamps: bool, log: &[u8], chunk: usize) -> String {
        let mut v = LineView::new(window, timestamps);
        let mut out = vec![];
        for part in log.chunks(chunk) {
            v.push(part, &mut out);
        }
        v.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    const T1: &str = "2026-12-07T17:01:02.000000001Z";
    const T2: &str = "2026-12-07T17:01:02.500000000Z";
    const T3: &str = "2026-12-07T17:01:03.000000000Z";

    #[test]
    fn output_becomes_records_and_records_become_lines() {
        let mut log = vec![];
        encode(Stream::Stdout, T1, b"one\ntw", &mut log);
        encode(Stream::Stderr, T2, b"oops\n", &mut log);
        encode(Stream::Stdout, T3, b"o\n\nthree\n", &mut log);
        assert_eq!(
            String::from_utf8(log.clone()).unwrap(),
            format!(
                "{T1} stdout F one\n{T1} stdout P tw\n{T2} stderr F oops\n{T3} stdout F o\n{T3} stdout F \n{T3} stdout F three\n"
            )
        );
        // Whatever the chunks the reader gets, the same lines (a part joins its line; the
        // empty line stays).
        for chunk in [1, 3, 7, 1000] {
            assert_eq!(
                view(Window::default(), false, &log, chunk),
                "one\ntwoops\no\n\nthree\n"
            );
        }
        assert_eq!(
            view(Window::default(), true, &log, 5),
            // A line's time is that of its first part.
            format!("{T1} one\n{T1} twoops\n{T3} o\n{T3} \n{T3} three\n")
        );
    }

    #[test]
    fn a_window_picks_a_run_and_old_lines_pass_as_they_are() {
        let mut log = b"from before times were kept\n".to_vec();
        encode(Stream::Stdout, T1, b"first run\n", &mut log);
        encode(Stream::Stdout, T2, b"second run\n", &mut log);
        encode(Stream::Stdout, T3, b"third run\n", &mut log);
        let previous = Window {
            from: Some(T2.into()),
            until: Some(T3.into()),
        };
        assert_eq!(view(previous, false, &log, 4), "second run\n");
        assert_eq!(
            view(Window::default(), false, &log, 4),
            "from before times were kept\nfirst run\nsecond run\nthird run\n"
        );
        assert_eq!(last_line(&log), "third run");
    }

    #[test]
    fn lines_that_only_look_like_records_stay_whole() {
        for line in [
            "2026 stdout F short time",
            "2026-12-07T17:01:02.000000001Z stdin F not a stream",
            "2026-12-07T17:01:02.000000001Z stdout X not a tag",
            "plain",
            "",
        ] {
            let r = parse(line.as_bytes());
            assert_eq!((r.time, r.content), (None, line.as_bytes()), "{line}");
        }
        assert!(looks_like_time(&now()), "{}", now());
    }

    #[test]
    fn each_run_moves_the_last_start_to_previous() {
        let dir = tempfile::tempdir().unwrap();
        record_run(dir.path(), T1).unwrap();
        record_run(dir.path(), T2).unwrap();
        let runs: Runs = crate::read_json(&dir.path().join(RUNS_FILE)).unwrap();
        assert_eq!(
            runs,
            Runs {
                current: T2.into(),
                previous: Some(T1.into())
            }
        );
    }
}
