//! Root tests of the agent with the shop example: `tugboat up` in a network namespace of the
//! test's own, real containers (tug), real networking (tug-netns), real images (tug-image).

mod host;

use host::{instances, wait_for, TestHost};
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

/// A purchase through the front: each service answers with its name and instance.
fn buy(host: &TestHost, user: &str) -> Result<String, String> {
    host.get(&format!("/cgi-bin/buy?user={user}&sku=tea"))
}

#[test]
fn a_purchase_through_the_front_reaches_every_service() {
    skip_unless_possible!("a_purchase_through_the_front_reaches_every_service");
    let host = started_shop();
    let page = host.get("/").expect("the front page");
    assert!(
        page.contains("tea: 4 EUR") && page.contains("coffee"),
        "{page}"
    );
    let answer = buy(&host, "alice").unwrap();
    for line in [
        "front: front-",
        "catalog: catalog-",
        "cart: cart-",
        "orders: orders-",
        "payments: payments-",
    ] {
        assert!(answer.contains(line), "no `{line}` in:\n{answer}");
    }
    assert!(answer.contains("items=tea"), "{answer}");
    // The cart lives in a named volume: a second purchase sees the first.
    let again = buy(&host, "alice").unwrap();
    assert!(again.contains("items=tea tea"), "{again}");
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
    // The fronts' output (httpd -v logs each request) through the API, from their agent:
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
        .in_netns(|| host::http_get(&catalog, "/cgi-bin/products"))
        .unwrap();
    assert!(products.starts_with("catalog: catalog-"), "{products}");
    // The cart's exec liveness probe ran inside it (it touches a file in its volume).
    let alive = host.dir.join("agent/volumes/carts/.alive");
    wait_for(
        "the cart's exec probe",
        START,
        || alive.exists(),
        || show(&host),
    );
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
        assert!(buy(&host, "scaler").is_ok());
    }
    assert_eq!(host.monitor_pids().len(), 2 + 1 + 2 + 1 + 2);
}

#[test]
fn a_killed_container_comes_back() {
    skip_unless_possible!("a_killed_container_comes_back");
    let host = started_shop();
    let victim = instances(&host)
        .into_iter()
        .find(|i| i.service == "payments")
        .unwrap();
    host.kill_container(&victim.id);
    wait_for(
        "the killed payments instance to run again",
        START,
        || {
            instances(&host)
                .iter()
                .any(|i| i.id == victim.id && i.restarts >= 1 && i.ready)
        },
        || show(&host),
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
    let answer = buy(&host, "during").expect("the shop answers with the agent down");
    assert!(answer.contains("payments: "), "{answer}");
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
            let (mut ok, mut failures) = (0, vec![]);
            // Bounded: at most 2,000 purchases or 120 s.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst)
                && ok + failures.len() < 2000
                && std::time::Instant::now() < deadline
            {
                match host::http_get(host::SHOP, "/cgi-bin/buy?user=restart&sku=tea") {
                    Ok(answer) if answer.contains("payments: ") => ok += 1,
                    Ok(answer) => failures.push(format!("bad answer: {answer}")),
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
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
    assert!(ok > 5, "only {ok} purchases went through the restart");
    assert!(
        failures.is_empty(),
        "{} of {} purchases failed while the agent restarted: {:?}\n{}",
        failures.len(),
        ok + failures.len(),
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
    assert!(buy(&host, "after").is_ok());
}

#[test]
fn a_rolling_update_of_the_front_fails_no_request() {
    skip_unless_possible!("a_rolling_update_of_the_front_fails_no_request");
    let host = started_shop();
    let old: Vec<String> = instances(&host)
        .into_iter()
        .filter(|i| i.service == "front")
        .map(|i| i.id)
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Requests answered so far: the rollout starts once some went through, and the client
    // goes on for some more after it, however fast or slow the machine is.
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let (ok, failures) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let (mut ok, mut failures) = (0, vec![]);
            // Bounded: at most 2,000 requests or 120 s.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && ok + failures.len() < 2000
                && std::time::Instant::now() < deadline
            {
                match host.get("/") {
                    Ok(page) if page.contains("tea: 4 EUR") => ok += 1,
                    Ok(page) => failures.push(format!("bad page: {page}")),
                    Err(e) => failures.push(e),
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (ok, failures)
        });
        let count = || answered.load(std::sync::atomic::Ordering::SeqCst);
        wait_for(
            "requests before the rollout",
            START,
            || count() >= 5,
            || show(&host),
        );
        host.api(|c| async move {
            let mut spec = c.describe_service("front").await.unwrap().service.spec;
            spec.env.insert("VERSION".into(), "2".into());
            c.replace_service("front", &spec).await.unwrap();
        });
        wait_for(
            "the rollout of front to complete",
            START,
            || {
                let list = instances(&host);
                let fronts: Vec<&Instance> = list.iter().filter(|i| i.service == "front").collect();
                fronts.len() == 2 && fronts.iter().all(|i| i.ready && !old.contains(&i.id))
            },
            || show(&host),
        );
        let after = count() + 5;
        wait_for(
            "requests after the rollout",
            START,
            || count() >= after,
            || show(&host),
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        client.join().unwrap()
    });
    eprintln!("rolling update: {ok} requests through the front, none failed");
    assert!(ok > 10, "only {ok} requests went through");
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
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
    assert!(buy(&host, "once").is_ok());
}
