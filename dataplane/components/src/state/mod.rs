//! The state store contract: [`StateStore`] (get, set, delete, bulk get),
//! the optional [`Transactional`] and [`Querier`] capabilities, and the
//! plain request and answer values the state block hands them. Keys arrive
//! already prefixed (`app||key`): prefixes are Dapr's API semantics and
//! belong to the block, not to a driver.

pub mod query;

#[cfg(feature = "state-memory")]
pub mod memory;
#[cfg(feature = "state-postgresql")]
pub mod postgres;
#[cfg(feature = "state-redis")]
pub mod redis;
#[cfg(feature = "state-sqlite")]
pub mod sqlite;

use std::time::SystemTime;

use bytes::Bytes;

use crate::BoxFuture;

/// What a store can do, as `/v1.0/metadata` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features(u8);

impl Features {
    pub const ETAG: Self = Self(1);
    pub const TRANSACTIONAL: Self = Self(2);
    pub const QUERY_API: Self = Self(4);
    pub const TTL: Self = Self(8);

    pub const fn union(self, o: Self) -> Self {
        Self(self.0 | o.0)
    }

    pub const fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }

    /// Dapr's names, in Dapr's order; `ACTOR` when a store has both ETags
    /// and transactions (what the actor runtime needs).
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (f, n) in [
            (Self::ETAG, "ETAG"),
            (Self::TRANSACTIONAL, "TRANSACTIONAL"),
            (Self::QUERY_API, "QUERY_API"),
            (Self::TTL, "TTL"),
        ] {
            if self.contains(f) {
                v.push(n);
            }
        }
        if self.contains(Self::ETAG.union(Self::TRANSACTIONAL)) {
            v.push("ACTOR");
        }
        v
    }
}

/// `options.concurrency`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    FirstWrite,
    #[default]
    LastWrite,
}

/// `options.consistency`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    #[default]
    Eventual,
    Strong,
}

/// `metadata.ttlInSeconds` of a save.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ttl {
    /// Not given: the store's default, if it has one.
    #[default]
    Unset,
    /// `-1`: no expiry, clearing any that was set.
    Clear,
    Seconds(u64),
}

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub data: Bytes,
    pub etag: Option<String>,
    /// When the value expires (`ttlExpireTime`), if it has a TTL.
    pub expires: Option<SystemTime>,
}

#[derive(Clone, Debug)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    /// `Some` when the caller gave an ETag, even an empty one.
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
    pub ttl: Ttl,
    /// The value is JSON text (an HTTP save, or `contentType:
    /// application/json`) rather than opaque bytes: stores that keep the two
    /// apart (SQLite's `is_binary`) record it, as Dapr's drivers do.
    pub is_json: bool,
}

#[derive(Clone, Debug)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

/// One operation of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Set(SetRequest),
    Delete(DeleteRequest),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Self::Set(s) => &s.key,
            Self::Delete(d) => &d.key,
        }
    }
}

/// Why a state call failed. Messages name the store's address and what
/// failed, never a credential.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StateError {
    /// The ETag given does not match the stored one (or a first-write
    /// found the key already written).
    #[error("possible etag mismatch. error from state store: {0}")]
    EtagMismatch(String),
    /// The ETag given cannot be an ETag of this store.
    #[error("invalid etag value: {0}")]
    EtagInvalid(String),
    /// The request is not valid for this store (a bad TTL, say).
    #[error("{0}")]
    Invalid(String),
    /// The store could not be reached or failed.
    #[error("{0}")]
    Backend(String),
}

/// One key's answer in a bulk get.
pub type BulkItem = Result<Option<Item>, StateError>;

/// A state store. Implementations are shared by every call (`Arc<dyn
/// StateStore>`) and never block the async runtime.
pub trait StateStore: Send + Sync + 'static {
    fn features(&self) -> Features;

    fn get<'a>(
        &'a self,
        key: &'a str,
        consistency: Consistency,
    ) -> BoxFuture<'a, Result<Option<Item>, StateError>>;

    fn set(&self, req: SetRequest) -> BoxFuture<'_, Result<(), StateError>>;

    fn delete(&self, req: DeleteRequest) -> BoxFuture<'_, Result<(), StateError>>;

    /// Many keys at once, answers in the order asked. The default asks one
    /// key at a time; stores that can batch (a pipeline, one query) do.
    fn bulk_get<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<BulkItem>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(self.get(k, Consistency::Eventual).await);
            }
            out
        })
    }

    /// Transactions, where the store has them.
    fn transactional(&self) -> Option<&dyn Transactional> {
        None
    }

    /// The query API, where the store has it.
    fn querier(&self) -> Option<&dyn Querier> {
        None
    }
}

/// Several operations applied in order, as one.
pub trait Transactional: Send + Sync {
    fn multi(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StateError>>;
}

/// Dapr's state query language (`/v1.0-alpha1/state/{s}/query`).
pub trait Querier: Send + Sync {
    /// `prefix`: only keys that start with it (the app's key prefix) are
    /// searched, and it is the block's job to strip it from the answers.
    fn query<'a>(
        &'a self,
        prefix: &'a str,
        q: query::Query,
    ) -> BoxFuture<'a, Result<query::Answer, StateError>>;
}

/// The check every ETag-keeping store makes before a write: may a write
/// with `etag`/`concurrency` go over the `current` version?
pub fn etag_allows(
    current: Option<&str>,
    etag: Option<&str>,
    concurrency: Concurrency,
) -> Result<(), StateError> {
    match (etag.filter(|e| !e.is_empty()), current) {
        // An ETag must match what is there (and something must be there).
        (Some(e), Some(c)) if e == c => Ok(()),
        (Some(e), _) => Err(StateError::EtagMismatch(format!(
            "etag {e} does not match the stored value"
        ))),
        // First-write without an ETag: only when nothing is there yet.
        (None, Some(_)) if concurrency == Concurrency::FirstWrite => Err(StateError::EtagMismatch(
            "first-write: the key was already written and no etag was given".to_owned(),
        )),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_capability_follows_etag_and_transactions() {
        let f = Features::ETAG
            .union(Features::TRANSACTIONAL)
            .union(Features::TTL);
        assert_eq!(f.names(), ["ETAG", "TRANSACTIONAL", "TTL", "ACTOR"]);
        assert_eq!(Features::TTL.names(), ["TTL"]);
    }

    #[test]
    fn etag_rules() {
        use Concurrency::*;
        assert!(etag_allows(None, None, LastWrite).is_ok());
        assert!(etag_allows(Some("1"), None, LastWrite).is_ok());
        assert!(etag_allows(Some("1"), None, FirstWrite).is_err());
        assert!(etag_allows(None, None, FirstWrite).is_ok());
        assert!(etag_allows(Some("1"), Some("1"), FirstWrite).is_ok());
        assert!(etag_allows(Some("1"), Some("2"), LastWrite).is_err());
        assert!(etag_allows(None, Some("2"), LastWrite).is_err());
        assert!(etag_allows(Some("1"), Some(""), FirstWrite).is_err());
    }
}
