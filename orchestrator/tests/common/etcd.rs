//! A real etcd (Debian's etcd-server) for tests: one member on 127.0.0.1 ports picked free,
//! its data dir in a temp dir, killed by its pid and reaped when dropped. Tests that need it
//! print `SKIP ...` and return when the binary is missing.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    pub endpoint: String,
    /// With [`Etcd::start_tls`]: the CA, and a client certificate and key it signed.
    pub tls: Option<TlsFiles>,
    child: Child,
    dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The etcd binary, or why there is none.
pub fn etcd_binary() -> Result<PathBuf, String> {
    let candidates = ["/usr/bin/etcd", "/usr/local/bin/etcd"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no etcd binary ({}); install Debian's etcd-server (tests/install-deps.sh --tests)",
                candidates.join(", ")
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Etcd {
    /// Start etcd and wait until it answers (up to 20 s), or say why it did not.
    pub fn start() -> Result<Etcd, String> {
        Self::start_with(false)
    }

    /// etcd that speaks TLS only (https://) and requires a client certificate: a CA made
    /// for the test signs etcd's certificate (for 127.0.0.1) and the client's.
    pub fn start_tls() -> Result<Etcd, String> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Etcd, String> {
        let binary = etcd_binary()?;
        // A port picked free can be taken before etcd binds it: try again with new ones.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::start_once(&binary, tls) {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn start_once(binary: &PathBuf, tls: bool) -> Result<Etcd, String> {
        let dir = tempfile::Builder::new()
            .prefix("tugboat-test-etcd-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))
            .map_err(|e| format!("etcd log: {e}"))?;
        let mut command = Command::new(binary);
        let files = if tls {
            let (files, server_cert, server_key) = make_certificates(dir.path())?;
            command
                .arg("--cert-file")
                .arg(server_cert)
                .arg("--key-file")
                .arg(server_key)
                .arg("--trusted-ca-file")
                .arg(&files.ca)
                .arg("--client-cert-auth");
            Some(files)
        } else {
            None
        };
        let child = command
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            // What docs/ARCHITECTURE.md asks of an etcd for tugboat.
            .args(["--max-txn-ops", "10000", "--max-request-bytes", "8388608"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("etcd log: {e}"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let mut etcd = Etcd {
            endpoint,
            tls: files,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!(
                    "etcd exited ({status}) at start: {}",
                    etcd.log_tail()
                ));
            }
            if etcd.answers() {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd did not answer within 20 s: {}",
                    etcd.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// etcd's /health says true (plain), or its log says it serves clients (TLS).
    fn answers(&self) -> bool {
        if self.tls.is_some() {
            return std::fs::read_to_string(self.dir.path().join("etcd.log"))
                .is_ok_and(|log| log.contains("ready to serve client requests"));
        }
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Our own child, by its pid (Child::kill), then reaped; the temp dir goes after.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, etcd's certificate for 127.0.0.1 and a client certificate, written under `dir`.
fn make_certificates(dir: &std::path::Path) -> Result<(TlsFiles, PathBuf, PathBuf), String> {
    use tugboat::tls::{write_file, Ca, Issue};
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir).map_err(|e| format!("{}: {e}", ca_dir.display()))?;
    let ca = Ca::load_or_create(&ca_dir).map_err(|e| format!("test CA: {e}"))?;
    let issue = |name: &str, names: &[String]| {
        ca.issue_with_key(&Issue {
            common_name: name,
            names,
            lifetime: Duration::from_secs(3600),
        })
        .map_err(|e| format!("certificate for {name}: {e}"))
    };
    let (server_pem, server_key) = issue("etcd", &["127.0.0.1".to_string()])?;
    let (client_pem, client_key) = issue("tugboat-test", &[])?;
    let path = |name: &str| dir.join(name);
    for (name, text, secret) in [
        ("ca.pem", ca.pem(), false),
        ("etcd.pem", server_pem.as_str(), false),
        ("etcd-key.pem", server_key.as_str(), true),
        ("client.pem", client_pem.as_str(), false),
        ("client-key.pem", client_key.as_str(), true),
    ] {
        write_file(&path(name), text, secret).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok((
        TlsFiles {
            ca: path("ca.pem"),
            client_cert: path("client.pem"),
            client_key: path("client-key.pem"),
        },
        path("etcd.pem"),
        path("etcd-key.pem"),
    ))
}

/// A prefix no other test run on this etcd uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "/tugboat-test-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
