//! The front: the shop's HTML pages, on the ingress port. A customer is a `session` cookie
//! (set on the first visit). Products come from catalog, the cart from cart, orders and
//! payments through orders. Every error is a real status with a page a customer can read.

use crate::client::json as call;
use crate::model::{money, parse_money, random_id, valid_id, Order, Product};
use crate::pages::{add_form, escape, layout, order_lines, picture, problem, product_card};
use crate::serve::{Reply, Req};
use serde_json::{json, Value};

/// The session of `req`, and whether it is new (then the reply sets the cookie).
fn session(req: &Req) -> (String, bool) {
    match req.cookie("session").filter(|s| valid_id(s)) {
        Some(s) => (s, false),
        None => (random_id(), true),
    }
}

fn page(status: u16, title: &str, body: &str) -> Reply {
    Reply::html(status, layout(title, body))
}

fn failure(status: u16, title: &str, message: &str) -> Reply {
    Reply::html(status, problem(title, message))
}

/// What a customer sees when a service answered with an error (or not at all).
fn trouble(what: &str, answer: Result<(u16, Value), crate::client::CallError>) -> Reply {
    match answer {
        Ok((status, v)) if (400..500).contains(&status) => {
            let msg = v["error"].as_str().unwrap_or("That did not work.");
            let title = match status {
                404 => "Not found",
                422 => "Please check the details",
                409 => "Already taken",
                _ => "That did not work",
            };
            failure(status, title, &capitalised(msg))
        }
        Ok((status, _)) => {
            eprintln!("{what}: answered {status}");
            failure(
                502,
                "Something went wrong",
                "Part of the shop is having trouble. Please try again in a moment.",
            )
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            failure(
                503,
                "The shop is busy",
                "Part of the shop is not answering right now. Please try again in a moment.",
            )
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn products() -> Result<Vec<Product>, Reply> {
    match call("catalog", "GET", "/products", None) {
        Ok((200, v)) => Ok(serde_json::from_value(v["products"].clone()).unwrap_or_default()),
        other => Err(trouble("catalog", other)),
    }
}

fn order_of(id: &str, session: &str) -> Result<Order, Reply> {
    let missing = || failure(404, "Not found", "There is no such order.");
    if !valid_id(id) {
        return Err(missing());
    }
    match call("orders", "GET", &format!("/orders/{id}"), None) {
        Ok((200, v)) => match serde_json::from_value::<Order>(v["order"].clone()) {
            Ok(o) if o.session == session => Ok(o),
            _ => Err(missing()),
        },
        Ok((404, _)) => Err(missing()),
        other => Err(trouble("orders", other)),
    }
}

pub fn handle(req: &Req) -> Reply {
    let (session, new) = session(req);
    let reply = route(req, &session).unwrap_or_else(|r| r);
    if new {
        reply.with_header(
            "Set-Cookie",
            &format!("session={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000"),
        )
    } else {
        reply
    }
}

fn route(req: &Req, session: &str) -> Result<Reply, Reply> {
    Ok(match (req.method.as_str(), req.segments().as_slice()) {
        ("GET", []) => {
            let cards: String = products()?
                .iter()
                .map(|p| product_card(p, &random_id()))
                .collect();
            page(
                200,
                "Products",
                &format!(
                    "<h1>Tea, coffee and the things for them</h1><div class=\"grid\">{cards}</div>"
                ),
            )
        }
        ("GET", ["products", sku]) => {
            let all = products()?;
            let Some(p) = all.iter().find(|p| p.sku == *sku) else {
                return Err(failure(404, "Not found", "We do not sell that product."));
            };
            page(
                200,
                &p.name,
                &format!(
                "<div class=\"card\">{pic}<h1>{n}</h1><p>{d}</p><p class=\"price\">{price} EUR</p>\
<p class=\"muted\">{stock} in stock</p>{form}</div>",
                pic = picture(p), n = escape(&p.name), d = escape(&p.description),
                price = money(p.price_cents), stock = p.stock, form = add_form(p, &random_id())),
            )
        }
        ("POST", ["cart", "add"]) => {
            let sku = req.field("sku").unwrap_or_default();
            if !products()?.iter().any(|p| p.sku == sku) {
                return Err(failure(404, "Not found", "We do not sell that product."));
            }
            let request = req.field("request").filter(|r| valid_id(r));
            let add = json!({ "sku": sku, "quantity": 1, "request": request });
            match call(
                "cart",
                "POST",
                &format!("/carts/{session}/items"),
                Some(&add),
            ) {
                Ok((200, _)) => Reply::see_other("/cart"),
                other => return Err(trouble("cart", other)),
            }
        }
        ("GET", ["cart"]) => {
            let (lines, total) = cart_lines(session)?;
            let body = if lines.is_empty() {
                "<h1>Your cart</h1><div class=\"card\"><p>Your cart is empty.</p><a class=\"button\" href=\"/\">See the products</a></div>".to_string()
            } else {
                format!("<h1>Your cart</h1>{lines}<p><a class=\"button\" href=\"/checkout\">Check out · {} EUR</a></p>", money(total))
            };
            page(200, "Cart", &body)
        }
        ("GET", ["checkout"]) => {
            let (lines, total) = cart_lines(session)?;
            if lines.is_empty() {
                return Err(failure(
                    400,
                    "Your cart is empty",
                    "Add a product to your cart before you check out.",
                ));
            }
            page(200, "Checkout", &format!(
                "<h1>Checkout</h1>{lines}<form class=\"card\" method=\"post\" action=\"/checkout\">\
<input type=\"hidden\" name=\"id\" value=\"{id}\"><label>Name <input name=\"name\" required autocomplete=\"name\"></label>\
<label>Address <input name=\"address\" required autocomplete=\"street-address\"></label>\
<button>Place the order · {t} EUR</button></form>", id = random_id(), t = money(total)))
        }
        ("POST", ["checkout"]) => {
            let id = req.field("id").unwrap_or_default();
            let order = json!({
                "id": id, "session": session,
                "name": req.field("name").unwrap_or_default(),
                "address": req.field("address").unwrap_or_default(),
            });
            match call("orders", "POST", "/orders", Some(&order)) {
                Ok((200 | 201, _)) => Reply::see_other(&format!("/orders/{id}/pay")),
                Ok((400, v)) if v["error"] == "the cart is empty" => {
                    return Err(failure(
                        400,
                        "Your cart is empty",
                        "Add a product to your cart before you check out.",
                    ))
                }
                Ok((409, v)) if v["short"].is_array() => {
                    let said = v["error"].as_str().unwrap_or("not enough stock");
                    return Err(failure(
                        409,
                        "Not enough in stock",
                        &format!(
                            "Sorry: {said}. Nothing was charged: change your cart and check out again."
                        ),
                    ));
                }
                other => return Err(trouble("orders", other)),
            }
        }
        ("GET", ["orders"]) => {
            let list: Vec<Order> =
                match call("orders", "GET", &format!("/orders?session={session}"), None) {
                    Ok((200, v)) => serde_json::from_value(v["orders"].clone()).unwrap_or_default(),
                    other => return Err(trouble("orders", other)),
                };
            let rows: String = list.iter().map(|o| format!(
                "<tr><td><a href=\"/orders/{id}\">{id}</a></td><td>{items}</td><td>{t} EUR</td><td>{s}</td></tr>",
                id = escape(&o.id), items = o.lines.iter().map(|l| l.quantity).sum::<u32>(),
                t = money(o.total_cents), s = if o.payment.is_some() { "paid" } else { "awaiting payment" })).collect();
            let body = if list.is_empty() {
                "<h1>Your orders</h1><div class=\"card\"><p>No orders yet.</p></div>".to_string()
            } else {
                format!("<h1>Your orders</h1><table><tr><th>Order</th><th>Items</th><th>Total</th><th>Status</th></tr>{rows}</table>")
            };
            page(200, "Orders", &body)
        }
        ("GET", ["orders", id]) => {
            let o = order_of(id, session)?;
            let status = match &o.payment {
                Some(_) => format!("<div class=\"card ok\"><h1>Thank you, {}!</h1><p>Order {} is paid and on its way to {}.</p></div>",
                    escape(&o.name), escape(&o.id), escape(&o.address)),
                None => format!("<div class=\"card\"><h1>Order {}</h1><p>Awaiting payment. <a class=\"button\" href=\"/orders/{}/pay\">Pay {} EUR</a></p></div>",
                    escape(&o.id), escape(&o.id), money(o.total_cents)),
            };
            page(200, "Your order", &format!("{status}{}", order_lines(&o)))
        }
        ("GET", ["orders", id, "pay"]) => {
            let o = order_of(id, session)?;
            if o.payment.is_some() {
                return Ok(Reply::see_other(&format!("/orders/{}", o.id)));
            }
            page(200, "Payment", &format!(
                "<h1>Pay for order {id}</h1>{lines}<form class=\"card\" method=\"post\" action=\"/orders/{id}/pay\">\
<label>Card number <input name=\"card\" inputmode=\"numeric\" value=\"4242 4242 4242 4242\"></label>\
<label>Amount (EUR) <input name=\"amount\" inputmode=\"decimal\" value=\"{t}\"></label>\
<button>Pay</button></form>", id = escape(&o.id), lines = order_lines(&o), t = money(o.total_cents)))
        }
        ("POST", ["orders", id, "pay"]) => {
            let Some(amount) = req.field("amount").as_deref().and_then(parse_money) else {
                return Err(failure(
                    400,
                    "Please check the amount",
                    "The amount must be a number of euros, such as 12.50.",
                ));
            };
            if !valid_id(id) {
                return Err(failure(404, "Not found", "There is no such order."));
            }
            // The owner's own order only: another session's id is as good as unknown.
            let o = order_of(id, session)?;
            match call(
                "orders",
                "POST",
                &format!("/orders/{}/pay", o.id),
                Some(&json!({ "amount_cents": amount })),
            ) {
                Ok((200, _)) => Reply::see_other(&format!("/orders/{}", o.id)),
                other => return Err(trouble("orders", other)),
            }
        }
        _ => {
            return Err(failure(
                404,
                "Not found",
                "There is no such page in the shop.",
            ))
        }
    })
}

/// The cart as an HTML table, and its total at today's prices.
fn cart_lines(session: &str) -> Result<(String, u64), Reply> {
    let cart = match call("cart", "GET", &format!("/carts/{session}"), None) {
        Ok((200, v)) => v,
        other => return Err(trouble("cart", other)),
    };
    let items = cart["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Ok((String::new(), 0));
    }
    let all = products()?;
    let (mut rows, mut total) = (String::new(), 0);
    for item in items {
        let Some(p) = all.iter().find(|p| item["sku"] == p.sku.as_str()) else {
            continue;
        };
        let q = item["quantity"].as_u64().unwrap_or(0);
        total += q * p.price_cents;
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{q}</td><td>{} EUR</td></tr>",
            escape(&p.name),
            money(q * p.price_cents)
        ));
    }
    Ok((format!("<table><tr><th>Product</th><th>Qty</th><th>Price</th></tr>{rows}<tr><th colspan=\"2\">Total</th><th>{} EUR</th></tr></table>", money(total)), total))
}
