//! Root test: metrics as an operator collects them. A node's container metrics through the
//! server (`GET /v1/nodes/{name}/metrics`: cpu, memory, pids, block and network bytes,
//! restarts, from the real cgroups and network namespaces), the balancing's connections and
//! the failed probes as a user who sends traffic through a service's port counts them (and
//! a deleted service's figures gone), both
//! scrapes accepted by `promtool check metrics`, and a real Prometheus (Debian's, see
//! tests/prometheus) that scrapes the server and the node over TLS with the API's token and answers queries on them.

mod host;
mod prometheus;

use host::{wait_for, TestHost};
use std::time::Duration;

const START: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
services:
  web:
    image: shop/catalog:1
    replicas: 2
    ports:
      - {container: 80, published: 8090, mode: ingress}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1}
    stop: {grace_seconds: 1}
  # Ready (its probe asks port 80), but nothing listens on the port it is reached on: each
  # connection through the balancing is refused by the instance.
  refusing:
    image: shop/catalog:1
    ports:
      - {container: 81, published: 8091, mode: ingress}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1}
    stop: {grace_seconds: 1}
  # Never ready: its readiness probe asks for a page that does not exist.
  unready:
    image: shop/catalog:1
    health:
      readiness: {http: {port: 80, path: /nowhere}, interval_seconds: 1}
    stop: {grace_seconds: 1}
"#;

/// Requests sent through the balancing to web, and connections tried to refusing.
const SENT: usize = 25;
const REFUSED: usize = 3;

/// The value of the first sample of `name` with `labels` in the label set.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A Prometheus server of this test, killed (by its pid) when dropped.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn node_metrics_go_through_the_server_and_a_real_prometheus_scrapes_them() {
    skip_unless_possible!("node_metrics_go_through_the_server_and_a_real_prometheus_scrapes_them");
    let mut host = TestHost::new();
    let spec = host.dir.join("metrics.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let show = |host: &TestHost| format!("{:#?}", host::instances(host));
    let ready = |host: &TestHost, service: &str| {
        host::instances(host)
            .iter()
            .filter(|i| i.ready && i.service == service)
            .count()
    };
    wait_for(
        "2 web and 1 refusing ready",
        START,
        || ready(&host, "web") == 2 && ready(&host, "refusing") == 1,
        || show(&host),
    );
    let ids: Vec<String> = host::instances(&host)
        .into_iter()
        .filter(|i| i.service == "web")
        .map(|i| i.id)
        .collect();

    // The node's scrape, through the server: each running container with what its cgroup
    // and its network namespace counted (the readiness probes are its traffic).
    let scrape = |host: &TestHost| host.get_api("/v1/nodes/local/metrics");
    wait_for(
        "the probes' traffic counted",
        Duration::from_secs(30),
        || {
            let (_, text) = scrape(&host);
            ids.iter().all(|id| {
                let l = format!("id=\"{id}\"");
                sample(&text, "tugboat_container_network_receive_bytes_total", &l)
                    .is_some_and(|v| v > 0.0)
            })
        },
        || scrape(&host).1,
    );
    let (status, node) = scrape(&host);
    assert_eq!(status, 200, "{node}");
    for id in &ids {
        let l = format!("service=\"web\",id=\"{id}\"");
        let value = |name: &str| {
            sample(&node, name, &l).unwrap_or_else(|| panic!("no {name}{{{l}}} in:\n{node}"))
        };
        assert!(
            value("tugboat_container_memory_usage_bytes") > 0.0,
            "{node}"
        );
        assert!(
            value("tugboat_container_cpu_usage_seconds_total") > 0.0,
            "{node}"
        );
        assert!(value("tugboat_container_pids") >= 1.0, "{node}");
        assert!(
            value("tugboat_container_network_transmit_bytes_total") > 0.0,
            "{node}"
        );
        assert_eq!(value("tugboat_container_restarts_total"), 0.0, "{node}");
        value("tugboat_container_fs_writes_bytes_total");
    }
    let running = node
        .lines()
        .find_map(|l| l.strip_prefix("tugboat_containers_running "));
    assert_eq!(running, Some("4"), "{node}");

    // The balancing's figures: what a user sends through a service's port is what the
    // node counts (the probes go to the instances directly, not through the balancing).
    let service_figure = |text: &str, name: &str, service: &str| {
        sample(text, name, &format!("service=\"{service}\"")).unwrap_or(0.0)
    };
    let programmed = |service: &str| {
        tugboat::agent::services::programmed_endpoints(&host.dir.join("agent"), "tugboat", service)
            .map_or(0, |e| e.len())
    };
    wait_for(
        "web's and refusing's balancing programmed",
        Duration::from_secs(30),
        || programmed("web") == 2 && programmed("refusing") == 1,
        || {
            format!(
                "web {}, refusing {}",
                programmed("web"),
                programmed("refusing")
            )
        },
    );
    for _ in 0..SENT {
        host.in_netns(|| host::http_get("127.0.0.1:8090", "/healthz"))
            .expect("web through its ingress port");
    }
    for _ in 0..REFUSED {
        let refused = host.in_netns(|| std::net::TcpStream::connect("127.0.0.1:8091"));
        assert!(refused.is_err(), "nothing listens on refusing's port 81");
    }
    // A closed connection leaves the active ones at once; a refused one is a failure when
    // its conntrack entry goes (TCP's close timeout, 10 s).
    wait_for(
        "the balancing's connections counted",
        Duration::from_secs(40),
        || {
            let (_, t) = scrape(&host);
            service_figure(&t, "tugboat_service_connections_total", "web") == SENT as f64
                && service_figure(&t, "tugboat_service_active_connections", "web") == 0.0
                && service_figure(&t, "tugboat_service_connections_total", "refusing")
                    == REFUSED as f64
                && service_figure(&t, "tugboat_service_upstream_failures_total", "refusing")
                    == REFUSED as f64
        },
        || scrape(&host).1,
    );
    // Probe failures: the unready instance's readiness probe fails every time; web's no
    // longer does.
    let probe_failures = |t: &str, service: &str, probe: &str| -> f64 {
        let (service, probe) = (
            format!("service=\"{service}\""),
            format!("probe=\"{probe}\""),
        );
        t.lines()
            .filter(|l| l.starts_with("tugboat_instance_probe_failures_total{"))
            .filter(|l| l.contains(&service) && l.contains(&probe))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // (web's first probes may fail, before its server listens; once ready, none does.)
    let (_, now) = scrape(&host);
    let web_failed = probe_failures(&now, "web", "readiness");
    let before = probe_failures(&now, "unready", "readiness");
    assert!(before >= 1.0, "{}", scrape(&host).1);
    wait_for(
        "more failed readiness probes counted",
        Duration::from_secs(10),
        || probe_failures(&scrape(&host).1, "unready", "readiness") > before,
        || scrape(&host).1,
    );
    let (_, node) = scrape(&host);
    assert_eq!(
        service_figure(&node, "tugboat_service_upstream_failures_total", "web"),
        0.0,
        "{node}"
    );
    assert_eq!(
        probe_failures(&node, "web", "readiness"),
        web_failed,
        "{node}"
    );
    // A deleted service's series go from the node's scrape, without an agent restart
    // (web's stay).
    host.api(|c| async move { c.delete_service("refusing").await.unwrap() });
    wait_for(
        "refusing's connection series gone",
        Duration::from_secs(30),
        || {
            let (_, t) = scrape(&host);
            !t.lines()
                .any(|l| l.starts_with("tugboat_service_") && l.contains("service=\"refusing\""))
        },
        || scrape(&host).1,
    );
    let (_, node) = scrape(&host);
    assert_eq!(
        service_figure(&node, "tugboat_service_connections_total", "web"),
        SENT as f64,
        "{node}"
    );

    // A node that does not exist: 404, named.
    let (status, said) = host.get_api("/v1/nodes/nowhere/metrics");
    assert_eq!(status, 404, "{said}");
    assert!(said.contains("nowhere"), "{said}");

    let (_, server) = host.get_api("/metrics");
    for (what, text) in [("server", &server), ("node", &node)] {
        match prometheus::check_metrics(text) {
            Ok(true) => {}
            Ok(false) => eprintln!("SKIP promtool check metrics ({what}): no promtool (tests/install-deps.sh --tests unpacks Debian's prometheus)"),
            Err(e) => panic!("{what}: {e}\n{text}"),
        }
    }

    // A real Prometheus, in the test's namespace, scrapes both over TLS with the token.
    let Some(binary) = prometheus::tool("prometheus") else {
        eprintln!("SKIP a real Prometheus scrape: no prometheus (tests/install-deps.sh --tests unpacks Debian's)");
        return;
    };
    let dir = host.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: tugboat
    scheme: https
    tls_config: {{ca_file: {ca}}}
    authorization: {{credentials_file: {token}}}
    static_configs: [{{targets: ["{api}"]}}]
  - job_name: tugboat-nodes
    scheme: https
    metrics_path: /v1/nodes/local/metrics
    tls_config: {{ca_file: {ca}}}
    authorization: {{credentials_file: {token}}}
    static_configs: [{{targets: ["{api}"], labels: {{node: local}}}}]
"#,
        ca = host.ca().display(),
        token = host.dir.join("server/token").display(),
        api = host::API,
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let listen = "127.0.0.1:9090";
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(host.in_netns(|| {
        std::process::Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus")
    }));
    let query = |q: &str| -> Vec<(serde_json::Value, f64)> {
        let url = format!("http://{listen}/api/v1/query?query={}", urlencode(q));
        let body = host.in_netns(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                match reqwest::get(&url).await {
                    Ok(r) => r.json::<serde_json::Value>().await.ok(),
                    Err(_) => None,
                }
            })
        });
        body.and_then(|b| b["data"]["result"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let v = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), v))
            })
            .collect()
    };
    let prom_log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    wait_for(
        "both targets up in Prometheus",
        Duration::from_secs(60),
        || {
            let up = query("up");
            up.len() == 2 && up.iter().all(|(_, v)| *v == 1.0)
        },
        || format!("{:?}\n{}", query("up"), tail(&prom_log())),
    );
    wait_for(
        "the cluster's and the node's series in Prometheus",
        Duration::from_secs(30),
        || {
            query(r#"tugboat_service_replicas_ready{service="web"}"#)
                .first()
                .is_some_and(|(_, v)| *v == 2.0)
                && query(r#"tugboat_container_memory_usage_bytes{service="web",node="local"}"#)
                    .len()
                    == 2
        },
        || tail(&prom_log()),
    );
    assert!(host.stop_up(), "tugboat up did not stop");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
