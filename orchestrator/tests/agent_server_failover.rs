//! Root test of a real agent given three servers (`--addr a,b,c`) on one etcd, all in a
//! network namespace of the test's own (loopback only): when the server the agent talks to
//! is killed (kill -9), the agent heartbeats through the next one and its node stays Ready,
//! its service keeps answering at its address throughout, and its watch of instances,
//! re-opened on the next server, brings it the instance of a scale made after the kill.
//!
//! SKIP without root, busybox or an etcd binary. etcd runs inside the namespace; the
//! servers use plain HTTP and no auth. Everything is removed on drop (host::TestHost).

mod host;

#[path = "common/etcd.rs"]
mod etcd;

use host::{http_get, shop_images, wait_for, TestHost};
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::model::{Instance, InstancePhase, NodeStatus};

const START: Duration = Duration::from_secs(120);
/// Not 7481: the agent's API listens there.
const SERVERS: [&str; 3] = ["127.0.0.1:7490", "127.0.0.1:7491", "127.0.0.1:7492"];

const SPEC: &str = "\
services:
  catalog:
    image: shop/catalog:1
    replicas: 2
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
";

fn all_servers() -> String {
    SERVERS
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `f` with a client of every server, inside the namespace.
fn api<T: Send, F: std::future::Future<Output = T>>(
    host: &TestHost,
    f: impl FnOnce(ApiClient) -> F + Send,
) -> T {
    let client = ApiClient::new(&all_servers(), None);
    host.in_netns(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(client))
    })
}

fn instances(host: &TestHost) -> Vec<Instance> {
    api(host, |c| async move { c.instances(None).await })
        .map(|l| l.items)
        .unwrap_or_default()
}

fn ready(host: &TestHost) -> usize {
    instances(host)
        .iter()
        .filter(|i| i.phase == InstancePhase::Running && i.ready)
        .count()
}

fn catalog_answers(host: &TestHost, vip: &str) -> bool {
    let target = format!("{vip}:80");
    host.in_netns(move || http_get(&target, "/products"))
        .is_ok_and(|t| t.contains(r#""served_by":"catalog-"#))
}

fn show(host: &TestHost) -> String {
    host.output.lock().unwrap().clone()
}

#[test]
fn an_agent_moves_to_the_next_server_and_its_node_stays_ready() {
    skip_unless_possible!("an_agent_moves_to_the_next_server_and_its_node_stays_ready");
    if let Err(reason) = etcd::etcd_binary() {
        println!("SKIP an_agent_moves_to_the_next_server_and_its_node_stays_ready: {reason}");
        return;
    }
    let mut host = TestHost::new();
    let etcd = match host.in_netns(etcd::Etcd::start) {
        Ok(etcd) => etcd,
        Err(reason) => panic!("etcd in the namespace: {reason}"),
    };
    for (n, addr) in SERVERS.iter().enumerate() {
        let dir = host.dir.join(format!("server-{n}")).display().to_string();
        #[rustfmt::skip]
        host.spawn(&format!("s{n}"), &[
            "--data-dir", &dir, "server", "--listen", addr,
            "--store", "etcd", "--etcd-endpoints", &etcd.endpoint, "--etcd-prefix", "/agent-failover",
            "--insecure-plain-http", "--insecure-no-auth",
        ]);
    }
    for n in 0..SERVERS.len() {
        host.wait_for_output(&format!("s{n}: tugboat server listening"), START);
    }
    let agent_dir = host.dir.join("agent").display().to_string();
    let image = shop_images().join("oci/shop-catalog").display().to_string();
    #[rustfmt::skip]
    host.spawn("agent", &[
        "agent", "--insecure-no-auth", "--addr", &all_servers(),
        "--data-dir", &agent_dir, "--node", "edge", "--import", &image,
    ]);
    let spec = tugboat::spec::parse_spec_file("catalog.yaml", SPEC, &|_| false).unwrap();
    api(&host, |c| async move { c.apply(&spec).await.map(|_| ()) }).expect("apply");
    wait_for(
        "both catalog instances ready",
        START,
        || ready(&host) == 2,
        || show(&host),
    );
    let vip = api(&host, |c| async move { c.services().await })
        .expect("services")
        .items
        .into_iter()
        .find_map(|s| s.address)
        .expect("the catalog's address")
        .to_string();
    wait_for(
        "the catalog at its address",
        START,
        || catalog_answers(&host, &vip),
        || show(&host),
    );

    // The agent talks to the first server: kill it.
    host.kill_spawned("s0");
    let killed_at = Instant::now();
    let mut unanswered = 0;
    while killed_at.elapsed() < Duration::from_secs(6) {
        let node = api(&host, |c| async move { c.nodes().await })
            .expect("nodes, from another server")
            .items
            .into_iter()
            .find(|n| n.name == "edge")
            .expect("node edge");
        assert_eq!(
            node.status,
            NodeStatus::Ready,
            "edge {:?} after its server was killed:\n{}",
            killed_at.elapsed(),
            show(&host)
        );
        if !catalog_answers(&host, &vip) {
            unanswered += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        unanswered, 0,
        "the catalog did not answer {unanswered} times"
    );
    let node = api(&host, |c| async move { c.nodes().await })
        .unwrap()
        .items
        .into_iter()
        .find(|n| n.name == "edge")
        .unwrap();
    let silent = tugboat::model::now_ms().saturating_sub(node.last_heartbeat_ms);
    assert!(silent < 2_000, "edge's last heartbeat {silent} ms ago");

    // The agent's watch, re-opened on another server, brings it a scale made now.
    api(
        &host,
        |c| async move { c.scale("catalog", 3).await.map(|_| ()) },
    )
    .expect("scale");
    wait_for(
        "three catalog instances ready after the scale",
        START,
        || ready(&host) == 3,
        || show(&host),
    );
    assert!(host.stop_spawned(), "every process stopped on SIGINT");
    drop(etcd);
}
