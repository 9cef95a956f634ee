//! The web dashboard (docs/ui.md). Its routes over HTTP against an in-process server (no root
//! needed): files without a token, data only with one, 404 for what is not there. Then, as
//! root, the page in a real headless Chromium driven over CDP, against `tugboat up` running
//! the shop in a network namespace of the test's own: sign-in, the services listed, a scale
//! through the page, a killed instance's restart shown, a log tail, a phone-sized screen, and
//! no console errors.

mod common;
mod host;

use headless_chrome::protocol::cdp::{Emulation, Page, Runtime};
use headless_chrome::{Browser, LaunchOptions, Tab};
use host::{instances, wait_for, TestHost};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tugboat::model::{Instance, InstancePhase};

// ---- the routes, without a browser ----

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_are_public_and_the_data_needs_the_token() {
    let cluster = common::TestCluster::start(&[("n1", &[])]).await;
    let base = format!("http://{}", cluster.server.addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    for path in ["/", "/ui"] {
        let response = get(path).await.unwrap();
        assert!(response.status().is_redirection(), "{path}: {response:?}");
        assert_eq!(header(&response, "location"), "/ui/", "{path}");
    }
    for (path, content_type) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        let policy = header(&response, "content-security-policy");
        assert!(policy.starts_with("default-src 'self'"), "{path}: {policy}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
    }
    // Bad input: what the dashboard does not have is a 404, not its page.
    for path in ["/ui/nope.js", "/ui/app.js/x", "/ui/..%2FCargo.toml", "/uii"] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let post = http.post(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    // The page's data calls: refused without the token (or with a wrong one), as any API call.
    let services = format!("{base}/v1/services");
    assert_eq!(http.get(&services).send().await.unwrap().status(), 401);
    let wrong = http.get(&services).bearer_auth("wrong").send();
    assert_eq!(wrong.await.unwrap().status(), 401);
    let token = cluster.server.token.clone().unwrap();
    let right = http.get(&services).bearer_auth(&token).send();
    assert_eq!(right.await.unwrap().status(), 200);
    // The page's streams (the watch long poll, the log tail) take the token in the header
    // that fetch() sends, and refuse a call without it.
    for path in [
        "/v1/watch/services?timeout_seconds=1",
        "/v1/instances/x/logs?follow=true",
    ] {
        let without = get(path).await.unwrap();
        assert_eq!(without.status(), 401, "{path}");
    }
    let watch = http
        .get(format!("{base}/v1/watch/services?timeout_seconds=1"))
        .bearer_auth(&token)
        .send();
    assert_eq!(watch.await.unwrap().status(), 200);
    cluster.stop().await;
}

// ---- the page, in a browser ----

const START: Duration = Duration::from_secs(180);

/// Applied beside the shop: a service the autoscaler looks after.
const AUTOSCALED: &str = "
services:
  batch:
    image: shop/catalog:1
    resources:
      requests: {cpu: 50m, memory: 16Mi}
    autoscale: {min: 1, max: 2, target: {cpu: 80%}}
    stop: {grace_seconds: 1}
";
const PAGE: Duration = Duration::from_secs(60);

/// The system's Chromium (Debian's `chromium`), if there is one.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Where screenshots go: `TUGBOAT_UI_SCREENSHOTS` (docs/img to refresh the docs' pictures),
/// else the test's temp dir.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("TUGBOAT_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the page's script reported: console.error/assert calls and uncaught exceptions.
type Problems = Arc<Mutex<Vec<String>>>;

fn watch_console(tab: &Tab) -> Problems {
    let problems: Problems = Arc::default();
    let seen = problems.clone();
    tab.enable_runtime().unwrap();
    tab.add_event_listener(Arc::new(
        move |event: &headless_chrome::protocol::cdp::types::Event| {
            use headless_chrome::protocol::cdp::types::Event;
            use Runtime::ConsoleAPICalledEventTypeOption as Kind;
            match event {
                Event::RuntimeConsoleAPICalled(call)
                    if matches!(call.params.Type, Kind::Error | Kind::Assert | Kind::Warning) =>
                {
                    let args: Vec<String> = call
                        .params
                        .args
                        .iter()
                        .map(|a| {
                            a.value
                                .as_ref()
                                .map(|v| v.to_string())
                                .or_else(|| a.description.clone())
                                .unwrap_or_default()
                        })
                        .collect();
                    seen.lock().unwrap().push(format!(
                        "console.{:?}: {}",
                        call.params.Type,
                        args.join(" ")
                    ));
                }
                Event::RuntimeExceptionThrown(thrown) => {
                    let details = &thrown.params.exception_details;
                    let what = details
                        .exception
                        .as_ref()
                        .and_then(|e| e.description.clone())
                        .unwrap_or_else(|| details.text.clone());
                    seen.lock().unwrap().push(format!("exception: {what}"));
                }
                _ => {}
            }
        },
    ))
    .unwrap();
    problems
}

/// The value of a JavaScript expression (a boolean, number or string).
fn js(tab: &Tab, expression: &str) -> serde_json::Value {
    tab.evaluate(expression, false)
        .unwrap_or_else(|e| panic!("evaluate {expression}: {e}"))
        .value
        .unwrap_or(serde_json::Value::Null)
}

/// Polls a JavaScript condition until it is true.
fn page_wait(tab: &Tab, what: &str, condition: &str, show: impl Fn() -> String) {
    wait_for(
        what,
        PAGE,
        || js(tab, condition) == serde_json::Value::Bool(true),
        || {
            let page = js(tab, "document.body.innerText");
            format!("page:\n{}\n{}", page.as_str().unwrap_or_default(), show())
        },
    );
}

fn screenshot(tab: &Tab, name: &str) {
    let png = tab
        .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(screenshot_dir().join(name), png).unwrap();
}

/// The page at a width and height, as a phone (mobile) or a desktop window.
fn viewport(tab: &Tab, width: u32, height: u32, mobile: bool) {
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width,
        height,
        device_scale_factor: if mobile { 2.0 } else { 1.0 },
        mobile,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
}

/// Waits until the page lists the instances the API lists (a live update may still be on
/// its way), so a click on a row lands on the row meant.
fn page_settled(tab: &Tab, host: &TestHost, show: impl Fn() -> String) {
    wait_for(
        "the page to list the instances the API lists",
        PAGE,
        || {
            let mut ids: Vec<String> = instances(host).into_iter().map(|i| i.id).collect();
            ids.sort();
            let shown = js(
                tab,
                "JSON.stringify([...document.querySelectorAll('#instances tbody tr')]\
                 .map(r => r.dataset.key).sort())",
            );
            shown.as_str() == Some(serde_json::to_string(&ids).unwrap().as_str())
        },
        show,
    );
}

/// Clicks the element (a real mouse click at its place on the page).
fn click(tab: &Tab, selector: &str) {
    tab.wait_for_element(selector)
        .unwrap_or_else(|e| panic!("no {selector} on the page: {e}"))
        .click()
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

/// Replaces the text of an input with `text`, typed.
fn type_into(tab: &Tab, selector: &str, text: &str) {
    click(tab, selector);
    js(
        tab,
        &format!("document.querySelector('{selector}').select()"),
    );
    tab.type_str(text).unwrap();
}

fn ready(list: &[Instance], service: &str) -> usize {
    list.iter()
        .filter(|i| i.service == service && i.phase == InstancePhase::Running && i.ready)
        .count()
}

#[test]
fn the_dashboard_in_a_browser() {
    skip_unless_possible!("the_dashboard_in_a_browser");
    let Some(chromium) = chromium() else {
        println!("SKIP the_dashboard_in_a_browser: needs chromium (tests/install-deps.sh --tests)");
        return;
    };
    let started = Instant::now();
    let mut host = TestHost::new();
    host.start_up(&host::shop_spec());
    host.wait_for_output("front: http://127.0.0.1:8080/", START);
    let token = std::fs::read_to_string(host.dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();
    let show = || {
        let list = instances(&host);
        let table = tugboat::output::instances_table(&list, tugboat::model::now_ms(), false);
        format!(
            "{table}\n--- tugboat up said:\n{}",
            host.output.lock().unwrap()
        )
    };
    let host = &host;
    host.in_netns(|| {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium))
            .headless(true)
            // As root, Chromium runs only without its sandbox.
            .sandbox(false)
            // `tugboat up` serves TLS with its own CA, which this browser does not know.
            .ignore_certificate_errors(true)
            .window_size(Some((1280, 900)))
            .idle_browser_timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let browser = Browser::new(options).expect("start chromium");
        let tab = browser.new_tab().unwrap();
        tab.set_default_timeout(PAGE);
        let problems = watch_console(&tab);
        viewport(&tab, 1280, 900, false);

        // `/` leads to the page, which asks for the token first.
        tab.navigate_to(&format!("https://{}/", host::API))
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        let url = tab.get_url();
        assert!(url.ends_with("/ui/"), "{url}");
        page_wait(&tab, "the sign-in form", "!document.getElementById('login').hidden", show);
        assert_eq!(js(&tab, "document.getElementById('dashboard').hidden"), true);

        // A wrong token: the API answers 401 and the page says so, in the form.
        type_into(&tab, "#token", "not-the-token");
        click(&tab, "#login button[type=submit]");
        page_wait(
            &tab,
            "the form to say the token was refused",
            "document.getElementById('login-error').textContent.includes('refused')",
            show,
        );
        assert_eq!(js(&tab, "document.getElementById('dashboard').hidden"), true);
        assert_eq!(js(&tab, "sessionStorage.length"), 0);

        // The right one: the shop's services, instances and the node.
        type_into(&tab, "#token", &token);
        click(&tab, "#login button[type=submit]");
        page_wait(&tab, "the dashboard", "!document.getElementById('dashboard').hidden", show);
        // Beside the shop, an autoscaled service: its bounds and target on the page.
        let file = tugboat::spec::parse_spec_file("batch.yaml", AUTOSCALED, &|_| false).unwrap();
        host.api(|c| async move { c.apply(&file).await }).unwrap();
        page_wait(
            &tab,
            "the autoscaled service with its bounds and target",
            "document.querySelector('#services tr[data-key=\"batch\"]')?.cells[3]\
             .querySelector('span').textContent === '1–2, target cpu 80%'",
            show,
        );
        for service in ["front", "catalog", "cart", "orders", "payments", "batch"] {
            page_wait(
                &tab,
                &format!("{service} listed with its instances ready"),
                &format!(
                    "(r => !!r && /^(\\d+)\\/\\1$/.test(r.cells[1].querySelector('span').textContent))\
                     (document.querySelector('#services tr[data-key=\"{service}\"]'))"
                ),
                show,
            );
        }
        page_wait(
            &tab,
            "the node with its allocation",
            "!!document.querySelector('#nodes tr[data-key=\"local\"] meter')",
            show,
        );
        assert_eq!(js(&tab, "location.href.includes(sessionStorage.getItem('tugboat.token'))"), false);
        assert_eq!(js(&tab, "document.getElementById('live').textContent"), "live");

        // Scale the catalog to 3 through the page (not the front: it is autoscaled, and a
        // scale of it is refused); the API has it, the page shows 3/3.
        type_into(&tab, "#services tr[data-key=\"catalog\"] input", "3");
        click(&tab, "#services tr[data-key=\"catalog\"] button[data-action=scale]");
        wait_for(
            "the API to say catalog has 3 replicas",
            PAGE,
            || {
                host.api(|c| async move { c.describe_service("catalog").await })
                    .is_ok_and(|d| d.service.spec.replicas == 3)
            },
            show,
        );
        page_wait(
            &tab,
            "the page to show catalog 3/3 (live, without a reload)",
            "document.querySelector('#services tr[data-key=\"catalog\"]').cells[1].querySelector('span').textContent === '3/3'",
            show,
        );
        wait_for("3 ready catalogs", START, || ready(&instances(host), "catalog") == 3, show);

        // Cordon and uncordon the node; Drain asks again first, and a single click does
        // nothing.
        let node = |what: &str| format!("#nodes tr[data-key=\"local\"] {what}");
        let cordoned = || {
            host.api(|c| async move { c.nodes().await })
                .map(|l| l.items[0].cordoned)
                .unwrap_or_default()
        };
        click(&tab, &node("button[data-action=cordon]"));
        wait_for("the API to say the node is cordoned", PAGE, cordoned, show);
        page_wait(
            &tab,
            "the page to show the node cordoned",
            &format!(
                "document.querySelector('{}').textContent === 'Uncordon' \
                 && document.querySelector('{}').textContent.includes('cordoned')",
                node("button[data-action=cordon]"),
                node("td:nth-child(2)")
            ),
            show,
        );
        click(&tab, &node("button[data-action=cordon]"));
        wait_for("the API to say the node is uncordoned", PAGE, || !cordoned(), show);
        click(&tab, &node("button[data-action=drain]"));
        assert_eq!(
            js(&tab, &format!("document.querySelector('{}').textContent", node("button[data-action=drain]"))),
            "Drain: sure?"
        );
        page_wait(
            &tab,
            "the armed Drain button to give up",
            &format!("document.querySelector('{}').textContent === 'Drain'", node("button[data-action=drain]")),
            show,
        );
        let draining = host.api(|c| async move { c.nodes().await }).unwrap().items[0].draining;
        assert!(!draining, "one click on Drain drained the node");

        // A new template for the front, then Undo rollout on the page brings the old one back.
        let original = host
            .api(|c| async move { c.describe_service("front").await })
            .unwrap()
            .service;
        let mut changed = original.spec.clone();
        changed.env.insert("DASHBOARD_TEST".into(), "1".into());
        let changed_hash = changed.template_hash();
        host.api(|c| async move { c.replace_service("front", &changed).await })
            .unwrap();
        let template_of = |hash: &str| {
            let hash = hash.to_string();
            move || {
                host.api(|c| async move { c.describe_service("front").await })
                    .is_ok_and(|d| {
                        d.service.rollout.template_hash == hash
                            && d.service.rollout.state == tugboat::model::RolloutState::Complete
                    })
            }
        };
        wait_for(
            "the new front template rolled out",
            START,
            template_of(&changed_hash),
            show,
        );
        let undo = "#services tr[data-key=\"front\"] button[data-action=undo]";
        page_wait(
            &tab,
            "Undo rollout to be offered",
            &format!("!document.querySelector('{undo}').disabled"),
            show,
        );
        click(&tab, undo);
        click(&tab, undo);
        page_wait(
            &tab,
            "the page to say the undo is done",
            "document.getElementById('notice').textContent === 'Undo the rollout of front: done'",
            show,
        );
        wait_for(
            "the old front template back",
            START,
            template_of(&original.rollout.template_hash),
            show,
        );

        // Restart an instance (it is replaced): two clicks, and the page drops it.
        let old = instances(host)
            .into_iter()
            .find(|i| i.service == "orders")
            .expect("an orders instance");
        let restart = format!("#instances tr[data-key=\"{}\"] button[data-action=restart]", old.id);
        page_settled(&tab, host, show);
        click(&tab, &restart);
        click(&tab, &restart);
        wait_for(
            "the orders instance replaced",
            START,
            || {
                let list = instances(host);
                ready(&list, "orders") == 1 && list.iter().all(|i| i.id != old.id)
            },
            show,
        );
        page_wait(
            &tab,
            "the replaced instance gone from the page",
            &format!("!document.querySelector('#instances tr[data-key=\"{}\"]')", old.id),
            show,
        );

        // A killed container is restarted in place; the page shows the restart.
        let victim = instances(host)
            .into_iter()
            .find(|i| i.service == "catalog" && i.phase == InstancePhase::Running)
            .expect("a running catalog");
        host.kill_container(&victim.id);
        page_wait(
            &tab,
            &format!("{}'s restart on the page", victim.id),
            &format!(
                "document.querySelector('#instances tr[data-key=\"{}\"] td.restarts')?.textContent === '1'",
                victim.id
            ),
            show,
        );
        page_wait(
            &tab,
            "the restart among the events",
            &format!(
                "[...document.querySelectorAll('#events li')]\
                 .some(li => li.textContent.includes('{}') && li.textContent.includes('restarted'))",
                victim.id
            ),
            show,
        );

        // The log tail of a front: its web server (busybox httpd -v) logs each answer, and
        // the readiness probe asks every second.
        let front = instances(host)
            .into_iter()
            .find(|i| i.service == "front" && i.ready)
            .expect("a ready front");
        page_settled(&tab, host, show);
        click(
            &tab,
            &format!("#instances tr[data-key=\"{}\"] button[data-action=logs]", front.id),
        );
        page_wait(
            &tab,
            "the front's log lines",
            "document.getElementById('logs').textContent.includes('response:200')",
            show,
        );
        let before = js(&tab, "document.getElementById('logs').textContent.length");
        page_wait(
            &tab,
            "the log to grow (followed)",
            &format!("document.getElementById('logs').textContent.length > {before}"),
            show,
        );
        // The whole page, as a desktop shows it (the pointer out of the way).
        js(&tab, "window.scrollTo(0, 0)");
        tab.move_mouse_to_point(headless_chrome::browser::tab::point::Point { x: 0.0, y: 0.0 })
            .unwrap();
        let height = js(&tab, "document.documentElement.scrollHeight").as_u64().unwrap();
        viewport(&tab, 1280, height as u32, false);
        screenshot(&tab, "dashboard-desktop.png");

        // A phone: one column of cards, nothing wider than the screen.
        viewport(&tab, 390, 844, true);
        js(&tab, "window.scrollTo(0, 0)");
        page_wait(
            &tab,
            "the page to fit a phone's width",
            "document.documentElement.scrollWidth <= window.innerWidth + 1 \
             && getComputedStyle(document.querySelector('#services thead')).display === 'none'",
            show,
        );
        screenshot(&tab, "dashboard-phone.png");
        viewport(&tab, 1280, 900, false);

        // Signing out forgets the token; a reload then asks for it again.
        click(&tab, "#logout");
        page_wait(&tab, "the sign-in form again", "!document.getElementById('login').hidden", show);
        assert_eq!(js(&tab, "sessionStorage.length"), 0);

        let problems = problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "the page reported problems:\n{}", problems.join("\n"));
    });
    println!("the dashboard in a browser: {:?}", started.elapsed());
}
