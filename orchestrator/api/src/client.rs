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

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    /// Shared by the clones, so a renewed node certificate reaches every one of them.
    http: std::sync::Arc<std::sync::RwLock<reqwest::Client>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ApiClient {
    /// `addr` is `host:port` or a `http://` URL.
    pub fn new(addr: &str, token: Option<String>) -> ApiClient {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("a plain HTTP client builds");
        ApiClient {
            base,
            token,
            http: std::sync::Arc::new(std::sync::RwLock::new(http)),
        }
    }

    /// Over TLS: `addr` is `host:port` or a `https://` URL; only the cluster CA is trusted,
    /// and a node shows its certificate.
    pub fn with_tls(
        addr: &str,
        token: Option<String>,
        tls: &crate::tls::ClientTls,
    ) -> Result<ApiClient, crate::tls::TlsError> {
        let host = addr
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let http = tls.client(CONNECT_TIMEOUT)?;
        Ok(ApiClient {
            base: format!("https://{}", host.trim_end_matches('/')),
            token,
            http: std::sync::Arc::new(std::sync::RwLock::new(http)),
        })
    }

    /// Shows another certificate from now on (a renewed one), in every clone.
    pub fn set_tls(&self, tls: &crate::tls::ClientTls) -> Result<(), crate::tls::TlsError> {
        let client = tls.client(CONNECT_TIMEOUT)?;
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Streams an instance's log into `out` (until its end, or forever with `follow`).
    pub async fn logs(
        &self,
        id: &str,
        options: &crate::wire::LogOptions,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), ClientError> {
        let mut request = self.http().get(format!(
            "{}/v1/instances/{id}/logs?{}",
            self.base,
            options.to_query()
        ));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            addr: self.base.clone(),
            cause: error_chain(&e),
        };
        let mut response = request.send().await.map_err(unreachable)?;
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
        let mut http = self
            .http()
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol);
        if let Some(body) = body {
            http = http.json(&body);
        }
        if let Some(token) = &self.token {
            http = http.bearer_auth(token);
        }
        let response = http.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.base.clone(),
            cause: error_chain(&e),
        })?;
        let status = response.status().as_u16();
        if status != 101 {
            let body = response.bytes().await.unwrap_or_default();
            return Err(error_from(status, &body));
        }
        response
            .upgrade()
            .await
            .map_err(|e| ClientError::Unreachable {
                addr: self.base.clone(),
                cause: format!("{protocol}: {}", error_chain(&e)),
            })
    }

    /// GETs `path` and hands back the answer whose body streams for as long as the server
    /// keeps it open (no overall timeout), or the server's refusal as a typed error.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let mut request = self.http().get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.base.clone(),
            cause: error_chain(&e),
        })?;
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
        let mut request = self.http().request(method, format!("{}{path}", self.base));
        if let Some(limit) = limit {
            request = request.timeout(limit);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.base.clone(),
            cause: error_chain(&e),
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                addr: self.base.clone(),
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
