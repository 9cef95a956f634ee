//! `shop SERVICE [--listen ADDR] [--data DIR]`: one of the shop's services (front, catalog,
//! cart, orders, payments), or `shop load ...`, the load generator.

use std::path::PathBuf;

const USAGE: &str =
    "usage: shop front|catalog|cart|orders|payments [--listen ADDR] [--data DIR]\n       \
shop load --addr HOST:PORT [--rate N/s] [--duration SECS]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(service) = args.first().cloned() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    if service == "load" {
        match tug_shop::load::Options::parse(&args[1..]).and_then(|o| tug_shop::load::run(&o)) {
            Ok(report) => {
                println!("{report}");
                if report.failed > 0 {
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("shop load: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = flag("--listen").unwrap_or_else(|| "0.0.0.0:80".into());
    let data = PathBuf::from(flag("--data").unwrap_or_else(|| "/data".into()));
    let served = match service.as_str() {
        "front" => tug_shop::serve::run(&listen, tug_shop::front::handle),
        "catalog" => tug_shop::catalog::Catalog::new(&data)
            .map_err(|e| format!("{}: {e}", data.display()))
            .and_then(|store| tug_shop::serve::run(&listen, move |r| store.handle(r))),
        "payments" => tug_shop::serve::run(&listen, tug_shop::payments::handle),
        "cart" => tug_shop::cart::CartStore::new(&data)
            .map_err(|e| format!("{}: {e}", data.display()))
            .and_then(|store| tug_shop::serve::run(&listen, move |r| store.handle(r))),
        "orders" => tug_shop::orders::OrderStore::new(&data)
            .map_err(|e| format!("{}: {e}", data.display()))
            .and_then(|store| tug_shop::serve::run(&listen, move |r| store.handle(r))),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = served {
        eprintln!("shop {service}: {e}");
        std::process::exit(1);
    }
}
