//! Where the command line finds the server and its token: flags, then the environment
//! (TUGBOAT_ADDR, TUGBOAT_TOKEN, handled by clap), then a config file, then the token file
//! in the data dir, then the defaults.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `~/.config/tugboat/config.yaml` (or --config): `addr:` (one address, or several
/// comma-separated: the servers of one cluster) and `token:` (or `token_file:`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfigFile {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM) the server's certificate must come from.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".config/tugboat/config.yaml"))
}

pub fn read_config_file(
    path: &Path,
    required: bool,
) -> Result<ClientConfigFile, ClientConfigError> {
    let err = |message: String| ClientConfigError::File {
        path: path.into(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok(ClientConfigFile::default())
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The address and token to use.
pub fn resolve(
    flag_addr: Option<String>,
    flag_token: Option<String>,
    config: &ClientConfigFile,
    data_dir: &Path,
) -> (String, Option<String>) {
    let addr = flag_addr
        .or_else(|| config.addr.clone())
        .unwrap_or_else(|| crate::server::DEFAULT_LISTEN.to_string());
    let token = flag_token
        .or_else(|| config.token.clone())
        .or_else(|| {
            config
                .token_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
        })
        .or_else(|| {
            server_dirs(data_dir)
                .find_map(|dir| std::fs::read_to_string(dir.join(crate::server::TOKEN_FILE)).ok())
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    (addr, token)
}

/// Where a server's files (token, tls/) may be under `--data-dir D`: D itself (`tugboat server
/// --data-dir D`), then D/server (`tugboat up --data-dir D` keeps its server there), so one
/// `--data-dir` means the same directory for every command.
pub fn server_dirs(data_dir: &Path) -> impl Iterator<Item = PathBuf> {
    [
        data_dir.to_path_buf(),
        data_dir.join(crate::up::SERVER_SUBDIR),
    ]
    .into_iter()
}

/// The cluster CA to trust: the flag (or TUGBOAT_CA), the config file's `ca:`, then
/// `<data-dir>/tls/ca.pem` or `<data-dir>/server/tls/ca.pem`, the first that exists (on the
/// server's host).
pub fn resolve_ca(
    flag_ca: Option<PathBuf>,
    config: &ClientConfigFile,
    data_dir: &Path,
) -> Option<PathBuf> {
    flag_ca.or_else(|| config.ca.clone()).or_else(|| {
        server_dirs(data_dir)
            .map(|dir| {
                dir.join(crate::server::TLS_DIR)
                    .join(tugboat_api::tls::CA_FILE)
            })
            .find(|path| path.exists())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-data-dir\n").unwrap();
        let file = ClientConfigFile {
            addr: Some("10.0.0.1:7480".into()),
            token: Some("from-file".into()),
            token_file: None,
            ca: None,
        };
        assert_eq!(
            resolve(Some("a:1".into()), Some("t".into()), &file, dir.path()),
            ("a:1".into(), Some("t".into()))
        );
        assert_eq!(
            resolve(None, None, &file, dir.path()),
            ("10.0.0.1:7480".into(), Some("from-file".into()))
        );
        let (addr, token) = resolve(None, None, &ClientConfigFile::default(), dir.path());
        assert_eq!(
            (addr.as_str(), token.as_deref()),
            ("127.0.0.1:7480", Some("from-data-dir"))
        );
    }

    #[test]
    fn an_up_data_dir_finds_its_servers_token_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("server");
        std::fs::create_dir_all(server.join("tls")).unwrap();
        std::fs::write(server.join("token"), "up-token\n").unwrap();
        std::fs::write(server.join("tls/ca.pem"), "x").unwrap();
        let none = ClientConfigFile::default();
        assert_eq!(
            resolve(None, None, &none, dir.path()).1.as_deref(),
            Some("up-token")
        );
        assert_eq!(
            resolve_ca(None, &none, dir.path()),
            Some(server.join("tls/ca.pem"))
        );
        // The server's own data dir still works, and wins.
        std::fs::write(dir.path().join("token"), "own\n").unwrap();
        assert_eq!(
            resolve(None, None, &none, dir.path()).1.as_deref(),
            Some("own")
        );
    }

    #[test]
    fn the_ca_comes_from_the_flag_the_file_then_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = ClientConfigFile::default();
        assert_eq!(resolve_ca(None, &file, dir.path()), None);
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/ca.pem"), "x").unwrap();
        assert_eq!(
            resolve_ca(None, &file, dir.path()),
            Some(dir.path().join("tls/ca.pem"))
        );
        let file = ClientConfigFile {
            ca: Some("/etc/tugboat/ca.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_ca(None, &file, dir.path()),
            Some("/etc/tugboat/ca.pem".into())
        );
        assert_eq!(
            resolve_ca(Some("/f".into()), &file, dir.path()),
            Some("/f".into())
        );
    }
}
