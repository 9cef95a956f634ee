//! The cart: one per session, a JSON file under the data dir (the named volume at /data),
//! written to a temp file, fsynced and renamed, under a lock that the replicas sharing the
//! volume respect. `GET /carts/S`, `POST /carts/S/items` ({sku, quantity, request}),
//! `DELETE /carts/S`.

use crate::model::{valid_id, Cart, CartLine};
use crate::serve::{Reply, Req};
use serde::Deserialize;
use serde_json::json;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// How many add ids a cart remembers for retries.
const REMEMBERED: usize = 32;

pub struct CartStore {
    dir: PathBuf,
}

#[derive(Deserialize)]
struct Add {
    sku: String,
    #[serde(default = "one")]
    quantity: u32,
    #[serde(default)]
    request: Option<String>,
}

fn one() -> u32 {
    1
}

impl CartStore {
    pub fn new(data: &Path) -> std::io::Result<CartStore> {
        let dir = data.join("carts");
        std::fs::create_dir_all(&dir)?;
        Ok(CartStore { dir })
    }

    fn path(&self, session: &str) -> PathBuf {
        self.dir.join(format!("{session}.json"))
    }

    /// Runs `f` with the carts' lock held (flock on one lock file: carts change rarely and
    /// quickly, and one file leaves nothing behind per session).
    fn locked<T>(&self, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(".lock"))?;
        // SAFETY: flock on an fd we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    }

    pub fn load(&self, session: &str) -> Cart {
        std::fs::read(self.path(session))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Cart {
                session: session.into(),
                ..Cart::default()
            })
    }

    fn save(&self, cart: &Cart) -> std::io::Result<()> {
        let path = self.path(&cart.session);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(cart).unwrap_or_default())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Adds `quantity` of `sku`; an add whose request id was seen already changes nothing.
    pub fn add(
        &self,
        session: &str,
        sku: &str,
        quantity: u32,
        request: Option<&str>,
    ) -> std::io::Result<Cart> {
        self.locked(|| {
            let mut cart = self.load(session);
            if let Some(r) = request {
                if cart.requests.iter().any(|x| x == r) {
                    return Ok(cart);
                }
                cart.requests.push(r.to_string());
                let extra = cart.requests.len().saturating_sub(REMEMBERED);
                cart.requests.drain(..extra);
            }
            match cart.items.iter_mut().find(|l| l.sku == sku) {
                Some(line) => line.quantity += quantity,
                None => cart.items.push(CartLine {
                    sku: sku.into(),
                    quantity,
                }),
            }
            self.save(&cart)?;
            Ok(cart)
        })?
    }

    pub fn empty(&self, session: &str) -> std::io::Result<()> {
        self.locked(|| match std::fs::remove_file(self.path(session)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })?
    }

    pub fn handle(&self, req: &Req) -> Reply {
        let served_by = crate::model::instance();
        let segments = req.segments();
        let session = match segments.as_slice() {
            ["carts", s, ..] if valid_id(s) => *s,
            ["carts", ..] => return Reply::error(400, "bad session"),
            _ => return Reply::error(404, "no such page"),
        };
        let answer = |cart: Cart| {
            Reply::json(
                200,
                &json!({ "served_by": served_by, "session": cart.session, "items": cart.items }),
            )
        };
        match (req.method.as_str(), &segments[2..]) {
            ("GET", []) => answer(self.load(session)),
            ("DELETE", []) => match self.empty(session) {
                Ok(()) => answer(self.load(session)),
                Err(e) => Reply::error(500, &format!("empty the cart: {e}")),
            },
            ("POST", ["items"]) => {
                let Ok(add) = serde_json::from_str::<Add>(&req.body) else {
                    return Reply::error(400, "expected {\"sku\", \"quantity\"}");
                };
                if !valid_id(&add.sku) || add.quantity == 0 || add.quantity > 99 {
                    return Reply::error(422, "bad sku or quantity");
                }
                if add.request.as_deref().is_some_and(|r| !valid_id(r)) {
                    return Reply::error(400, "bad request id");
                }
                match self.add(session, &add.sku, add.quantity, add.request.as_deref()) {
                    Ok(cart) => answer(cart),
                    Err(e) => Reply::error(500, &format!("save the cart: {e}")),
                }
            }
            _ => Reply::error(404, "no such page"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_survives_a_new_store_and_retried_adds_count_once() {
        let dir = std::env::temp_dir().join(format!("shop-cart-{}", crate::model::random_id()));
        let store = CartStore::new(&dir).unwrap();
        store.add("s1", "tea", 1, Some("r1")).unwrap();
        store.add("s1", "tea", 1, Some("r1")).unwrap();
        store.add("s1", "mug", 2, None).unwrap();
        let again = CartStore::new(&dir).unwrap();
        let r = again.handle(&Req::get("/carts/s1"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let items =
            serde_json::json!([{"sku": "tea", "quantity": 1}, {"sku": "mug", "quantity": 2}]);
        assert_eq!(v["items"], items, "{}", r.body);
        let bad = again.handle(&Req::post(
            "/carts/s1/items",
            r#"{"sku":"tea","quantity":0}"#,
        ));
        assert_eq!(bad.status, 422);
        assert_eq!(again.handle(&Req::get("/carts/..")).status, 400);
        again.empty("s1").unwrap();
        assert!(again.load("s1").items.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
