//! Servers on one etcd share their CA and secrets key with nothing copied by hand: two
//! servers started at once on an empty etcd with the same token and empty data dirs end with
//! one bootstrap (the same CA and key), a third started later takes it too, each serves TLS
//! under that CA (the client trusts the first server's ca.pem only) and opens a secret
//! written through the first; a server with a wrong token stops with a message that names
//! the problem and writes nothing to its data dir.
//!
//! A real etcd on loopback (tests/common/etcd.rs; SKIP without the binary) and server
//! processes on 127.0.0.1 with TLS and auth on, killed by pid at the end.

#[path = "common/etcd.rs"]
mod etcd;

use etcd::wait_for;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;
use tugboat::spec::{SecretMount, ServiceSpec};

const TOKEN: &str = "the-cluster-token-0123456789abcdef";

struct Server {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, n: usize, endpoint: &str, prefix: &str, token: &str) -> Server {
        let data_dir = dir.join(format!("server-{n}"));
        let log = dir.join(format!("server-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--token", token])
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(["--store", "etcd", "--etcd-endpoints", endpoint])
            .args(["--etcd-prefix", prefix])
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            data_dir,
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn addr(&self) -> Option<String> {
        let out = self.output();
        let rest = out.split("listening on https://").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    }

    fn ca_hash(&self) -> String {
        let pem = std::fs::read_to_string(self.data_dir.join("tls/ca.pem")).unwrap();
        tugboat::tls::hash_pem(&pem).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Our own child, by pid; reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_share_one_bootstrap_through_etcd() {
    let etcd = match etcd::Etcd::start() {
        Ok(etcd) => etcd,
        Err(reason) => {
            println!("SKIP servers_share_one_bootstrap_through_etcd: {reason}");
            return;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("tugboat-test-bootstrap-")
        .tempdir()
        .unwrap();
    let prefix = etcd::unique_prefix("bootstrap");

    // Two at once on an empty etcd, then a third.
    let mut servers = vec![
        Server::start(dir.path(), 0, &etcd.endpoint, &prefix, TOKEN),
        Server::start(dir.path(), 1, &etcd.endpoint, &prefix, TOKEN),
    ];
    let up = |servers: &[Server]| {
        tokio::task::block_in_place(|| {
            wait_for("the servers listen", Duration::from_secs(30), || {
                servers.iter().map(|s| s.addr()).collect::<Option<Vec<_>>>()
            })
        })
    };
    up(&servers);
    servers.push(Server::start(dir.path(), 2, &etcd.endpoint, &prefix, TOKEN));
    let addrs = up(&servers);
    let outputs: Vec<String> = servers.iter().map(Server::output).collect();
    let stored = outputs
        .iter()
        .filter(|o| o.contains("bootstrap: first server on this store"))
        .count();
    let joined = outputs
        .iter()
        .filter(|o| o.contains("bootstrap: using the cluster's CA"))
        .count();
    assert_eq!((stored, joined), (1, 2), "{outputs:#?}");

    // One CA, one secrets key.
    let hashes: Vec<String> = servers.iter().map(Server::ca_hash).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let keys: Vec<Vec<u8>> = servers
        .iter()
        .map(|s| std::fs::read(s.data_dir.join("secret.key")).unwrap())
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]));
    for s in &servers {
        assert_eq!(
            std::fs::read_to_string(s.data_dir.join("token"))
                .unwrap()
                .trim(),
            TOKEN
        );
    }

    // The first server's CA is trusted by every server's certificate; a secret written
    // through the first opens on each.
    let tls = tugboat::tls::ClientTls {
        ca_pem: std::fs::read_to_string(servers[0].data_dir.join("tls/ca.pem")).unwrap(),
        identity_pem: None,
    };
    let client = |addr: &str| ApiClient::with_tls(addr, Some(TOKEN.into()), &tls).unwrap();
    let first = client(&addrs[0]);
    first
        .put_secret(&tugboat::wire::SecretRequest {
            name: "db".into(),
            data: [("password".to_string(), "aHVudGVyMg==".to_string())].into(),
        })
        .await
        .unwrap();
    let mut spec = ServiceSpec::new("app:1");
    spec.secrets = vec![SecretMount {
        secret: "db".into(),
        target: None,
    }];
    first.create_service("web", &spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        if let Some(i) = first.instances(Some("web")).await.unwrap().items.first() {
            break i.id.clone();
        }
        assert!(Instant::now() < deadline, "web has no instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for addr in &addrs {
        let secrets = client(addr).instance_secrets(&id).await.unwrap();
        assert_eq!(secrets.secrets["db"]["password"], "aHVudGVyMg==", "{addr}");
    }

    // A wrong token: refused with its reason; nothing of the cluster's in its data dir.
    let mut wrong = Server::start(dir.path(), 3, &etcd.endpoint, &prefix, "not-the-token");
    let status = tokio::task::block_in_place(|| {
        wait_for(
            "the wrong-token server exits",
            Duration::from_secs(30),
            || wrong.child.try_wait().unwrap(),
        )
    });
    assert!(!status.success());
    let out = wrong.output();
    assert!(
        out.contains("does not open with this server's token")
            && out.contains("nothing was written to"),
        "{out}"
    );
    for file in ["token", "tls", "secret.key"] {
        assert!(!wrong.data_dir.join(file).exists(), "{file} was written");
    }
}
