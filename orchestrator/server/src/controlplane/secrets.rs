//! Secrets, sealed in the store with AES-256-GCM under a key kept beside it
//! (`<data-dir>/secret.key`, 0600): a copy of the store (a backup, a disk image) shows names
//! and keys, not values. Values leave the server only for the node an instance that mounts
//! them is placed on (docs/security.md).

use super::{ControlPlane, ControlPlaneError, Result};
use crate::objects::{self, Batch};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tugboat_api::model::now_ms;
use tugboat_api::wire::{InstanceSecrets, SecretInfo, SecretRequest};

pub const SECRETS: &str = "/secrets/";
pub const KEY_FILE: &str = "secret.key";

/// Largest secret (all its values): they are delivered whole and kept in memory on tmpfs.
pub const MAX_SECRET_BYTES: usize = 1 << 20;

/// The key secrets are sealed with.
pub struct SecretBox(LessSafeKey);

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: getrandom into a buffer of the length given.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    assert_eq!(n, N as isize, "getrandom");
    out
}

impl SecretBox {
    /// Loads `<data_dir>/secret.key`, or makes it (first start).
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<SecretBox> {
        let path = data_dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random::<32>();
                tugboat_api::write_durable(&path, &key, 0o600)?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a 32-byte key", path.display()),
            )
        })?;
        Ok(SecretBox(LessSafeKey::new(key)))
    }

    /// A key for tests.
    pub fn ephemeral() -> SecretBox {
        let key = UnboundKey::new(&AES_256_GCM, &random::<32>()).expect("32 bytes");
        SecretBox(LessSafeKey::new(key))
    }

    fn seal(&self, name: &str, plain: &[u8]) -> (String, String) {
        let nonce = random::<NONCE_LEN>();
        let mut data = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .expect("sealing a buffer in memory");
        let b64 = base64::engine::general_purpose::STANDARD;
        (b64.encode(nonce), b64.encode(data))
    }

    fn open(&self, name: &str, nonce: &str, sealed: &str) -> Option<Vec<u8>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce: [u8; NONCE_LEN] = b64.decode(nonce).ok()?.try_into().ok()?;
        let mut data = b64.decode(sealed).ok()?;
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretRecord {
    info: SecretInfo,
    nonce: String,
    /// The values (a JSON map key -> base64), sealed; the name is the associated data, so a
    /// record copied under another name does not open.
    sealed: String,
}

fn bad(message: String) -> ControlPlaneError {
    ControlPlaneError::BadRequest(message)
}

impl ControlPlane {
    /// Makes or replaces a secret.
    pub async fn put_secret(&self, sbox: &SecretBox, request: SecretRequest) -> Result<SecretInfo> {
        if !tugboat_api::spec::validate::is_dns_label(&request.name) {
            return Err(bad(format!(
                "name: `{}` is not a valid secret name (a DNS label)",
                request.name
            )));
        }
        if request.data.is_empty() {
            return Err(bad("data: a secret needs at least one key".into()));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut size = 0;
        for (key, value) in &request.data {
            let file_name = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                && key != "."
                && key != "..";
            if !file_name {
                return Err(bad(format!(
                    "data: key `{key}` must be a file name (letters, digits, `-`, `_`, `.`)"
                )));
            }
            size += b64
                .decode(value)
                .map_err(|e| bad(format!("data.{key}: not base64: {e}")))?
                .len();
        }
        if size > MAX_SECRET_BYTES {
            return Err(bad(format!(
                "data: {size} bytes; a secret holds at most {MAX_SECRET_BYTES}"
            )));
        }
        let key = format!("{SECRETS}{}", request.name);
        let existing = objects::get::<SecretRecord>(self.store(), &key).await?;
        let now = now_ms();
        let info = SecretInfo {
            name: request.name.clone(),
            keys: request.data.keys().cloned().collect(),
            created_ms: existing.as_ref().map_or(now, |e| e.object.info.created_ms),
            updated_ms: now,
        };
        let plain = serde_json::to_vec(&request.data).expect("a map serializes");
        let (nonce, sealed) = sbox.seal(&request.name, &plain);
        let mut batch = Batch::default();
        batch.put_if(
            key,
            existing.map_or(0, |e| e.revision),
            &SecretRecord {
                info: info.clone(),
                nonce,
                sealed,
            },
        );
        batch.commit(self.store()).await?;
        Ok(info)
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        let (records, _) = objects::list::<SecretRecord>(self.store(), SECRETS).await?;
        Ok(records.into_iter().map(|r| r.object.info).collect())
    }

    pub async fn delete_secret(&self, name: &str) -> Result<()> {
        let key = format!("{SECRETS}{name}");
        if objects::get::<SecretRecord>(self.store(), &key)
            .await?
            .is_none()
        {
            return Err(ControlPlaneError::NotFound {
                kind: "secret",
                name: name.into(),
            });
        }
        let mut batch = Batch::default();
        batch.delete(key);
        batch.commit(self.store()).await?;
        Ok(())
    }

    /// The values of the secrets instance `id` mounts. The caller checks that the asker is
    /// the instance's node.
    pub async fn instance_secrets(&self, sbox: &SecretBox, id: &str) -> Result<InstanceSecrets> {
        let instance = self.get_instance(id).await?.object;
        let mut secrets = BTreeMap::new();
        for mount in &instance.spec.secrets {
            let name = &mount.secret;
            let record = objects::get::<SecretRecord>(self.store(), &format!("{SECRETS}{name}"))
                .await?
                .ok_or_else(|| ControlPlaneError::NotFound {
                    kind: "secret",
                    name: name.clone(),
                })?
                .object;
            let plain = sbox
                .open(name, &record.nonce, &record.sealed)
                .ok_or_else(|| {
                    ControlPlaneError::Conflict(format!(
                        "secret {name} does not open with this server's key ({KEY_FILE}): it was sealed with another"
                    ))
                })?;
            let data: BTreeMap<String, String> = serde_json::from_slice(&plain)
                .map_err(|e| ControlPlaneError::Conflict(format!("secret {name}: {e}")))?;
            secrets.insert(name.clone(), data);
        }
        Ok(InstanceSecrets { secrets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_under_their_name() {
        let sbox = SecretBox::ephemeral();
        let (nonce, sealed) = sbox.seal("db", b"hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(sbox.open("db", &nonce, &sealed).unwrap(), b"hunter2");
        assert!(sbox.open("web", &nonce, &sealed).is_none(), "another name");
        assert!(
            SecretBox::ephemeral().open("db", &nonce, &sealed).is_none(),
            "another key"
        );
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load_or_create(dir.path()).unwrap();
        let (nonce, sealed) = a.seal("db", b"x");
        let b = SecretBox::load_or_create(dir.path()).unwrap();
        assert_eq!(
            b.open("db", &nonce, &sealed).unwrap(),
            b"x",
            "the same key on restart"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
