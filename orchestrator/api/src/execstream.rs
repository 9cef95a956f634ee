//! `tugboat exec -i/-t`: an interactive command in an instance, over one HTTP connection.
//!
//! The client sends `POST /v1/instances/{id}/exec` with `Connection: Upgrade`,
//! `Upgrade: tugboat-exec` and the usual JSON body (plus `tty`, `stdin`, `rows`, `cols`). The
//! server answers 101 and splices the connection to the same request made to the instance's
//! agent; the agent answers 101 and runs the command through the runtime's exec (the
//! container's user, capabilities and seccomp filter apply), with a pty when `tty` is set.
//! From then on both directions carry frames: a kind byte, a big-endian u32 length, the
//! payload. The client sends stdin, end of stdin and terminal sizes; the agent sends stdout,
//! stderr and, last, the exit code (or an error that kept the command from starting).

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "tugboat-exec";

/// Largest frame payload accepted; a larger length means a broken or hostile peer.
pub const MAX_FRAME: usize = 1 << 20;

/// The body of an exec request: non-interactive (JSON answer) or, with the upgrade headers,
/// a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Time limit of a non-interactive exec (default 60 s, at most an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Stream only: run the command on a terminal (a pty).
    #[serde(default)]
    pub tty: bool,
    /// Stream only: pass the client's stdin on (otherwise the command's stdin is empty).
    #[serde(default)]
    pub stdin: bool,
    /// Stream only: the terminal's size at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The client's stdin ended.
    StdinEof,
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The command exited with this code (128+n when killed by signal n). The last frame.
    Exit(i32),
    /// The command could not run. The last frame.
    Error(String),
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STDIN_EOF: u8 = 3;
const RESIZE: u8 = 4;
const EXIT: u8 = 5;
const ERROR: u8 = 6;

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("exec stream: {why}"))
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdin(b) => (STDIN, b.into()),
            Frame::Stdout(b) => (STDOUT, b.into()),
            Frame::Stderr(b) => (STDERR, b.into()),
            Frame::StdinEof => (STDIN_EOF, (&[][..]).into()),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (RESIZE, p.into())
            }
            Frame::Exit(code) => (EXIT, code.to_be_bytes().to_vec().into()),
            Frame::Error(text) => (ERROR, text.as_bytes().into()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    fn decode(kind: u8, payload: Vec<u8>) -> io::Result<Frame> {
        let fixed = |n: usize, name: &str| {
            if payload.len() == n {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{name} frame has {n} bytes, this one {}",
                    payload.len()
                )))
            }
        };
        Ok(match kind {
            STDIN => Frame::Stdin(payload),
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            STDIN_EOF => {
                fixed(0, "a stdin-eof")?;
                Frame::StdinEof
            }
            RESIZE => {
                fixed(4, "a resize")?;
                Frame::Resize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                }
            }
            EXIT => {
                fixed(4, "an exit")?;
                Frame::Exit(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            ERROR => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
            other => return Err(invalid(format!("unknown frame kind {other}"))),
        })
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

/// The next frame; `None` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(invalid("the stream ended inside a frame header".into()))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "a frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|_| invalid("the stream ended inside a frame".into()))?;
    Frame::decode(head[0], payload).map(Some)
}

/// The size (rows, columns) of the terminal on stdout, if it is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize we own; it fails harmlessly on a non-terminal.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The client's side of an exec stream: this process's stdin (when `stdin`), terminal size
/// changes (when `tty`) out; the command's output to stdout and stderr; returns its exit
/// code. The terminal is in raw mode meanwhile and restored before this returns.
pub async fn attach<S>(io: S, tty: bool, stdin: bool) -> io::Result<i32>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(16);
    let _raw = (tty && stdin).then(tug_runtime::tty::RawMode::enter);
    if stdin {
        // A thread, not the async runtime's stdin: a read pending on it could not be
        // cancelled and would hold the process at exit.
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 16 * 1024];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(Frame::StdinEof);
                        return;
                    }
                    Ok(n) => {
                        if tx.blocking_send(Frame::Stdin(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    } else if !tty {
        // No input: the command's stdin ends at once. (On a terminal, as with `docker exec
        // -t`, it simply gets none.)
        let _ = tx.send(Frame::StdinEof).await;
    }
    if tty {
        let tx = tx.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((rows, cols)) = terminal_size() {
                        if tx.send(Frame::Resize { rows, cols }).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    drop(tx);
    let send = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut writer, &frame).await.is_err() {
                return;
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let outcome = loop {
        match read_frame(&mut reader).await {
            Ok(Some(Frame::Stdout(data))) => {
                stdout.write_all(&data).await?;
                stdout.flush().await?;
            }
            Ok(Some(Frame::Stderr(data))) => {
                stderr.write_all(&data).await?;
                stderr.flush().await?;
            }
            Ok(Some(Frame::Exit(code))) => break Ok(code),
            Ok(Some(Frame::Error(text))) => break Err(io::Error::other(text)),
            Ok(Some(_)) => {}
            Ok(None) => {
                break Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before the command exited",
                ))
            }
            Err(e) => break Err(e),
        }
    };
    send.abort();
    outcome
}

/// What an exec returns through the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The HTTP side of the exec stream, shared by the server (which passes it on) and the
/// agent (which serves it).
/// The upgrade a request asks for, taken from its extensions (hyper puts it there).
pub struct Upgrade(pub Option<hyper::upgrade::OnUpgrade>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Upgrade(parts.extensions.remove()))
    }
}

/// Whether a request asks for the exec stream (`Upgrade: tugboat-exec`).
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(crate::execstream::PROTOCOL))
}

/// The 101 answer that switches a connection to the exec stream.
pub fn switching() -> Response {
    switching_to(PROTOCOL)
}

/// A 101 answer switching to `protocol`.
pub fn switching_to(protocol: &str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, protocol)
        .body(axum::body::Body::empty())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(vec![]),
            Frame::StdinEof,
            Frame::Resize {
                rows: 40,
                cols: 132,
            },
            Frame::Exit(-1),
            Frame::Exit(137),
            Frame::Error("container x is not running".into()),
        ];
        let mut wire = vec![];
        for f in &frames {
            write_frame(&mut wire, f).await.unwrap();
        }
        let mut r = &wire[..];
        let mut back = vec![];
        while let Some(f) = read_frame(&mut r).await.unwrap() {
            back.push(f);
        }
        assert_eq!(back, frames);
    }

    #[tokio::test]
    async fn broken_frames_are_refused_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![9, 0, 0, 0, 0], "unknown frame kind 9"),
            (
                vec![1, 0xff, 0xff, 0xff, 0xff],
                "over the 1048576-byte limit",
            ),
            (
                vec![4, 0, 0, 0, 3, 1, 2, 3],
                "a resize frame has 4 bytes, this one 3",
            ),
            (
                vec![5, 0, 0, 0, 1, 7],
                "an exit frame has 4 bytes, this one 1",
            ),
            (vec![1, 0, 0], "inside a frame header"),
            (vec![1, 0, 0, 0, 9, 1], "inside a frame"),
        ];
        for (wire, want) in cases {
            let err = read_frame(&mut &wire[..]).await.unwrap_err().to_string();
            assert!(err.contains(want), "{wire:?}: {err}");
        }
    }
}
