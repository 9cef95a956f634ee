//! Typed reads and writes of model objects in a [`Store`] (JSON values).

use crate::store::{Compare, KeyValue, Operation, Revision, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored object `{key}` does not decode: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
}

/// An object with the revision it was read at, for compare-and-swap.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub object: T,
    pub revision: Revision,
}

pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>, ObjectError> {
    let object = serde_json::from_slice(&kv.value).map_err(|source| ObjectError::Decode {
        key: kv.key.clone(),
        source,
    })?;
    Ok(Versioned {
        object,
        revision: kv.mod_revision,
    })
}

pub fn encode<T: Serialize>(object: &T) -> Vec<u8> {
    serde_json::to_vec(object).expect("model objects always serialize")
}

pub async fn get<T: DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Versioned<T>>, ObjectError> {
    store.get(key).await?.as_ref().map(decode).transpose()
}

pub async fn list<T: DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<(Vec<Versioned<T>>, Revision), ObjectError> {
    let listing = store.list(prefix).await?;
    let items = listing.items.iter().map(decode).collect::<Result<_, _>>()?;
    Ok((items, listing.revision))
}

/// Operations and compares gathered for one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub compares: Vec<Compare>,
    pub operations: Vec<Operation>,
}

impl Batch {
    /// Put `object` if `key` is still at `revision` (0: does not exist).
    pub fn put_if<T: Serialize>(&mut self, key: String, revision: Revision, object: &T) {
        self.compares.push(Compare::ModRevision {
            key: key.clone(),
            revision,
        });
        self.operations.push(Operation::Put {
            key,
            value: encode(object),
        });
    }
    pub fn put<T: Serialize>(&mut self, key: String, object: &T) {
        self.operations.push(Operation::Put {
            key,
            value: encode(object),
        });
    }
    pub fn delete(&mut self, key: String) {
        self.operations.push(Operation::Delete { key });
    }
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
    pub async fn commit(self, store: &dyn Store) -> Result<Option<Revision>, StoreError> {
        if self.is_empty() {
            return Ok(None);
        }
        store.commit(self.compares, self.operations).await.map(Some)
    }
}
