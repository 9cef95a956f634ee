//! A typed client of the HTTP API: used by the `tugboat` command line, by tests, and by the
//! agent (next issue) through the agent-facing calls at the end.

use crate::model::{Instance, Node, Rollout, Service};
use crate::spec::{ServiceSpec, SpecFile};
use crate::wire::Revision;
use crate::wire::{CreateServiceBody, ErrorBody, ScaleBody};
use crate::wire::{Heartbeat, InstanceStatusReport, NodeRegistration, WatchBatch, WatchKind};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tugboat server at {addr}: {cause} (is `tugboat server` running? set --addr or TUGBOAT_ADDR)")]
    Unreachable { addr: String, cause: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Vec<crate::spec::SpecError>,
    },
    #[error("unexpected response from the server ({status}): {body}")]
    Decode { status: u16, body: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Unreachable { .. } => None,
        }
    }
}

/// The longest a request may wait for its answer (a watch: its long poll and this).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The typed error of a non-2xx answer: the API's error body, or the text as it came.
fn error_from(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Api {
            status,
            code: e.error.code,
            message: e.error.message,
            details: e.error.details,
        },
        Err(_) => ClientError::Decode {
            status,
            body: String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

/// An error and its causes, innermost last: "error sending request: ...: Connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = cause.source();
    }
    text
}

/// A list with the revision to watch from (+1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed<T> {
    pub revision: Revision,
    pub items: Vec<T>,
}

/// The servers a client may talk to (`--addr a,b,c`), and the one it talks to now.
///
/// A request goes to the current server. When that server does not answer (connection
/// refused or reset, a timeout) or answers 503 (it is cut off from its store), the same
/// request goes to the next one, round the list once; the one that answers becomes the
/// current server for every clone of the client. Any other answer, a 4xx included, is the
/// answer: a refusal is the cluster's, another server would say the same.
#[derive(Debug)]
struct Servers {
    bases: Vec<String>,
    current: AtomicUsize,
}

/// The addresses in `addr`: one, or several separated by commas (`a:7480,b:7480`).
pub fn server_addresses(addr: &str) -> Vec<&str> {
    let list: Vec<&str> = addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty() {
        vec![addr]
    } else {
        list
    }
}

/// Whether another server may answer where this one failed.
fn try_another(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unreachable { .. }
            | ClientError::Api { status: 503, .. }
            | ClientError::Decode { status: 503, .. }
    )
}

#[derive(Clone)]
pub struct ApiClient {
    servers: Arc<Servers>,
    token: Option<String>,
    /// Shared by the clones, so a renewed node certificate reaches every one of them.
    http: Arc<std::sync::RwLock<reqwest::Client>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ApiClient {
    /// `addr` is `host:port` or a `http://` URL, or several of them separated by commas.
    pub fn new(addr: &str, token: Option<String>) -> ApiClient {
        let bases = server_addresses(addr)
            .into_iter()
            .map(|a| {
                if a.starts_with("http://") || a.starts_with("https://") {
                    a.trim_end_matches('/').to_string()
                } else {
                    format!("http://{a}")
                }
            })
            .collect();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("a plain HTTP client builds");
        ApiClient::over(bases, token, http)
    }

    fn over(bases: Vec<String>, token: Option<String>, http: reqwest::Client) -> ApiClient {
        ApiClient {
            servers: Arc::new(Servers {
                bases,
                current: AtomicUsize::new(0),
            }),
            token,
            http: Arc::new(std::sync::RwLock::new(http)),
        }
    }

    /// Over TLS: `addr` is `host:port` or a `https://` URL (or several, comma-separated);
    /// only the cluster CA is trusted, and a node shows its certificate.
    pub fn with_tls(
        addr: &str,
        token: Option<String>,
        tls: &crate::tls::ClientTls,
    ) -> Result<ApiClient, crate::tls::TlsError> {
        let bases = server_addresses(addr)
            .into_iter()
            .map(|a| {
                let host = a
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                format!("https://{}", host.trim_end_matches('/'))
            })
            .collect();
        Ok(ApiClient::over(bases, token, tls.client(CONNECT_TIMEOUT)?))
    }

    /// Shows another certificate from now on (a renewed one), in every clone.
    pub fn set_tls(&self, tls: &crate::tls::ClientTls) -> Result<(), crate::tls::TlsError> {
        let client = tls.client(CONNECT_TIMEOUT)?;
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }

    /// The base URL of the server requests go to now.
    pub fn base(&self) -> String {
        let current = self.servers.current.load(Ordering::Relaxed);
        self.servers.bases[current % self.servers.bases.len()].clone()
    }

    /// Every server's base URL, in the order they are tried.
    pub fn bases(&self) -> &[String] {
        &self.servers.bases
    }

    fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Sends the request `build` makes for a server's base URL, to the current server, then
    /// to the others ([`Servers`]): the first answer that is not a 503. Its body is left to
    /// read; the base URL of the server that gave it comes with it.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let http = self.http();
        let count = self.servers.bases.len();
        let first = self.servers.current.load(Ordering::Relaxed) % count;
        let mut failures: Vec<ClientError> = Vec::new();
        for step in 0..count {
            let index = (first + step) % count;
            let base = &self.servers.bases[index];
            let mut request = build(&http, base);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let error = match request.send().await {
                Ok(response) if response.status().as_u16() != 503 => {
                    self.servers.current.store(index, Ordering::Relaxed);
                    return Ok((response, base.clone()));
                }
                Ok(response) => error_from(503, &response.bytes().await.unwrap_or_default()),
                Err(e) => ClientError::Unreachable {
                    addr: base.clone(),
                    cause: error_chain(&e),
                },
            };
            debug_assert!(try_another(&error));
            // Move every clone on, unless another request already did.
            let _ = self.servers.current.compare_exchange(
                index,
                (index + 1) % count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            failures.push(error);
        }
        Err(Self::none_answered(failures))
    }

    /// The error when no server answered: a server's 503 (it says why), or every address
    /// with why it could not be reached.
    fn none_answered(mut failures: Vec<ClientError>) -> ClientError {
        if failures.len() == 1 {
            return failures.pop().expect("one failure");
        }
        if let Some(index) = failures
            .iter()
            .rposition(|e| !matches!(e, ClientError::Unreachable { .. }))
        {
            return failures.swap_remove(index);
        }
        let (mut addrs, mut causes) = (Vec::new(), Vec::new());
        for failure in failures {
            if let ClientError::Unreachable { addr, cause } = failure {
                causes.push(format!("{addr}: {cause}"));
                addrs.push(addr);
            }
        }
        ClientError::Unreachable {
            addr: format!("any of {}", addrs.join(", ")),
            cause: causes.join("; "),
        }
    }

    /// Streams an instance's log into `out` (until its end, or forever with `follow`).
    pub async fn logs(
        &self,
        id: &str,
        options: &crate::wire::LogOptions,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), ClientError> {
        let (mut response, base) = self
            .send(|http, base| {
                http.get(format!(
                    "{base}/v1/instances/{id}/logs?{}",
                    options.to_query()
                ))
            })
            .await?;
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            addr: base.clone(),
            cause: error_chain(&e),
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.map_err(unreachable)?;
            return Err(error_from(status, &bytes));
        }
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            let _ = out.write_all(&chunk);
            let _ = out.flush();
        }
        Ok(())
    }

    /// Streams a volume's tar archive (from the node that holds it) into `out`; the bytes
    /// written. An archive that stops part-way is an error, not a short archive. The
    /// volume's users on its node are paused while it is written ([`Self::snapshot_volume_with`]).
    pub async fn snapshot_volume(
        &self,
        name: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        self.snapshot_volume_with(name, true, out)
            .await
            .map(|s| s.bytes)
    }

    /// [`Self::snapshot_volume`], saying whether the volume's users on its node are paused
    /// while the archive is written (`freeze`: a point-in-time archive), and which were.
    pub async fn snapshot_volume_with(
        &self,
        name: &str,
        freeze: bool,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<crate::wire::VolumeSnapshot, ClientError> {
        let (mut response, base) = self
            .send(|http, base| {
                http.get(format!("{base}/v1/volumes/{name}/archive?freeze={freeze}"))
            })
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(error_from(status, &bytes));
        }
        let paused: Vec<String> = response
            .headers()
            .get(crate::wire::PAUSED_INSTANCES_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let started = std::time::Instant::now();
        let broken = |cause: String| ClientError::Unreachable {
            addr: base.clone(),
            cause: format!("the archive of volume {name} stopped part-way: {cause}"),
        };
        let mut written = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| broken(error_chain(&e)))?
        {
            out.write_all(&chunk).map_err(|e| broken(e.to_string()))?;
            written += chunk.len() as u64;
        }
        out.flush().map_err(|e| broken(e.to_string()))?;
        Ok(crate::wire::VolumeSnapshot {
            bytes: written,
            paused,
            paused_about: started.elapsed(),
        })
    }

    /// Restores a tar archive into a volume: `archive` makes the body (once per server
    /// tried); `node` places a local volume that is on no node yet; `force` replaces what
    /// the volume holds.
    pub async fn restore_volume(
        &self,
        name: &str,
        node: Option<&str>,
        force: bool,
        archive: impl Fn() -> reqwest::Body,
    ) -> Result<crate::wire::VolumeRestored, ClientError> {
        let mut query = format!("force={force}");
        if let Some(node) = node {
            query.push_str(&format!("&node={node}"));
        }
        let (response, base) = self
            .send(|http, base| {
                http.put(format!("{base}/v1/volumes/{name}/archive?{query}"))
                    .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                    .body(archive())
            })
            .await?;
        Self::decode(response, base).await
    }

    /// Runs a command in an instance (through the server and the instance's agent).
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
    ) -> Result<crate::execstream::ExecResult, ClientError> {
        self.call_within(
            Method::POST,
            &format!("/v1/instances/{id}/exec"),
            Some(serde_json::json!({ "command": command })),
            None,
        )
        .await
    }

    /// Opens an exec stream to an instance ([`crate::execstream`]): the upgraded connection.
    pub async fn exec_stream(
        &self,
        id: &str,
        request: &crate::execstream::ExecRequest,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let body = serde_json::to_value(request).expect("exec requests serialize");
        self.upgrade(
            &format!("/v1/instances/{id}/exec"),
            crate::execstream::PROTOCOL,
            Some(body),
        )
        .await
    }

    /// POSTs to `path` asking to switch to `protocol`: the upgraded connection, or the
    /// server's refusal as a typed error.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let (response, base) = self
            .send(|http, base| {
                let mut request = http
                    .post(format!("{base}{path}"))
                    .header(reqwest::header::CONNECTION, "upgrade")
                    .header(reqwest::header::UPGRADE, protocol);
                if let Some(body) = &body {
                    request = request.json(body);
                }
                request
            })
            .await?;
        let status = response.status().as_u16();
        if status != 101 {
            let body = response.bytes().await.unwrap_or_default();
            return Err(error_from(status, &body));
        }
        response
            .upgrade()
            .await
            .map_err(|e| ClientError::Unreachable {
                addr: base,
                cause: format!("{protocol}: {}", error_chain(&e)),
            })
    }

    /// GETs `path` and hands back the answer whose body streams for as long as the server
    /// keeps it open (no overall timeout), or the server's refusal as a typed error.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let (response, _) = self
            .send(|http, base| http.get(format!("{base}{path}")))
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(error_from(status, &bytes));
        }
        Ok(response)
    }

    /// Send a request; the JSON answer or a typed error. No answer within
    /// [`REQUEST_TIMEOUT`] is an error (an answer lost on a cut link never comes).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        self.call_within(method, path, body, Some(REQUEST_TIMEOUT))
            .await
    }

    /// [`ApiClient::call`] with its own bound (none: a command that runs as long as it
    /// needs, such as a non-interactive exec).
    async fn call_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        limit: Option<Duration>,
    ) -> Result<T, ClientError> {
        let (response, base) = self
            .send(|http, base| {
                let mut request = http.request(method.clone(), format!("{base}{path}"));
                if let Some(limit) = limit {
                    request = request.timeout(limit);
                }
                if let Some(body) = &body {
                    request = request.json(body);
                }
                request
            })
            .await?;
        Self::decode(response, base).await
    }

    /// A response's JSON as `T` (2xx), or the error it carries.
    async fn decode<T: DeserializeOwned>(
        response: reqwest::Response,
        base: String,
    ) -> Result<T, ClientError> {
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                addr: base,
                cause: error_chain(&e),
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|_| ClientError::Decode {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Err(error_from(status, &bytes))
    }

    fn body<T: Serialize>(value: &T) -> Option<serde_json::Value> {
        Some(serde_json::to_value(value).expect("request bodies serialize"))
    }

    pub async fn apply(&self, file: &SpecFile) -> Result<crate::wire::ApplyOutcome, ClientError> {
        self.call(Method::POST, "/v1/apply", Self::body(file)).await
    }
    pub async fn create_service(
        &self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<Service, ClientError> {
        let body = CreateServiceBody {
            name: name.into(),
            spec: spec.clone(),
        };
        self.call(Method::POST, "/v1/services", Self::body(&body))
            .await
    }
    pub async fn replace_service(
        &self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<Service, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/services/{name}"),
            Self::body(spec),
        )
        .await
    }
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<Service, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/v1/services/{name}"),
            Self::body(&ScaleBody { replicas }),
        )
        .await
    }
    pub async fn delete_service(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, &format!("/v1/services/{name}"), None)
            .await
    }
    pub async fn services(&self) -> Result<Listed<Service>, ClientError> {
        self.call(Method::GET, "/v1/services", None).await
    }
    pub async fn describe_service(
        &self,
        name: &str,
    ) -> Result<crate::wire::ServiceDescription, ClientError> {
        self.call(Method::GET, &format!("/v1/services/{name}"), None)
            .await
    }
    pub async fn rollout_status(&self, name: &str) -> Result<Rollout, ClientError> {
        self.call(Method::GET, &format!("/v1/services/{name}/rollout"), None)
            .await
    }
    pub async fn rollout_undo(&self, name: &str) -> Result<Service, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/services/{name}/rollout/undo"),
            None,
        )
        .await
    }
    pub async fn instances(&self, service: Option<&str>) -> Result<Listed<Instance>, ClientError> {
        let path = service.map_or_else(
            || "/v1/instances".to_string(),
            |s| format!("/v1/instances?service={s}"),
        );
        self.call(Method::GET, &path, None).await
    }
    pub async fn nodes(&self) -> Result<Listed<Node>, ClientError> {
        self.call(Method::GET, "/v1/nodes", None).await
    }

    // The agent-facing calls.

    /// Register (or re-register after a restart) this node.
    pub async fn register_node(
        &self,
        registration: &NodeRegistration,
    ) -> Result<Node, ClientError> {
        self.call(Method::POST, "/v1/nodes", Self::body(registration))
            .await
    }
    /// Heartbeat, with what the node sees of its peers; a 404 means "register again".
    pub async fn heartbeat(&self, node: &str, beat: &Heartbeat) -> Result<Node, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{node}/heartbeat"),
            Self::body(beat),
        )
        .await
    }
    /// Instances assigned to `node`, and the revision to watch from (+1).
    pub async fn assigned_instances(&self, node: &str) -> Result<Listed<Instance>, ClientError> {
        self.call(Method::GET, &format!("/v1/instances?node={node}"), None)
            .await
    }
    /// Long-poll changes from revision `from` on. A 410 means "list again".
    pub async fn watch(
        &self,
        kind: WatchKind,
        from: Revision,
        timeout: Duration,
        node: Option<&str>,
    ) -> Result<WatchBatch, ClientError> {
        let kind = serde_json::to_value(kind).expect("kinds serialize");
        let mut path = format!(
            "/v1/watch/{}?revision={from}&timeout_seconds={}",
            kind.as_str().unwrap_or_default(),
            timeout.as_secs()
        );
        if let Some(node) = node {
            path.push_str(&format!("&node={node}"));
        }
        self.call_within(Method::GET, &path, None, Some(timeout + REQUEST_TIMEOUT))
            .await
    }
    /// Asks for a node certificate: with a join token (`join`), or renewing with the node's
    /// current certificate.
    pub async fn node_certificate(
        &self,
        request: &crate::wire::CertificateRequest,
        join: bool,
    ) -> Result<crate::wire::CertificateAnswer, ClientError> {
        let path = if join {
            "/v1/join".to_string()
        } else {
            format!("/v1/nodes/{}/certificate", request.node)
        };
        self.call(Method::POST, &path, Self::body(request)).await
    }
    /// The cluster's servers, the leader among them.
    pub async fn servers(&self) -> Result<Vec<crate::wire::ServerInfo>, ClientError> {
        self.call(Method::GET, "/v1/servers", None).await
    }
    pub async fn describe_cluster(&self) -> Result<crate::wire::ClusterDescription, ClientError> {
        self.call(Method::GET, "/v1/cluster", None).await
    }
    pub async fn create_token(
        &self,
        request: &crate::wire::TokenRequest,
    ) -> Result<crate::wire::TokenCreated, ClientError> {
        self.call(Method::POST, "/v1/tokens", Self::body(request))
            .await
    }
    pub async fn tokens(&self) -> Result<Vec<crate::wire::TokenInfo>, ClientError> {
        self.call(Method::GET, "/v1/tokens", None).await
    }
    pub async fn revoke_token(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await
    }
    pub async fn put_secret(
        &self,
        request: &crate::wire::SecretRequest,
    ) -> Result<crate::wire::SecretInfo, ClientError> {
        self.call(Method::POST, "/v1/secrets", Self::body(request))
            .await
    }
    pub async fn secrets(&self) -> Result<Vec<crate::wire::SecretInfo>, ClientError> {
        self.call(Method::GET, "/v1/secrets", None).await
    }
    pub async fn delete_secret(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, &format!("/v1/secrets/{name}"), None)
            .await
    }
    /// The values of the secrets an instance mounts (for its node only).
    pub async fn instance_secrets(
        &self,
        id: &str,
    ) -> Result<crate::wire::InstanceSecrets, ClientError> {
        self.call(Method::GET, &format!("/v1/instances/{id}/secrets"), None)
            .await
    }
    /// Report an instance's state; a 409 means "this instance is not yours any more: stop it".
    pub async fn report_status(
        &self,
        id: &str,
        report: &InstanceStatusReport,
    ) -> Result<Instance, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/instances/{id}/status"),
            Self::body(report),
        )
        .await
    }
    pub async fn create_volume(
        &self,
        request: &crate::wire::VolumeRequest,
    ) -> Result<crate::model::Volume, ClientError> {
        self.call(Method::POST, "/v1/volumes", Self::body(request))
            .await
    }
    pub async fn volumes(&self) -> Result<Vec<crate::model::Volume>, ClientError> {
        self.call(Method::GET, "/v1/volumes", None).await
    }
    pub async fn volume(&self, name: &str) -> Result<crate::model::Volume, ClientError> {
        self.call(Method::GET, &format!("/v1/volumes/{name}"), None)
            .await
    }
    pub async fn delete_volume(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, &format!("/v1/volumes/{name}"), None)
            .await
    }
    /// An agent's measurements of the volumes it has mounted.
    pub async fn report_volume_usage(
        &self,
        node: &str,
        report: &crate::wire::VolumeUsageReport,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/nodes/{node}/volumes"),
            Self::body(report),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_or_several() {
        assert_eq!(server_addresses("a:1"), ["a:1"]);
        assert_eq!(server_addresses("http://a:1, b:2,,"), ["http://a:1", "b:2"]);
        let client = ApiClient::new("a:1,https://b:2/", None);
        assert_eq!(client.bases(), ["http://a:1", "https://b:2"]);
        assert_eq!(client.base(), "http://a:1");
    }

    #[test]
    fn refusals_are_answers_unreachable_and_503_are_not() {
        let api = |status| ClientError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
            details: vec![],
        };
        assert!(!try_another(&api(404)));
        assert!(!try_another(&api(409)));
        assert!(!try_another(&api(500)));
        assert!(try_another(&api(503)));
        let down = |addr: &str| ClientError::Unreachable {
            addr: addr.into(),
            cause: "refused".into(),
        };
        assert!(try_another(&down("a")));
        // All down: every address is named; a 503 says more than a refused connection.
        let all = ApiClient::none_answered(vec![down("a"), down("b")]).to_string();
        assert!(
            all.contains("any of a, b") && all.contains("b: refused"),
            "{all}"
        );
        let with_503 = ApiClient::none_answered(vec![down("a"), api(503), down("c")]);
        assert_eq!(with_503.status(), Some(503));
    }
}
