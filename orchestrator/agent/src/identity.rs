//! A node's identity (docs/security.md): it joins once with a short-lived join token and
//! the CA's hash, sends a CSR and gets a certificate for its name; from then on it
//! authenticates with that certificate only, and renews it before it ends.
//!
//! Files under `<agent data dir>/tls/`: `ca.pem` (the cluster CA, as pinned) and `node.pem`
//! (the certificate then its key, 0600, replaced in one rename).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tugboat_api::client::ApiClient;
use tugboat_api::tls::{self, ClientTls, ServerCert};
use tugboat_api::wire::{CertificateRequest, ClusterCa};

pub const NODE_FILE: &str = "node.pem";

/// How to join when the node has no certificate yet.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    pub token: String,
    /// `sha256:<hex>` of the cluster CA certificate (`tugboat describe cluster` prints it).
    pub ca_hash: String,
}

pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The node's TLS: what it trusts and shows.
#[derive(Clone)]
pub struct NodeIdentity {
    pub dir: PathBuf,
    pub node: String,
    pub client: ClientTls,
    /// Presented by the node's own API (exec, logs), renewed with the client's.
    pub api_cert: Arc<ServerCert>,
    /// Addresses put in the certificate (the agent API's).
    pub addresses: Vec<String>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .field("dir", &self.dir)
            .finish()
    }
}

impl NodeIdentity {
    fn load(dir: &Path, node: &str, addresses: &[String]) -> Result<NodeIdentity, String> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map_err(|e| format!("{}: {e}", dir.join(f).display()))
        };
        let ca_pem = read(tls::CA_FILE)?;
        let node_pem = read(NODE_FILE)?;
        let info = tls::cert_info(&node_pem)
            .map_err(|e| format!("{}: {e}", dir.join(NODE_FILE).display()))?;
        if info.common_name != node {
            return Err(format!(
                "{} holds the certificate of node {}, not of node {node}: use that node's name, or another --data-dir",
                dir.join(NODE_FILE).display(),
                info.common_name
            ));
        }
        let key = tls::certified_key(&node_pem, &node_pem).map_err(|e| e.to_string())?;
        Ok(NodeIdentity {
            dir: dir.into(),
            node: node.into(),
            client: ClientTls {
                ca_pem,
                identity_pem: Some(node_pem),
            },
            api_cert: ServerCert::new(key),
            addresses: addresses.to_vec(),
        })
    }

    /// The rustls config of the node's API: its certificate; clients verified against the
    /// cluster CA (the server shows its own).
    pub fn api_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        tls::server_config(&self.client.ca_pem, self.api_cert.clone()).map_err(|e| e.to_string())
    }
}

/// The node's identity: loaded from `<data_dir>/tls`, or made by joining `addr`.
pub async fn ensure(
    addr: &str,
    node: &str,
    data_dir: &Path,
    join: Option<&JoinSettings>,
    addresses: &[String],
) -> Result<NodeIdentity, String> {
    let dir = tls_dir(data_dir);
    if dir.join(NODE_FILE).exists() {
        return NodeIdentity::load(&dir, node, addresses);
    }
    let Some(join) = join else {
        return Err(format!(
            "node {node} has no certificate in {}: join with --join-token TOKEN (tugboat token create --scope join --ttl 1h) and --ca-hash (tugboat describe cluster)",
            dir.display()
        ));
    };
    // Any of the servers will do (`--addr a,b,c`): they share one CA.
    let mut fetched = Err(format!("no server address in {addr}"));
    for server in tugboat_api::client::server_addresses(addr) {
        fetched = fetch_pinned_ca(server, &join.ca_hash).await;
        if fetched.is_ok() {
            break;
        }
    }
    let ca_pem = fetched?;
    let (key_pem, csr) = tls::key_and_csr(node).map_err(|e| e.to_string())?;
    let client = ApiClient::with_tls(
        addr,
        Some(join.token.clone()),
        &ClientTls {
            ca_pem: ca_pem.clone(),
            identity_pem: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let request = CertificateRequest {
        node: node.into(),
        csr,
        addresses: addresses.to_vec(),
    };
    let answer = client
        .node_certificate(&request, true)
        .await
        .map_err(|e| format!("joining {addr} as node {node}: {e}"))?;
    tls::write_file(&dir.join(tls::CA_FILE), &ca_pem, false).map_err(|e| e.to_string())?;
    tls::write_file(
        &dir.join(NODE_FILE),
        &format!("{}\n{key_pem}", answer.certificate),
        true,
    )
    .map_err(|e| e.to_string())?;
    eprintln!("tugboat agent: node {node} joined the cluster at {addr}");
    NodeIdentity::load(&dir, node, addresses)
}

/// The server's CA, fetched without trusting anyone and kept only when its hash is the one
/// pinned: a man in the middle cannot pose as the server (kubeadm's discovery).
async fn fetch_pinned_ca(addr: &str, pinned: &str) -> Result<String, String> {
    if !pinned.starts_with("sha256:") || pinned.len() != 7 + 64 {
        return Err(format!(
            "--ca-hash {pinned}: expected sha256:<64 hex digits>, as tugboat describe cluster prints it"
        ));
    }
    let host = addr
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let insecure = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("https://{host}/v1/cluster/ca");
    let ca: ClusterCa = insecure
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("fetching the cluster CA from {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("fetching the cluster CA from {url}: {e}"))?;
    let hash = tls::hash_pem(&ca.ca).map_err(|e| e.to_string())?;
    if !hash.eq_ignore_ascii_case(pinned) {
        return Err(format!(
            "the server at {host} shows a CA with hash {hash}, not the pinned --ca-hash {pinned}: refusing to join (a wrong server, or someone in between)"
        ));
    }
    Ok(ca.ca)
}

/// Renews the node's certificate when a third of its life is left; the client and the
/// node's API use the new one at once.
pub async fn renew_loop(
    identity: NodeIdentity,
    client: ApiClient,
    mut shutdown: tokio::sync::watch::Receiver<Option<bool>>,
) {
    let mut current = identity.client.identity_pem.clone().unwrap_or_default();
    loop {
        let info = match tls::cert_info(&current) {
            Ok(info) => info,
            Err(_) => return,
        };
        let life = Duration::from_millis(info.not_after_ms.saturating_sub(info.not_before_ms));
        let every = (life / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !info.due_for_renewal(tls::now_ms()) {
            continue;
        }
        match renew(&identity, &client).await {
            Ok(pem) => current = pem,
            Err(e) => eprintln!(
                "tugboat agent: renewing the certificate of node {}: {e}",
                identity.node
            ),
        }
    }
}

async fn renew(identity: &NodeIdentity, client: &ApiClient) -> Result<String, String> {
    let (key_pem, csr) = tls::key_and_csr(&identity.node).map_err(|e| e.to_string())?;
    let request = CertificateRequest {
        node: identity.node.clone(),
        csr,
        addresses: identity.addresses.clone(),
    };
    let answer = client
        .node_certificate(&request, false)
        .await
        .map_err(|e| e.to_string())?;
    let pem = format!("{}\n{key_pem}", answer.certificate);
    tls::write_file(&identity.dir.join(NODE_FILE), &pem, true).map_err(|e| e.to_string())?;
    client
        .set_tls(&ClientTls {
            ca_pem: identity.client.ca_pem.clone(),
            identity_pem: Some(pem.clone()),
        })
        .map_err(|e| e.to_string())?;
    identity
        .api_cert
        .replace(tls::certified_key(&pem, &pem).map_err(|e| e.to_string())?);
    Ok(pem)
}
