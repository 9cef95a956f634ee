//! Orders: created from a session's cart with prices from the catalog, stored durably, paid
//! through payments. The store is a JSON-lines file in the data dir (the named volume at
//! /data): one event a line, appended in one write and fsynced before the answer, under a
//! lock the instances sharing the volume respect; read back by folding the events.
//!
//! `POST /orders` ({id, session, name, address}): the order `id` comes from the client's
//!   checkout form, so a retried checkout finds its order instead of making a second one.
//! `GET /orders/ID`, `GET /orders?session=S` (that session's orders, newest first).
//! `POST /orders/ID/pay` ({amount_cents}): asks payments, which asks back for the order
//!   (GET /orders/ID) to check the amount; paying a paid order again is answered as paid.

use crate::client::json as call;
use crate::model::{now_ms, valid_id, Order, OrderLine, Product};
use crate::serve::{Reply, Req};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Created(Order),
    Paid { id: String, payment: String },
}

pub struct OrderStore {
    file: PathBuf,
}

#[derive(Deserialize)]
struct Checkout {
    id: String,
    session: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
struct Pay {
    amount_cents: u64,
}

impl OrderStore {
    pub fn new(data: &Path) -> std::io::Result<OrderStore> {
        std::fs::create_dir_all(data)?;
        Ok(OrderStore {
            file: data.join("orders.jsonl"),
        })
    }

    /// Every order, in the order they were created. A torn last line (a crash mid-write)
    /// is skipped.
    pub fn all(&self) -> Vec<Order> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut orders: Vec<Order> = vec![];
        for event in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        {
            match event {
                Event::Created(o) => {
                    if !orders.iter().any(|x| x.id == o.id) {
                        orders.push(o)
                    }
                }
                Event::Paid { id, payment } => {
                    if let Some(o) = orders.iter_mut().find(|o| o.id == id) {
                        o.payment.get_or_insert(payment);
                    }
                }
            }
        }
        orders
    }

    pub fn get(&self, id: &str) -> Option<Order> {
        self.all().into_iter().find(|o| o.id == id)
    }

    fn append(&self, event: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        f.write_all(&line)?;
        f.sync_all()
    }

    /// Runs `f` with the store's lock held.
    fn locked<T>(&self, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file.with_extension("lock"))?;
        // SAFETY: flock on an fd we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    }

    pub fn handle(&self, req: &Req) -> Reply {
        match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["orders"]) => self.create(req),
            ("GET", ["orders"]) => {
                let Some(session) = req.field("session").filter(|s| valid_id(s)) else {
                    return Reply::error(400, "which session?");
                };
                let mut mine: Vec<Order> = self
                    .all()
                    .into_iter()
                    .filter(|o| o.session == session)
                    .collect();
                mine.reverse();
                Reply::json(200, &json!({ "orders": mine }))
            }
            ("GET", ["orders", id]) => match self.get(id) {
                Some(o) => Reply::json(200, &json!({ "order": o })),
                None => Reply::error(404, &format!("no order {id}")),
            },
            ("POST", ["orders", id, "pay"]) => self.pay(id, req),
            _ => Reply::error(404, "no such page"),
        }
    }

    fn create(&self, req: &Req) -> Reply {
        let Ok(c) = serde_json::from_str::<Checkout>(&req.body) else {
            return Reply::error(400, "expected {\"id\", \"session\", \"name\", \"address\"}");
        };
        if !valid_id(&c.id) || !valid_id(&c.session) {
            return Reply::error(400, "bad order id or session");
        }
        if c.name.trim().is_empty() || c.address.trim().is_empty() {
            return Reply::error(422, "a name and an address are needed to ship the order");
        }
        let done = self.locked(|| {
            if let Some(o) = self.get(&c.id) {
                if o.session != c.session {
                    return Reply::error(409, "that order id is taken");
                }
                // A retried checkout: its order, and the cart emptied (again).
                let _ = call("cart", "DELETE", &format!("/carts/{}", c.session), None);
                return Reply::json(200, &json!({ "order": o }));
            }
            let cart = match call("cart", "GET", &format!("/carts/{}", c.session), None) {
                Ok((200, v)) => v,
                Ok((s, v)) => return Reply::error(502, &format!("cart said {s}: {v}")),
                Err(e) => return Reply::error(503, &format!("cart: {e}")),
            };
            let products: Vec<Product> = match call("catalog", "GET", "/products", None) {
                Ok((200, v)) => serde_json::from_value(v["products"].clone()).unwrap_or_default(),
                Ok((s, v)) => return Reply::error(502, &format!("catalog said {s}: {v}")),
                Err(e) => return Reply::error(503, &format!("catalog: {e}")),
            };
            let mut lines = vec![];
            for item in cart["items"].as_array().cloned().unwrap_or_default() {
                let sku = item["sku"].as_str().unwrap_or("");
                let quantity = item["quantity"].as_u64().unwrap_or(0) as u32;
                let Some(p) = products.iter().find(|p| p.sku == sku) else {
                    return Reply::error(422, &format!("{sku} is no longer sold"));
                };
                lines.push(OrderLine {
                    sku: sku.into(),
                    name: p.name.clone(),
                    quantity,
                    price_cents: p.price_cents,
                });
            }
            if lines.is_empty() {
                return Reply::error(400, "the cart is empty");
            }
            let order = Order {
                id: c.id.clone(),
                session: c.session.clone(),
                name: c.name.trim().into(),
                address: c.address.trim().into(),
                total_cents: lines
                    .iter()
                    .map(|l| l.price_cents * u64::from(l.quantity))
                    .sum(),
                lines,
                created_ms: now_ms(),
                payment: None,
            };
            if let Err(e) = self.append(&Event::Created(order.clone())) {
                return Reply::error(500, &format!("store the order: {e}"));
            }
            let _ = call("cart", "DELETE", &format!("/carts/{}", c.session), None);
            Reply::json(201, &json!({ "order": order }))
        });
        done.unwrap_or_else(|e| Reply::error(500, &format!("lock the orders: {e}")))
    }

    fn pay(&self, id: &str, req: &Req) -> Reply {
        let Ok(pay) = serde_json::from_str::<Pay>(&req.body) else {
            return Reply::error(400, "expected {\"amount_cents\"}");
        };
        let Some(order) = self.get(id) else {
            return Reply::error(404, &format!("no order {id}"));
        };
        let asked = json!({ "order": id, "amount_cents": pay.amount_cents });
        let payment = match call("payments", "POST", "/payments", Some(&asked)) {
            Ok((200, v)) => v["payment"].as_str().unwrap_or_default().to_string(),
            Ok((status, v)) => {
                let error = v["error"].as_str().unwrap_or("refused by payments");
                return Reply::error(status, error);
            }
            Err(e) => return Reply::error(503, &format!("payments: {e}")),
        };
        if order.payment.is_none() {
            if let Err(e) = self.append(&Event::Paid {
                id: id.into(),
                payment,
            }) {
                return Reply::error(500, &format!("store the payment: {e}"));
            }
        }
        match self.get(id) {
            Some(o) => Reply::json(200, &json!({ "order": o })),
            None => Reply::error(500, "the order vanished"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_fold_from_their_events_and_a_torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("shop-orders-{}", crate::model::random_id()));
        let store = OrderStore::new(&dir).unwrap();
        let order = Order {
            id: "o1".into(),
            session: "s".into(),
            name: "Ada".into(),
            address: "1 Lane".into(),
            lines: vec![],
            total_cents: 800,
            created_ms: 1,
            payment: None,
        };
        store.append(&Event::Created(order.clone())).unwrap();
        store.append(&Event::Created(order)).unwrap();
        store
            .append(&Event::Paid {
                id: "o1".into(),
                payment: "pay-o1".into(),
            })
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&store.file)
            .unwrap()
            .write_all(b"{\"created\":{\"id\":\"o2\"")
            .unwrap();
        let all = OrderStore::new(&dir).unwrap().all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].payment.as_deref(), Some("pay-o1"));
        assert_eq!(store.handle(&Req::get("/orders/o2")).status, 404);
        assert_eq!(store.handle(&Req::get("/orders?session=s")).status, 200);
        assert_eq!(
            store
                .handle(&Req::post("/orders/o2/pay", r#"{"amount_cents":1}"#))
                .status,
            404
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
