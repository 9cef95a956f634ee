//! Orders: created from a session's cart with prices from the catalog, stored durably, paid
//! through payments, after the catalog reserved their stock. The store is a journal of
//! events in the data dir (the named volume at /data, [`crate::journal`]): folded into an
//! index once at start, and after that only what was appended is read.
//!
//! `POST /orders` ({id, session, name, address}): the order `id` comes from the client's
//!   checkout form, so a retried checkout finds its order instead of making a second one.
//!   The catalog reserves the lines' stock by the same id (a retry reserves nothing more);
//!   not enough stock is a 409 naming what is short.
//! `GET /orders/ID`, `GET /orders?session=S` (that session's orders, newest first).
//! `POST /orders/ID/pay` ({amount_cents}): asks payments, which asks back for the order
//!   (GET /orders/ID) to check the amount; paying a paid order again is answered as paid.

use crate::client::json as call;
use crate::journal::{Fold, Journal, Writer};
use crate::model::{now_ms, valid_id, Order, OrderLine};
use crate::serve::{Reply, Req};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Created(Order),
    Paid { id: String, payment: String },
}

/// Every order, in the order they were created, and where each is.
#[derive(Default)]
pub struct Orders {
    list: Vec<Order>,
    index: HashMap<String, usize>,
}

impl Orders {
    pub fn get(&self, id: &str) -> Option<&Order> {
        self.index.get(id).map(|i| &self.list[*i])
    }
}

impl Fold for Orders {
    type Event = Event;
    fn apply(&mut self, event: Event) {
        match event {
            Event::Created(o) => {
                if !self.index.contains_key(&o.id) {
                    self.index.insert(o.id.clone(), self.list.len());
                    self.list.push(o);
                }
            }
            Event::Paid { id, payment } => {
                if let Some(i) = self.index.get(&id) {
                    self.list[*i].payment.get_or_insert(payment);
                }
            }
        }
    }
}

pub struct OrderStore {
    journal: Journal<Orders>,
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
        Ok(OrderStore {
            journal: Journal::open(data, "orders.jsonl")?,
        })
    }

    /// The session's orders, newest first.
    fn of_session(&self, session: &str) -> std::io::Result<Vec<Order>> {
        self.journal.read(|orders| {
            orders
                .list
                .iter()
                .rev()
                .filter(|o| o.session == session)
                .cloned()
                .collect()
        })
    }

    pub fn get(&self, id: &str) -> Option<Order> {
        self.journal.read(|o| o.get(id).cloned()).ok().flatten()
    }

    pub fn handle(&self, req: &Req) -> Reply {
        match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["orders"]) => self.create(req),
            ("GET", ["orders"]) => {
                let Some(session) = req.field("session").filter(|s| valid_id(s)) else {
                    return Reply::error(400, "which session?");
                };
                match self.of_session(&session) {
                    Ok(mine) => Reply::json(200, &json!({ "orders": mine })),
                    Err(e) => Reply::error(500, &format!("read the orders: {e}")),
                }
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
        // Checkouts one at a time (across instances too): a second form sent for the same
        // cart finds it empty.
        let done = self.journal.locked(|j| {
            if let Some(o) = j.read(|orders| orders.get(&c.id).cloned())? {
                if o.session != c.session {
                    return Ok(Reply::error(409, "that order id is taken"));
                }
                // A retried checkout: its order, and the cart emptied (again).
                let _ = call("cart", "DELETE", &format!("/carts/{}", c.session), None);
                return Ok(Reply::json(200, &json!({ "order": o })));
            }
            Ok(place(j, &c))
        });
        done.and_then(|r| r)
            .unwrap_or_else(|e| Reply::error(500, &format!("the orders' store: {e}")))
    }

    fn pay(&self, id: &str, req: &Req) -> Reply {
        let Ok(pay) = serde_json::from_str::<Pay>(&req.body) else {
            return Reply::error(400, "expected {\"amount_cents\"}");
        };
        if self.get(id).is_none() {
            return Reply::error(404, &format!("no order {id}"));
        }
        let asked = json!({ "order": id, "amount_cents": pay.amount_cents });
        let payment = match call("payments", "POST", "/payments", Some(&asked)) {
            Ok((200, v)) => v["payment"].as_str().unwrap_or_default().to_string(),
            Ok((status, v)) => {
                let error = v["error"].as_str().unwrap_or("refused by payments");
                return Reply::error(status, error);
            }
            Err(e) => return Reply::error(503, &format!("payments: {e}")),
        };
        let paid = self.journal.locked(|j| {
            if j.read(|orders| orders.get(id).is_some_and(|o| o.payment.is_none()))? {
                j.append(Event::Paid {
                    id: id.into(),
                    payment,
                })?;
            }
            j.read(|orders| orders.get(id).cloned())
        });
        let paid = paid.and_then(|r| r);
        match paid {
            Ok(Some(o)) => Reply::json(200, &json!({ "order": o })),
            Ok(None) => Reply::error(500, "the order vanished"),
            Err(e) => Reply::error(500, &format!("store the payment: {e}")),
        }
    }
}

/// Makes the order from the session's cart: the catalog reserves its stock and prices it;
/// then it is stored and the cart emptied.
fn place(j: &Writer<'_, Orders>, c: &Checkout) -> Reply {
    let cart = match call("cart", "GET", &format!("/carts/{}", c.session), None) {
        Ok((200, v)) => v,
        Ok((s, v)) => return Reply::error(502, &format!("cart said {s}: {v}")),
        Err(e) => return Reply::error(503, &format!("cart: {e}")),
    };
    let wanted: Vec<serde_json::Value> = cart["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|item| json!({"sku": item["sku"], "quantity": item["quantity"]}))
        .collect();
    if wanted.is_empty() {
        return Reply::error(400, "the cart is empty");
    }
    // The catalog takes the lines' stock (by the order's id: a retry after a crash here
    // takes nothing more) and answers them at its prices; not enough of something is the
    // customer's 409.
    let reserve = json!({ "order": c.id, "lines": wanted });
    let lines: Vec<OrderLine> = match call("catalog", "POST", "/reservations", Some(&reserve)) {
        Ok((200 | 201, v)) => serde_json::from_value(v["lines"].clone()).unwrap_or_default(),
        Ok((status @ (409 | 422), v)) => return Reply::json(status, &v),
        Ok((s, v)) => return Reply::error(502, &format!("catalog said {s}: {v}")),
        Err(e) => return Reply::error(503, &format!("catalog: {e}")),
    };
    if lines.is_empty() {
        return Reply::error(502, "the catalog priced none of the cart's lines");
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
    if let Err(e) = j.append(Event::Created(order.clone())) {
        return Reply::error(500, &format!("store the order: {e}"));
    }
    let _ = call("cart", "DELETE", &format!("/carts/{}", c.session), None);
    Reply::json(201, &json!({ "order": order }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        let append = |e| store.journal.locked(|j| j.append(e)).unwrap().unwrap();
        append(Event::Created(order.clone()));
        append(Event::Created(order));
        append(Event::Paid {
            id: "o1".into(),
            payment: "pay-o1".into(),
        });
        std::fs::OpenOptions::new()
            .append(true)
            .open(store.journal.path())
            .unwrap()
            .write_all(b"{\"created\":{\"id\":\"o2\"")
            .unwrap();
        let again = OrderStore::new(&dir).unwrap();
        let all = again.of_session("s").unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].payment.as_deref(), Some("pay-o1"));
        // Appended by another instance (a rolling update): seen without reading it all again.
        let mut later = all[0].clone();
        later.id = "o3".into();
        again
            .journal
            .locked(|j| j.append(Event::Created(later)))
            .unwrap()
            .unwrap();
        assert_eq!(store.get("o3").map(|o| o.id).as_deref(), Some("o3"));
        assert_eq!(
            store
                .handle(&Req::get("/orders?session=s"))
                .body
                .matches("\"id\"")
                .count(),
            2
        );
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
