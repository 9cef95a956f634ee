//! The server's side of the cluster's TLS: its CA, its own certificate (issued again at each
//! start for the names it answers at, and renewed in place before it ends), and the client
//! it calls agents with (it trusts the CA only and shows the server's certificate).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tugboat_api::tls::{self, Ca, CertInfo, Issue, ServerCert, TlsError};
use tugboat_api::wire::CertificateStatus;

/// Lifetimes of what the CA issues.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// DNS names and addresses the server's certificate holds besides the defaults
    /// (localhost, 127.0.0.1, the host's name and addresses).
    pub names: Vec<String>,
    pub server_cert_lifetime: Duration,
    pub node_cert_lifetime: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            names: vec![],
            server_cert_lifetime: Duration::from_secs(365 * 24 * 3600),
            node_cert_lifetime: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

pub struct ServerTls {
    pub ca: Ca,
    pub settings: TlsSettings,
    pub cert: Arc<ServerCert>,
    pub config: Arc<rustls::ServerConfig>,
    dir: PathBuf,
    names: Vec<String>,
    current: Mutex<CertInfo>,
    agent_client: RwLock<reqwest::Client>,
}

/// Every address of this host's interfaces, and its host name.
fn host_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(name) = nix::unistd::gethostname() {
        names.push(name.to_string_lossy().into_owned());
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(ip) = a
                .address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip().to_string()))
            {
                names.push(ip);
            }
        }
    }
    names
}

impl ServerTls {
    /// Opens (or makes) the CA under `dir` and issues the server's certificate for the
    /// host's names, `listen`'s address and `settings.names`.
    pub fn open(
        dir: PathBuf,
        listen: std::net::SocketAddr,
        settings: TlsSettings,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let ca = Ca::load_or_create(&dir)?;
        let mut names = host_names();
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        names.extend(settings.names.iter().cloned());
        names.sort();
        names.dedup();
        let (cert_pem, key_pem, info) = Self::issue(&ca, &dir, &names, &settings)?;
        let cert = ServerCert::new(tls::certified_key(&cert_pem, &key_pem)?);
        let config = tls::server_config(ca.pem(), cert.clone())?;
        let agent_client = Self::client(&ca, &cert_pem, &key_pem)?;
        Ok(Arc::new(ServerTls {
            ca,
            settings,
            cert,
            config,
            dir,
            names,
            current: Mutex::new(info),
            agent_client: RwLock::new(agent_client),
        }))
    }

    fn issue(
        ca: &Ca,
        dir: &std::path::Path,
        names: &[String],
        settings: &TlsSettings,
    ) -> Result<(String, String, CertInfo), TlsError> {
        let (cert_pem, key_pem) = ca.issue_with_key(&Issue {
            common_name: tls::SERVER_NAME,
            names,
            lifetime: settings.server_cert_lifetime,
        })?;
        tls::write_file(&dir.join(tls::KEY_FILE), &key_pem, true)?;
        tls::write_file(&dir.join(tls::CERT_FILE), &cert_pem, false)?;
        let info = tls::cert_info(&cert_pem)?;
        Ok((cert_pem, key_pem, info))
    }

    fn client(ca: &Ca, cert_pem: &str, key_pem: &str) -> Result<reqwest::Client, TlsError> {
        tls::ClientTls {
            ca_pem: ca.pem().to_string(),
            identity_pem: Some(format!("{cert_pem}\n{key_pem}")),
        }
        .client(Duration::from_secs(5))
    }

    /// Issues a new server certificate when the current one has less than a third of its
    /// life left; listeners present it from their next handshake on. True when renewed.
    pub fn renew_if_due(&self) -> Result<bool, TlsError> {
        let due = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due_for_renewal(tls::now_ms());
        if !due {
            return Ok(false);
        }
        let (cert_pem, key_pem, info) =
            Self::issue(&self.ca, &self.dir, &self.names, &self.settings)?;
        self.cert.replace(tls::certified_key(&cert_pem, &key_pem)?);
        *self.agent_client.write().unwrap_or_else(|p| p.into_inner()) =
            Self::client(&self.ca, &cert_pem, &key_pem)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = info;
        Ok(true)
    }

    /// How often to look: a tenth of the lifetime, at most a minute.
    pub fn renewal_check_every(&self) -> Duration {
        (self.settings.server_cert_lifetime / 10)
            .clamp(Duration::from_millis(200), Duration::from_secs(60))
    }

    /// The client the server calls agents' APIs with.
    pub fn agent_client(&self) -> reqwest::Client {
        self.agent_client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn server_status(&self) -> CertificateStatus {
        let info = self.current.lock().unwrap_or_else(|p| p.into_inner());
        CertificateStatus {
            name: info.common_name.clone(),
            serial: info.serial.clone(),
            not_after_ms: info.not_after_ms,
        }
    }

    pub fn ca_status(&self) -> CertificateStatus {
        let info = tls::cert_info(self.ca.pem()).expect("the CA's own certificate parses");
        CertificateStatus {
            name: info.common_name,
            serial: info.serial,
            not_after_ms: info.not_after_ms,
        }
    }
}
