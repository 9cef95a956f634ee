//! `tugboat store export` / `import`: a cluster's objects moved between stores (the
//! embedded log and etcd), as one JSON document.
//!
//! The export is one consistent list of every key at one revision. Values that are JSON
//! (every model object) are kept as JSON, so the file can be read and edited; others go as
//! base64. The leader key and the liveness relays are not exported: they belong to the
//! servers of one store.
//! An import writes into an empty store (or, with `replace`, one it empties first) in
//! transactions of [`IMPORT_BATCH`] keys; revisions are the target store's own.

use super::{Operation, Store, StoreError};
use base64::Engine;
use serde::{Deserialize, Serialize};

pub const EXPORT_FORMAT: &str = "tugboat-store-export/1";
/// Keys per import transaction (etcd's `--max-txn-ops` must allow it; its default is 128).
pub const IMPORT_BATCH: usize = 100;
/// Keys that belong to one store's servers, never moved.
const NOT_EXPORTED: &[&str] = &[
    "/leader/",
    crate::liveness::LIVENESS,
    crate::servers::SERVERS,
    crate::bootstrap::BOOTSTRAP_KEY,
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreExport {
    pub format: String,
    /// The revision of the source store the export was read at.
    pub revision: u64,
    pub items: Vec<ExportedKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedKey {
    pub key: String,
    /// The value, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The value in base64, when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not a tugboat store export: {0}")]
    Format(String),
    #[error("the target store already holds {count} keys (e.g. `{first}`): import into an empty store, or pass --replace to delete them first")]
    NotEmpty { count: usize, first: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOutcome {
    pub keys: usize,
    /// Keys deleted first (with `replace`).
    pub replaced: usize,
}

fn moved(key: &str) -> bool {
    !NOT_EXPORTED.iter().any(|p| key.starts_with(p))
}

/// Every key of `store`, as of one revision.
pub async fn export(store: &dyn Store) -> Result<StoreExport, StoreError> {
    let listing = store.list("/").await?;
    let items = listing
        .items
        .into_iter()
        .filter(|kv| moved(&kv.key))
        .map(
            |kv| match serde_json::from_slice::<serde_json::Value>(&kv.value) {
                // Only when it reads back to the same bytes: the import must write them exactly.
                Ok(value) if serde_json::to_vec(&value).ok().as_deref() == Some(&kv.value[..]) => {
                    ExportedKey {
                        key: kv.key,
                        value: Some(value),
                        value_base64: None,
                    }
                }
                _ => ExportedKey {
                    key: kv.key,
                    value: None,
                    value_base64: Some(base64::engine::general_purpose::STANDARD.encode(&kv.value)),
                },
            },
        )
        .collect();
    Ok(StoreExport {
        format: EXPORT_FORMAT.into(),
        revision: listing.revision,
        items,
    })
}

/// Parse an export file's text.
pub fn parse_export(text: &str) -> Result<StoreExport, TransferError> {
    let export: StoreExport =
        serde_json::from_str(text).map_err(|e| TransferError::Format(e.to_string()))?;
    if export.format != EXPORT_FORMAT {
        return Err(TransferError::Format(format!(
            "format is `{}`, this tugboat reads `{EXPORT_FORMAT}`",
            export.format
        )));
    }
    Ok(export)
}

/// Write every key of `export` into `store`, which must be empty unless `replace`.
pub async fn import(
    store: &dyn Store,
    export: &StoreExport,
    replace: bool,
) -> Result<ImportOutcome, TransferError> {
    let mut operations = Vec::with_capacity(export.items.len());
    for item in &export.items {
        if !item.key.starts_with('/') || !moved(&item.key) {
            return Err(TransferError::Format(format!(
                "key `{}` cannot be imported (keys start with `/`; /leader/ and /liveness/ are not moved)",
                item.key
            )));
        }
        let value = match (&item.value, &item.value_base64) {
            (Some(value), None) => serde_json::to_vec(value).expect("JSON values serialize"),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| TransferError::Format(format!("key `{}`: {e}", item.key)))?,
            _ => {
                return Err(TransferError::Format(format!(
                    "key `{}` needs exactly one of `value` and `value_base64`",
                    item.key
                )))
            }
        };
        operations.push(Operation::Put {
            key: item.key.clone(),
            value,
        });
    }
    let existing: Vec<String> = store
        .list("/")
        .await?
        .items
        .into_iter()
        .map(|kv| kv.key)
        .filter(|key| moved(key))
        .collect();
    if !existing.is_empty() && !replace {
        return Err(TransferError::NotEmpty {
            count: existing.len(),
            first: existing[0].clone(),
        });
    }
    for chunk in existing.chunks(IMPORT_BATCH) {
        let deletes = chunk
            .iter()
            .map(|key| Operation::Delete { key: key.clone() })
            .collect();
        store.commit(vec![], deletes).await?;
    }
    let keys = operations.len();
    let mut operations = operations.into_iter().peekable();
    while operations.peek().is_some() {
        let chunk: Vec<Operation> = operations.by_ref().take(IMPORT_BATCH).collect();
        store.commit(vec![], chunk).await?;
    }
    Ok(ImportOutcome {
        keys,
        replaced: existing.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{put, EmbeddedStore};

    #[tokio::test]
    async fn an_export_imports_to_the_same_keys_and_bytes() {
        let source = EmbeddedStore::in_memory();
        put(
            &source,
            "/services/web",
            br#"{"name":"web","replicas":2}"#.to_vec(),
        )
        .await
        .unwrap();
        put(&source, "/raw", vec![0, 159, 146, 150]).await.unwrap();
        put(&source, "/spaced", b"{ \"a\": 1 }".to_vec())
            .await
            .unwrap();
        put(&source, "/leader/controllers", b"server-1".to_vec())
            .await
            .unwrap();
        let export = export(&source).await.unwrap();
        let text = serde_json::to_string_pretty(&export).unwrap();
        assert!(text.contains(r#""replicas": 2"#), "JSON stays JSON: {text}");

        let target = EmbeddedStore::in_memory();
        let outcome = import(&target, &parse_export(&text).unwrap(), false)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            ImportOutcome {
                keys: 3,
                replaced: 0
            }
        );
        let pairs = |listing: crate::store::Listing| -> Vec<(String, Vec<u8>)> {
            listing
                .items
                .into_iter()
                .filter(|kv| !kv.key.starts_with("/leader/"))
                .map(|kv| (kv.key, kv.value))
                .collect()
        };
        assert_eq!(
            pairs(target.list("/").await.unwrap()),
            pairs(source.list("/").await.unwrap())
        );
        assert!(target.get("/leader/controllers").await.unwrap().is_none());

        // Into a store that holds something: refused, unless replacing.
        let err = import(&target, &export, false).await.unwrap_err();
        assert!(err.to_string().contains("--replace"), "{err}");
        put(&target, "/services/stale", b"{}".to_vec())
            .await
            .unwrap();
        let outcome = import(&target, &export, true).await.unwrap();
        assert_eq!(
            outcome,
            ImportOutcome {
                keys: 3,
                replaced: 4
            }
        );
        assert!(target.get("/services/stale").await.unwrap().is_none());
    }

    #[test]
    fn a_file_that_is_not_an_export_is_refused() {
        let err = parse_export(r#"{"format":"other","revision":1,"items":[]}"#).unwrap_err();
        assert!(err.to_string().contains("tugboat-store-export/1"), "{err}");
        assert!(parse_export("services: []").is_err());
    }
}
