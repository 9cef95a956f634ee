//! What the services exchange: products, carts, orders and payments, and money in cents.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_cents: u64,
    pub stock: u32,
    /// The colour of its picture (front draws it as inline SVG).
    pub color: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Cart {
    pub session: String,
    pub items: Vec<CartLine>,
    /// The ids of the last adds, so an add retried with the same id counts once.
    #[serde(default)]
    pub requests: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CartLine {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub price_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Order {
    pub id: String,
    pub session: String,
    pub name: String,
    pub address: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: u64,
    pub created_ms: u64,
    /// Set once payments accepted it.
    pub payment: Option<String>,
}

/// "12.50" for 1250 cents.
pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// "12.5", "12.50", "12" or "12,50" as cents; None for anything else (negative, 3 decimals).
pub fn parse_money(text: &str) -> Option<u64> {
    let text = text.trim().replace(',', ".");
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 9 {
        return None;
    }
    if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cents = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>().ok()? * 10,
        _ => frac.parse::<u64>().ok()?,
    };
    Some(whole.parse::<u64>().ok()? * 100 + cents)
}

/// Sessions, order ids and request ids: 1 to 64 of [A-Za-z0-9_-], safe in paths and files.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random id of 16 hex digits (from /dev/urandom; the clock and a counter otherwise).
pub fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = (t ^ (n << 48) ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// This instance's name (the container's hostname), for the services' JSON answers; never
/// shown to customers.
pub fn instance() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "local".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_round_trips_and_refuses_nonsense() {
        assert_eq!(money(1250), "12.50");
        assert_eq!(money(5), "0.05");
        assert_eq!(parse_money("12.50"), Some(1250));
        assert_eq!(parse_money("12,5"), Some(1250));
        assert_eq!(parse_money(" 4 "), Some(400));
        for bad in ["", "-4", "4.001", "abc", "1e3", ".5", "4.x"] {
            assert_eq!(parse_money(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_are_path_safe() {
        assert!(valid_id("a-B_9"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"x".repeat(65)));
        let (a, b) = (random_id(), random_id());
        assert!(valid_id(&a) && a.len() == 16 && a != b);
    }
}
