//! A customer of the shop's front (examples/shop/app): a session cookie and plain HTTP/1.0
//! requests, as a browser would send them. Use it on a thread inside the test's namespace.
//!
//! A purchase retries a step that got no answer, or a 502/503, as a real shop's client would:
//! every step is idempotent (an add carries its own request id, a checkout its order id, a
//! payment the order's id), so a retry never buys twice.

use std::io::{Read, Write};
use std::time::Duration;

/// What came back: the status, the Location header (a form's redirect) and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

pub struct Shopper {
    pub addr: String,
    pub session: String,
}

impl Shopper {
    pub fn new(addr: &str, session: &str) -> Shopper {
        Shopper {
            addr: addr.into(),
            session: session.into(),
        }
    }

    /// One request; Err only when no HTTP answer came.
    pub fn send(&self, method: &str, path: &str, form: Option<&str>) -> Result<Answer, String> {
        let mut conn = std::net::TcpStream::connect(&self.addr)
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nCookie: session={}\r\n",
            self.addr, self.session
        );
        if let Some(form) = form {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                form.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        conn.write_all(req.as_bytes())
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let mut raw = String::new();
        conn.read_to_string(&mut raw)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{method} {path}: no HTTP answer: {raw:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
        let location = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        });
        Ok(Answer {
            status,
            location,
            body: body.to_string(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Answer, String> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, form: &str) -> Result<Answer, String> {
        self.send("POST", path, Some(form))
    }

    /// A request retried (up to 10 tries over ~5 s) while no answer comes or the shop says
    /// 502/503; then it must answer `want`.
    pub fn step(
        &self,
        method: &str,
        path: &str,
        form: Option<&str>,
        want: u16,
    ) -> Result<Answer, String> {
        let mut last = String::new();
        for _ in 0..10 {
            match self.send(method, path, form) {
                Ok(a) if a.status == want => return Ok(a),
                Ok(a) if a.status == 502 || a.status == 503 => {
                    last = format!("{} {}", a.status, text(&a.body))
                }
                Ok(a) => {
                    return Err(format!(
                        "{method} {path}: {} (wanted {want}): {}",
                        a.status,
                        text(&a.body)
                    ))
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!("{method} {path}: gave up after 10 tries: {last}"))
    }

    /// The whole purchase: browse, add tea and coffee, check out, pay, see the paid order;
    /// the cart is empty after. The order's id on success.
    pub fn purchase(&self) -> Result<String, String> {
        let home = self.step("GET", "/", None, 200)?;
        for want in ["Tea", "4.00 EUR", "Coffee", "6.50 EUR", "<svg"] {
            if !home.body.contains(want) {
                return Err(format!(
                    "no {want:?} on the front page: {}",
                    text(&home.body)
                ));
            }
        }
        self.step("GET", "/products/tea", None, 200)?;
        for (n, sku) in ["tea", "coffee"].iter().enumerate() {
            let form = format!("sku={sku}&request={}-{n}", self.session);
            let added = self.step("POST", "/cart/add", Some(&form), 303)?;
            if added.location.as_deref() != Some("/cart") {
                return Err(format!("adding {sku} went to {:?}", added.location));
            }
        }
        let cart = self.step("GET", "/cart", None, 200)?;
        if !(cart.body.contains("Tea")
            && cart.body.contains("Coffee")
            && cart.body.contains("10.50 EUR"))
        {
            return Err(format!(
                "the cart does not hold tea and coffee for 10.50: {}",
                text(&cart.body)
            ));
        }
        let checkout = self.step("GET", "/checkout", None, 200)?;
        let id = value_of(&checkout.body, "id").ok_or("no order id in the checkout form")?;
        let form = format!("id={id}&name=Ada+Lovelace&address=12+St+James%27s+Square");
        let placed = self.step("POST", "/checkout", Some(&form), 303)?;
        let pay_at = format!("/orders/{id}/pay");
        if placed.location.as_deref() != Some(pay_at.as_str()) {
            return Err(format!("checkout went to {:?}", placed.location));
        }
        let pay = self.step("GET", &pay_at, None, 200)?;
        if value_of(&pay.body, "amount").as_deref() != Some("10.50") {
            return Err(format!(
                "the payment form does not ask 10.50: {}",
                text(&pay.body)
            ));
        }
        self.step(
            "POST",
            &pay_at,
            Some("card=4242424242424242&amount=10.50"),
            303,
        )?;
        let order = self.step("GET", &format!("/orders/{id}"), None, 200)?;
        if !order.body.contains("is paid") || !order.body.contains("10.50 EUR") {
            return Err(format!(
                "order {id} is not shown paid: {}",
                text(&order.body)
            ));
        }
        let cart = self.step("GET", "/cart", None, 200)?;
        if !cart.body.contains("Your cart is empty") {
            return Err(format!(
                "the cart is not empty after the order: {}",
                text(&cart.body)
            ));
        }
        Ok(id)
    }
}

/// The `value` of the form field `name` in a page.
pub fn value_of(page: &str, name: &str) -> Option<String> {
    let rest = &page[page.find(&format!("name=\"{name}\""))?..];
    let start = rest.find("value=\"")? + 7;
    Some(rest[start..start + rest[start..].find('"')?].to_string())
}

/// A page's text without its tags, shortened, for messages.
pub fn text(html: &str) -> String {
    let html = html.split_once("<main>").map_or(html, |(_, main)| main);
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    words.join(" ").chars().take(400).collect()
}
