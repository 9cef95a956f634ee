//! The cluster's TLS (docs/security.md): a CA the server makes at its first start, the
//! server's certificate, node certificates signed from the nodes' CSRs, and what listeners
//! and clients need. rustls with ring; rcgen makes and signs certificates.
//!
//! Files, in a `tls/` directory (keys 0600): `ca.pem` (and on the server `ca-key.pem`),
//! `cert.pem` and `key.pem` (the server's, or a node's).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// The common name of the server's certificate, which agents accept as their API's client.
pub const SERVER_NAME: &str = "tugboat-server";

/// How long the CA is valid: ten years (it is not renewed; see docs/security.md).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

fn invalid(what: impl Into<String>, message: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        what: what.into(),
        message: message.to_string(),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), 0600 or 0644.
pub fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let mode = if secret { 0o600 } else { 0o644 };
    crate::write_durable(path, text.as_bytes(), mode).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// `sha256:<hex>` of a certificate's DER: what `--ca-hash` pins.
pub fn hash_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The first certificate of a PEM text, as DER.
pub fn first_cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| invalid(what, "no certificate in it"))?
        .map_err(|e| invalid(what, e))
}

/// `sha256:<hex>` of the first certificate in a PEM text.
pub fn hash_pem(pem: &str) -> Result<String, TlsError> {
    Ok(hash_der(&first_cert_der(pem, "CA certificate")?))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl CertInfo {
    /// Due for renewal: less than a third of its lifetime left.
    pub fn due_for_renewal(&self, now_ms: u64) -> bool {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms);
        now_ms + life / 3 >= self.not_after_ms
    }
}

pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| invalid("certificate", e))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok(CertInfo {
        common_name,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before_ms: ms(cert.validity().not_before),
        not_after_ms: ms(cert.validity().not_after),
    })
}

pub fn cert_info(pem: &str) -> Result<CertInfo, TlsError> {
    cert_info_der(&first_cert_der(pem, "certificate")?)
}

/// The cluster's certificate authority (on the server only: it holds the key).
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

/// What a certificate the CA issues is for.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    pub common_name: &'a str,
    /// DNS names and IP addresses the holder answers at (for a server certificate).
    pub names: &'a [String],
    pub lifetime: Duration,
}

impl Ca {
    /// Loads the CA from `dir`, or makes one there (first start).
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            let pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?)
                .map_err(|e| invalid(key_path.display().to_string(), e))?;
            let params = CertificateParams::from_ca_cert_pem(&pem)
                .map_err(|e| invalid(cert_path.display().to_string(), e))?;
            // The same name, key and key identifier as the file's: what it signs chains to it.
            let cert = params
                .self_signed(&key)
                .map_err(|e| invalid(cert_path.display().to_string(), e))?;
            return Ok(Ca { cert, key, pem });
        }
        let key = KeyPair::generate().map_err(|e| invalid("CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tugboat cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset(now() - Duration::from_secs(3600));
        params.not_after = offset(now() + CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(|e| invalid("CA", e))?;
        let pem = cert.pem();
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &pem, false)?;
        Ok(Ca { cert, key, pem })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The hash of the CA certificate as written (what nodes pin), not of the copy
    /// re-signed in memory on load.
    pub fn hash(&self) -> String {
        hash_pem(&self.pem).expect("the CA's own PEM holds its certificate")
    }

    fn params(issue: &Issue) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, issue.common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = issue
            .names
            .iter()
            .filter_map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Some(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().ok().map(SanType::DnsName),
            })
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Valid from a little before now: clocks of nodes a little behind still accept it.
        let backdate = Duration::from_secs(60).min(issue.lifetime / 10);
        params.not_before = offset(now() - backdate);
        params.not_after = offset(now() + issue.lifetime);
        let serial: [u8; 16] = rand_bytes();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// A new key and a certificate for it: `(cert_pem, key_pem)`.
    pub fn issue_with_key(&self, issue: &Issue) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(|e| invalid("key", e))?;
        let cert = Self::params(issue)
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| invalid(issue.common_name, e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a node's CSR. Only its public key is taken from it: the name, addresses and
    /// lifetime are the server's to say.
    pub fn sign_csr(&self, csr_pem: &str, issue: &Issue) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| invalid("csr", format!("not a valid signed CSR: {e}")))?;
        let cert = Self::params(issue)
            .signed_by(&csr.public_key, &self.cert, &self.key)
            .map_err(|e| invalid(issue.common_name, e))?;
        Ok(cert.pem())
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: getrandom into a buffer of the length given.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    assert_eq!(n, N as isize, "getrandom");
    out[0] &= 0x7f; // a positive serial
    out
}

/// A new key and a CSR for `common_name`: `(key_pem, csr_pem)`.
pub fn key_and_csr(common_name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(|e| invalid("key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| invalid("csr", e))?;
    Ok((key.serialize_pem(), csr))
}

/// A certificate and its key, ready for rustls.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid("key", e))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| invalid("key", e))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// The certificate a listener presents; replaced in place when it is renewed.
#[derive(Debug)]
pub struct ServerCert(RwLock<Arc<CertifiedKey>>);

impl ServerCert {
    pub fn new(key: CertifiedKey) -> Arc<ServerCert> {
        Arc::new(ServerCert(RwLock::new(Arc::new(key))))
    }

    pub fn replace(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(first_cert_der(ca_pem, "CA certificate")?)
        .map_err(|e| invalid("CA certificate", e))?;
    Ok(roots)
}

/// A listener's TLS: `cert` presented; client certificates from the cluster CA verified when
/// given (a node's), optional (people use bearer tokens).
pub fn server_config(
    ca_pem: &str,
    cert: Arc<ServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid("client verifier", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a client trusts and shows: the cluster CA, and a node's certificate and key.
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_pem: String,
    /// `cert.pem` then `key.pem`, concatenated (reqwest's identity format).
    pub identity_pem: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("identity", &self.identity_pem.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads `ca.pem`, and `cert.pem`/`key.pem` when both are there, from `dir`.
    pub fn from_dir(dir: &Path, with_identity: bool) -> Result<ClientTls, TlsError> {
        let ca_pem = read(&dir.join(CA_FILE))?;
        let identity_pem = if with_identity && dir.join(CERT_FILE).exists() {
            Some(format!(
                "{}\n{}",
                read(&dir.join(CERT_FILE))?,
                read(&dir.join(KEY_FILE))?
            ))
        } else {
            None
        };
        Ok(ClientTls {
            ca_pem,
            identity_pem,
        })
    }

    /// A reqwest client that trusts only the cluster CA.
    pub fn client(&self, connect_timeout: Duration) -> Result<reqwest::Client, TlsError> {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())
            .map_err(|e| invalid("CA certificate", e))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .connect_timeout(connect_timeout);
        if let Some(identity) = &self.identity_pem {
            builder = builder.identity(
                reqwest::Identity::from_pem(identity.as_bytes())
                    .map_err(|e| invalid("node certificate", e))?,
            );
        }
        builder.build().map_err(|e| invalid("tls client", e))
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The verified client certificate of a connection, as handlers see it (a request
/// extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert(pub CertInfo);

/// Serves `router` on `listener` until `shutdown` completes: plain HTTP, or TLS when
/// `tls` is given (each request then carries the connection's [`PeerCert`], if any). HTTP
/// upgrades (exec streams) work on both. On shutdown, connections get a short grace to end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => serve_stream(stream, router, None::<PeerCert>).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    let Ok(Ok(tls)) = handshake.await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|der| cert_info_der(der).ok())
                        .map(PeerCert);
                    serve_stream(tls, router, peer).await
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

/// Serves `router` on one connection (HTTP/1.1 or HTTP/2, upgrades included) until it
/// ends; each request carries `peer` as an extension when given (who the connection is
/// known to come from).
pub async fn serve_stream<S, P>(stream: S, router: axum::Router, peer: Option<P>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if let Some(peer) = &peer {
                request.extensions_mut().insert(peer.clone());
            }
            let mut router = router.clone();
            tower_service::Service::call(&mut router, request.map(axum::body::Body::new))
        });
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_signed_by_the_ca_carries_the_servers_name_not_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (_key, csr) = key_and_csr("admin").unwrap();
        let names = vec!["n1".to_string(), "10.0.0.5".to_string()];
        let pem = ca
            .sign_csr(
                &csr,
                &Issue {
                    common_name: "n1",
                    names: &names,
                    lifetime: Duration::from_secs(30),
                },
            )
            .unwrap();
        let info = cert_info(&pem).unwrap();
        assert_eq!(info.common_name, "n1");
        assert!(info.not_after_ms <= now_ms() + 31_000);
        assert!(!info.due_for_renewal(now_ms()));
        assert!(info.due_for_renewal(info.not_after_ms - 5_000));
        // Reloaded, the CA is the same one (same hash), and still signs.
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.hash(), ca.hash());
        assert_eq!(hash_pem(again.pem()).unwrap(), ca.hash());
        // The key is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        // A CSR that is not one is refused with the field's name.
        let err = ca
            .sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &Issue {
                    common_name: "n1",
                    names: &names,
                    lifetime: Duration::from_secs(30),
                },
            )
            .unwrap_err();
        assert!(err.to_string().starts_with("csr:"), "{err}");
    }
}
