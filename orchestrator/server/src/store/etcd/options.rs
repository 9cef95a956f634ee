//! The etcd backend's options: endpoints, prefix, TLS and user, checked together, each
//! error naming its flag.

use crate::store::StoreError;
use etcd_client::ConnectOptions;
use std::time::Duration;

/// Where the etcd backend finds etcd and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix (no trailing `/`; `""` for none).
    pub prefix: String,
    /// Each request (not a watch) fails after this long without an answer.
    pub request_timeout: Duration,
    /// TLS to etcd (with `https://` endpoints).
    pub tls: Option<EtcdTls>,
    /// etcd's authentication: user and password.
    pub user: Option<(String, String)>,
}

/// The files of TLS to etcd: the CA that signed etcd's certificate, and this server's
/// client certificate and key when etcd asks for one (`--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdOptions {
    /// Options from the command line's `--etcd-endpoints` (comma separated) and
    /// `--etcd-prefix`; the errors name the flag.
    pub fn parse(endpoints: &str, prefix: &str) -> Result<EtcdOptions, StoreError> {
        let invalid =
            |flag: &'static str, reason: String| StoreError::InvalidOption { flag, reason };
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(invalid(
                "--etcd-endpoints",
                "give at least one etcd URL, e.g. http://127.0.0.1:2379".into(),
            ));
        }
        for endpoint in &endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            let valid = rest.is_some_and(|hostport| {
                hostport
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            });
            if !valid {
                return Err(invalid(
                    "--etcd-endpoints",
                    format!("`{endpoint}` is not an etcd URL like http://127.0.0.1:2379"),
                ));
            }
        }
        if endpoints.iter().any(|e| e.starts_with("https://"))
            != endpoints.iter().all(|e| e.starts_with("https://"))
        {
            return Err(invalid(
                "--etcd-endpoints",
                "all https:// (TLS) or all http://, not both".into(),
            ));
        }
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() && !prefix.starts_with('/') {
            return Err(invalid(
                "--etcd-prefix",
                format!("`{prefix}` must start with `/` (e.g. /tugboat)"),
            ));
        }
        Ok(EtcdOptions {
            endpoints,
            prefix,
            request_timeout: Duration::from_secs(5),
            tls: None,
            user: None,
        })
    }

    /// TLS from `--etcd-ca`, `--etcd-cert` and `--etcd-key`: https:// endpoints need the CA;
    /// a certificate needs its key. The errors name the flag.
    pub fn with_tls(
        mut self,
        ca: Option<std::path::PathBuf>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
    ) -> Result<EtcdOptions, StoreError> {
        let invalid = |flag: &'static str, reason: &str| StoreError::InvalidOption {
            flag,
            reason: reason.into(),
        };
        let https = self.endpoints.iter().all(|e| e.starts_with("https://"));
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("--etcd-key", "--etcd-cert needs its key")),
            (None, Some(_)) => {
                return Err(invalid("--etcd-cert", "--etcd-key needs its certificate"))
            }
        };
        match (https, ca) {
            (true, Some(ca)) => self.tls = Some(EtcdTls { ca, identity }),
            (true, None) => {
                return Err(invalid(
                    "--etcd-ca",
                    "https:// etcd endpoints need the CA that signed etcd's certificate",
                ))
            }
            (false, None) if identity.is_none() => {}
            (false, _) => {
                return Err(invalid(
                    "--etcd-endpoints",
                    "--etcd-ca, --etcd-cert and --etcd-key are for https:// endpoints",
                ))
            }
        }
        Ok(self)
    }

    /// etcd authentication (`--etcd-user`, the password from `--etcd-password` or
    /// TUGBOAT_ETCD_PASSWORD).
    pub fn with_user(
        mut self,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<EtcdOptions, StoreError> {
        self.user =
            match (user, password) {
                (Some(user), Some(password)) => Some((user, password)),
                (None, None) => None,
                (Some(_), None) => return Err(StoreError::InvalidOption {
                    flag: "--etcd-password",
                    reason:
                        "--etcd-user needs a password (--etcd-password or TUGBOAT_ETCD_PASSWORD)"
                            .into(),
                }),
                (None, Some(_)) => {
                    return Err(StoreError::InvalidOption {
                        flag: "--etcd-user",
                        reason: "a password was given without --etcd-user".into(),
                    })
                }
            };
        Ok(self)
    }

    pub(super) fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(2), self.request_timeout)
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            let read = |flag: &'static str, path: &std::path::Path| {
                std::fs::read(path).map_err(|e| StoreError::InvalidOption {
                    flag,
                    reason: format!("{}: {e}", path.display()),
                })
            };
            let mut config = etcd_client::TlsOptions::new().ca_certificate(
                etcd_client::Certificate::from_pem(read("--etcd-ca", &tls.ca)?),
            );
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(
                    read("--etcd-cert", cert)?,
                    read("--etcd-key", key)?,
                ));
            }
            options = options.with_tls(config);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_flag_that_is_wrong() {
        let ok = EtcdOptions::parse("http://127.0.0.1:2379, http://10.0.0.2:2379", "/tb/").unwrap();
        assert_eq!(
            ok.endpoints,
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(ok.prefix, "/tb");
        for (endpoints, prefix, flag) in [
            ("", "/t", "--etcd-endpoints"),
            ("127.0.0.1:2379", "/t", "--etcd-endpoints"),
            ("http://127.0.0.1", "/t", "--etcd-endpoints"),
            ("http://127.0.0.1:2379", "tugboat", "--etcd-prefix"),
            (
                "http://127.0.0.1:2379,https://h:2379",
                "/t",
                "--etcd-endpoints",
            ),
        ] {
            let err = EtcdOptions::parse(endpoints, prefix).unwrap_err();
            assert!(
                matches!(&err, StoreError::InvalidOption { flag: f, .. } if *f == flag),
                "{endpoints} {prefix}: {err}"
            );
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn tls_and_user_flags_go_together() {
        let http = EtcdOptions::parse("http://127.0.0.1:2379", "/t").unwrap();
        let https = EtcdOptions::parse("https://127.0.0.1:2379", "/t").unwrap();
        let path = |p: &str| Some(std::path::PathBuf::from(p));
        let flag_of = |r: Result<EtcdOptions, StoreError>| match r {
            Err(StoreError::InvalidOption { flag, .. }) => flag,
            other => panic!("expected an invalid option, got {other:?}"),
        };
        assert_eq!(
            flag_of(https.clone().with_tls(None, None, None)),
            "--etcd-ca"
        );
        assert_eq!(
            flag_of(http.clone().with_tls(path("/ca"), None, None)),
            "--etcd-endpoints"
        );
        assert_eq!(
            flag_of(https.clone().with_tls(path("/ca"), path("/c"), None)),
            "--etcd-key"
        );
        let tls = https.with_tls(path("/ca"), path("/c"), path("/k")).unwrap();
        assert_eq!(tls.tls.unwrap().identity, Some(("/c".into(), "/k".into())));
        assert!(http
            .clone()
            .with_tls(None, None, None)
            .unwrap()
            .tls
            .is_none());
        assert_eq!(
            flag_of(http.clone().with_user(Some("tb".into()), None)),
            "--etcd-password"
        );
        assert_eq!(
            flag_of(http.clone().with_user(None, Some("pw".into()))),
            "--etcd-user"
        );
        let user = http
            .with_user(Some("tb".into()), Some("pw".into()))
            .unwrap();
        assert_eq!(user.user, Some(("tb".into(), "pw".into())));
    }
}
