//! Payments: `POST /payments` ({order, amount_cents}). It learns of an order by asking
//! orders for it (GET http://orders/orders/ID), the one durable record of what is owed, so
//! an unknown order is refused (404) and an amount other than the order's total is refused
//! (422). Idempotent by order id: the payment's id is derived from the order's, so paying
//! again (a retry, on either replica) answers with the same payment and charges nothing new.
//! Payments keeps no state of its own, so its replicas need no shared volume.

use crate::client::json as call;
use crate::serve::{Reply, Req};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Payment {
    order: String,
    amount_cents: u64,
}

pub fn handle(req: &Req) -> Reply {
    if (req.method.as_str(), req.path.as_str()) != ("POST", "/payments") {
        return Reply::error(404, "no such page");
    }
    let Ok(p) = serde_json::from_str::<Payment>(&req.body) else {
        return Reply::error(400, "expected {\"order\", \"amount_cents\"}");
    };
    if !crate::model::valid_id(&p.order) {
        return Reply::error(400, "bad order id");
    }
    let order = match call("orders", "GET", &format!("/orders/{}", p.order), None) {
        Ok((200, v)) => v["order"].clone(),
        Ok((404, _)) => return Reply::error(404, &format!("unknown order {}", p.order)),
        Ok((s, v)) => return Reply::error(502, &format!("orders said {s}: {v}")),
        Err(e) => return Reply::error(503, &format!("orders: {e}")),
    };
    let total = order["total_cents"].as_u64().unwrap_or(0);
    if p.amount_cents != total {
        return Reply::error(
            422,
            &format!(
                "the amount {} EUR is not the order's total, {} EUR",
                crate::model::money(p.amount_cents),
                crate::model::money(total)
            ),
        );
    }
    Reply::json(
        200,
        &json!({
            "payment": format!("pay-{}", p.order),
            "order": p.order,
            "amount_cents": total,
            "served_by": crate::model::instance(),
        }),
    )
}
