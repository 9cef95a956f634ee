//! A small client for the pull side of the OCI distribution protocol: manifests and blobs
//! by digest, with the token flow (`WWW-Authenticate: Bearer realm=...`) and Basic auth.
//!
//! Why not oci-client: its current release is built on reqwest 0.13 and aws-lc-rs, a second
//! HTTP and TLS stack beside the reqwest 0.12 the workspace already builds; the pull side
//! of the protocol is small, and owning it lets layers stream straight into the unpacker.

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::auth::{parse_challenge, Credentials};
use crate::content::MAX_DOCUMENT;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::{Reference, DEFAULT_DOMAIN};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: String,
    repository: String,
    reference: String,
    credentials: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

/// An error with its causes (reqwest's own message hides them: "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn registry_error(reference: &str, reason: impl Into<String>) -> Error {
    Error::Registry {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// The message in a distribution-spec error body, or the status line.
async fn describe_failure(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("errors")?.as_array().map(|errs| {
                errs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.get("code").and_then(|c| c.as_str()).unwrap_or("?"),
                            e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("HTTP {status}: {detail}")
}

impl RegistryClient {
    pub fn new(
        reference: &Reference,
        insecure: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        let host = if reference.domain == DEFAULT_DOMAIN {
            "registry-1.docker.io".to_string()
        } else {
            reference.domain.clone()
        };
        let scheme = if insecure { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .user_agent(concat!("tug-image/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .https_only(!insecure)
            .build()
            .map_err(|e| registry_error(&reference.to_string(), e.to_string()))?;
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{host}"),
            repository: reference.path.clone(),
            reference: reference.to_string(),
            credentials,
            authorization: Mutex::new(None),
        })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        registry_error(&self.reference, reason)
    }

    /// GET with the current authorization; on a 401, follow its challenge once and retry.
    async fn get(&self, url: &str, accept: Option<&str>, from: u64) -> Result<reqwest::Response> {
        for attempt in 0..2 {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if from > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            if let Some(auth) = self.authorization.lock().await.clone() {
                req = req.header(reqwest::header::AUTHORIZATION, auth);
            }
            let resp = req.send().await.map_err(|e| {
                let msg = chain(&e);
                let tls = msg.to_ascii_lowercase();
                let hint = if self.base.starts_with("https:")
                    && (tls.contains("corrupt message") || tls.contains("invalidcontenttype"))
                {
                    " (the registry seems to speak plain http: mark it insecure to allow that)"
                } else {
                    ""
                };
                self.err(format!("GET {url}: {msg}{hint}"))
            })?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(parse_challenge)
                    .ok_or_else(|| {
                        self.err(format!("GET {url}: 401 without a usable challenge"))
                    })?;
                self.authenticate(&challenge).await?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(self.err(format!("GET {url}: {}", describe_failure(resp).await)));
            }
            return Ok(resp);
        }
        Err(self.err(format!(
            "GET {url}: still unauthorized after authenticating (check the credentials)"
        )))
    }

    async fn authenticate(&self, challenge: &crate::auth::Challenge) -> Result<()> {
        match challenge.scheme.as_str() {
            "basic" => {
                match &self.credentials {
                    Some(Credentials::Basic { username, password }) => {
                        use base64::Engine as _;
                        let v = base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{password}"));
                        *self.authorization.lock().await = Some(format!("Basic {v}"));
                        Ok(())
                    }
                    _ => Err(self
                        .err("the registry wants a user name and password; none in the auth file")),
                }
            }
            "bearer" => {
                let realm = challenge
                    .params
                    .get("realm")
                    .ok_or_else(|| self.err("Bearer challenge without a realm"))?;
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut query: Vec<(&str, String)> = vec![("scope", scope)];
                if let Some(s) = challenge.params.get("service") {
                    query.push(("service", s.clone()));
                }
                let req = match &self.credentials {
                    Some(Credentials::IdentityToken(token)) => {
                        let mut form = query.clone();
                        form.push(("grant_type", "refresh_token".into()));
                        form.push(("refresh_token", token.clone()));
                        form.push(("client_id", "tug".into()));
                        self.http.post(realm).form(&form)
                    }
                    Some(Credentials::Basic { username, password }) => self
                        .http
                        .get(realm)
                        .query(&query)
                        .basic_auth(username, Some(password)),
                    None => self.http.get(realm).query(&query),
                };
                let resp = req
                    .send()
                    .await
                    .map_err(|e| self.err(format!("token request to {realm}: {}", chain(&e))))?;
                if !resp.status().is_success() {
                    return Err(self.err(format!(
                        "token request to {realm}: {}",
                        describe_failure(resp).await
                    )));
                }
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| self.err(format!("token response from {realm}: {e}")))?;
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| self.err(format!("token response from {realm}: {e}")))?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| self.err(format!("token response from {realm} has no token")))?;
                *self.authorization.lock().await = Some(format!("Bearer {token}"));
                Ok(())
            }
            other => Err(self.err(format!("unsupported authentication scheme {other:?}"))),
        }
    }

    async fn read_limited(&self, mut resp: reqwest::Response, what: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.err(format!("{what}: {}", chain(&e))))?
        {
            data.extend_from_slice(&chunk);
            if data.len() as u64 > MAX_DOCUMENT {
                return Err(self.err(format!("{what}: larger than {MAX_DOCUMENT} bytes")));
            }
        }
        Ok(data)
    }

    /// A manifest or index by tag or digest: its bytes and media type. A manifest asked
    /// for by digest is checked against it.
    pub async fn manifest(&self, tag_or_digest: &str) -> Result<(Vec<u8>, String)> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, tag_or_digest
        );
        let resp = self.get(&url, Some(MANIFEST_ACCEPT), 0).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let data = self.read_limited(resp, &url).await?;
        if let Ok(expected) = tag_or_digest.parse::<Digest>() {
            let mut h = crate::digest::Hasher::new(expected.algorithm());
            h.update(&data);
            let actual = h.finish();
            if actual != expected {
                return Err(Error::DigestMismatch {
                    what: format!("manifest of {}", self.reference),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        if media_type == "application/vnd.docker.distribution.manifest.v1+prettyjws"
            || media_type == "application/vnd.docker.distribution.manifest.v1+json"
        {
            return Err(Error::UnsupportedMediaType {
                digest: tag_or_digest.to_string(),
                media_type: format!("{media_type} (Docker schema 1 is not supported)"),
            });
        }
        Ok((data, media_type))
    }

    /// A small blob (a config) read whole.
    pub async fn small_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let resp = self.blob(digest).await?;
        self.read_limited(resp, &format!("blob {digest}")).await
    }

    /// A blob as a streaming response.
    pub async fn blob(&self, digest: &Digest) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest);
        self.get(&url, None, 0).await
    }

    /// The rest of a blob from byte `from` on. Returns the response and how many bytes
    /// at its front to drop: 0 if the registry honoured the range (206), `from` if it sent
    /// the whole blob again (200).
    pub async fn blob_from(&self, digest: &Digest, from: u64) -> Result<(reqwest::Response, u64)> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest);
        let resp = self.get(&url, None, from).await?;
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Ok((resp, from));
        }
        let start = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|h| h.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if start != Some(from) {
            return Err(self.err(format!(
                "blob {digest}: asked for bytes from {from}, got range {start:?}"
            )));
        }
        Ok((resp, 0))
    }

    /// The next chunk of a blob response.
    pub async fn chunk(
        &self,
        resp: &mut reqwest::Response,
        digest: &Digest,
    ) -> Result<Option<Bytes>> {
        resp.chunk()
            .await
            .map_err(|e| self.err(format!("blob {digest}: {}", chain(&e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_and_insecure_hosts() {
        let r = Reference::parse("busybox").unwrap();
        let c = RegistryClient::new(&r, false, None).unwrap();
        assert_eq!(c.base, "https://registry-1.docker.io");
        assert_eq!(c.repository, "library/busybox");
        let r = Reference::parse("127.0.0.1:5000/a/b:1").unwrap();
        let c = RegistryClient::new(&r, true, None).unwrap();
        assert_eq!(c.base, "http://127.0.0.1:5000");
        assert_eq!(c.repository, "a/b");
    }

    #[test]
    fn causes_are_kept() {
        let inner = std::io::Error::other("connection reset");
        let outer = Error::io("/x", inner);
        assert_eq!(chain(&outer), "/x: connection reset");
    }
}
