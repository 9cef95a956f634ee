//! The `tugboat` binary against a server on 127.0.0.1, and the server's data dir across
//! restarts.

mod common;

use common::{eventually, ready_count, TestCluster};
use std::process::Command;
use std::time::Duration;
use tugboat::server::{start, ServerConfig, ServerError};

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn tugboat(args: Vec<String>, envs: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .args(&args)
            .env_remove("TUGBOAT_ADDR")
            .env_remove("TUGBOAT_TOKEN")
            .env("HOME", "/nonexistent")
            .envs(envs)
            .output()
            .unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_applies_scales_and_explains() {
    let cluster =
        TestCluster::start(&[("n1", &[("zone", "east")]), ("n2", &[("zone", "west")])]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.yaml");
    std::fs::write(&file, "services:\n  web:\n    image: web:1\n    replicas: 2\n    placement:\n      constraints:\n        - {key: zone, operator: In, values: [east, west]}\n").unwrap();
    let addr = cluster.server.addr.to_string();
    let token = cluster.server.token.clone().unwrap();
    let base = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--addr".to_string(),
            addr.clone(),
            "--token".to_string(),
            token.clone(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };

    let out = tugboat(base(&["apply", "-f", file.to_str().unwrap()]), vec![]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "service/web created\n"),
        "{}",
        out.stderr
    );
    eventually("2 web ready", Duration::from_secs(20), || async {
        (ready_count(&cluster.instances("web").await) == 2).then_some(())
    })
    .await;

    // JSON output parses; the token can come from the environment.
    let out = tugboat(
        vec!["get".into(), "services".into(), "-o".into(), "json".into()],
        vec![
            ("TUGBOAT_ADDR", addr.clone()),
            ("TUGBOAT_TOKEN", token.clone()),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed["items"][0]["name"], "web");
    let out = tugboat(base(&["get", "nodes", "-o", "yaml"]), vec![]).await;
    assert!(out.stdout.contains("name: n1"), "{}", out.stdout);

    let out = tugboat(base(&["scale", "web", "3"]), vec![]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Only two nodes in the zones... and three fit, so all run; make one impossible instead.
    std::fs::write(&file, "services:\n  web:\n    image: web:1\n    replicas: 3\n    placement:\n      constraints:\n        - {key: zone, operator: In, values: [east, west]}\n  gpu:\n    image: ml:1\n    placement:\n      constraints:\n        - {key: gpu, operator: Exists}\n").unwrap();
    let out = tugboat(base(&["apply", "-f", file.to_str().unwrap()]), vec![]).await;
    assert_eq!(
        out.stdout, "service/gpu created\nservice/web unchanged\n",
        "{}",
        out.stderr
    );
    let why = eventually(
        "gpu pending with a reason",
        Duration::from_secs(20),
        || async {
            let out = tugboat(base(&["describe", "service", "gpu"]), vec![]).await;
            out.stdout
                .contains("2 nodes: constraint gpu exists")
                .then_some(out.stdout)
        },
    )
    .await;
    assert!(
        why.contains("Pending:     1 instance(s): 2 nodes: constraint gpu exists"),
        "{why}"
    );
    let out = tugboat(base(&["get", "instances", "--service", "gpu"]), vec![]).await;
    assert!(
        out.stdout.contains("WHY PENDING") && out.stdout.contains("constraint gpu exists"),
        "{}",
        out.stdout
    );

    let out = tugboat(base(&["rollout", "status", "web"]), vec![]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("service/web rolled out: 3/3 ready"),
        "{}",
        out.stdout
    );

    // A bad file: exit 1, file:line: field: what is allowed; nothing stored.
    std::fs::write(
        &file,
        "services:\n  api:\n    image: api:1\n    ports:\n      - {container: 0}\n",
    )
    .unwrap();
    let out = tugboat(base(&["apply", "-f", file.to_str().unwrap()]), vec![]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("shop.yaml:5: services.api.ports[0].container: port 0 is out of range"),
        "{}",
        out.stderr
    );
    let out = tugboat(base(&["describe", "service", "api"]), vec![]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("service `api` not found"),
        "{}",
        out.stderr
    );

    let out = tugboat(base(&["delete", "service", "gpu"]), vec![]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = tugboat(
        vec![
            "--addr".into(),
            addr.clone(),
            "get".into(),
            "services".into(),
        ],
        vec![],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bearer token"), "{}", out.stderr);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_keeps_state_and_token_across_restarts_and_serves_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = || ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let server = start(config()).await.unwrap();
    let token = server.token.clone().unwrap();
    assert!(
        matches!(start(config()).await, Err(ServerError::Locked { .. })),
        "a second server on the same data dir"
    );
    let client = tugboat::client::ApiClient::new(&server.addr.to_string(), Some(token.clone()));
    client
        .create_service("web", &tugboat::spec::ServiceSpec::new("web:1"))
        .await
        .unwrap();
    server.shutdown().await;

    let server = start(config()).await.unwrap();
    assert_eq!(server.token.as_deref(), Some(token.as_str()));
    let client = tugboat::client::ApiClient::new(&server.addr.to_string(), Some(token));
    assert_eq!(client.services().await.unwrap().items[0].name, "web");
    // The token can also be read from the data dir by the command line.
    let out = tugboat(
        vec![
            "--addr".into(),
            server.addr.to_string(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "get".into(),
            "services".into(),
        ],
        vec![],
    )
    .await;
    assert!(out.stdout.contains("web"), "{} {}", out.stdout, out.stderr);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gives_known_nodes_a_fresh_grace_period() {
    use tugboat::model::{Node, NodeStatus, Resources};
    let dir = tempfile::tempdir().unwrap();
    {
        // A node last heard of ten minutes ago, as a server that was down for a while left it.
        let store = tugboat::store::EmbeddedStore::open(
            &dir.path().join(tugboat::server::STORE_FILE),
            Default::default(),
        )
        .unwrap();
        let long_ago = tugboat::model::now_ms() - 600_000;
        let node = Node {
            runtimes: vec![],
            name: "n1".into(),
            labels: Default::default(),
            capacity: Resources::new(1000, 1 << 30, 0),
            address: None,
            subnet: None,
            status: NodeStatus::Ready,
            registered_at_ms: long_ago,
            last_heartbeat_ms: long_ago,
            volumes: vec![],
            agent_url: None,
            heartbeat_every_ms: 0,
            cordoned: false,
            draining: false,
        };
        store
            .commit_now(
                vec![],
                vec![tugboat::store::Operation::Put {
                    key: "/nodes/n1".into(),
                    value: serde_json::to_vec(&node).unwrap(),
                }],
            )
            .unwrap();
    }
    let mut config = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.timers = common::test_timers();
    let started = std::time::Instant::now();
    let server = start(config).await.unwrap();
    let client = tugboat::client::ApiClient::new(&server.addr.to_string(), server.token.clone());
    // Another node that keeps heartbeating: with every node silent the server would take
    // itself for the one cut off and declare nothing lost.
    let registration = tugboat::wire::NodeRegistration {
        runtimes: vec![],
        name: "n2".into(),
        labels: Default::default(),
        capacity: Resources::new(1000, 1 << 30, 0),
        address: None,
        subnet: None,
        volumes: vec![],
        agent_url: None,
    };
    client.register_node(&registration).await.unwrap();
    let beating = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat("n2", &Default::default()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let status = || async {
        let nodes = client.nodes().await.unwrap().items;
        nodes.iter().find(|n| n.name == "n1").unwrap().status
    };
    // Within the not-ready grace (400 ms) it stays ready, though many passes have run...
    while started.elapsed() < Duration::from_millis(300) {
        assert_eq!(status().await, NodeStatus::Ready);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // ...and with no heartbeat it is lost after the lost grace.
    eventually("n1 lost", Duration::from_secs(10), || async {
        (status().await == NodeStatus::Lost).then_some(())
    })
    .await;
    beating.abort();
    server.shutdown().await;
}

/// The verbs people bring from kubectl, nomad and docker, against a server with two
/// simulated nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_habits_of_kubectl_users_work() {
    let cluster = TestCluster::start(&[("n1", &[]), ("n2", &[])]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let addr = cluster.server.addr.to_string();
    let token = cluster.server.token.clone().unwrap();
    // An image store of this host's, without the images the files name.
    let store = tempfile::tempdir().unwrap();
    drop(tug_image::ImageStore::open(store.path()).unwrap());
    let store_dir = store.path().display().to_string();
    let run = |rest: Vec<String>| {
        let mut v = vec![
            "--addr".to_string(),
            addr.clone(),
            "--token".into(),
            token.clone(),
            "--data-dir".into(),
            store_dir.clone(),
        ];
        v.extend(rest);
        tugboat(v, vec![])
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let web = |image: &str| {
        format!("services:\n  web:\n    image: {image}\n    replicas: 2\n    ports:\n      - {{container: 80, published: 8080, mode: ingress}}\n    resources:\n      requests: {{cpu: 0.5, memory: 16Mi}}\n")
    };
    write("web1.yaml", &web("web:1"));
    write("web2.yaml", &web("web:2"));
    write("broken.yaml", &web("web:broken"));

    // apply --dry-run and diff change nothing and say what would change.
    let out = run(args(&format!("apply --dry-run -f {}", path("web1.yaml")))).await;
    assert_eq!(
        out.stdout, "service/web created (dry run)\n",
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("warning: service web: image `web:1` names no registry"),
        "{}",
        out.stderr
    );
    assert!(cluster.client.services().await.unwrap().items.is_empty());
    let out = run(args(&format!("apply -f {}", path("web1.yaml")))).await;
    assert_eq!(out.stdout, "service/web created\n", "{}", out.stderr);
    let out = run(args(&format!("diff -f {}", path("web1.yaml")))).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    let out = run(args(&format!("diff -f {}", path("web2.yaml")))).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("--- service/web (server)\n+++ service/web (file)\n@@ ")
            && out.stdout.contains("\n-image: web:1\n+image: web:2\n"),
        "{}",
        out.stdout
    );

    // rollout status waits until the two are ready.
    let out = run(args("rollout status web")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("service/web rolled out: 2/2 ready"),
        "{}",
        out.stdout
    );

    // get KIND NAME, -o wide, services with address and ports, human units.
    let out = run(args("get services web")).await;
    assert!(
        out.stdout
            .starts_with("NAME  IMAGE  READY  ROLLOUT   ADDRESS")
            && out.stdout.contains("2/2    complete")
            && out.stdout.contains("*:8080->80/tcp"),
        "{}",
        out.stdout
    );
    let out = run(args("get service nope")).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("service `nope` not found"),
        "{}",
        out.stderr
    );
    let out = run(args("get instances -o wide")).await;
    assert!(
        out.stdout.contains("TEMPLATE") && out.stdout.contains("web:1"),
        "{}",
        out.stdout
    );
    let out = run(args("get nodes -o wide")).await;
    assert!(
        out.stdout.contains("CPU ALLOCATED") && out.stdout.contains("8Gi"),
        "{}",
        out.stdout
    );
    let out = run(args("describe node n1")).await;
    assert!(
        out.stdout.contains("Capacity:    cpu 4, memory 8Gi")
            && out.stdout.contains("Allocated:   cpu "),
        "{}",
        out.stdout
    );
    let out = run(args("get events")).await;
    assert!(
        out.stdout.starts_with("AGE")
            && out
                .stdout
                .lines()
                .any(|l| l.contains("service ") && l.contains(" web ") && l.contains("created")),
        "{}",
        out.stdout
    );

    // A host port that is web's ingress port is refused at apply, by the server.
    write(
        "admin.yaml",
        "services:\n  admin:\n    image: admin:1\n    ports:\n      - {container: 80, published: 8080}\n",
    );
    let out = run(args(&format!("apply -f {}", path("admin.yaml")))).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "services.admin.ports[0].published: host port 8080/tcp is the ingress port of service `web`"
        ),
        "{}",
        out.stderr
    );

    // scale --wait returns once the count is ready.
    let out = run(args("scale web 3 --wait --timeout 20s")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ready_count(&cluster.instances("web").await), 3);

    // A pending reason names every failed check, with the numbers.
    write(
        "big.yaml",
        "services:\n  big:\n    image: big:1\n    resources:\n      requests: {cpu: 64}\n",
    );
    let out = run(args(&format!("apply -f {}", path("big.yaml")))).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(
        "big pending with numbers",
        Duration::from_secs(20),
        || async {
            let out = run(args("get instances --service big")).await;
            out.stdout
                .contains("2 nodes: not enough cpu (needs 64, largest free ")
                .then_some(())
        },
    )
    .await;

    // web:1 -> web:2 -> web:broken, rolled back to web:2; undo goes to web:1, not broken.
    run(args(&format!("apply -f {}", path("web2.yaml")))).await;
    let out = run(args("rollout status web --timeout 30s")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    run(args(&format!("apply -f {}", path("broken.yaml")))).await;
    let out = run(args("rollout status web --timeout 30s")).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("rollout of web failed and was rolled back"),
        "{}",
        out.stderr
    );
    let out = run(args("get services web")).await;
    assert!(out.stdout.contains("rolled-back"), "{}", out.stdout);
    let out = run(args("rollout history web")).await;
    assert!(
        out.stdout.contains("web:broken") && out.stdout.contains("failed, rolled back"),
        "{}",
        out.stdout
    );
    let out = run(args("rollout undo web")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("(web:1)"), "{}", out.stdout);
    let out = run(args("rollout status web --timeout 30s")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // delete -f removes the file's services.
    let out = run(args(&format!("delete -f {}", path("big.yaml")))).await;
    assert_eq!(out.stdout, "service/big deleted\n", "{}", out.stderr);

    // Completion scripts and man pages.
    let out = run(args("completion bash")).await;
    assert!(
        out.code == 0 && out.stdout.contains("_tugboat()"),
        "{}",
        out.stderr
    );
    let man = dir.path().join("man");
    let out = run(vec!["man".into(), man.display().to_string()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(man.join("tugboat.1").exists() && man.join("tugboat-rollout.1").exists());
    cluster.stop().await;
}

/// `build:` in a spec file: apply builds the missing image into the store under --data-dir
/// first, once; the server never sees the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_builds_what_a_spec_files_build_names_and_the_store_lacks() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED apply_builds_what_a_spec_files_build_names_and_the_store_lacks: needs root"
        );
        return;
    }
    let cluster = TestCluster::start(&[("n1", &[])]).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("hello");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        "services:\n  hello:\n    image: test/hello:1\n    build: ./hello\n",
    )
    .unwrap();
    let data = dir.path().join("data").display().to_string();
    let run = |rest: &[&str]| {
        let mut v: Vec<String> = vec![
            "--addr".into(),
            cluster.server.addr.to_string(),
            "--token".into(),
            cluster.server.token.clone().unwrap(),
            "--data-dir".into(),
            data.clone(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        tugboat(v, vec![])
    };
    let file = file.display().to_string();
    let out = run(&["apply", "-f", &file]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "service/hello created\n");
    assert!(
        out.stderr
            .contains("building test/hello:1 for service hello")
            && !out.stderr.contains("names no registry"),
        "{}",
        out.stderr
    );
    let out = run(&["image", "inspect", "test/hello:1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let described = cluster.client.describe_service("hello").await.unwrap();
    assert_eq!(described.service.spec.build, None);
    // Present now: not built again; and diff ignores `build:`.
    let out = run(&["apply", "-f", &file]).await;
    assert_eq!(out.stdout, "service/hello unchanged\n", "{}", out.stderr);
    assert!(!out.stderr.contains("building"), "{}", out.stderr);
    let out = run(&["diff", "-f", &file]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    cluster.stop().await;
}

/// `get -w` prints again after each change the watch API reports; `get events -w` prints
/// each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_again_on_each_change() {
    use std::io::BufRead;
    let cluster = TestCluster::start(&[("n1", &[])]).await;
    cluster
        .client
        .create_service("web", &tugboat::spec::ServiceSpec::new("web:1"))
        .await
        .unwrap();
    let watch = |what: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .args(["--addr", &cluster.server.addr.to_string()])
            .args(["--token", cluster.server.token.as_deref().unwrap()])
            .args(what)
            .env("HOME", "/nonexistent")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    // Lines until one satisfies `done`, within 20 s.
    let read_until = |rx: &std::sync::mpsc::Receiver<String>, done: &dyn Fn(&[String]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut lines = vec![];
        while !done(&lines) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("no such output within 20s: {lines:#?}"),
            }
        }
        lines
    };
    let (mut instances, rx) = watch(&["get", "instances", "-w"]);
    read_until(&rx, &|l| {
        l.iter().filter(|l| l.starts_with("web-")).count() >= 1
    });
    cluster.client.scale("web", 2).await.unwrap();
    // A later table with both instances.
    read_until(&rx, &|l| {
        let last_header = l.iter().rposition(|l| l.starts_with("ID ")).unwrap_or(0);
        l[last_header..]
            .iter()
            .filter(|l| l.starts_with("web-"))
            .count()
            == 2
    });
    instances.kill().unwrap();
    instances.wait().unwrap();

    let (mut events, rx) = watch(&["get", "events", "-w"]);
    let mut lines = read_until(&rx, &|l| l.iter().any(|l| l.contains("replicas 1 -> 2")));
    cluster.client.scale("web", 3).await.unwrap();
    lines.extend(read_until(&rx, &|l| {
        l.iter().any(|l| l.contains("replicas 2 -> 3"))
    }));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("replicas 1 -> 2"))
            .count(),
        1,
        "each event once: {lines:#?}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("AGE")).count(), 1);
    events.kill().unwrap();
    events.wait().unwrap();
    cluster.stop().await;
}
