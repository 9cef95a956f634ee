//! The load generator: visits the front at a given rate for a bounded time. Each visit is a
//! customer who browses, adds two products to the cart, checks out, pays and looks at the
//! order. Prints requests/s, failed requests, purchases and p50/p99 latency.

use crate::client::{call, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: String,
    /// Visits started per second.
    pub rate: f64,
    pub duration: Duration,
}

impl Options {
    /// `--addr HOST:PORT [--rate N/s] [--duration 30s]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            addr: String::new(),
            rate: 5.0,
            duration: Duration::from_secs(10),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--addr" => o.addr = value()?,
                "--rate" => {
                    let v = value()?;
                    o.rate = v
                        .trim_end_matches("/s")
                        .parse()
                        .ok()
                        .filter(|r: &f64| *r > 0.0 && *r <= 1000.0)
                        .ok_or(format!("--rate {v}: expected N/s, 0 < N <= 1000"))?;
                }
                "--duration" => {
                    let v = value()?;
                    let secs: f64 = v
                        .trim_end_matches('s')
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0 && *s <= 3600.0)
                        .ok_or(format!("--duration {v}: expected seconds, at most 3600"))?;
                    o.duration = Duration::from_secs_f64(secs);
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if o.addr.is_empty() {
            return Err("--addr HOST:PORT is needed".into());
        }
        Ok(o)
    }
}

/// A customer's browser: the front's address and the session cookie.
pub struct Browser {
    pub addr: String,
    pub cookie: String,
}

impl Browser {
    pub fn new(addr: &str) -> Browser {
        Browser {
            addr: addr.into(),
            cookie: format!("session={}", crate::model::random_id()),
        }
    }

    pub fn get(&self, path: &str) -> Result<Response, String> {
        call(&self.addr, "GET", path, &[("Cookie", &self.cookie)], None).map_err(|e| e.to_string())
    }

    pub fn post(&self, path: &str, form: &str) -> Result<Response, String> {
        let body = Some(("application/x-www-form-urlencoded", form));
        call(&self.addr, "POST", path, &[("Cookie", &self.cookie)], body).map_err(|e| e.to_string())
    }
}

/// The value of the first form field `name` in a page.
pub fn field_value(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\""))?;
    let rest = &page[at..];
    let start = rest.find("value=\"")? + 7;
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_string())
}

#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    pub requests: u64,
    pub failed: u64,
    pub purchases: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s ({:.1} requests/s), {} failed; {} purchases; latency p50 {:.1} ms, p99 {:.1} ms",
            self.requests,
            self.seconds,
            self.requests as f64 / self.seconds.max(0.001),
            self.failed,
            self.purchases,
            self.p50_ms,
            self.p99_ms
        )?;
        for e in self.failures.iter().take(5) {
            write!(f, "\n  failed: {e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    purchases: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    /// One timed request; an error unless it answered with one of `expect`.
    fn time(
        &self,
        what: &str,
        expect: &[u16],
        f: impl FnOnce() -> Result<Response, String>,
    ) -> Result<Response, ()> {
        let started = Instant::now();
        let r = f();
        let us = started.elapsed().as_micros() as u64;
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.latencies_us.lock().unwrap().push(us);
        match r {
            Ok(r) if expect.contains(&r.status) => Ok(r),
            other => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let why = match other {
                    Ok(r) => format!("{what}: status {}", r.status),
                    Err(e) => format!("{what}: {e}"),
                };
                let mut f = self.failures.lock().unwrap();
                if f.len() < 20 {
                    f.push(why);
                }
                Err(())
            }
        }
    }
}

/// One customer's visit, from the front page to the paid order.
fn visit(addr: &str, tally: &Tally) -> Result<(), ()> {
    let b = Browser::new(addr);
    let home = tally.time("GET /", &[200], || b.get("/"))?;
    let request = |page: &str| field_value(page, "request").unwrap_or_default();
    let tea = tally.time("GET /products/tea", &[200], || b.get("/products/tea"))?;
    let form = format!("sku=tea&request={}", request(&tea.body));
    tally.time("add tea", &[303], || b.post("/cart/add", &form))?;
    let form = format!("sku=coffee&request={}x", request(&home.body));
    tally.time("add coffee", &[303], || b.post("/cart/add", &form))?;
    tally.time("GET /cart", &[200], || b.get("/cart"))?;
    let checkout = tally.time("GET /checkout", &[200], || b.get("/checkout"))?;
    let id = field_value(&checkout.body, "id").ok_or(())?;
    let form = format!("id={id}&name=Load+Tester&address=1+Bench+Street");
    tally.time("checkout", &[303], || b.post("/checkout", &form))?;
    let pay = tally.time("GET pay page", &[200], || {
        b.get(&format!("/orders/{id}/pay"))
    })?;
    let amount = field_value(&pay.body, "amount").ok_or(())?;
    let form = format!("card=4242&amount={amount}");
    tally.time("pay", &[303], || {
        b.post(&format!("/orders/{id}/pay"), &form)
    })?;
    let done = tally.time("GET order", &[200], || b.get(&format!("/orders/{id}")))?;
    if done.body.contains("is paid") {
        tally.purchases.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Starts `rate` visits a second for `duration`, waits for them, and reports.
pub fn run(o: &Options) -> Result<Report, String> {
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / o.rate);
    let mut visits = vec![];
    let mut n = 0u32;
    while started.elapsed() < o.duration {
        let next = started + every * n;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (tally, addr) = (tally.clone(), o.addr.clone());
        visits.push(std::thread::spawn(move || {
            let _ = visit(&addr, &tally);
        }));
        visits.retain(|v| !v.is_finished());
        n += 1;
    }
    for v in visits {
        let _ = v.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut lat = tally.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let failures = tally.failures.lock().unwrap().clone();
    Ok(Report {
        seconds,
        requests: tally.requests.load(Ordering::SeqCst),
        failed: tally.failed.load(Ordering::SeqCst),
        purchases: tally.purchases.load(Ordering::SeqCst),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_rates_and_durations() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let o = Options::parse(&args("--addr 127.0.0.1:8080 --rate 20/s --duration 30s")).unwrap();
        assert_eq!((o.rate, o.duration), (20.0, Duration::from_secs(30)));
        assert!(Options::parse(&args("--addr a --rate 0/s")).is_err());
        assert!(Options::parse(&args("--rate 5/s")).is_err());
    }

    #[test]
    fn form_values_are_found_by_name() {
        let page = r#"<input type="hidden" name="id" value="abc"><input name="amount" inputmode="decimal" value="14.50">"#;
        assert_eq!(field_value(page, "id").as_deref(), Some("abc"));
        assert_eq!(field_value(page, "amount").as_deref(), Some("14.50"));
        assert_eq!(field_value(page, "nope"), None);
    }
}
