//! A real etcd (Debian's etcd-server) for tests: one member ([`Etcd`], plain or TLS) or a
//! cluster ([`EtcdCluster`]) on 127.0.0.1 ports picked free, data dirs in a temp dir, killed
//! by pid and reaped when dropped; and `tugboat server` processes on it ([`ServerProcess`]).
//! Tests that need etcd print `SKIP ...` and return when the binary is missing.
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
        http_health(&self.endpoint)
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

/// A 3-member etcd cluster on loopback, whose members a test kills and restarts by pid.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

struct Member {
    client_url: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl EtcdCluster {
    pub fn start(size: usize) -> Result<EtcdCluster, String> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("tugboat-test-etcd-cluster-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("tugboat-test-{}", std::process::id());
        let mut cluster = EtcdCluster {
            members: vec![],
            dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = cluster.dir.path().join(format!("m{i}"));
            let args = vec![
                binary.display().to_string(),
                format!("--name=m{i}"),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                format!("--initial-cluster-token={token}"),
                "--max-txn-ops=10000".into(),
                "--max-request-bytes=8388608".into(),
            ];
            cluster.members.push(Member {
                client_url,
                args,
                child: None,
            });
            cluster.restart(i)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(0..size).all(|i| cluster.healthy(i)) {
            if Instant::now() > deadline {
                return Err("the etcd cluster did not become healthy within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// The client URLs, comma separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// kill -9 of member `i` (our child, by pid), reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start member `i` (again) on its data dir.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let member = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .map_err(|e| format!("etcd log: {e}"))?;
        let child = Command::new(&member.args[0])
            .args(&member.args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("etcd log: {e}"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", member.args[0]))?;
        member.child = Some(child);
        Ok(())
    }

    /// Member `i` answers /health with true (it has a leader).
    pub fn healthy(&self, i: usize) -> bool {
        http_health(&self.members[i].client_url)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn http_health(url: &str) -> bool {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
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

/// A prefix no other test run on this etcd uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "/tugboat-test-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A `tugboat server` process on etcd (plain HTTP, no auth, its own data dir under the
/// test's temp dir), its stderr in a file; killed by pid when dropped.
pub struct ServerProcess {
    pub child: Child,
    log: PathBuf,
}

impl ServerProcess {
    pub fn start(dir: &std::path::Path, n: usize, endpoint: &str, prefix: &str) -> ServerProcess {
        Self::start_with(dir, n, endpoint, prefix, &[])
    }

    /// As [`ServerProcess::start`], with more flags for `tugboat server`.
    pub fn start_with(
        dir: &std::path::Path,
        n: usize,
        endpoint: &str,
        prefix: &str,
        extra: &[&str],
    ) -> ServerProcess {
        let data_dir = dir.join(format!("server-{n}"));
        let log = dir.join(format!("server-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(["--store", "etcd", "--etcd-endpoints", endpoint])
            .args(["--etcd-prefix", prefix])
            .args(["--insecure-plain-http", "--insecure-no-auth"])
            .args(extra)
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        ServerProcess { child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The API address it printed.
    pub fn addr(&self) -> Option<String> {
        let out = self.output();
        let rest = out.split("listening on http://").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    }

    /// Its role as it last said it.
    pub fn role(&self) -> Option<&'static str> {
        let out = self.output();
        out.lines().rev().find_map(|line| {
            if line.contains("role leader") {
                Some("leader")
            } else if line.contains("role follower") {
                Some("follower")
            } else {
                None
            }
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Our own child, by pid; reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An etcd and three `tugboat server`s on it (keys under a prefix named after `name`, data
/// dirs in a temp dir), for the tests of several servers; `None`, after a `SKIP` line naming
/// `test`, when there is no etcd. Dropped in reverse: servers, then the dir, then etcd.
pub fn three_servers(
    test: &str,
    name: &str,
) -> Option<(Etcd, tempfile::TempDir, Vec<ServerProcess>)> {
    let etcd = match Etcd::start() {
        Ok(etcd) => etcd,
        Err(reason) => {
            println!("SKIP {test}: {reason}");
            return None;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("tugboat-test-{name}-"))
        .tempdir()
        .unwrap();
    let prefix = unique_prefix(name);
    let servers = (0..3)
        .map(|n| ServerProcess::start(dir.path(), n, &etcd.endpoint, &prefix))
        .collect();
    Some((etcd, dir, servers))
}

/// What each server said, separated: for a failure's message.
pub fn outputs(servers: &[ServerProcess]) -> String {
    servers
        .iter()
        .map(|s| s.output())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Once every server listens and one leads: their API addresses and the leader's index.
pub fn addrs_and_leader(servers: &[ServerProcess]) -> (Vec<String>, usize) {
    wait_for(
        "three servers and a leader",
        Duration::from_secs(20),
        || {
            let addrs: Option<Vec<String>> = servers.iter().map(|s| s.addr()).collect();
            let leader = servers.iter().position(|s| s.role() == Some("leader"))?;
            addrs.map(|a| (a, leader))
        },
    )
}

/// Poll `check` every 20 ms until it says Some, or panic naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
