//! The front's HTML: one page layout with its own CSS (no external assets), product
//! pictures drawn as inline SVG, readable on a phone.

use crate::model::{money, Order, Product};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,sans-serif;\
color:#222;background:#f6f4ef}header{background:#1f3a5f;color:#fff;padding:.8rem 1rem;display:flex;\
gap:1rem;align-items:center;flex-wrap:wrap}header a{color:#fff;text-decoration:none}\
header .brand{font-weight:700;font-size:1.2rem;margin-right:auto}main{max-width:56rem;margin:0 auto;\
padding:1rem}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(14rem,1fr));gap:1rem}\
.card{background:#fff;border-radius:.6rem;padding:1rem;box-shadow:0 1px 3px #0002}\
.card svg{width:100%;height:auto;border-radius:.4rem}.price{font-weight:700;color:#1f3a5f}\
button,.button{background:#e07a2f;color:#fff;border:0;border-radius:.4rem;padding:.6rem 1rem;\
font-size:1rem;cursor:pointer;text-decoration:none;display:inline-block}\
input{font-size:1rem;padding:.5rem;width:100%;border:1px solid #bbb;border-radius:.4rem}\
label{display:block;margin:.6rem 0}table{width:100%;border-collapse:collapse;background:#fff}\
td,th{padding:.5rem;border-bottom:1px solid #ddd;text-align:left}.error{border-left:.4rem solid #c0392b}\
.ok{border-left:.4rem solid #2e8b57}.muted{color:#666;font-size:.9rem}h2 a{color:inherit;text-decoration:none}\
h1{font-size:1.6rem}";

/// A whole page around `body`.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{t} · Tug shop</title><style>{STYLE}</style></head><body><header>\
<a class=\"brand\" href=\"/\">Tug shop</a><a href=\"/\">Products</a><a href=\"/cart\">Cart</a>\
<a href=\"/orders\">Orders</a></header><main>{body}</main></body></html>",
        t = escape(title)
    )
}

/// A product's picture: a tinted tile with its initial, as inline SVG.
pub fn picture(p: &Product) -> String {
    let initial = p.name.chars().next().unwrap_or('?');
    format!(
        "<svg viewBox=\"0 0 160 100\" role=\"img\" aria-label=\"{n}\"><rect width=\"160\" height=\"100\" \
fill=\"{c}\"/><circle cx=\"80\" cy=\"50\" r=\"32\" fill=\"#fff\" opacity=\".25\"/><text x=\"80\" y=\"64\" \
font-size=\"40\" text-anchor=\"middle\" fill=\"#fff\" font-family=\"sans-serif\">{i}</text></svg>",
        n = escape(&p.name),
        c = escape(&p.color),
        i = escape(&initial.to_string())
    )
}

/// The "add to cart" form; `request` makes a retried POST count once.
pub fn add_form(p: &Product, request: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/cart/add\"><input type=\"hidden\" name=\"sku\" value=\"{s}\">\
<input type=\"hidden\" name=\"request\" value=\"{r}\"><button>Add to cart</button></form>",
        s = escape(&p.sku),
        r = escape(request)
    )
}

pub fn product_card(p: &Product, request: &str) -> String {
    format!(
        "<div class=\"card\"><a href=\"/products/{s}\">{pic}</a><h2><a href=\"/products/{s}\">{n}</a></h2>\
<p>{d}</p><p><span class=\"price\">{price} EUR</span> <span class=\"muted\">· {stock} in stock</span></p>{form}</div>",
        s = escape(&p.sku),
        pic = picture(p),
        n = escape(&p.name),
        d = escape(&p.description),
        price = money(p.price_cents),
        stock = p.stock,
        form = add_form(p, request)
    )
}

/// A page that tells a customer what went wrong and where to go next.
pub fn problem(title: &str, message: &str) -> String {
    layout(
        title,
        &format!(
            "<div class=\"card error\"><h1>{}</h1><p>{}</p><p><a class=\"button\" href=\"/\">Back to the shop</a></p></div>",
            escape(title),
            escape(message)
        ),
    )
}

pub fn order_lines(order: &Order) -> String {
    let mut rows = String::new();
    for l in &order.lines {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{} EUR</td></tr>",
            escape(&l.name),
            l.quantity,
            money(l.price_cents * u64::from(l.quantity))
        ));
    }
    format!(
        "<table><tr><th>Product</th><th>Qty</th><th>Price</th></tr>{rows}<tr><th colspan=\"2\">Total</th>\
<th>{} EUR</th></tr></table>",
        money(order.total_cents)
    )
}
