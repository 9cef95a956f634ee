//! Servers on one etcd share their cluster CA and the key that seals secrets without anyone
//! copying files (as k3s does with its bootstrap data).
//!
//! The first server on an empty etcd puts the files every server must hold the same
//! ([`SHARED_FILES`]: the CA's certificate and key, `secret.key`) into the store under
//! [`BOOTSTRAP_KEY`], sealed with AES-256-GCM under a key derived from the cluster token
//! (PBKDF2-HMAC-SHA256, a random salt; the token is never stored). It does so in one
//! "create only if absent" transaction: of two servers racing on an empty etcd, one
//! bootstrap is stored and the other server takes it. A later server started with the same
//! token and an empty data dir opens it and writes the files into its data dir; with another
//! token it stops with [`BootstrapError::WrongToken`] and writes nothing. A data dir whose
//! files differ from the stored ones belongs to another cluster and is refused the same way.
//!
//! etcd alone holds a sealed copy: a copy of etcd (a backup, a snapshot) without the token
//! gives neither the CA key nor the secrets.

use crate::store::{compare_and_put, Store, StoreError};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

pub const BOOTSTRAP_KEY: &str = "/bootstrap/data";

/// The data dir's files that every server of a cluster holds the same (relative paths), and
/// whether each is private (mode 0600).
pub const SHARED_FILES: &[(&str, bool)] = &[
    ("tls/ca.pem", false),
    ("tls/ca-key.pem", true),
    ("secret.key", true),
];

/// PBKDF2 rounds for a new bootstrap (the stored record says how many it used).
const ITERATIONS: u32 = 200_000;
const AAD: &[u8] = b"tugboat bootstrap v1";
/// Where the first server makes its files before its bootstrap is the cluster's.
const STAGING: &str = ".bootstrap-new";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the cluster's bootstrap data in etcd (`{key}`) does not open with this server's token: start it with the cluster's token (--token or TUGBOAT_TOKEN, as in the first server's <data-dir>/token); nothing was written to {data_dir}")]
    WrongToken { key: String, data_dir: PathBuf },
    #[error("the cluster's bootstrap data in etcd (`{key}`) cannot be read: {reason}")]
    Unreadable { key: String, reason: String },
    #[error("{path} is not the cluster's (its bootstrap data in etcd holds another): this data dir belongs to another cluster; start with an empty data dir, or remove {path}")]
    Differs { path: PathBuf },
    #[error("bootstrap: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bootstrap: making the cluster's files in {path}: {reason}")]
    Make { path: PathBuf, reason: String },
    #[error("bootstrap: {0}")]
    Store(#[from] StoreError),
}

/// How this server came by its shared files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// It was first: its files are now the cluster's.
    Stored,
    /// It took the cluster's files from the store (and wrote those it lacked).
    Joined,
}

/// The sealed record, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    kdf: String,
    iterations: u32,
    salt: String,
    nonce: String,
    sealed: String,
}

/// The shared files: relative path -> content.
type Files = BTreeMap<String, Vec<u8>>;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .expect("the system's random source");
    out
}

fn key_for(token: &str, salt: &[u8], iterations: u32) -> LessSafeKey {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations.max(1)).expect("at least one round"),
        salt,
        token.as_bytes(),
        &mut key,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes"))
}

/// The files sealed under `token`, as stored.
fn seal(token: &str, files: &Files) -> Vec<u8> {
    let plain: BTreeMap<&String, String> =
        files.iter().map(|(k, v)| (k, b64().encode(v))).collect();
    let mut data = serde_json::to_vec(&plain).expect("files serialize");
    let salt = random::<16>();
    let nonce = random::<NONCE_LEN>();
    key_for(token, &salt, ITERATIONS)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        )
        .expect("sealing a buffer in memory");
    serde_json::to_vec(&Sealed {
        kdf: "pbkdf2-hmac-sha256".into(),
        iterations: ITERATIONS,
        salt: b64().encode(salt),
        nonce: b64().encode(nonce),
        sealed: b64().encode(data),
    })
    .expect("records serialize")
}

/// What [`open`] found wrong.
#[derive(Debug, PartialEq, Eq)]
enum OpenError {
    WrongToken,
    Unreadable(String),
}

fn open(token: &str, record: &[u8]) -> Result<Files, OpenError> {
    let bad = |what: &str| OpenError::Unreadable(what.to_string());
    let sealed: Sealed =
        serde_json::from_slice(record).map_err(|e| OpenError::Unreadable(e.to_string()))?;
    if sealed.kdf != "pbkdf2-hmac-sha256" {
        return Err(bad(&format!("unknown key derivation `{}`", sealed.kdf)));
    }
    let salt = b64().decode(&sealed.salt).map_err(|_| bad("salt"))?;
    let nonce: [u8; NONCE_LEN] = b64()
        .decode(&sealed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("nonce"))?;
    let mut data = b64().decode(&sealed.sealed).map_err(|_| bad("data"))?;
    let plain = key_for(token, &salt, sealed.iterations)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        )
        .map_err(|_| OpenError::WrongToken)?;
    let encoded: BTreeMap<String, String> =
        serde_json::from_slice(plain).map_err(|e| OpenError::Unreadable(e.to_string()))?;
    encoded
        .into_iter()
        .map(|(k, v)| Ok((k, b64().decode(v).map_err(|_| bad("a file"))?)))
        .collect()
}

/// Makes sure `data_dir` holds the cluster's shared files: takes them from the store, or,
/// on an empty store, makes them with `make` (in a staging directory it gives) and stores
/// them, sealed with `token`.
pub async fn ensure(
    store: &dyn Store,
    data_dir: &Path,
    token: &str,
    make: impl Fn(&Path) -> Result<(), String>,
) -> Result<Bootstrap, BootstrapError> {
    loop {
        if let Some(kv) = store.get(BOOTSTRAP_KEY).await? {
            let files = open(token, &kv.value).map_err(|e| match e {
                OpenError::WrongToken => BootstrapError::WrongToken {
                    key: BOOTSTRAP_KEY.into(),
                    data_dir: data_dir.into(),
                },
                OpenError::Unreadable(reason) => BootstrapError::Unreadable {
                    key: BOOTSTRAP_KEY.into(),
                    reason,
                },
            })?;
            install(data_dir, &files)?;
            return Ok(Bootstrap::Joined);
        }
        // First on this store: the files this data dir has, and new ones for the others,
        // made aside until they are the cluster's.
        let staging = data_dir.join(STAGING);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BootstrapError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(staging.join("tls")).map_err(io(&staging))?;
        for (file, _) in SHARED_FILES {
            let local = data_dir.join(file);
            if local.exists() {
                std::fs::copy(&local, staging.join(file)).map_err(io(&local))?;
            }
        }
        make(&staging).map_err(|reason| BootstrapError::Make {
            path: staging.clone(),
            reason,
        })?;
        let mut files = Files::new();
        for (file, _) in SHARED_FILES {
            let path = staging.join(file);
            files.insert(file.to_string(), std::fs::read(&path).map_err(io(&path))?);
        }
        let _ = std::fs::remove_dir_all(&staging);
        match compare_and_put(store, BOOTSTRAP_KEY, 0, seal(token, &files)).await {
            Ok(_) => {
                install(data_dir, &files)?;
                return Ok(Bootstrap::Stored);
            }
            // Another server stored its bootstrap first: take that one.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes the files the data dir lacks; refuses (writing nothing) when one it has differs.
fn install(data_dir: &Path, files: &Files) -> Result<(), BootstrapError> {
    let mut missing = vec![];
    for (file, private) in SHARED_FILES {
        let Some(content) = files.get(*file) else {
            return Err(BootstrapError::Unreadable {
                key: BOOTSTRAP_KEY.into(),
                reason: format!("it holds no {file}"),
            });
        };
        let path = data_dir.join(file);
        match std::fs::read(&path) {
            Ok(local) if &local == content => {}
            Ok(_) => return Err(BootstrapError::Differs { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push((path, content, *private))
            }
            Err(source) => return Err(BootstrapError::Io { path, source }),
        }
    }
    for (path, content, private) in missing {
        tugboat_api::write_durable(&path, content, if private { 0o600 } else { 0o644 })
            .map_err(|source| BootstrapError::Io { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EmbeddedStore, EmbeddedStoreOptions};

    fn files() -> Files {
        SHARED_FILES
            .iter()
            .map(|(f, _)| (f.to_string(), format!("content of {f}").into_bytes()))
            .collect()
    }

    #[test]
    fn sealed_files_open_with_their_token_only() {
        let record = seal("the-token", &files());
        assert_eq!(open("the-token", &record).unwrap(), files());
        assert_eq!(open("another", &record), Err(OpenError::WrongToken));
        // Neither the token nor a file is in the record in clear.
        let text = String::from_utf8_lossy(&record);
        assert!(!text.contains("the-token") && !text.contains("content"));
        assert!(matches!(
            open("the-token", b"{}"),
            Err(OpenError::Unreadable(_))
        ));
    }

    fn make_files(dir: &Path) -> Result<(), String> {
        for (file, _) in SHARED_FILES {
            let path = dir.join(file);
            if !path.exists() {
                std::fs::write(&path, format!("{file} of {}", dir.display())).unwrap();
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn the_first_server_stores_the_next_takes_a_wrong_token_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("store.log"),
            EmbeddedStoreOptions::default(),
        )
        .unwrap();
        let (first, second, third) = (
            dir.path().join("1"),
            dir.path().join("2"),
            dir.path().join("3"),
        );
        assert_eq!(
            ensure(&store, &first, "t", make_files).await.unwrap(),
            Bootstrap::Stored
        );
        assert!(!first.join(STAGING).exists());
        assert_eq!(
            ensure(&store, &second, "t", make_files).await.unwrap(),
            Bootstrap::Joined
        );
        for (file, private) in SHARED_FILES {
            let a = std::fs::read(first.join(file)).unwrap();
            assert_eq!(a, std::fs::read(second.join(file)).unwrap(), "{file}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(second.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077 == 0, *private, "{file}: {mode:o}");
        }
        // Again (a restart): nothing to do.
        assert_eq!(
            ensure(&store, &second, "t", make_files).await.unwrap(),
            Bootstrap::Joined
        );

        let err = ensure(&store, &third, "wrong", make_files)
            .await
            .unwrap_err();
        assert!(matches!(err, BootstrapError::WrongToken { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("does not open with this server's token"));
        assert!(!third.exists(), "a wrong token writes nothing");

        // A data dir of another cluster is refused, and not changed.
        std::fs::create_dir_all(third.join("tls")).unwrap();
        std::fs::write(third.join("secret.key"), b"another cluster's").unwrap();
        let err = ensure(&store, &third, "t", make_files).await.unwrap_err();
        assert!(matches!(err, BootstrapError::Differs { .. }), "{err}");
        assert!(!third.join("tls/ca.pem").exists());
    }
}
