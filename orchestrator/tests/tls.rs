//! The cluster's identities over TLS on 127.0.0.1 (issue 15): the server's CA and
//! certificate, nodes joining with a join token and the CA's hash, what a node's certificate
//! may do, scoped tokens, revocation by deleting a node, and certificates renewed before
//! they end. The nodes are simulated: the agent's own join and renewal code runs against a
//! real server, without containers.

use std::time::Duration;
use tugboat::agent::identity::{self, JoinSettings, NodeIdentity};
use tugboat::client::{ApiClient, ClientError};
use tugboat::model::Resources;
use tugboat::server::{start, RunningServer, ServerConfig};
use tugboat::tls::{self, ClientTls};
use tugboat::wire::{
    Heartbeat, InstanceStatusReport, NodeRegistration, ReportedPhase, TokenRequest, TokenScope,
};

struct Cluster {
    server: RunningServer,
    admin: ApiClient,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

async fn cluster(lifetime: Duration) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap());
    config.tls = Some(tugboat::pki::TlsSettings {
        names: vec![],
        server_cert_lifetime: lifetime,
        node_cert_lifetime: lifetime,
    });
    let server = start(config).await.unwrap();
    let ca_pem = server.tls.as_ref().unwrap().ca.pem().to_string();
    let admin = ApiClient::with_tls(
        &server.addr.to_string(),
        server.token.clone(),
        &ClientTls {
            ca_pem: ca_pem.clone(),
            identity_pem: None,
        },
    )
    .unwrap();
    Cluster {
        server,
        admin,
        ca_pem,
        _dir: dir,
    }
}

impl Cluster {
    fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    fn ca_hash(&self) -> String {
        self.server.tls.as_ref().unwrap().ca.hash()
    }

    async fn token(&self, scope: TokenScope, ttl_seconds: u64) -> String {
        self.admin
            .create_token(&TokenRequest {
                scope,
                ttl_seconds: Some(ttl_seconds),
                description: "test".into(),
            })
            .await
            .unwrap()
            .token
    }

    async fn join(&self, node: &str, data: &std::path::Path) -> Result<NodeIdentity, String> {
        let token = self.token(TokenScope::Join, 600).await;
        identity::ensure(
            &self.addr(),
            node,
            data,
            Some(&JoinSettings {
                token,
                ca_hash: self.ca_hash(),
            }),
            &["127.0.0.1".into()],
        )
        .await
    }

    fn as_node(&self, identity: &NodeIdentity) -> ApiClient {
        ApiClient::with_tls(&self.addr(), None, &identity.client).unwrap()
    }
}

fn registration(name: &str, subnet: &str) -> NodeRegistration {
    NodeRegistration {
        runtimes: vec![],
        name: name.into(),
        labels: Default::default(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            pids: 10_000,
        },
        address: Some("127.0.0.1".into()),
        subnet: Some(subnet.parse().unwrap()),
        volumes: vec![],
        agent_url: None,
    }
}

fn status(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_with_a_token_and_the_ca_hash_and_act_only_for_themselves() {
    let c = cluster(Duration::from_secs(3600)).await;
    let data = tempfile::tempdir().unwrap();

    // A wrong CA hash: refused before the token is sent anywhere.
    let token = c.token(TokenScope::Join, 600).await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = identity::ensure(
        &c.addr(),
        "n1",
        data.path(),
        Some(&JoinSettings {
            token: token.clone(),
            ca_hash: wrong,
        }),
        &[],
    )
    .await
    .unwrap_err();
    assert!(err.contains("not the pinned --ca-hash"), "{err}");
    assert!(!data.path().join("tls/node.pem").exists());

    // An expired join token, a read token and a made-up one: refused (401/403).
    let expired = c.token(TokenScope::Join, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (bad, what) in [
        (expired, "expired bearer token"),
        (
            c.token(TokenScope::Read, 600).await,
            "this token is read-only",
        ),
        ("abcd1234.00".to_string(), "wrong, revoked or expired"),
    ] {
        let err = identity::ensure(
            &c.addr(),
            "n1",
            data.path(),
            Some(&JoinSettings {
                token: bad,
                ca_hash: c.ca_hash(),
            }),
            &[],
        )
        .await
        .unwrap_err();
        assert!(err.contains(what), "{what}: {err}");
        assert!(!data.path().join("tls/node.pem").exists());
    }

    // A good join: a certificate for its name, the key private.
    let n1 = c.join("n1", data.path()).await.unwrap();
    let info = tls::cert_info(n1.client.identity_pem.as_deref().unwrap()).unwrap();
    assert_eq!(info.common_name, "n1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.path().join("tls/node.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "node.pem is {mode:o}");
    // Loaded again from disk without a token.
    let again = identity::ensure(&c.addr(), "n1", data.path(), None, &[])
        .await
        .unwrap();
    assert_eq!(again.client.identity_pem, n1.client.identity_pem);

    // A second host cannot take the name: not by joining, not with the admin token.
    let other = tempfile::tempdir().unwrap();
    let err = c.join("n1", other.path()).await.unwrap_err();
    assert!(err.contains("cannot take its name"), "{err}");

    // The node works with its certificate only.
    let node = c.as_node(&n1);
    node.register_node(&registration("n1", "10.88.1.0/24"))
        .await
        .unwrap();
    node.heartbeat("n1", &Heartbeat::default()).await.unwrap();
    node.nodes().await.unwrap();
    let err = c
        .admin
        .register_node(&registration("n1", "10.88.9.0/24"))
        .await
        .unwrap_err();
    assert_eq!(status(&err), 409, "{err}");

    // ... and only for itself.
    let n2 = c.join("n2", other.path()).await.unwrap();
    let node2 = c.as_node(&n2);
    node2
        .register_node(&registration("n2", "10.88.2.0/24"))
        .await
        .unwrap();
    let err = node2
        .register_node(&registration("n1", "10.88.3.0/24"))
        .await
        .unwrap_err();
    assert_eq!(status(&err), 403, "{err}");
    let err = node2
        .heartbeat("n1", &Heartbeat::default())
        .await
        .unwrap_err();
    assert_eq!(status(&err), 403, "{err}");
    let spec = tugboat::spec::parse_spec_file(
        "s.yaml",
        "services:\n  web:\n    image: x\n    placement: {node_labels: {}}\n",
        &|_| false,
    )
    .unwrap();
    let err = node2.apply(&spec).await.unwrap_err();
    assert_eq!(status(&err), 403, "a node applies nothing: {err}");
    c.admin.apply(&spec).await.unwrap();
    let placed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let list = c.admin.instances(Some("web")).await.unwrap().items;
            if let Some(i) = list.into_iter().find(|i| i.node.is_some()) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("web placed");
    let owner = placed.node.clone().unwrap();
    let (mine, theirs) = if owner == "n1" {
        (&node, &node2)
    } else {
        (&node2, &node)
    };
    let report = |node: &str| InstanceStatusReport {
        node: node.into(),
        phase: ReportedPhase::Running,
        ready: true,
        message: "running".into(),
        exit_code: None,
        restarts: 0,
        address: None,
        stats: None,
        crash_looping: false,
        last_exit: None,
    };
    let other = if owner == "n1" { "n2" } else { "n1" };
    let err = theirs
        .report_status(&placed.id, &report(other))
        .await
        .unwrap_err();
    assert_eq!(status(&err), 403, "another node's instance: {err}");
    // Nor by naming the owner in the body.
    let err = theirs
        .report_status(&placed.id, &report(&owner))
        .await
        .unwrap_err();
    assert_eq!(status(&err), 403, "another node's instance: {err}");
    mine.report_status(&placed.id, &report(&owner))
        .await
        .unwrap();

    // A read-only token reads and writes nothing.
    let read = ApiClient::with_tls(
        &c.addr(),
        Some(c.token(TokenScope::Read, 600).await),
        &ClientTls {
            ca_pem: c.ca_pem.clone(),
            identity_pem: None,
        },
    )
    .unwrap();
    read.services().await.unwrap();
    assert_eq!(status(&read.scale("web", 2).await.unwrap_err()), 403);

    // Tokens are listed without secrets, and revoked.
    let listed = c.admin.tokens().await.unwrap();
    assert!(listed.len() >= 4);
    let text = serde_json::to_string(&listed).unwrap();
    let secret = read.token().unwrap().split_once('.').unwrap().1.to_string();
    assert!(!text.contains(&secret), "a listing shows a secret");
    let id = read.token().unwrap().split_once('.').unwrap().0.to_string();
    c.admin.revoke_token(&id).await.unwrap();
    assert_eq!(status(&read.services().await.unwrap_err()), 401);

    // Deleting a node revokes its certificate.
    c.admin
        .call::<serde_json::Value>(reqwest::Method::DELETE, "/v1/nodes/n2", None)
        .await
        .unwrap();
    let err = node2.nodes().await.unwrap_err();
    assert_eq!(status(&err), 401, "{err}");

    // A client that trusts another CA refuses the server.
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = tls::Ca::load_or_create(stranger.path()).unwrap();
    let fooled = ApiClient::with_tls(
        &c.addr(),
        c.server.token.clone(),
        &ClientTls {
            ca_pem: other_ca.pem().to_string(),
            identity_pem: None,
        },
    )
    .unwrap();
    let err = fooled.services().await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // describe cluster: the CA's hash, each certificate's end.
    let d = c.admin.describe_cluster().await.unwrap();
    assert_eq!(d.ca_hash.as_deref(), Some(c.ca_hash().as_str()));
    assert!(d.nodes.iter().any(|n| n.name == "n1"));
    assert!(!d.nodes.iter().any(|n| n.name == "n2"));
    c.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_lifetimes_of_seconds_renew_and_the_node_keeps_working() {
    let c = cluster(Duration::from_secs(3)).await;
    let data = tempfile::tempdir().unwrap();
    let n1 = c.join("n1", data.path()).await.unwrap();
    let node = c.as_node(&n1);
    node.register_node(&registration("n1", "10.88.1.0/24"))
        .await
        .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(None);
    let renewal = tokio::spawn(identity::renew_loop(n1.clone(), node.clone(), stop_rx));
    let first_node = tls::cert_info(n1.client.identity_pem.as_deref().unwrap()).unwrap();
    let first_server = c.server.tls.as_ref().unwrap().server_status();
    // Three lifetimes: without renewal, both certificates would have ended twice over.
    let until = std::time::Instant::now() + Duration::from_secs(9);
    while std::time::Instant::now() < until {
        node.heartbeat("n1", &Heartbeat::default())
            .await
            .expect("the node keeps working across renewals");
        c.admin.nodes().await.expect("the admin too");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = std::fs::read_to_string(data.path().join("tls/node.pem")).unwrap();
    let last_node = tls::cert_info(&now).unwrap();
    assert_ne!(last_node.serial, first_node.serial);
    assert!(last_node.not_after_ms > first_node.not_after_ms + 3000);
    let last_server = c.server.tls.as_ref().unwrap().server_status();
    assert_ne!(last_server.serial, first_server.serial);
    let _ = stop.send(Some(false));
    let _ = renewal.await;
    c.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_in_the_store_and_go_only_to_their_node() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let c = cluster(Duration::from_secs(3600)).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = c.as_node(&c.join("n1", d1.path()).await.unwrap());
    let n2 = c.as_node(&c.join("n2", d2.path()).await.unwrap());
    n1.register_node(&registration("n1", "10.88.1.0/24"))
        .await
        .unwrap();
    n2.register_node(&registration("n2", "10.88.2.0/24"))
        .await
        .unwrap();
    let password = "correct-horse-battery-staple";
    let mut data = std::collections::BTreeMap::new();
    data.insert("password".to_string(), b64.encode(password));
    let request = tugboat::wire::SecretRequest {
        name: "db".into(),
        data,
    };
    // Only an admin makes secrets.
    assert_eq!(status(&n1.put_secret(&request).await.unwrap_err()), 403);
    c.admin.put_secret(&request).await.unwrap();
    // Bad input names the field.
    let mut bad = request.clone();
    bad.data.insert("../x".into(), b64.encode("y"));
    let err = c.admin.put_secret(&bad).await.unwrap_err();
    assert!(err.to_string().contains("data: key `../x`"), "{err}");
    bad.data.clear();
    bad.data.insert("k".into(), "not base64!".into());
    let err = c.admin.put_secret(&bad).await.unwrap_err();
    assert!(err.to_string().contains("data.k: not base64"), "{err}");

    let spec = tugboat::spec::parse_spec_file(
        "s.yaml",
        "services:\n  app:\n    image: x\n    secrets: [{secret: db}]\n",
        &|_| false,
    )
    .unwrap();
    c.admin.apply(&spec).await.unwrap();
    let placed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let list = c.admin.instances(Some("app")).await.unwrap().items;
            if let Some(i) = list.into_iter().find(|i| i.node.is_some()) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("app placed");
    let (mine, theirs) = if placed.node.as_deref() == Some("n1") {
        (&n1, &n2)
    } else {
        (&n2, &n1)
    };
    let got = mine.instance_secrets(&placed.id).await.unwrap();
    assert_eq!(
        b64.decode(&got.secrets["db"]["password"]).unwrap(),
        password.as_bytes()
    );
    let err = theirs.instance_secrets(&placed.id).await.unwrap_err();
    assert_eq!(status(&err), 403, "another node: {err}");
    let read = ApiClient::with_tls(
        &c.addr(),
        Some(c.token(TokenScope::Read, 600).await),
        &ClientTls {
            ca_pem: c.ca_pem.clone(),
            identity_pem: None,
        },
    )
    .unwrap();
    assert_eq!(
        status(&read.instance_secrets(&placed.id).await.unwrap_err()),
        403
    );

    // Never printed: not by the list, not by the instance's description, not in the store.
    let listed = serde_json::to_string(&c.admin.secrets().await.unwrap()).unwrap();
    assert!(
        listed.contains("password") && !listed.contains(password),
        "{listed}"
    );
    let described: serde_json::Value = c
        .admin
        .call(
            reqwest::Method::GET,
            &format!("/v1/instances/{}", placed.id),
            None,
        )
        .await
        .unwrap();
    assert!(!described.to_string().contains(password));
    let store = std::fs::read(c._dir.path().join("server/store.log")).unwrap();
    let encoded = b64.encode(password);
    for needle in [password.as_bytes(), encoded.as_bytes()] {
        assert!(
            !store.windows(needle.len()).any(|w| w == needle),
            "the store holds the secret in clear"
        );
    }
    c.admin.delete_secret("db").await.unwrap();
    assert_eq!(
        status(&mine.instance_secrets(&placed.id).await.unwrap_err()),
        404
    );
    c.server.shutdown().await;
}
