//! Who may call: tokens with scopes (stored hashed) and the certificates issued to nodes
//! (their serials, so deleting a node revokes its certificate). docs/security.md.

use super::{ControlPlane, ControlPlaneError, Result};
use crate::objects::{self, Batch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tugboat_api::model::now_ms;
use tugboat_api::wire::{TokenCreated, TokenInfo, TokenRequest, TokenScope};

pub const TOKENS: &str = "/tokens/";
pub const NODE_CERTS: &str = "/nodecerts/";

/// The longest a join token may live: a join token is for one enrolment session.
pub const MAX_JOIN_TTL_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    info: TokenInfo,
    /// sha256 of the secret, hex.
    hash: String,
}

/// The certificates a node holds: the serials of the current one and the one before (a
/// renewal does not cut the connections made with the old one), and when the newest ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertRecord {
    pub name: String,
    pub serials: Vec<String>,
    pub not_after_ms: u64,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // SAFETY: getrandom into a buffer of the length given.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), bytes, 0) };
    assert_eq!(n, bytes as isize, "getrandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl ControlPlane {
    /// Makes a token; its secret is in the answer only.
    pub async fn create_token(&self, request: TokenRequest) -> Result<TokenCreated> {
        match (request.scope, request.ttl_seconds) {
            (_, Some(0)) => {
                return Err(ControlPlaneError::BadRequest(
                    "ttl_seconds: 0 would make a token that is expired already".into(),
                ))
            }
            (TokenScope::Join, None) => {
                return Err(ControlPlaneError::BadRequest(
                    "ttl_seconds: a join token needs one (like --ttl 1h): a join token that never expires lets anyone who finds it add nodes".into(),
                ))
            }
            (TokenScope::Join, Some(ttl)) if ttl > MAX_JOIN_TTL_SECONDS => {
                return Err(ControlPlaneError::BadRequest(format!(
                    "ttl_seconds: {ttl} is more than a join token may live ({MAX_JOIN_TTL_SECONDS}, a week)"
                )))
            }
            _ => {}
        }
        let id = random_hex(4);
        let secret = random_hex(16);
        let created_ms = now_ms();
        let info = TokenInfo {
            id: id.clone(),
            scope: request.scope,
            description: request.description,
            created_ms,
            expires_ms: request.ttl_seconds.map(|s| created_ms + s * 1000),
        };
        let mut batch = Batch::default();
        batch.put_if(
            format!("{TOKENS}{id}"),
            0,
            &TokenRecord {
                info: info.clone(),
                hash: sha256_hex(&secret),
            },
        );
        batch.commit(self.store()).await?;
        Ok(TokenCreated {
            token: format!("{id}.{secret}"),
            info,
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let (records, _) = objects::list::<TokenRecord>(self.store(), TOKENS).await?;
        Ok(records.into_iter().map(|r| r.object.info).collect())
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let key = format!("{TOKENS}{id}");
        if objects::get::<TokenRecord>(self.store(), &key)
            .await?
            .is_none()
        {
            return Err(ControlPlaneError::NotFound {
                kind: "token",
                name: id.into(),
            });
        }
        let mut batch = Batch::default();
        batch.delete(key);
        batch.commit(self.store()).await?;
        Ok(())
    }

    /// The scope of a presented `<id>.<secret>` token: None when unknown, wrong or expired.
    pub async fn token_scope(&self, presented: &str) -> Result<Option<TokenScope>> {
        let Some((id, secret)) = presented.split_once('.') else {
            return Ok(None);
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(record) =
            objects::get::<TokenRecord>(self.store(), &format!("{TOKENS}{id}")).await?
        else {
            return Ok(None);
        };
        let record = record.object;
        if !tugboat_api::same_secret(sha256_hex(secret).as_bytes(), record.hash.as_bytes()) {
            return Ok(None);
        }
        if record.info.expires_ms.is_some_and(|t| now_ms() >= t) {
            return Ok(None);
        }
        Ok(Some(record.info.scope))
    }

    pub async fn node_cert(&self, name: &str) -> Result<Option<NodeCertRecord>> {
        Ok(
            objects::get::<NodeCertRecord>(self.store(), &format!("{NODE_CERTS}{name}"))
                .await?
                .map(|v| v.object),
        )
    }

    pub async fn node_certs(&self) -> Result<Vec<NodeCertRecord>> {
        let (records, _) = objects::list::<NodeCertRecord>(self.store(), NODE_CERTS).await?;
        Ok(records.into_iter().map(|r| r.object).collect())
    }

    /// Records a certificate issued to `name`. A first one (a join) is refused when the name
    /// has one already, or is a registered node: a second host cannot take a node's name.
    pub async fn record_node_cert(
        &self,
        name: &str,
        serial: &str,
        not_after_ms: u64,
        join: bool,
    ) -> Result<()> {
        let key = format!("{NODE_CERTS}{name}");
        let existing = objects::get::<NodeCertRecord>(self.store(), &key).await?;
        let taken = || {
            ControlPlaneError::Conflict(format!(
                "node {name} has joined already: a second host cannot take its name; to join it again, delete it first (tugboat node rm {name})"
            ))
        };
        let mut batch = Batch::default();
        let (revision, mut serials) = match (&existing, join) {
            (Some(_), true) => return Err(taken()),
            (Some(v), false) => (v.revision, v.object.serials.clone()),
            (None, true) => {
                if self.get_node(name).await.is_ok() {
                    return Err(taken());
                }
                (0, vec![])
            }
            (None, false) => {
                return Err(ControlPlaneError::NotFound {
                    kind: "node certificate",
                    name: name.into(),
                })
            }
        };
        serials.push(serial.to_string());
        let keep = serials.len().saturating_sub(2);
        serials.drain(..keep);
        batch.put_if(
            key,
            revision,
            &NodeCertRecord {
                name: name.into(),
                serials,
                not_after_ms,
            },
        );
        batch.commit(self.store()).await.map_err(|e| match e {
            crate::store::StoreError::Conflict { .. } if join => taken(),
            other => other.into(),
        })?;
        Ok(())
    }
}
