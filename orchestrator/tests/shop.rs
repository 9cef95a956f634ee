//! Root tests of the agent with the shop example (examples/shop: five Rust services): `tugboat
//! up` in a network namespace of the test's own, real containers (tug), real networking
//! (tug-netns), real images (tug-image), and a customer buying through the ingress port.

mod host;

use host::shopper::{text, Shopper};
use host::{instances, wait_for, TestHost};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tugboat::model::{Instance, InstancePhase};

const START: Duration = Duration::from_secs(120);

fn ready(list: &[Instance], service: &str) -> usize {
    list.iter()
        .filter(|i| i.service == service && i.phase == InstancePhase::Running && i.ready)
        .count()
}

fn show(host: &TestHost) -> String {
    let list = instances(host);
    let table = tugboat::output::instances_table(&list, tugboat::model::now_ms(), false);
    format!(
        "{table}\n--- tugboat up said:\n{}",
        host.output.lock().unwrap()
    )
}

fn started_shop() -> TestHost {
    let mut host = TestHost::new();
    host.start_up(&host::shop_spec());
    host.wait_for_output("front: http://127.0.0.1:8080/", START);
    host
}

/// A whole purchase through the front (the ingress port) by a customer of session `user`:
/// the paid order's id.
fn buy(host: &TestHost, user: &str) -> Result<String, String> {
    let user = user.to_string();
    host.in_netns(move || Shopper::new(host::SHOP, &user).purchase())
}

/// One request of `user` through the front.
fn send(
    host: &TestHost,
    user: &str,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> host::shopper::Answer {
    let (user, method, path, form) = (
        user.to_string(),
        method.to_string(),
        path.to_string(),
        form.map(String::from),
    );
    host.in_netns(move || Shopper::new(host::SHOP, &user).send(&method, &path, form.as_deref()))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The purchases that went through (customer, order) and the failures.
type Bought = (Vec<(String, String)>, Vec<String>);

/// Purchases, each by a new customer (`PREFIX-N`), in the shop's namespace, until `stop`,
/// `max` of them or `limit`. `attempts` counts each.
fn keep_buying(
    prefix: &str,
    stop: &AtomicBool,
    max: usize,
    limit: Duration,
    attempts: &std::sync::atomic::AtomicUsize,
) -> Bought {
    let (mut ok, mut failures) = (vec![], vec![]);
    let deadline = std::time::Instant::now() + limit;
    while !stop.load(Ordering::SeqCst)
        && ok.len() + failures.len() < max
        && std::time::Instant::now() < deadline
    {
        let session = format!("{prefix}-{}", ok.len() + failures.len());
        match Shopper::new(host::SHOP, &session).purchase() {
            Ok(order) => ok.push((session, order)),
            Err(e) => failures.push(e),
        }
        attempts.fetch_add(1, Ordering::SeqCst);
    }
    (ok, failures)
}

#[test]
fn the_whole_purchase_flow_through_the_ingress_port() {
    skip_unless_possible!("the_whole_purchase_flow_through_the_ingress_port");
    let host = started_shop();
    // Browse, add two products, check out, pay, see the order; the cart is empty after.
    let order = buy(&host, "alice").unwrap_or_else(|e| panic!("{e}\n{}", show(&host)));
    let history = send(&host, "alice", "GET", "/orders", None);
    assert!(
        history.status == 200 && history.body.contains(&order) && history.body.contains("paid"),
        "{}",
        text(&history.body)
    );
    // Customers never see instance ids.
    let page = send(&host, "alice", "GET", &format!("/orders/{order}"), None);
    assert!(
        !page.body.contains("front-") && !page.body.contains("orders-"),
        "{}",
        page.body
    );
    // The order is in the orders' named volume, durably.
    let stored =
        std::fs::read_to_string(host.dir.join("agent/volumes/orders/orders.jsonl")).unwrap();
    assert!(stored.contains(&order), "{stored}");
    // Paying a wrong amount is refused, with a page that says why; so is an unknown order,
    // and another customer's order is as unknown.
    send(
        &host,
        "bob",
        "POST",
        "/cart/add",
        Some("sku=mug&request=bob-1"),
    );
    let checkout = send(&host, "bob", "GET", "/checkout", None);
    let bobs = host::shopper::value_of(&checkout.body, "id").expect("an order id in the form");
    let placed = send(
        &host,
        "bob",
        "POST",
        "/checkout",
        Some(&format!("id={bobs}&name=Bob&address=Here")),
    );
    assert_eq!(placed.status, 303, "{}", text(&placed.body));
    let pay = format!("/orders/{bobs}/pay");
    let wrong = send(&host, "bob", "POST", &pay, Some("amount=1.00"));
    assert_eq!(wrong.status, 422, "{}", text(&wrong.body));
    assert!(
        text(&wrong.body).contains("is not the order&#39;s total, 12.00 EUR"),
        "{}",
        text(&wrong.body)
    );
    let nonsense = send(&host, "bob", "POST", &pay, Some("amount=twelve"));
    assert_eq!(nonsense.status, 400, "{}", text(&nonsense.body));
    let unknown = send(
        &host,
        "bob",
        "POST",
        "/orders/no-such-order/pay",
        Some("amount=12.00"),
    );
    assert_eq!(unknown.status, 404, "{}", text(&unknown.body));
    assert!(
        text(&unknown.body).contains("There is no such order"),
        "{}",
        text(&unknown.body)
    );
    let not_mine = send(&host, "eve", "POST", &pay, Some("amount=12.00"));
    assert_eq!(not_mine.status, 404, "{}", text(&not_mine.body));
    let unpaid = send(&host, "bob", "GET", &format!("/orders/{bobs}"), None);
    assert!(
        text(&unpaid.body).contains("Awaiting payment"),
        "{}",
        text(&unpaid.body)
    );
    // The right amount pays it; paying again is idempotent: still one paid order.
    for _ in 0..2 {
        let paid = send(&host, "bob", "POST", &pay, Some("amount=12.00"));
        assert_eq!(paid.status, 303, "{}", text(&paid.body));
    }
    let bob = send(&host, "bob", "GET", "/orders", None);
    assert_eq!(bob.body.matches(">paid<").count(), 1, "{}", text(&bob.body));
    // An unknown product is a 404 page.
    let nothing = send(&host, "bob", "GET", "/products/no-such-thing", None);
    assert_eq!(nothing.status, 404);
    assert!(
        text(&nothing.body).contains("We do not sell that product"),
        "{}",
        text(&nothing.body)
    );
    // Payments itself refuses an unknown order, asked at its virtual address from the host
    // (which the network policy lets through, as it lets orders).
    let vips: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(host.dir.join("agent/services.json")).unwrap())
            .unwrap();
    let payments = format!("{}:80", vips["payments"]);
    let refused = host.in_netns(|| {
        let mut c = std::net::TcpStream::connect(&payments).unwrap();
        let body = r#"{"order":"no-such-order","amount_cents":1050}"#;
        write!(
            c,
            "POST /payments HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        answer
    });
    assert!(
        refused.split_whitespace().nth(1) == Some("404") && refused.contains("unknown order"),
        "{refused}"
    );
    // Limits reached the cgroup.
    let front = instances(&host)
        .into_iter()
        .find(|i| i.service == "front")
        .unwrap();
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/tug/{}/memory.limit_in_bytes",
        front.id
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/tug/{}/memory.max", front.id)))
    .unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    // Stats from the cgroups reach the server, and `tugboat top` shows them.
    wait_for(
        "memory use of every instance reported",
        START,
        || {
            let list = instances(&host);
            list.len() == 9
                && list
                    .iter()
                    .all(|i| i.stats.is_some_and(|s| s.memory_bytes > 0 && s.pids > 0))
        },
        || show(&host),
    );
    let token = std::fs::read_to_string(host.dir.join("server/token")).unwrap();
    let top = host.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .env("TUGBOAT_CA", host.ca())
            .args(["--addr", host::API, "--token", token.trim(), "top"])
            .output()
            .unwrap()
    });
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(top.contains("MEMORY") && top.contains(&front.id), "{top}");
    // The fronts' output (a line per request) through the API, from their agent:
    // `logs SERVICE` gives each instance's lines, prefixed with the instance.
    let fronts: Vec<String> = instances(&host)
        .into_iter()
        .filter(|i| i.service == "front" && i.node.is_some())
        .map(|i| i.id)
        .collect();
    let out = host.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .env("TUGBOAT_CA", host.ca())
            .args([
                "--addr",
                host::API,
                "--token",
                token.trim(),
                "logs",
                "front",
                "--tail",
                "50",
            ])
            .output()
            .unwrap()
    });
    let logs = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        logs.contains("response:200"),
        "no request in the fronts' logs:\n{logs}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.lines()
            .all(|l| fronts.iter().any(|id| l.starts_with(&format!("[{id}")))),
        "each line names its instance:\n{logs}"
    );
    // exec through the API: names resolve inside the container; the exit code comes back.
    let exec = host.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .env("TUGBOAT_CA", host.ca())
            .args([
                "--addr",
                host::API,
                "--token",
                token.trim(),
                "exec",
                &front.id,
                "--",
            ])
            .args(["sh", "-c", "grep catalog /etc/hosts; hostname; exit 3"])
            .output()
            .unwrap()
    });
    let said = String::from_utf8_lossy(&exec.stdout).to_string();
    assert_eq!(exec.status.code(), Some(3), "{said}");
    assert!(
        said.contains("catalog") && said.contains(&front.id),
        "{said}"
    );
    // Network policy (examples/shop.yaml): a front reaches the catalog, not payments
    // (only orders may); dropped through the service address, so bounded by `timeout`.
    let policy = host.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .env("TUGBOAT_CA", host.ca())
            .args([
                "--addr",
                host::API,
                "--token",
                token.trim(),
                "exec",
                &front.id,
                "--",
            ])
            .args([
                "sh",
                "-c",
                "timeout 5 wget -qO- http://catalog/healthz && echo catalog-ok; \
                 timeout 3 wget -qO- http://payments/healthz && echo payments-ok; true",
            ])
            .output()
            .unwrap()
    });
    let said = String::from_utf8_lossy(&policy.stdout).to_string();
    assert!(
        said.contains("catalog-ok") && !said.contains("payments-ok"),
        "{said}{}",
        String::from_utf8_lossy(&policy.stderr)
    );
    // The host reaches a service at its virtual address too.
    let vips: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(host.dir.join("agent/services.json")).unwrap())
            .unwrap();
    let catalog = format!("{}:80", vips["catalog"]);
    let products = host
        .in_netns(|| host::http_get(&catalog, "/products"))
        .unwrap();
    assert!(
        products.contains(r#""served_by":"catalog-"#) && products.contains(r#""sku":"tea""#),
        "{products}"
    );

    // Stock: bob's order took one mug (of 40), and his retried checkout took nothing more.
    let stock = |sku: &str| -> u64 {
        let body = host
            .in_netns(|| host::http_get(&catalog, &format!("/products/{sku}")))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["product"]["stock"].as_u64().unwrap()
    };
    assert_eq!(stock("mug"), 39);
    let again = send(
        &host,
        "bob",
        "POST",
        "/checkout",
        Some(&format!("id={bobs}&name=Bob&address=Here")),
    );
    assert_eq!(again.status, 303, "{}", text(&again.body));
    assert_eq!(stock("mug"), 39);
    // More teapots than the 12 in stock: a 409 page that says how many are left, and
    // nothing taken.
    for n in 0..13 {
        let form = format!("sku=teapot&request=carol-{n}");
        let added = send(&host, "carol", "POST", "/cart/add", Some(&form));
        assert_eq!(added.status, 303, "{}", text(&added.body));
    }
    let checkout = send(&host, "carol", "GET", "/checkout", None);
    let carols = host::shopper::value_of(&checkout.body, "id").expect("an order id in the form");
    let refused = send(
        &host,
        "carol",
        "POST",
        "/checkout",
        Some(&format!("id={carols}&name=Carol&address=There")),
    );
    assert_eq!(refused.status, 409, "{}", text(&refused.body));
    assert!(
        text(&refused.body).contains("only 12 Teapot left"),
        "{}",
        text(&refused.body)
    );
    assert_eq!(stock("teapot"), 12);
}

#[test]
fn scale_two_five_one() {
    skip_unless_possible!("scale_two_five_one");
    let host = started_shop();
    for n in [5u32, 1] {
        host.api(|c| async move { c.scale("catalog", n).await.unwrap() });
        wait_for(
            &format!("{n} catalog instances ready and running"),
            START,
            || {
                let list = instances(&host);
                let dirs = host
                    .instance_dirs()
                    .iter()
                    .filter(|d| {
                        d.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("catalog-")
                    })
                    .count();
                ready(&list, "catalog") == n as usize
                    && list.iter().filter(|i| i.service == "catalog").count() == n as usize
                    && dirs == n as usize
            },
            || show(&host),
        );
        buy(&host, "scaler").unwrap();
    }
    assert_eq!(host.monitor_pids().len(), 2 + 1 + 2 + 1 + 2);
}

#[test]
fn a_killed_container_comes_back_and_the_cart_outlives_its_containers() {
    skip_unless_possible!("a_killed_container_comes_back_and_the_cart_outlives_its_containers");
    let host = started_shop();
    let added = send(
        &host,
        "keeper",
        "POST",
        "/cart/add",
        Some("sku=teapot&request=keep-1"),
    );
    assert_eq!(added.status, 303, "{}", text(&added.body));
    let list = instances(&host);
    let payments = list.iter().find(|i| i.service == "payments").unwrap();
    let victims: Vec<&Instance> = list
        .iter()
        .filter(|i| i.service == "cart" || i.id == payments.id)
        .collect();
    assert_eq!(victims.len(), 3, "both carts and a payments instance");
    for v in &victims {
        host.kill_container(&v.id);
    }
    wait_for(
        "the killed instances to run again",
        START,
        || {
            let now = instances(&host);
            victims.iter().all(|v| {
                now.iter()
                    .any(|i| i.id == v.id && i.restarts >= 1 && i.ready)
            })
        },
        || show(&host),
    );
    // Both carts' containers died: the cart was in the named volume, and is still there.
    let cart = send(&host, "keeper", "GET", "/cart", None);
    assert!(
        cart.status == 200 && text(&cart.body).contains("Teapot"),
        "{}",
        text(&cart.body)
    );
    wait_for(
        "a purchase to succeed",
        START,
        || buy(&host, "k").is_ok(),
        || show(&host),
    );
}

#[test]
fn the_shop_answers_while_the_agent_is_dead_and_nothing_runs_twice_after() {
    skip_unless_possible!("the_shop_answers_while_the_agent_is_dead_and_nothing_runs_twice_after");
    let mut host = started_shop();
    let before: Vec<String> = {
        let mut ids: Vec<String> = instances(&host).into_iter().map(|i| i.id).collect();
        ids.sort();
        ids
    };
    host.kill_up();
    buy(&host, "during").expect("a purchase with the agent down");
    host.output.lock().unwrap().clear();
    // Purchases go on through the restart: none may fail while the new agent re-attaches.
    let stop = Arc::new(AtomicBool::new(false));
    let buyer = {
        let (netns, stop) = (host.netns.clone(), stop.clone());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
            // SAFETY: setns of this thread only, on a namespace fd we hold open.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            keep_buying(
                "restart",
                &stop,
                300,
                Duration::from_secs(120),
                &Default::default(),
            )
        })
    };
    host.start_up(&host::shop_spec());
    host.wait_for_output("front: http://127.0.0.1:8080/", START);
    wait_for(
        "every instance ready again",
        START,
        || instances(&host).iter().filter(|i| i.ready).count() == 9,
        || show(&host),
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = buyer.join().unwrap();
    assert!(
        ok.len() > 5,
        "only {} purchases went through the restart",
        ok.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} purchases failed while the agent restarted: {:?}\n{}",
        failures.len(),
        ok.len() + failures.len(),
        &failures[..failures.len().min(5)],
        host.output.lock().unwrap()
    );
    let mut after: Vec<String> = instances(&host).into_iter().map(|i| i.id).collect();
    after.sort();
    assert_eq!(
        before, after,
        "the restarted agent re-attached to the same instances"
    );
    assert_eq!(host.monitor_pids().len(), 9, "one monitor per instance");
    let containers = tug_runtime::Runtime::new(host.dir.join("agent/runtime"))
        .list()
        .unwrap();
    assert_eq!(containers.len(), 9, "one container per instance");
    // No purchase was lost: each customer's history shows its order, paid.
    for (session, order) in &ok {
        let history = send(&host, session, "GET", "/orders", None);
        assert!(
            history.body.contains(order) && history.body.contains(">paid<"),
            "{session}'s order {order} is not in its history: {}",
            text(&history.body)
        );
    }
    buy(&host, "after").unwrap();
}

#[test]
fn a_rolling_update_of_each_service_fails_no_purchase() {
    skip_unless_possible!("a_rolling_update_of_each_service_fails_no_purchase");
    let host = started_shop();
    let stop = AtomicBool::new(false);
    // Purchases made so far: each rollout starts once some went through, and the buyer
    // goes on for some more after the last, however fast or slow the machine is.
    let bought = std::sync::atomic::AtomicUsize::new(0);
    let (ok, failures) = std::thread::scope(|s| {
        let buyer = s.spawn(|| {
            host.in_netns(|| keep_buying("roll", &stop, 500, Duration::from_secs(300), &bought))
        });
        let count = || bought.load(Ordering::SeqCst);
        for service in ["front", "catalog", "cart", "orders", "payments"] {
            let before = count() + 2;
            wait_for(
                &format!("purchases before the rollout of {service}"),
                START,
                || count() >= before,
                || show(&host),
            );
            let old: Vec<String> = instances(&host)
                .into_iter()
                .filter(|i| i.service == service)
                .map(|i| i.id)
                .collect();
            host.api(|c| async move {
                let mut spec = c.describe_service(service).await.unwrap().service.spec;
                spec.env.insert("VERSION".into(), "2".into());
                c.replace_service(service, &spec).await.unwrap();
            });
            wait_for(
                &format!("the rollout of {service} to complete"),
                START,
                || {
                    let list = instances(&host);
                    let now: Vec<&Instance> =
                        list.iter().filter(|i| i.service == service).collect();
                    now.len() == old.len() && now.iter().all(|i| i.ready && !old.contains(&i.id))
                },
                || show(&host),
            );
        }
        let after = count() + 3;
        wait_for(
            "purchases after the rollouts",
            START,
            || count() >= after,
            || show(&host),
        );
        stop.store(true, Ordering::SeqCst);
        buyer.join().unwrap()
    });
    eprintln!("rolling updates: {} purchases, none failed", ok.len());
    assert!(
        failures.is_empty(),
        "{} of {} purchases failed: {:?}",
        failures.len(),
        ok.len() + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.len() > 10, "only {} purchases went through", ok.len());
    // No purchase was lost across the orders' new instance: each is in its history, paid.
    for (session, order) in &ok {
        let history = send(&host, session, "GET", "/orders", None);
        assert!(
            history.body.contains(order) && history.body.contains(">paid<"),
            "{session}'s order {order} is not in its history: {}",
            text(&history.body)
        );
    }
}

#[test]
fn an_agent_killed_while_instances_start_runs_each_exactly_once_after() {
    skip_unless_possible!("an_agent_killed_while_instances_start_runs_each_exactly_once_after");
    let mut host = TestHost::new();
    host.start_up(&host::shop_spec());
    wait_for(
        "instances to be starting",
        START,
        || host.instance_dirs().len() >= 4,
        || host.output.lock().unwrap().clone(),
    );
    host.kill_up();
    host.output.lock().unwrap().clear();
    host.start_up(&host::shop_spec());
    host.wait_for_output("front: http://127.0.0.1:8080/", START);
    wait_for(
        "all 9 instances ready",
        START,
        || instances(&host).iter().filter(|i| i.ready).count() == 9,
        || show(&host),
    );
    assert_eq!(host.monitor_pids().len(), 9, "one monitor per instance");
    let containers = tug_runtime::Runtime::new(host.dir.join("agent/runtime"))
        .list()
        .unwrap();
    assert_eq!(containers.len(), 9, "one container per instance");
    assert_eq!(instances(&host).len(), 9);
    buy(&host, "once").unwrap();
}

#[test]
fn the_front_scales_out_under_load_and_every_purchase_goes_through() {
    skip_unless_possible!("the_front_scales_out_under_load_and_every_purchase_goes_through");
    let host = started_shop();
    let replicas = || {
        host.api(|c| async move { c.describe_service("front").await })
            .map_or(0, |d| d.service.spec.replicas)
    };
    assert_eq!(replicas(), 2, "{}", show(&host));
    // Four customers at once, buying until the autoscaler has added fronts (its CPU
    // target is 50% of each front's 50m request) and they serve.
    let stop = AtomicBool::new(false);
    let bought = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Bought> = std::thread::scope(|s| {
        let buyers: Vec<_> = (0..4)
            .map(|n| {
                let (stop, bought, host) = (&stop, &bought, &host);
                s.spawn(move || {
                    host.in_netns(|| {
                        keep_buying(
                            &format!("busy{n}"),
                            stop,
                            usize::MAX,
                            Duration::from_secs(180),
                            bought,
                        )
                    })
                })
            })
            .collect();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                "more than 2 fronts ready under load",
                Duration::from_secs(120),
                || replicas() > 2 && ready(&instances(&host), "front") > 2,
                || show(&host),
            )
        }));
        stop.store(true, Ordering::SeqCst);
        let results = buyers.into_iter().map(|b| b.join().unwrap()).collect();
        if let Err(e) = outcome {
            std::panic::resume_unwind(e);
        }
        results
    });
    let ok: usize = results.iter().map(|(ok, _)| ok.len()).sum();
    let failures: Vec<&String> = results.iter().flat_map(|(_, f)| f).collect();
    println!(
        "front scaled to {} replicas after {ok} purchases, {} failed",
        replicas(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(replicas() <= 4, "{}", show(&host));
}

/// Stops (SIGSTOP) or resumes (SIGCONT) an instance's container: a process that takes no
/// time slice, as a server does whose every worker waits on a disk flush.
fn freeze(host: &TestHost, id: &str, stopped: bool) {
    let pid = host.container_pid(id);
    let signal = if stopped {
        libc::SIGSTOP
    } else {
        libc::SIGCONT
    };
    // SAFETY: the container's init, started by this test's tugboat.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn a_service_whose_every_instance_stalls_fails_no_purchase() {
    skip_unless_possible!("a_service_whose_every_instance_stalls_fails_no_purchase");
    // The shop under load on a busy machine: orders (one instance) and both fronts stop
    // answering for a while, their readiness probes time out, and the balancer would have
    // no instance left (connections refused: failed checkouts, a shop that refuses its
    // customers). It fails open instead: the stalled instances still get the connections,
    // which wait and are answered once they run again.
    let host = started_shop();
    let stop = AtomicBool::new(false);
    let bought = std::sync::atomic::AtomicUsize::new(0);
    let stalled: Vec<String> = instances(&host)
        .into_iter()
        .filter(|i| i.service == "orders" || i.service == "front")
        .map(|i| i.id)
        .collect();
    assert_eq!(stalled.len(), 3, "{}", show(&host));
    let vips: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(host.dir.join("agent/services.json")).unwrap())
            .unwrap();
    let orders = format!("{}:80", vips["orders"]);
    let (ok, failures, front_once, orders_once) = std::thread::scope(|s| {
        let buyers: Vec<_> = (0..2)
            .map(|n| {
                let (stop, bought, host) = (&stop, &bought, &host);
                s.spawn(move || {
                    host.in_netns(|| {
                        keep_buying(
                            &format!("stall{n}"),
                            stop,
                            usize::MAX,
                            Duration::from_secs(180),
                            bought,
                        )
                    })
                })
            })
            .collect();
        let count = || bought.load(Ordering::SeqCst);
        wait_for(
            "purchases before the stall",
            START,
            || count() >= 2,
            || show(&host),
        );
        for id in &stalled {
            freeze(&host, id, true);
        }
        let unready = || {
            instances(&host)
                .iter()
                .filter(|i| stalled.contains(&i.id) && !i.ready)
                .count()
        };
        let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                "every stalled instance not ready",
                Duration::from_secs(30),
                || unready() == stalled.len(),
                || show(&host),
            )
        }));
        // Customers keep coming while nothing is ready: a new one now, not only those
        // whose requests were in flight; and one request each, not retried, through the
        // ingress port and to orders' service address: neither is refused, both wait for
        // an answer.
        let during =
            s.spawn(|| host.in_netns(|| Shopper::new(host::SHOP, "while-stalled").purchase()));
        let front_once =
            s.spawn(|| host.in_netns(|| Shopper::new(host::SHOP, "once").send("GET", "/", None)));
        let orders_once = s.spawn(|| {
            host.in_netns(|| -> Result<String, String> {
                let mut c = std::net::TcpStream::connect(&orders).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
                    .map_err(|e| e.to_string())?;
                let mut answer = String::new();
                c.read_to_string(&mut answer).map_err(|e| e.to_string())?;
                Ok(answer)
            })
        });
        std::thread::sleep(Duration::from_secs(2));
        for id in &stalled {
            freeze(&host, id, false);
        }
        if let Err(e) = seen {
            std::panic::resume_unwind(e);
        }
        let front_once = front_once.join().unwrap().map(|a| a.status);
        let orders_once = orders_once.join().unwrap();
        let during = during.join().unwrap();
        let after = count() + 4;
        let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                "purchases after the stall",
                START,
                || count() >= after,
                || show(&host),
            )
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = resumed {
            std::panic::resume_unwind(e);
        }
        let mut ok = vec![];
        let mut failures = vec![];
        match during {
            Ok(order) => ok.push(("while-stalled".to_string(), order)),
            Err(e) => failures.push(format!("while stalled: {e}")),
        }
        for b in buyers {
            let (o, f) = b.join().unwrap();
            ok.extend(o);
            failures.extend(f);
        }
        (ok, failures, front_once, orders_once)
    });
    assert_eq!(
        front_once,
        Ok(200),
        "the front page, asked once while every front stalled"
    );
    assert!(
        orders_once
            .as_ref()
            .is_ok_and(|a| a.split_whitespace().nth(1) == Some("200")),
        "orders' address, asked once while its one instance stalled: {orders_once:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} purchases failed while every front and orders stalled: {:?}\n{}",
        failures.len(),
        ok.len() + failures.len(),
        &failures[..failures.len().min(5)],
        show(&host)
    );
    for (session, order) in &ok {
        let history = send(&host, session, "GET", "/orders", None);
        assert!(
            history.body.contains(order) && history.body.contains(">paid<"),
            "{session}'s order {order} is not in its history: {}",
            text(&history.body)
        );
    }
}
