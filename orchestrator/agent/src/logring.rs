//! Container logs kept in memory (`tugboat agent --log-mode ring`), from the agent's side:
//! the ring and its socket are in the monitor (`tugboat_monitor::logring`, re-exported
//! here); this module asks it, over `log.sock`, for the logs and to persist them.

use std::path::Path;

pub use tugboat_monitor::logring::{
    serve, socket_path, tail, LogMode, LogRing, SharedRing, SOCKET_FILE,
};
#[cfg(test)]
use tugboat_monitor::LOG_FILE;

/// Connects to the monitor's socket in `dir` (none: no monitor serves a ring there).
pub async fn connect(dir: &Path) -> Option<tokio::net::UnixStream> {
    if !dir.join(SOCKET_FILE).exists() {
        return None;
    }
    let (path, _handle) = socket_path(dir).ok()?;
    tokio::net::UnixStream::connect(&path).await.ok()
}

/// Sends one request line; the stream then carries the answer.
pub async fn request(dir: &Path, line: &str) -> Option<tokio::net::UnixStream> {
    use tokio::io::AsyncWriteExt;
    let mut stream = connect(dir).await?;
    stream.write_all(line.as_bytes()).await.ok()?;
    Some(stream)
}

/// Asks the monitor in `dir` to keep the container's output on disk from now on. False
/// when no monitor keeps a ring there (file mode writes the file anyway).
pub async fn ask_persist(dir: &Path) -> Result<bool, String> {
    use tokio::io::AsyncReadExt;
    let Some(mut stream) = request(dir, "persist\n").await else {
        return Ok(false);
    };
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    match answer.trim() {
        "ok" => Ok(true),
        other => Err(other.strip_prefix("error ").unwrap_or(other).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agent_asks_the_monitor_for_the_tail_follows_and_persist() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let ring = SharedRing::new(1024, b"old\n");
        ring.write(b"one\ntwo\n");
        serve(ring.clone(), dir.path(), 1 << 20).unwrap();
        let mut tail = String::new();
        request(dir.path(), "logs 2 0\n")
            .await
            .unwrap()
            .read_to_string(&mut tail)
            .await
            .unwrap();
        assert_eq!(tail, "one\ntwo\n");
        // Nothing on disk while nobody asks.
        let log = dir.path().join(LOG_FILE);
        assert!(!log.exists());
        // The request may be answered before or after the next write: the last line then.
        let mut follow = request(dir.path(), "logs 1 1\n").await.unwrap();
        ring.write(b"three\n");
        let mut got = vec![];
        while !got.ends_with(b"three\n") {
            let mut chunk = [0u8; 64];
            let n = follow.read(&mut chunk).await.unwrap();
            assert!(n > 0, "ended early: {got:?}");
            got.extend(&chunk[..n]);
        }
        assert!(got == b"three\n" || got == b"two\nthree\n", "{got:?}");
        assert!(ask_persist(dir.path()).await.unwrap());
        ring.write(b"four\n");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "old\none\ntwo\nthree\nfour\n"
        );
        // The end of the output ends a follower.
        ring.close();
        let mut rest = String::new();
        follow.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "four\n");
    }
}
