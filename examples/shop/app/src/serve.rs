//! The HTTP side of every service: a request parsed into `Req`, a handler that returns a
//! `Reply`, a fixed pool of workers (the containers' pids limit is small), one log line per
//! request, and a stop on SIGTERM that lets requests in flight finish.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request, as the handlers see it.
#[derive(Debug, Clone, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub cookie: Option<String>,
    pub body: String,
}

impl Req {
    pub fn get(path: &str) -> Req {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Req {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            ..Req::default()
        }
    }

    pub fn post(path: &str, body: &str) -> Req {
        Req {
            method: "POST".into(),
            body: body.into(),
            ..Req::get(path)
        }
    }

    /// The path's segments: "/orders/7/pay" is ["orders", "7", "pay"].
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// A field of the query string or of a form body (application/x-www-form-urlencoded).
    pub fn field(&self, name: &str) -> Option<String> {
        form_field(&self.body, name).or_else(|| form_field(&self.query, name))
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookie.as_deref()?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }
}

/// A field of a urlencoded string, decoded.
pub fn form_field(text: &str, name: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A handler's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: vec![],
            body: value.to_string(),
        }
    }

    /// A JSON error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": message }))
    }

    pub fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            headers: vec![],
            body,
        }
    }

    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: vec![],
            body: body.into(),
        }
    }

    /// 303 See Other: where a browser goes after a form's POST.
    pub fn see_other(location: &str) -> Reply {
        Reply::text(303, "see other").with_header("Location", location)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Serves `handler` on `addr` until SIGTERM (or SIGINT); then lets requests in flight
/// finish, for up to a second, and returns.
pub fn run(
    addr: &str,
    handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
) -> Result<(), String> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let server =
        Arc::new(tiny_http::Server::http(addr).map_err(|e| format!("listen {addr}: {e}"))?);
    let handler = Arc::new(handler);
    eprintln!("listening on {addr}");
    for _ in 0..8 {
        let (server, handler) = (server.clone(), handler.clone());
        std::thread::spawn(move || loop {
            let Ok(request) = server.recv() else { return };
            answer(request, &*handler);
        });
    }
    while !STOPPING.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping");
    std::thread::sleep(Duration::from_millis(1000));
    Ok(())
}

fn answer(mut request: tiny_http::Request, handler: &(impl Fn(&Req) -> Reply + ?Sized)) {
    let started = Instant::now();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let mut body = String::new();
    let _ = request.as_reader().take(1 << 20).read_to_string(&mut body);
    let req = Req {
        method: request.method().as_str().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        cookie: request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Cookie"))
            .map(|h| h.value.as_str().to_string()),
        body,
    };
    let reply = if req.path == "/healthz" {
        Reply::text(200, "ok\n")
    } else {
        handler(&req)
    };
    eprintln!(
        "{} {} response:{} {}ms",
        req.method,
        url,
        reply.status,
        started.elapsed().as_millis()
    );
    let mut response = tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
    let mut headers = vec![("Content-Type".to_string(), reply.content_type.to_string())];
    headers.extend(reply.headers);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_and_cookies_decode() {
        let r = Req {
            body: "name=Ada+L%C3%B6velace&amount=12.50&bad=%zz".into(),
            query: "sku=tea".into(),
            cookie: Some("a=1; session=abc123".into()),
            ..Req::get("/x")
        };
        assert_eq!(r.field("name").unwrap(), "Ada Lövelace");
        assert_eq!(r.field("amount").unwrap(), "12.50");
        assert_eq!(r.field("bad").unwrap(), "%zz");
        assert_eq!(r.field("sku").unwrap(), "tea");
        assert_eq!(r.field("none"), None);
        assert_eq!(r.cookie("session").unwrap(), "abc123");
        assert_eq!(decode(&encode("a b&c=ö")), "a b&c=ö");
    }
}
