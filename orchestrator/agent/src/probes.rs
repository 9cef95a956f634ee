//! Health probes run by the agent against an instance's address: HTTP (a 2xx or 3xx answer)
//! and TCP (a connection). Exec probes run inside the container (the supervisor calls
//! [`super::nsexec`]); here they are refused.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tugboat_api::spec::ProbeSpec;

/// Runs one probe; `Err` says why it failed, in words.
pub async fn probe(spec: &ProbeSpec, address: Ipv4Addr) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(spec.timeout_seconds.max(1)));
    let work = async {
        if let Some(http) = &spec.http {
            http_get(SocketAddr::from((address, http.port.0)), &http.path).await
        } else if let Some(tcp) = &spec.tcp {
            tokio::net::TcpStream::connect(SocketAddr::from((address, tcp.port.0)))
                .await
                .map(|_| ())
                .map_err(|e| format!("tcp {address}:{}: {e}", tcp.port.0))
        } else {
            Err("exec probes run inside the container, not from here".into())
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("http {addr}{path}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: tugboat-probe\r\n\r\n",
        addr.ip()
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("http {addr}{path}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = conn
            .read(&mut head[n..])
            .await
            .map_err(|e| format!("http {addr}{path}: {e}"))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("http {addr}{path}: not an HTTP answer"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("http {addr}{path}: status {status}"))
    }
}

/// Counts consecutive results against a probe's thresholds.
#[derive(Debug, Clone, Default)]
pub struct ProbeState {
    pub successes: u32,
    pub failures: u32,
    pub passing: bool,
    pub last_error: Option<String>,
}

impl ProbeState {
    /// Records a result; returns whether the probe now counts as passing.
    pub fn record(&mut self, spec: &ProbeSpec, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                self.successes += 1;
                self.failures = 0;
                if self.successes >= spec.success_threshold.max(1) {
                    self.passing = true;
                    self.last_error = None;
                }
            }
            Err(e) => {
                self.failures += 1;
                self.successes = 0;
                if self.failures >= spec.failure_threshold.max(1) {
                    self.passing = false;
                }
                self.last_error = Some(e);
            }
        }
        self.passing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::spec::{Port, TcpProbe};

    fn tcp_probe(port: u16) -> ProbeSpec {
        ProbeSpec {
            exec: None,
            http: None,
            tcp: Some(TcpProbe { port: Port(port) }),
            interval_seconds: 1,
            timeout_seconds: 1,
            initial_delay_seconds: 0,
            failure_threshold: 2,
            success_threshold: 1,
        }
    }

    #[tokio::test]
    async fn http_and_tcp_probes_see_what_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"HTTP/1.0 503 Busy\r\n\r\n").await;
            }
        });
        let local = Ipv4Addr::LOCALHOST;
        assert!(probe(&tcp_probe(port), local).await.is_ok());
        let mut http = tcp_probe(port);
        http.tcp = None;
        http.http = Some(tugboat_api::spec::HttpProbe {
            port: Port(port),
            path: "/ready".into(),
        });
        let e = probe(&http, local).await.unwrap_err();
        assert!(e.contains("status 503"), "{e}");
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let spec = tcp_probe(1);
        let mut s = ProbeState::default();
        assert!(s.record(&spec, Ok(())));
        assert!(s.record(&spec, Err("x".into())));
        assert!(!s.record(&spec, Err("y".into())));
        assert_eq!(s.last_error.as_deref(), Some("y"));
    }
}
