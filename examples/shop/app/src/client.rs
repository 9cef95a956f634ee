//! A small blocking HTTP/1.0 client over std's TcpStream: enough for calls between the
//! shop's services and for the load generator. One connection per request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a call got no answer: it never connected (safe to retry anything), or the
/// connection broke after the request was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    Connect(String),
    Broken(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "connect: {e}"),
            CallError::Broken(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// One request to `addr` (an IP socket address, or a service name resolved by /etc/hosts).
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Result<Response, CallError> {
    // SHOP_CATALOG_ADDR=127.0.0.1:8101 and the like point a name elsewhere (a local run).
    let overridden = std::env::var(format!("SHOP_{}_ADDR", addr.to_uppercase())).ok();
    let target =
        crate::hosts::resolve(overridden.as_deref().unwrap_or(addr)).map_err(CallError::Connect)?;
    let sock: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| CallError::Connect(format!("{target}: {e}")))?
        .next()
        .ok_or_else(|| CallError::Connect(format!("{target}: no address")))?;
    let mut conn = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| CallError::Connect(format!("{addr} ({sock}): {e}")))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let payload = match body {
        Some((kind, data)) => {
            req.push_str(&format!(
                "Content-Type: {kind}\r\nContent-Length: {}\r\n",
                data.len()
            ));
            data
        }
        None if method == "POST" => {
            req.push_str("Content-Length: 0\r\n");
            ""
        }
        None => "",
    };
    req.push_str("\r\n");
    req.push_str(payload);
    conn.write_all(req.as_bytes())
        .map_err(|e| CallError::Broken(format!("{addr}{path}: {e}")))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| CallError::Broken(format!("{addr}{path}: {e}")))?;
    parse(&raw).ok_or_else(|| {
        CallError::Broken(format!(
            "{addr}{path}: not an HTTP answer ({} bytes)",
            raw.len()
        ))
    })
}

fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = body.to_string();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if let Some(n) = length {
        if body.len() < n {
            return None;
        }
        body.truncate(n);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A call that is safe to repeat (a read, or a write keyed by an id), retried when no
/// answer came or the service was unavailable (503): up to 4 tries over about 1.5 s.
pub fn call_idempotent(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> Result<Response, CallError> {
    let mut last = None;
    for pause in [0u64, 100, 400, 1000] {
        std::thread::sleep(Duration::from_millis(pause));
        match call(addr, method, path, &[], body) {
            Ok(r) if r.status != 503 => return Ok(r),
            Ok(r) => last = Some(Ok(r)),
            Err(e) => last = Some(Err(e)),
        }
    }
    last.unwrap()
}

/// A JSON request; `Ok((status, body))` whenever the service answered.
pub fn json(
    service: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), CallError> {
    let text = body.map(|b| b.to_string());
    let r = call_idempotent(
        service,
        method,
        path,
        text.as_deref().map(|t| ("application/json", t)),
    )?;
    let value = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
    Ok((r.status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_stop_at_their_length() {
        let r = parse(
            b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 2\r\nX-A: b\r\n\r\nokEXTRA",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (422, "ok"));
        assert_eq!(r.header("x-a"), Some("b"));
        assert!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_none());
        assert!(parse(b"garbage").is_none());
    }
}
