//! The catalog: products with prices and stock. `GET /products`, `GET /products/SKU`
//! (stock as it is now), `POST /reservations` ({order, lines: [{sku, quantity}]}): takes the
//! order's stock, all lines or none, and answers the lines with their names and prices; an
//! order reserves once (a retried checkout takes nothing more); not enough of something is
//! a 409 that names what is left.
//!
//! What was taken is a journal in the data dir (the named volume at /data, shared by the
//! replicas, [`crate::journal`]), so every replica counts every order.

use crate::journal::{Fold, Journal};
use crate::model::Product;
use crate::serve::{Reply, Req};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
}

/// One order's stock, taken.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reservation {
    pub order: String,
    pub lines: Vec<Line>,
}

/// What the orders took: per product, and which orders did.
#[derive(Default)]
pub struct Taken {
    quantity: HashMap<String, u64>,
    orders: HashSet<String>,
}

impl Fold for Taken {
    type Event = Reservation;
    fn apply(&mut self, r: Reservation) {
        if self.orders.insert(r.order) {
            for l in r.lines {
                *self.quantity.entry(l.sku).or_default() += u64::from(l.quantity);
            }
        }
    }
}

impl Taken {
    /// The products with what is left of their stock.
    fn products(&self) -> Vec<Product> {
        let mut all = products();
        for p in &mut all {
            let taken = self.quantity.get(&p.sku).copied().unwrap_or(0);
            p.stock = u64::from(p.stock).saturating_sub(taken) as u32;
        }
        all
    }
}

pub struct Catalog {
    journal: Journal<Taken>,
}

pub fn products() -> Vec<Product> {
    let p = |sku: &str, name: &str, description: &str, price_cents, stock, color: &str| Product {
        sku: sku.into(),
        name: name.into(),
        description: description.into(),
        price_cents,
        stock,
        color: color.into(),
    };
    vec![
        p(
            "tea",
            "Tea",
            "Loose-leaf green tea from a small garden, 100 g. Brews three times.",
            400,
            100_000,
            "#5a8f3c",
        ),
        p(
            "coffee",
            "Coffee",
            "Whole beans, medium roast, 250 g. Chocolate and a little cherry.",
            650,
            100_000,
            "#6b4226",
        ),
        p(
            "mug",
            "Mug",
            "A stoneware mug that holds 300 ml and keeps it warm.",
            1200,
            40,
            "#2e6fa7",
        ),
        p(
            "teapot",
            "Teapot",
            "A cast-iron teapot for four cups, with a steel strainer.",
            3400,
            12,
            "#38393d",
        ),
    ]
}

impl Catalog {
    pub fn new(data: &Path) -> std::io::Result<Catalog> {
        Ok(Catalog {
            journal: Journal::open(data, "reservations.jsonl")?,
        })
    }

    fn products(&self) -> std::io::Result<Vec<Product>> {
        self.journal.read(|taken| taken.products())
    }

    pub fn handle(&self, req: &Req) -> Reply {
        let served_by = crate::model::instance();
        match (req.method.as_str(), req.segments().as_slice()) {
            ("GET", ["products"]) => match self.products() {
                Ok(all) => Reply::json(200, &json!({ "served_by": served_by, "products": all })),
                Err(e) => Reply::error(500, &format!("the stock: {e}")),
            },
            ("GET", ["products", sku]) => match self.products() {
                Ok(all) => match all.into_iter().find(|p| p.sku == *sku) {
                    Some(p) => Reply::json(200, &json!({ "served_by": served_by, "product": p })),
                    None => Reply::error(404, &format!("no product {sku}")),
                },
                Err(e) => Reply::error(500, &format!("the stock: {e}")),
            },
            ("POST", ["reservations"]) => self.reserve(req),
            _ => Reply::error(404, "no such page"),
        }
    }

    fn reserve(&self, req: &Req) -> Reply {
        let Ok(r) = serde_json::from_str::<Reservation>(&req.body) else {
            return Reply::error(
                400,
                "expected {\"order\", \"lines\": [{\"sku\", \"quantity\"}]}",
            );
        };
        if !crate::model::valid_id(&r.order) {
            return Reply::error(400, "bad order id");
        }
        let done = self.journal.locked(|j| {
            let (again, left) = j.read(|t| (t.orders.contains(&r.order), t.products()))?;
            // The answer carries the lines at the catalog's names and prices: the order is
            // made from it, with no second call.
            let priced = |left: &[Product]| -> Vec<serde_json::Value> {
                r.lines
                    .iter()
                    .filter_map(|l| {
                        let p = left.iter().find(|p| p.sku == l.sku)?;
                        Some(json!({"sku": p.sku, "name": p.name, "quantity": l.quantity, "price_cents": p.price_cents}))
                    })
                    .collect()
            };
            if again {
                return Ok(Reply::json(
                    200,
                    &json!({ "reserved": r.order, "lines": priced(&left) }),
                ));
            }
            let mut wanted: HashMap<&str, u64> = HashMap::new();
            for l in &r.lines {
                *wanted.entry(l.sku.as_str()).or_default() += u64::from(l.quantity);
            }
            let mut short = vec![];
            for (sku, quantity) in &wanted {
                let Some(p) = left.iter().find(|p| p.sku == *sku) else {
                    return Ok(Reply::error(422, &format!("{sku} is no longer sold")));
                };
                if *quantity > u64::from(p.stock) {
                    short.push((p.name.clone(), p.sku.clone(), p.stock));
                }
            }
            if !short.is_empty() {
                short.sort();
                let said: Vec<String> = short
                    .iter()
                    .map(|(name, _, left)| match left {
                        0 => format!("{name} is sold out"),
                        n => format!("only {n} {name} left"),
                    })
                    .collect();
                let short: Vec<_> = short
                    .iter()
                    .map(|(_, sku, left)| json!({"sku": sku, "left": left}))
                    .collect();
                return Ok(Reply::json(
                    409,
                    &json!({ "error": said.join(", "), "short": short }),
                ));
            }
            let answer = json!({ "reserved": r.order, "lines": priced(&left) });
            j.append(r)?;
            Ok(Reply::json(201, &answer))
        });
        done.and_then(|r| r)
            .unwrap_or_else(|e| Reply::error(500, &format!("the stock: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (Catalog, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("shop-catalog-{}", crate::model::random_id()));
        (Catalog::new(&dir).unwrap(), dir)
    }

    fn stock(c: &Catalog, sku: &str) -> u64 {
        let got = c.handle(&Req::get(&format!("/products/{sku}")));
        let v: serde_json::Value = serde_json::from_str(&got.body).unwrap();
        v["product"]["stock"].as_u64().unwrap()
    }

    fn reserve(c: &Catalog, order: &str, lines: &str) -> Reply {
        c.handle(&Req::post(
            "/reservations",
            &format!(r#"{{"order":"{order}","lines":{lines}}}"#),
        ))
    }

    #[test]
    fn products_are_listed_and_unknown_ones_are_404() {
        let (c, dir) = catalog();
        let all = c.handle(&Req::get("/products"));
        assert_eq!(all.status, 200);
        assert!(all.body.contains("\"sku\":\"tea\"") && all.body.contains("\"price_cents\":400"));
        assert_eq!(c.handle(&Req::get("/products/mug")).status, 200);
        assert_eq!(c.handle(&Req::get("/products/nope")).status, 404);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_order_takes_its_stock_once_and_all_or_nothing() {
        let (c, dir) = catalog();
        let teapots = stock(&c, "teapot");
        let mugs = stock(&c, "mug");
        let two = r#"[{"sku":"teapot","quantity":2},{"sku":"mug","quantity":1}]"#;
        let taken = reserve(&c, "o1", two);
        assert_eq!(taken.status, 201);
        assert!(
            taken.body.contains(r#""name":"Teapot""#)
                && taken.body.contains(r#""price_cents":3400"#),
            "{}",
            taken.body
        );
        assert_eq!(
            (stock(&c, "teapot"), stock(&c, "mug")),
            (teapots - 2, mugs - 1)
        );
        // A retried checkout: answered, nothing more taken.
        assert_eq!(reserve(&c, "o1", two).status, 200);
        assert_eq!(stock(&c, "teapot"), teapots - 2);
        // More teapots than are left: 409 naming what is left; the mug is not taken either.
        let too_many =
            format!(r#"[{{"sku":"teapot","quantity":{teapots}}},{{"sku":"mug","quantity":1}}]"#);
        let refused = reserve(&c, "o2", &too_many);
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert!(
            refused
                .body
                .contains(&format!("only {} Teapot left", teapots - 2)),
            "{}",
            refused.body
        );
        assert_eq!(stock(&c, "mug"), mugs - 1);
        // Another replica on the same volume, and a restarted one, count the same.
        let other = Catalog::new(&dir).unwrap();
        assert_eq!(stock(&other, "teapot"), teapots - 2);
        let rest = format!(r#"[{{"sku":"teapot","quantity":{}}}]"#, teapots - 2);
        assert_eq!(reserve(&other, "o3", &rest).status, 201);
        let sold_out = reserve(&c, "o4", r#"[{"sku":"teapot","quantity":1}]"#);
        assert_eq!(sold_out.status, 409);
        assert!(
            sold_out.body.contains("Teapot is sold out"),
            "{}",
            sold_out.body
        );
        assert_eq!(
            reserve(&c, "o5", r#"[{"sku":"nope","quantity":1}]"#).status,
            422
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
