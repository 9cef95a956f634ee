//! The API end to end over HTTP on 127.0.0.1, with simulated nodes.

mod common;
mod prometheus;

use common::{eventually, ready_count, TestCluster};
use std::io::{Read, Write};
use std::time::Duration;
use tugboat::client::{ApiClient, ClientError};
use tugboat::model::{InstancePhase, RolloutState};
use tugboat::spec::parse_spec_file;

const WAIT: Duration = Duration::from_secs(20);

const SHOP: &str = r#"
services:
  db:
    image: postgres:16
    resources:
      requests: {cpu: 500m, memory: 1Gi}
  web:
    image: shop/web:1
    replicas: 3
    ports:
      - {container: 80, published: 8080}
    resources:
      requests: {cpu: 0.25, memory: 256Mi}
    placement:
      affinity: []
      anti_affinity: [{service: db, required: false}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_scale_and_why_pending() {
    let cluster = TestCluster::start(&[
        ("n1", &[("zone", "east")]),
        ("n2", &[("zone", "west")]),
        ("n3", &[("zone", "west")]),
    ])
    .await;
    let client = &cluster.client;
    let file = parse_spec_file("shop.yaml", SHOP, &|_| false).unwrap();
    let outcome = client.apply(&file).await.unwrap();
    assert_eq!(outcome.services["web"], "created");
    eventually("3 web and 1 db ready", WAIT, || async {
        let web = cluster.instances("web").await;
        let db = cluster.instances("db").await;
        (ready_count(&web) == 3 && web.len() == 3 && ready_count(&db) == 1).then_some(())
    })
    .await;
    // Published port 8080: one web per node.
    let web = cluster.instances("web").await;
    let nodes: std::collections::HashSet<_> = web.iter().map(|i| i.node.clone().unwrap()).collect();
    assert_eq!(nodes.len(), 3);
    // Applying the same file again changes nothing.
    assert_eq!(
        client.apply(&file).await.unwrap().services["web"],
        "unchanged"
    );

    // Scale up past what the port allows: the 4th stays pending, and says why.
    client.scale("web", 4).await.unwrap();
    let pending = eventually("a pending web instance with a reason", WAIT, || async {
        cluster
            .instances("web")
            .await
            .into_iter()
            .find(|i| i.phase == InstancePhase::Pending && i.pending_reason.is_some())
    })
    .await;
    assert_eq!(
        pending.pending_reason.as_deref(),
        Some("3 nodes: host port 8080/tcp in use")
    );
    let described = client.describe_service("web").await.unwrap();
    assert!(
        described
            .events
            .iter()
            .any(|e| e.reason == "unschedulable" && e.message.contains("8080")),
        "{:?}",
        described.events
    );

    // A new node takes it.
    let mut cluster = cluster;
    cluster
        .add_node(
            "n4",
            &[],
            tugboat::model::Resources::new(4000, 8 * common::GI, 0),
        )
        .await;
    eventually("4 web ready", WAIT, || async {
        (ready_count(&cluster.instances("web").await) == 4).then_some(())
    })
    .await;

    // Scale down.
    cluster.client.scale("web", 1).await.unwrap();
    eventually("1 web left", WAIT, || async {
        let web = cluster.instances("web").await;
        (web.len() == 1 && ready_count(&web) == 1).then_some(())
    })
    .await;
    let service = cluster
        .client
        .describe_service("web")
        .await
        .unwrap()
        .service;
    assert_eq!(service.spec.replicas, 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_lost_and_its_instances_move() {
    let cluster = TestCluster::start(&[("n1", &[]), ("n2", &[]), ("n3", &[])]).await;
    let file = parse_spec_file(
        "s.yaml",
        "services:\n  web:\n    image: web:1\n    replicas: 2\n    placement:\n      anti_affinity: [{service: web}]\n",
        &|_| false,
    )
    .unwrap();
    cluster.client.apply(&file).await.unwrap();
    let victim = eventually("2 web ready", WAIT, || async {
        let web = cluster.instances("web").await;
        (ready_count(&web) == 2).then(|| web[0].node.clone().unwrap())
    })
    .await;
    cluster
        .node(&victim)
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("the silent node marked lost", WAIT, || async {
        let nodes = cluster.client.nodes().await.unwrap().items;
        nodes
            .iter()
            .any(|n| n.name == victim && n.status == tugboat::model::NodeStatus::Lost)
            .then_some(())
    })
    .await;
    eventually("2 web ready, none on the lost node", WAIT, || async {
        let web = cluster.instances("web").await;
        (web.len() == 2
            && ready_count(&web) == 2
            && web
                .iter()
                .all(|i| i.node.as_deref() != Some(victim.as_str())))
        .then_some(())
    })
    .await;
    let events = cluster.client.describe_service("web").await.unwrap().events;
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&format!("node {victim} was lost"))),
        "{events:?}"
    );
    cluster.stop().await;
}

async fn rolling_cluster(replicas: u32) -> TestCluster {
    let cluster = TestCluster::start(&[("n1", &[]), ("n2", &[]), ("n3", &[])]).await;
    let text = format!(
        "services:\n  web:\n    image: web:1\n    replicas: {replicas}\n    update:\n      max_surge: 1\n      max_unavailable: 0\n      progress_deadline_seconds: 5\n"
    );
    cluster
        .client
        .apply(&parse_spec_file("s.yaml", &text, &|_| false).unwrap())
        .await
        .unwrap();
    eventually("first rollout complete", WAIT, || async {
        let rollout = cluster.client.rollout_status("web").await.unwrap();
        (rollout.state == RolloutState::Complete
            && ready_count(&cluster.instances("web").await) == replicas as usize)
            .then_some(())
    })
    .await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_capacity_and_completes() {
    let cluster = rolling_cluster(3).await;
    let mut spec = cluster
        .client
        .describe_service("web")
        .await
        .unwrap()
        .service
        .spec;
    spec.image = "web:2".into();
    let service = cluster.client.replace_service("web", &spec).await.unwrap();
    let new_hash = service.rollout.template_hash.clone();
    eventually("rollout to web:2 complete", WAIT, || async {
        let web = cluster.instances("web").await;
        // max_unavailable 0 and max_surge 1, at every observation.
        let alive = web
            .iter()
            .filter(|i| !matches!(i.phase, InstancePhase::Failed | InstancePhase::Lost))
            .count();
        assert!(ready_count(&web) >= 3, "capacity dropped: {web:?}");
        assert!(alive <= 4, "surged past 1: {alive}");
        let rollout = cluster.client.rollout_status("web").await.unwrap();
        (rollout.state == RolloutState::Complete
            && web.iter().all(|i| i.template_hash == new_hash && i.ready)
            && web.len() == 3)
            .then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rollout_rolls_back_by_itself_and_undo_works() {
    let cluster = rolling_cluster(2).await;
    let old_hash = cluster
        .client
        .rollout_status("web")
        .await
        .unwrap()
        .template_hash;
    let mut spec = cluster
        .client
        .describe_service("web")
        .await
        .unwrap()
        .service
        .spec;
    spec.image = "web:broken".into();
    cluster.client.replace_service("web", &spec).await.unwrap();
    let rollout = eventually("the rollout rolled back", WAIT, || async {
        let rollout = cluster.client.rollout_status("web").await.unwrap();
        let web = cluster.instances("web").await;
        (rollout.state == RolloutState::RolledBack
            && web.len() == 2
            && web.iter().all(|i| i.template_hash == old_hash && i.ready))
        .then_some(rollout)
    })
    .await;
    assert!(rollout.message.contains("failed"), "{}", rollout.message);
    let service = cluster
        .client
        .describe_service("web")
        .await
        .unwrap()
        .service;
    assert_eq!(service.spec.image, "web:1");
    // Undo goes back to the last good template: the broken one is passed over, and before
    // web:1 there is none, so there is nothing to undo (it used to re-deploy web:broken).
    let err = cluster.client.rollout_undo("web").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 409, message, .. } if message.contains("no earlier good template")),
        "{err}"
    );
    assert_eq!(
        cluster
            .client
            .describe_service("web")
            .await
            .unwrap()
            .service
            .spec
            .image,
        "web:1"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_validation_and_limits() {
    let cluster = TestCluster::start(&[]).await;
    let addr = cluster.server.addr.to_string();
    // No token, wrong token: 401 with a hint; health needs none.
    for token in [None, Some("wrong".to_string())] {
        let err = ApiClient::new(&addr, token).services().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 401, message, .. } if message.contains("<data-dir>/token")),
            "{err}"
        );
    }
    let health: serde_json::Value = ApiClient::new(&addr, None)
        .call(reqwest::Method::GET, "/v1/healthz", None)
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    // An invalid file: 422 with every problem, and nothing stored (web is fine, bad is not).
    let body = serde_json::json!({"services": {
        "web": {"image": "web:1"},
        "bad": {"image": "x", "placement": {"affinity": [{"service": "nope"}]}, "replicas": 3}
    }});
    let err = cluster
        .client
        .call::<serde_json::Value>(reqwest::Method::POST, "/v1/apply", Some(body))
        .await
        .unwrap_err();
    match &err {
        ClientError::Api {
            status: 422,
            details,
            ..
        } => {
            assert_eq!(details.len(), 1);
            assert_eq!(
                details[0].path,
                "services.bad.placement.affinity[0].service"
            );
        }
        other => panic!("expected 422, got {other}"),
    }
    assert!(cluster.client.services().await.unwrap().items.is_empty());

    // A port that a stored service's ingress port holds on every node: 422 at apply, and at
    // create; the stored service is checked against an applied ingress port too.
    let front = serde_json::json!({"services": {
        "front": {"image": "front:1", "ports": [{"container": 80, "published": 8080, "mode": "ingress"}]}
    }});
    cluster
        .client
        .call::<serde_json::Value>(reqwest::Method::POST, "/v1/apply", Some(front))
        .await
        .unwrap();
    let admin = serde_json::json!({"services": {
        "admin": {"image": "admin:1", "ports": [{"container": 80, "published": 8080}]}
    }});
    let err = cluster
        .client
        .call::<serde_json::Value>(reqwest::Method::POST, "/v1/apply", Some(admin))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 422, details, .. }
            if details.len() == 1 && details[0].path == "services.admin.ports[0].published"
                && details[0].message.contains("ingress port of service `front`")),
        "{err:?}"
    );
    let mut admin = tugboat::spec::ServiceSpec::new("admin:1");
    admin.ports = vec![tugboat::spec::PortSpec {
        container: tugboat::spec::Port(80),
        published: Some(tugboat::spec::Port(8080)),
        protocol: Default::default(),
        mode: tugboat::spec::PublishMode::Ingress,
    }];
    let err = cluster
        .client
        .create_service("admin", &admin)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 422, .. }),
        "{err:?}"
    );
    cluster.client.delete_service("front").await.unwrap();

    // Unknown fields and wrong types in a body: 400 naming the field.
    let body = serde_json::json!({"replicas": "three"});
    let err = cluster
        .client
        .call::<serde_json::Value>(reqwest::Method::PATCH, "/v1/services/web", Some(body))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, message, .. } if message.contains("replicas: invalid type")),
        "{err}"
    );
    let err = cluster.client.scale("nothere", 2).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, message, .. } if message == "service `nothere` not found"),
        "{err}"
    );
    let err = cluster
        .client
        .call::<serde_json::Value>(reqwest::Method::GET, "/v1/instances?colour=red", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, message, .. } if message.contains("allowed: service, node")),
        "{err}"
    );

    // A 100 MB body is refused before it is read.
    let mut stream = std::net::TcpStream::connect(cluster.server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let token = cluster.server.token.clone().unwrap();
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100 << 20
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = vec![0u8; 4096];
    let n = stream.read(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("larger than the 4 MiB limit"),
        "{response}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_over_http_misses_nothing_and_old_revisions_say_410() {
    use tugboat::wire::WatchKind;
    let dir = tempfile::tempdir().unwrap();
    let mut config = tugboat::server::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.store.history_events = 30;
    config.store.history_keep = std::time::Duration::ZERO;
    let server = tugboat::server::start(config).await.unwrap();
    let client = ApiClient::new(&server.addr.to_string(), server.token.clone());
    client
        .create_service("a", &tugboat::spec::ServiceSpec::new("a:1"))
        .await
        .unwrap();
    let listed = client.services().await.unwrap();
    // A change between the list and the watch.
    client
        .create_service("b", &tugboat::spec::ServiceSpec::new("b:1"))
        .await
        .unwrap();
    let batch = client
        .watch(
            WatchKind::Services,
            listed.revision + 1,
            Duration::from_secs(5),
            None,
        )
        .await
        .unwrap();
    assert_eq!(batch.changes.len(), 1, "{batch:?}");
    assert_eq!(batch.changes[0].key, "/services/b");
    assert_eq!(batch.changes[0].object["spec"]["image"], "b:1");
    // Nothing new: an empty answer at the timeout that does not move the revision past anything.
    let quiet = client
        .watch(
            WatchKind::Services,
            batch.revision + 1,
            Duration::from_secs(0),
            None,
        )
        .await
        .unwrap();
    assert!(quiet.changes.is_empty());
    assert_eq!(quiet.revision, batch.revision);
    // A delete is seen too.
    client.delete_service("a").await.unwrap();
    let batch = client
        .watch(
            WatchKind::Services,
            quiet.revision + 1,
            Duration::from_secs(5),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (batch.changes[0].kind, batch.changes[0].key.as_str()),
        (tugboat::store::EventKind::Delete, "/services/a")
    );
    // History is bounded: a watch from too far back is told to list again.
    for replicas in 0..40 {
        client.scale("b", replicas % 3).await.unwrap();
    }
    let err = client
        .watch(WatchKind::Services, 1, Duration::from_secs(0), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 410, code, .. } if code == "compacted"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_subnet_overlaps_another_live_nodes_is_refused() {
    use tugboat::wire::NodeRegistration;
    let cluster = TestCluster::start(&[]).await;
    let node = |name: &str, subnet: &str| NodeRegistration {
        runtimes: vec![],
        name: name.into(),
        labels: Default::default(),
        capacity: tugboat::model::Resources::new(1000, 1 << 30, 0),
        address: Some("192.168.1.1".into()),
        subnet: Some(subnet.parse().unwrap()),
        volumes: vec![],
        agent_url: None,
    };
    cluster
        .client
        .register_node(&node("a", "10.88.1.0/24"))
        .await
        .unwrap();
    let e = cluster
        .client
        .register_node(&node("b", "10.88.0.0/16"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    let text = e.to_string();
    for part in ["node b", "10.88.0.0/16", "node a", "10.88.1.0/24"] {
        assert!(text.contains(part), "no `{part}` in: {text}");
    }
    // The same node again with its subnet, and another node with its own: fine.
    cluster
        .client
        .register_node(&node("a", "10.88.1.0/24"))
        .await
        .unwrap();
    cluster
        .client
        .register_node(&node("b", "10.88.2.0/24"))
        .await
        .unwrap();
    let subnets: Vec<String> = cluster
        .client
        .nodes()
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| format!("{}={}", n.name, n.subnet.unwrap()))
        .collect();
    assert_eq!(subnets, ["a=10.88.1.0/24", "b=10.88.2.0/24"]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_node_takes_nothing_new_and_a_drained_node_is_emptied_replacement_first() {
    let cluster = TestCluster::start(&[("n1", &[]), ("n2", &[]), ("n3", &[])]).await;
    let api = &cluster.client;
    let node_call = |verb: &'static str, name: &'static str| async move {
        api.call::<tugboat::model::Node>(
            reqwest::Method::POST,
            &format!("/v1/nodes/{name}/{verb}"),
            None,
        )
        .await
    };
    // Bad input names what is wrong.
    let e = node_call("drain", "nosuch").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("nosuch"), "{e}");

    let cordoned = node_call("cordon", "n1").await.unwrap();
    assert!(cordoned.cordoned && !cordoned.draining);
    let file = parse_spec_file(
        "s.yaml",
        "services:\n  web:\n    image: web:1\n    replicas: 4\n",
        &|_| false,
    )
    .unwrap();
    api.apply(&file).await.unwrap();
    eventually("4 web ready, none on cordoned n1", WAIT, || async {
        let web = cluster.instances("web").await;
        (ready_count(&web) == 4 && web.iter().all(|i| i.node.as_deref() != Some("n1")))
            .then_some(())
    })
    .await;
    let on_n2: Vec<String> = cluster
        .instances("web")
        .await
        .into_iter()
        .filter(|i| i.node.as_deref() == Some("n2"))
        .map(|i| i.id)
        .collect();
    assert!(!on_n2.is_empty(), "spread put nothing on n2");

    // Drain n2 with n1 uncordoned: its instances move (to n1 or n3), and at no observed
    // moment are fewer than 4 ready (max_unavailable 0: the replacement comes first).
    node_call("uncordon", "n1").await.unwrap();
    let draining = node_call("drain", "n2").await.unwrap();
    assert!(draining.cordoned && draining.draining);
    eventually("n2 drained, 4 web ready elsewhere", WAIT, || async {
        let web = cluster.instances("web").await;
        let ready = web
            .iter()
            .filter(|i| i.phase == InstancePhase::Running && i.ready)
            .count();
        assert!(ready >= 4, "only {ready} ready during the drain: {web:?}");
        (web.len() == 4 && ready == 4 && web.iter().all(|i| i.node.as_deref() != Some("n2")))
            .then_some(())
    })
    .await;
    let events: tugboat::wire::Listed<tugboat::model::Event> = api
        .call(
            reqwest::Method::GET,
            "/v1/events?kind=service&name=web",
            None,
        )
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.message.contains("moved off draining node n2")),
        "{:?}",
        events.items
    );
    // Drained stays cordoned until uncordoned.
    let nodes = api.nodes().await.unwrap().items;
    let n2 = nodes.iter().find(|n| n.name == "n2").unwrap();
    assert!(n2.cordoned && n2.draining);
    let n2 = node_call("uncordon", "n2").await.unwrap();
    assert!(!n2.cordoned && !n2.draining);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_service_scales_out_on_cpu_and_back_in_after_its_window() {
    use tugboat::model::InstanceStats;
    use tugboat::wire::{InstanceStatusReport, ReportedPhase};
    let cluster = TestCluster::start(&[("n1", &[]), ("n2", &[])]).await;
    let client = &cluster.client;
    let spec = r#"
services:
  front:
    image: shop/front:1
    replicas: 2
    resources:
      requests: {cpu: 100m}
    autoscale:
      min: 2
      max: 6
      target: {cpu: 50%}
      scale_up: {max_step: 4, period_seconds: 1}
      scale_down: {stabilization_seconds: 2, max_step: 1, period_seconds: 1}
"#;
    client
        .apply(&parse_spec_file("a.yaml", spec, &|_| false).unwrap())
        .await
        .unwrap();
    // The load: what each ready instance's agent would report, refreshed as agents do.
    let load = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(150));
    let reporter = {
        let client = client.clone();
        let load = load.clone();
        tokio::spawn(async move {
            loop {
                let list = client.instances(Some("front")).await.map(|l| l.items);
                for i in list.unwrap_or_default().into_iter().filter(|i| i.ready) {
                    let report = InstanceStatusReport {
                        node: i.node.clone().unwrap_or_default(),
                        phase: ReportedPhase::Running,
                        ready: true,
                        message: "running".into(),
                        exit_code: None,
                        restarts: 0,
                        stats: Some(InstanceStats {
                            cpu_millis: load.load(std::sync::atomic::Ordering::SeqCst),
                            memory_bytes: 1 << 20,
                            pids: 1,
                            at_ms: tugboat::model::now_ms(),
                        }),
                        address: None,
                        last_exit: None,
                        crash_looping: false,
                    };
                    let _ = client.report_status(&i.id, &report).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // 2 instances at 150% of their request, target 50%: 300m needs 6.
    eventually("front scaled out to 6", WAIT, || async {
        let d = client.describe_service("front").await.ok()?;
        (d.service.spec.replicas == 6 && ready_count(&d.instances) == 6).then_some(())
    })
    .await;
    let d = client.describe_service("front").await.unwrap();
    // Each step says its numbers (the first may come before both instances reported).
    assert!(
        d.events.iter().any(|e| e.reason == "autoscaled"
            && e.message.starts_with("2 -> ")
            && e.message
                .ends_with(" replicas: cpu 150% of request (target 50%)")),
        "{:#?}",
        d.events
    );
    assert!(d.autoscale.unwrap().contains("cpu"));
    // /metrics has the target and what the ready instances use (150m of 100m requested).
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", cluster.server.addr))
        .bearer_auth(cluster.server.token.clone().unwrap_or_default())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tugboat_service_autoscale_target_ratio{service=\"front\",resource=\"cpu\"} 0.5",
        "tugboat_service_autoscale_current_ratio{service=\"front\",resource=\"cpu\"} 1.5",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    // A person's scale is refused, and says what to change.
    let err = client.scale("front", 3).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 409, message, .. } if message.contains("autoscale.min")),
        "{err}"
    );
    // Idle: one step at a time, after the window, down to min.
    load.store(5, std::sync::atomic::Ordering::SeqCst);
    eventually("front back to 2", WAIT, || async {
        let d = client.describe_service("front").await.ok()?;
        (d.service.spec.replicas == 2).then_some(())
    })
    .await;
    let d = client.describe_service("front").await.unwrap();
    let downs: Vec<&str> = d
        .events
        .iter()
        .filter(|e| e.reason == "autoscaled" && e.message.starts_with(|c: char| c.is_ascii_digit()))
        .map(|e| e.message.as_str())
        .collect();
    assert!(
        downs.iter().any(|m| m.starts_with("6 -> 5 replicas")),
        "{downs:?}"
    );
    assert!(
        !downs.iter().any(|m| m.starts_with("6 -> 2")),
        "one step at a time: {downs:?}"
    );
    reporter.abort();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_the_cluster_in_prometheus_text() {
    let cluster = TestCluster::start(&[("n1", &[]), ("n2", &[]), ("n3", &[])]).await;
    let client = &cluster.client;
    let file = parse_spec_file("shop.yaml", SHOP, &|_| false).unwrap();
    client.apply(&file).await.unwrap();
    eventually("3 web ready", WAIT, || async {
        (ready_count(&cluster.instances("web").await) == 3).then_some(())
    })
    .await;
    // One that no node can take: pending for cpu.
    let big = "services:\n  big:\n    image: busybox\n    resources: {requests: {cpu: 64}}\n";
    let big = parse_spec_file("big.yaml", big, &|_| false).unwrap();
    client.apply(&big).await.unwrap();
    eventually("big pending with its reason", WAIT, || async {
        let i = cluster.instances("big").await;
        i.iter()
            .any(|i| {
                i.pending_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("not enough cpu"))
            })
            .then_some(())
    })
    .await;
    let addr = cluster.server.addr.to_string();
    let scrape = |token: Option<String>| {
        let mut r = reqwest::Client::new().get(format!("http://{addr}/metrics"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let anonymous = scrape(None).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let answer = scrape(cluster.server.token.clone()).await.unwrap();
    assert!(answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = answer.text().await.unwrap();
    for line in [
        "tugboat_service_replicas_desired{service=\"web\"} 3",
        "tugboat_service_replicas_ready{service=\"web\"} 3",
        "tugboat_node_ready{node=\"n1\"} 1",
        "tugboat_node_capacity_memory_bytes{node=\"n1\"}",
        "tugboat_api_requests_total{route=\"/v1/apply\",method=\"POST\",code=\"200\"} 2",
        "# TYPE tugboat_api_request_duration_seconds histogram",
        "tugboat_instances{status=\"running\"}",
        "tugboat_service_rollout_state{service=\"web\",state=\"complete\"} 1",
        "tugboat_service_rollout_state{service=\"web\",state=\"progressing\"} 0",
        "tugboat_scheduler_pending_instances{reason=\"cpu\"} 1",
        "# TYPE tugboat_scheduler_placement_latency_seconds histogram",
        "# TYPE tugboat_store_append_latency_seconds histogram",
        "tugboat_store_compactions_total 0",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    // What the scheduler placed is what the nodes show allocated: 3 web x 0.25 + 1 db x 0.5.
    let allocated: f64 = text
        .lines()
        .filter(|l| l.starts_with("tugboat_node_allocated_cpu_cores{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!((allocated - 1.25).abs() < 1e-9, "{allocated}\n{text}");
    // Every placed instance was timed once (3 web, 1 db); the store fsynced what it
    // acknowledged and says how big its log is.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(
        value("tugboat_scheduler_placement_latency_seconds_count"),
        4.0
    );
    assert!(value("tugboat_store_append_latency_seconds_count") >= 4.0);
    assert!(value("tugboat_store_log_size_bytes") > 0.0);
    // promtool, where Prometheus is installed, accepts it.
    match prometheus::check_metrics(&text) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "SKIP promtool check metrics: no promtool (tests/install-deps.sh --tests unpacks Debian's prometheus)"
        ),
        Err(e) => panic!("{e}\n{text}"),
    }
    cluster.stop().await;
}

/// Issue 17: a high-priority service that fits nowhere evicts a low one on a full node; the
/// evicted instance goes pending with `preempted by SERVICE/ID` and is placed again when
/// room returns; an equal priority never preempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_preempts_a_lower_one_and_an_equal_never_does() {
    let mut cluster = TestCluster::start(&[]).await;
    // One node with room for two instances of 512Mi.
    cluster
        .add_node(
            "n1",
            &[],
            tugboat::model::Resources::new(2000, common::GI, 0),
        )
        .await;
    let service = |name: &str, priority: &str, replicas: u32| {
        parse_spec_file(
            "p.yaml",
            &format!(
                "services:\n  {name}:\n    image: {name}:1\n    replicas: {replicas}\n    priority: {priority}\n    resources:\n      requests: {{memory: 512Mi}}\n"
            ),
            &|_| true,
        )
        .unwrap()
    };
    let client = &cluster.client;
    client.apply(&service("batch", "low", 2)).await.unwrap();
    let before = eventually("2 batch ready", WAIT, || async {
        let batch = cluster.instances("batch").await;
        (ready_count(&batch) == 2).then_some(batch)
    })
    .await;

    client.apply(&service("api", "high", 1)).await.unwrap();
    let api = eventually("api ready on n1", WAIT, || async {
        let api = cluster.instances("api").await;
        (ready_count(&api) == 1).then(|| api[0].clone())
    })
    .await;
    let preempted = eventually("a batch instance preempted", WAIT, || async {
        let batch = cluster.instances("batch").await;
        let pending = batch
            .iter()
            .find(|i| i.phase == InstancePhase::Pending)?
            .clone();
        (ready_count(&batch) == 1 && batch.len() == 2).then_some(pending)
    })
    .await;
    let reason = preempted.pending_reason.clone().unwrap();
    assert!(
        reason.starts_with(&format!("preempted by api/{}", api.id)),
        "{reason}"
    );
    // One of the two was evicted, the other still runs; the copy keeps the evicted one's slot.
    let survivor = cluster
        .instances("batch")
        .await
        .into_iter()
        .find(|i| i.ready)
        .unwrap();
    assert!(before.iter().any(|b| b.id == survivor.id));
    let evicted = before.iter().find(|b| b.id != survivor.id).unwrap();
    assert_eq!(preempted.slot, evicted.slot);
    // describe tells the story on both sides.
    let described = client.describe_service("batch").await.unwrap();
    assert!(
        described.events.iter().any(|e| e.reason == "preempted"
            && e.name == preempted.id
            && e.message.contains(&format!("preempted by api/{}", api.id))),
        "{:?}",
        described.events
    );
    let described = client.describe_service("api").await.unwrap();
    assert!(
        described
            .events
            .iter()
            .any(|e| e.reason == "preempting"
                && e.message.contains(&format!("batch/{}", evicted.id))),
        "{:?}",
        described.events
    );

    // An equal priority never preempts: `more` (low) stays pending, says why, evicts nothing.
    client.apply(&service("more", "low", 1)).await.unwrap();
    let more = eventually("more pending with a reason", WAIT, || async {
        let more = cluster.instances("more").await;
        more.first()
            .filter(|i| i.phase == InstancePhase::Pending && i.pending_reason.is_some())
            .cloned()
    })
    .await;
    assert!(
        more.pending_reason
            .as_deref()
            .unwrap()
            .starts_with("1 node: not enough memory"),
        "{:?}",
        more.pending_reason
    );
    let batch = cluster.instances("batch").await;
    assert!(batch.iter().any(|i| i.id == survivor.id && i.ready));
    // Still pending, the preempted copy keeps its story and adds why it waits.
    let copy = batch.iter().find(|i| i.id == preempted.id).unwrap();
    assert_eq!(copy.phase, InstancePhase::Pending);
    assert!(
        copy.pending_reason
            .as_deref()
            .unwrap()
            .contains("; 1 node: not enough memory"),
        "{:?}",
        copy.pending_reason
    );

    // Room returns: the preempted copy (older than `more`) is placed again.
    client.delete_service("api").await.unwrap();
    eventually("batch back to 2 ready", WAIT, || async {
        let batch = cluster.instances("batch").await;
        (ready_count(&batch) == 2 && batch.iter().any(|i| i.id == preempted.id && i.ready))
            .then_some(())
    })
    .await;
    let more = cluster.instances("more").await;
    assert_eq!(more[0].phase, InstancePhase::Pending);
    cluster.stop().await;
}
