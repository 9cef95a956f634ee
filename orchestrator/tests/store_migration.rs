//! `tugboat store export` / `import`: a cluster grown from one edge box (embedded store)
//! to etcd keeps its services, and can go back. A real etcd on loopback
//! (tests/common/etcd.rs; SKIP without the binary).

#[path = "common/etcd.rs"]
mod etcd;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::server::{start, ServerConfig, StoreBackend};
use tugboat::spec::ServiceSpec;
use tugboat::store::EtcdOptions;

fn tugboat(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The services a server on `backend` serves: (name, replicas, image).
async fn services_served(data_dir: &Path, backend: StoreBackend) -> Vec<(String, u32, String)> {
    let mut config = ServerConfig::new(data_dir, "127.0.0.1:0".parse().unwrap());
    config.auth = false;
    config.backend = backend;
    let server = start(config).await.unwrap();
    let client = ApiClient::new(&server.addr.to_string(), None);
    let services = client.services().await.unwrap().items;
    server.shutdown().await;
    services
        .into_iter()
        .map(|s| (s.name, s.spec.replicas, s.spec.image))
        .collect()
}

fn items(export_file: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(export_file).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["items"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_move_from_the_embedded_store_to_etcd_and_back() {
    let etcd = match etcd::Etcd::start() {
        Ok(etcd) => etcd,
        Err(reason) => {
            println!("SKIP services_move_from_the_embedded_store_to_etcd_and_back: {reason}");
            return;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("tugboat-test-migration-")
        .tempdir()
        .unwrap();
    let edge = dir.path().join("edge");

    // An edge box's server with two services and their instances.
    let mut config = ServerConfig::new(&edge, "127.0.0.1:0".parse().unwrap());
    config.auth = false;
    let server = start(config).await.unwrap();
    let client = ApiClient::new(&server.addr.to_string(), None);
    let mut web = ServiceSpec::new("shop/web:1");
    web.replicas = 2;
    client.create_service("web", &web).await.unwrap();
    client
        .create_service("db", &ServiceSpec::new("shop/db:3"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.instances(None).await.unwrap().items.len() < 3 {
        assert!(Instant::now() < deadline, "instances were not created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An export while the server runs is refused: its store is locked.
    let file = dir.path().join("export.json");
    let file_arg = file.to_str().unwrap();
    let (ok, out) = tugboat(&edge, &["store", "export", "-f", file_arg]);
    assert!(
        !ok && out.contains("in use by another tugboat server"),
        "{out}"
    );
    server.shutdown().await;

    let (ok, out) = tugboat(&edge, &["store", "export", "-f", file_arg]);
    assert!(ok, "{out}");
    assert!(out.contains("keys from embedded"), "{out}");

    let prefix = etcd::unique_prefix("migration");
    let etcd_flags = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint.as_str(),
        "--etcd-prefix",
        prefix.as_str(),
    ];
    let import = |extra: &[&str]| {
        let mut args = vec!["store", "import", "-f", file_arg];
        args.extend_from_slice(&etcd_flags);
        args.extend_from_slice(extra);
        tugboat(&edge, &args)
    };
    let (ok, out) = import(&[]);
    assert!(ok, "{out}");
    // Again: the store is no longer empty, and the error says what to do.
    let (ok, out) = import(&[]);
    assert!(!ok && out.contains("--replace"), "{out}");
    let (ok, out) = import(&["--replace"]);
    assert!(ok && out.contains("replaced"), "{out}");

    // A server on etcd (same data dir: its token, CA and secret key) serves the services.
    let backend = StoreBackend::Etcd {
        options: EtcdOptions::parse(&etcd.endpoint, &prefix).unwrap(),
        leader_ttl: tugboat::election::DEFAULT_LEADER_TTL,
    };
    let mut served = services_served(&edge, backend).await;
    served.sort();
    assert_eq!(
        served,
        [
            ("db".to_string(), 1, "shop/db:3".to_string()),
            ("web".to_string(), 2, "shop/web:1".to_string())
        ]
    );

    // And back, into a new embedded store: the same keys and values.
    let back = dir.path().join("back.json");
    let mut args = vec!["store", "export", "-f", back.to_str().unwrap()];
    args.extend_from_slice(&etcd_flags);
    let (ok, out) = tugboat(&edge, &args);
    assert!(ok, "{out}");
    let fresh = dir.path().join("fresh");
    let (ok, out) = tugboat(&fresh, &["store", "import", "-f", back.to_str().unwrap()]);
    assert!(ok, "{out}");
    let round = dir.path().join("round.json");
    let (ok, out) = tugboat(&fresh, &["store", "export", "-f", round.to_str().unwrap()]);
    assert!(ok, "{out}");
    // The etcd server may have added events while it ran; the original keys all came back.
    let original = items(&file);
    let returned = items(&round);
    for item in original.as_array().unwrap() {
        let key = item["key"].as_str().unwrap();
        if key.starts_with("/events/") {
            continue;
        }
        let found = returned
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == item["key"]);
        assert_eq!(
            found,
            Some(item),
            "{key} after embedded -> etcd -> embedded"
        );
    }
    drop(etcd);
}
