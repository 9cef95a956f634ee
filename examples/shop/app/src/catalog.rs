//! The catalog: products with prices and stock. `GET /products`, `GET /products/SKU`.

use crate::model::Product;
use crate::serve::{Reply, Req};
use serde_json::json;

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
            120,
            "#5a8f3c",
        ),
        p(
            "coffee",
            "Coffee",
            "Whole beans, medium roast, 250 g. Chocolate and a little cherry.",
            650,
            80,
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

pub fn handle(req: &Req) -> Reply {
    let served_by = crate::model::instance();
    match (req.method.as_str(), req.segments().as_slice()) {
        ("GET", ["products"]) => Reply::json(
            200,
            &json!({ "served_by": served_by, "products": products() }),
        ),
        ("GET", ["products", sku]) => match products().into_iter().find(|p| p.sku == *sku) {
            Some(p) => Reply::json(200, &json!({ "served_by": served_by, "product": p })),
            None => Reply::error(404, &format!("no product {sku}")),
        },
        _ => Reply::error(404, "no such page"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_listed_and_unknown_ones_are_404() {
        let all = handle(&Req::get("/products"));
        assert_eq!(all.status, 200);
        assert!(all.body.contains("\"sku\":\"tea\"") && all.body.contains("\"price_cents\":400"));
        assert_eq!(handle(&Req::get("/products/mug")).status, 200);
        assert_eq!(handle(&Req::get("/products/nope")).status, 404);
    }
}
