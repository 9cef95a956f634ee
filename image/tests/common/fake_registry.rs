//! A tiny registry on 127.0.0.1 that serves one OCI layout read-only, for what Debian's
//! docker-registry cannot do in a test: a token server (Bearer challenge) or Basic auth,
//! and blobs that are cut short or corrupted on the wire.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    None,
    /// `WWW-Authenticate: Basic`; wants alice:secret.
    Basic,
    /// A Bearer challenge pointing at /token here, which wants Basic alice:secret.
    Token,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Bodies of blobs over 64 KiB stop half-way (the declared length is the full one).
    Truncate,
    /// One byte of each blob over 64 KiB is changed.
    Corrupt,
    /// The first GET of each blob over 64 KiB stops half-way; later GETs honour `Range`.
    TruncateOnce,
    /// As `TruncateOnce`, but later GETs ignore `Range` and send the whole blob.
    TruncateOnceNoRange,
    /// Blobs over 64 KiB are sent 8 KiB at a time, 50 ms apart.
    Slow,
}

pub struct FakeRegistry {
    pub addr: String,
    pub blob_gets: Arc<AtomicUsize>,
    pub faults: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    truncated: Mutex<std::collections::HashSet<String>>,
    layout: PathBuf,
    tags: HashMap<String, (String, String)>,
    auth: AuthMode,
    blob_gets: Arc<AtomicUsize>,
    faults: Arc<Mutex<Fault>>,
    addr: String,
}

impl FakeRegistry {
    pub async fn start(layout: &Path, auth: AuthMode) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut tags = HashMap::new();
        for m in index["manifests"].as_array().unwrap() {
            if let Some(t) = m["annotations"]["org.opencontainers.image.ref.name"].as_str() {
                tags.insert(
                    t.to_string(),
                    (
                        m["digest"].as_str().unwrap().to_string(),
                        m["mediaType"].as_str().unwrap().to_string(),
                    ),
                );
            }
        }
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(Mutex::new(Fault::None));
        let state = Arc::new(State {
            truncated: Mutex::new(Default::default()),
            layout: layout.to_path_buf(),
            tags,
            auth,
            blob_gets: blob_gets.clone(),
            faults: faults.clone(),
            addr: addr.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = state.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        FakeRegistry {
            addr,
            blob_gets,
            faults,
            task,
        }
    }
}

async fn serve(mut sock: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let path = first.split(' ').nth(1).unwrap_or("/").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let basic_ok = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:secret")
    );
    let auth = headers.get("authorization").cloned().unwrap_or_default();

    if path.starts_with("/token") {
        if auth != basic_ok {
            return respond(
                &mut sock,
                401,
                &[],
                b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bad credentials\"}]}",
            )
            .await;
        }
        return respond(
            &mut sock,
            200,
            &[("Content-Type", "application/json")],
            b"{\"token\":\"tok-123\"}",
        )
        .await;
    }
    let authorized = match st.auth {
        AuthMode::None => true,
        AuthMode::Basic => auth == basic_ok,
        AuthMode::Token => auth == "Bearer tok-123",
    };
    if !authorized {
        let challenge = match st.auth {
            AuthMode::Basic => "Basic realm=\"fake\"".to_string(),
            _ => format!(
                "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:tug/app:pull\"",
                st.addr
            ),
        };
        return respond(
            &mut sock,
            401,
            &[("WWW-Authenticate", &challenge)],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}",
        )
        .await;
    }
    // /v2/<name>/manifests/<ref> or /v2/<name>/blobs/<digest>
    let (kind, reference) = if let Some(i) = path.find("/manifests/") {
        ("manifests", &path[i + "/manifests/".len()..])
    } else if let Some(i) = path.find("/blobs/") {
        ("blobs", &path[i + "/blobs/".len()..])
    } else {
        return respond(&mut sock, 200, &[], b"{}").await;
    };
    let (digest, media_type) = if kind == "manifests" && !reference.starts_with("sha256:") {
        match st.tags.get(reference) {
            Some(t) => t.clone(),
            None => return respond(
                &mut sock,
                404,
                &[],
                b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\"}]}",
            )
            .await,
        }
    } else {
        (reference.to_string(), String::new())
    };
    let file = st
        .layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let Ok(mut body) = std::fs::read(&file) else {
        return respond(
            &mut sock,
            404,
            &[],
            b"{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown\"}]}",
        )
        .await;
    };
    let media_type = if media_type.is_empty() && kind == "manifests" {
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["mediaType"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        media_type
    };
    if kind == "blobs" {
        st.blob_gets.fetch_add(1, Ordering::SeqCst);
    }
    // Faults hit only large blobs (layers), not configs.
    if kind == "blobs" && body.len() > 64 * 1024 {
        let mut fault = *st.faults.lock().unwrap();
        if matches!(fault, Fault::TruncateOnce | Fault::TruncateOnceNoRange) {
            let first = st.truncated.lock().unwrap().insert(digest.clone());
            if first {
                fault = Fault::Truncate;
            } else if fault == Fault::TruncateOnce {
                if let Some(from) = headers
                    .get("range")
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                {
                    let total = body.len();
                    let range = format!("bytes {from}-{}/{total}", total - 1);
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: {range}\r\nConnection: close\r\n\r\n",
                        total - from
                    );
                    sock.write_all(head.as_bytes()).await?;
                    sock.write_all(&body[from..]).await?;
                    return sock.shutdown().await;
                }
            }
        }
        if fault == Fault::Slow {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            for piece in body.chunks(8192) {
                sock.write_all(piece).await?;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            return sock.shutdown().await;
        }
        match fault {
            Fault::None | Fault::TruncateOnce | Fault::TruncateOnceNoRange | Fault::Slow => {}
            Fault::Corrupt => {
                let mid = body.len() / 2;
                body[mid] ^= 0x01;
            }
            Fault::Truncate => {
                let len = body.len();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                );
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(&body[..len / 2]).await?;
                return sock.shutdown().await;
            }
        }
    }
    let ct = if media_type.is_empty() {
        "application/octet-stream".to_string()
    } else {
        media_type
    };
    respond(&mut sock, 200, &[("Content-Type", &ct)], &body).await
}

async fn respond(
    sock: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}
