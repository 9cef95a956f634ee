//! `tugboat logs SERVICE`: the logs of all its instances, each line prefixed with the
//! instance it came from (as `kubectl logs -l` with `--prefix`, `docker compose logs`).

use crate::client::{ApiClient, ClientError};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Writes whole lines only, each as `prefix line`, to a shared output; a partial line waits
/// for its end (or for [`PrefixedLines::finish`]).
pub struct PrefixedLines<W: Write> {
    prefix: String,
    partial: Vec<u8>,
    out: Arc<Mutex<W>>,
}

impl<W: Write> PrefixedLines<W> {
    pub fn new(prefix: String, out: Arc<Mutex<W>>) -> PrefixedLines<W> {
        PrefixedLines {
            prefix,
            partial: vec![],
            out,
        }
    }

    fn emit(&self, line: &[u8]) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(self.prefix.as_bytes())?;
        out.write_all(line)?;
        out.write_all(b"\n")?;
        out.flush()
    }

    /// Writes what is left of an unfinished last line.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.partial);
        self.emit(&rest)
    }
}

impl<W: Write> Write for PrefixedLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.emit(&line[..line.len() - 1])?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams the log of each of `ids` to stdout, prefixed `[id] `, all at once (so `follow`
/// interleaves them as they come). The first error is returned after all have ended.
pub async fn stream(
    api: &ApiClient,
    ids: &[String],
    options: &tugboat_api::wire::LogOptions,
) -> Result<(), ClientError> {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let width = ids.iter().map(|id| id.len()).max().unwrap_or(0);
    let streams = ids.iter().map(|id| {
        let out = out.clone();
        async move {
            let mut lines = PrefixedLines::new(format!("[{id:<width$}] "), out);
            let result = api.logs(id, options, &mut lines).await;
            let _ = lines.finish();
            result
        }
    });
    let results = futures_util::future::join_all(streams).await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_get_the_prefix() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut a = PrefixedLines::new("[web-1] ".into(), out.clone());
        let mut b = PrefixedLines::new("[web-2] ".into(), out.clone());
        a.write_all(b"hel").unwrap();
        b.write_all(b"one\ntwo\n").unwrap();
        a.write_all(b"lo\nbye").unwrap();
        a.finish().unwrap();
        assert_eq!(
            String::from_utf8(out.lock().unwrap().clone()).unwrap(),
            "[web-2] one\n[web-2] two\n[web-1] hello\n[web-1] bye\n"
        );
    }
}
