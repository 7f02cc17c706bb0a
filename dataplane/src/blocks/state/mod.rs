//! The state block: Dapr's state API over the configured state stores.
//! It owns what Dapr means by a state call, whichever front door it came
//! through: which store (none configured, unknown), key prefixes
//! (`keyPrefix`: appid, name, namespace, none, custom; `||` refused), the
//! options and `ttlInSeconds` read from request metadata, the ETag rules'
//! error answers (409 / `Aborted`, but 500 inside a transaction), and
//! `ttlExpireTime` on reads. The adapters (`http.rs`, `grpc.rs`) only
//! decode and encode; the drivers (skiff-components) only store.

pub use super::gojson;
pub mod errors;
pub mod grpc;
pub mod http;

pub use errors::{bad_request, not_configured, store_error};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::blocks::call::Envelope;
use crate::errors::ApiError;
use crate::telemetry::metrics::{ComponentOps, StoreKind};
use bytes::Bytes;
use skiff_components::Properties;
use skiff_components::state::query::{Answer, Query};
use skiff_components::state::{
    Concurrency, Consistency, DeleteRequest, Item, Op, SetRequest, StateError, StateStore, Ttl,
};

/// Dapr's separator between a key's prefix and the key.
pub const SEPARATOR: &str = "||";
/// Most operations one transaction may carry (daprd's default is
/// unlimited; a bound keeps one request from holding a store's writer).
pub const MAX_TRANSACTION_OPS: usize = 10_000;

/// One configured store.
pub struct Store {
    pub name: String,
    pub driver: Arc<dyn StateStore>,
    /// Put before every key (`app||`), empty for `keyPrefix: none`.
    pub prefix: String,
    /// `actorStateStore: true` (the actors block looks for it).
    pub actor: bool,
    /// Its outbound policy and `dapr_component_state_*`: one count per
    /// API call, as daprd counts (a bulk save is one `set`).
    pub call: Envelope<ComponentOps>,
}

/// The state stores this app may use.
#[derive(Default)]
pub struct StateBlock {
    stores: HashMap<String, Store>,
    app_id: String,
}

/// A save, decoded by an adapter.
pub struct SaveItem {
    pub key: String,
    pub value: Bytes,
    pub is_json: bool,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
    pub ttl: Ttl,
}

/// A delete, decoded by an adapter.
pub struct DeleteItem {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

/// One operation of a transaction, decoded.
pub enum TxOp {
    Upsert(SaveItem),
    Delete(DeleteItem),
}

/// What failed, for the error code daprd gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Save,
    Get,
    Delete,
    BulkGet,
    BulkDelete,
    Transaction,
    Query,
}

/// The block's families, `dapr_component_state_*`: `operation` label
/// values in [`Action::op`] order.
pub struct Ops;

impl StoreKind for Ops {
    const KIND: &'static str = "state";
    const OPS: &'static [&'static str] = &[
        "get",
        "set",
        "delete",
        "bulk_get",
        "bulk_delete",
        "transaction",
        "query",
    ];
}

impl Action {
    /// The index of Dapr's `operation` label in [`Ops::OPS`].
    pub fn op(self) -> usize {
        match self {
            Self::Get => 0,
            Self::Save => 1,
            Self::Delete => 2,
            Self::BulkGet => 3,
            Self::BulkDelete => 4,
            Self::Transaction => 5,
            Self::Query => 6,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Save => "ERR_STATE_SAVE",
            Self::Get => "ERR_STATE_GET",
            Self::Delete => "ERR_STATE_DELETE",
            Self::BulkGet => "ERR_STATE_BULK_GET",
            Self::BulkDelete => "ERR_STATE_BULK_DELETE",
            Self::Transaction => "ERR_STATE_TRANSACTION",
            Self::Query => "ERR_STATE_QUERY",
        }
    }
}

/// The key prefix of a store, from its `keyPrefix` metadata.
pub fn key_prefix(
    meta: &Properties,
    store: &str,
    app_id: &str,
    namespace: Option<&str>,
) -> Result<String, String> {
    let strategy = meta.get("keyPrefix").unwrap_or("appid");
    let prefix = match strategy.to_ascii_lowercase().as_str() {
        "appid" => app_id.to_owned(),
        "name" => store.to_owned(),
        "namespace" => match namespace {
            Some(ns) if !ns.is_empty() && !app_id.is_empty() => format!("{ns}.{app_id}"),
            _ => app_id.to_owned(),
        },
        "none" => String::new(),
        custom => custom.to_owned(),
    };
    if prefix.contains(SEPARATOR) {
        return Err(format!("keyPrefix {strategy:?} cannot contain '||'"));
    }
    Ok(if prefix.is_empty() {
        prefix
    } else {
        format!("{prefix}{SEPARATOR}")
    })
}

impl StateBlock {
    pub fn new(app_id: &str) -> Self {
        Self {
            stores: HashMap::new(),
            app_id: app_id.to_owned(),
        }
    }

    pub fn add(&mut self, store: Store) {
        self.stores.insert(store.name.clone(), store);
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// The store named, with daprd's answers for none at all (checked
    /// first) and for an unknown name.
    pub fn store(&self, name: &str) -> Result<&Store, ApiError> {
        if self.stores.is_empty() {
            return Err(not_configured(name, &self.app_id));
        }
        self.stores
            .get(name)
            .ok_or_else(|| errors::store_not_found(name, &self.app_id))
    }

    /// The store's key for the app's `key`.
    pub fn key(store: &Store, key: &str) -> Result<String, ApiError> {
        if key.contains(SEPARATOR) {
            return Err(errors::illegal_key(key));
        }
        let mut k = String::with_capacity(store.prefix.len() + key.len());
        k.push_str(&store.prefix);
        k.push_str(key);
        Ok(k)
    }

    pub async fn get(
        &self,
        store: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Item>, ApiError> {
        let s = self.store(store)?;
        let k = Self::key(s, key)?;
        let r = s
            .call
            .call(Action::Get.op(), || s.driver.get(&k, consistency))
            .await;
        r.map_err(|e| store_error(Action::Get, store, key, &e))
    }

    /// Bulk get: one answer per key, in order; a key's own failure is its
    /// `error`, not the call's.
    pub async fn bulk_get(
        &self,
        store: &str,
        keys: &[String],
    ) -> Result<Vec<Result<Option<Item>, String>>, ApiError> {
        let s = self.store(store)?;
        let full: Vec<String> = keys
            .iter()
            .map(|k| Self::key(s, k))
            .collect::<Result<_, _>>()?;
        let t0 = Instant::now();
        // The whole bulk get is one call to the policy; keys that failed
        // come back as their own errors, which is not a failed call
        // unless all failed alike (the store is down).
        let r = s
            .call
            .policed(|| async {
                let got = s.driver.bulk_get(&full).await;
                match got.first() {
                    Some(Err(e)) if got.iter().all(Result::is_err) => Err(e.clone()),
                    _ => Ok(got),
                }
            })
            .await;
        s.call.record(Action::BulkGet.op(), t0, r.is_ok());
        Ok(match r {
            Ok(got) => got
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
            Err(e) => full.iter().map(|_| Err(e.to_string())).collect(),
        })
    }

    /// Saves each item; the first failure is the answer (the others still
    /// ran, as daprd's bulk save does).
    pub async fn save(&self, store: &str, items: Vec<SaveItem>) -> Result<(), ApiError> {
        let s = self.store(store)?;
        let reqs: Vec<SetRequest> = items
            .into_iter()
            .map(|i| set_request(s, i))
            .collect::<Result<_, _>>()?;
        let mut first = None;
        let t0 = Instant::now();
        // Each item under the policy, the save counted once.
        let set = |r| s.call.policed_with(r, |r| s.driver.set(r));
        if reqs.len() == 1 {
            // One item: no join, no vector of futures.
            if let Some(one) = reqs.into_iter().next() {
                first = set(one).await.err();
            }
        } else {
            let calls = reqs.into_iter().map(set);
            for r in futures_util::future::join_all(calls).await {
                if first.is_none() {
                    first = r.err();
                }
            }
        }
        let r = first.map_or(Ok(()), Err);
        s.call.record(Action::Save.op(), t0, r.is_ok());
        r.map_err(|e| store_error(Action::Save, store, "", &e))
    }

    pub async fn delete(
        &self,
        store: &str,
        item: DeleteItem,
        action: Action,
    ) -> Result<(), ApiError> {
        let s = self.store(store)?;
        let key = item.key.clone();
        let req = delete_request(s, item)?;
        let r = s
            .call
            .call_with(action.op(), req, |r| s.driver.delete(r))
            .await;
        r.map_err(|e| store_error(action, store, &key, &e))
    }

    /// Runs the operations in order, as one; every store failure (an ETag
    /// mismatch too) is daprd's 500 `ERR_STATE_TRANSACTION`.
    pub async fn transaction(&self, store: &str, ops: Vec<TxOp>) -> Result<(), ApiError> {
        let s = self.store(store)?;
        let Some(tx) = s.driver.transactional() else {
            return Err(errors::no_transactions(store, &self.app_id));
        };
        if ops.len() > MAX_TRANSACTION_OPS {
            return Err(errors::too_many_operations(ops.len()));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                TxOp::Upsert(i) => set_request(s, i).map(Op::Set),
                TxOp::Delete(d) => delete_request(s, d).map(Op::Delete),
            })
            .collect::<Result<_, _>>()?;
        let r = (s.call)
            .call_with(Action::Transaction.op(), ops, |ops| tx.multi(ops))
            .await;
        r.map_err(|e| errors::transaction_failed(&e))
    }

    /// The query API; keys come back without the store's prefix.
    pub async fn query(&self, store: &str, query: &[u8]) -> Result<Answer, ApiError> {
        let s = self.store(store)?;
        let Some(q) = s.driver.querier() else {
            return Err(errors::no_query(store));
        };
        let parsed = Query::parse(query).map_err(|e| errors::bad_query(&e))?;
        let r = (s.call)
            .call_with(Action::Query.op(), parsed, |p| q.query(&s.prefix, p))
            .await;
        let mut a = r.map_err(|e| store_error(Action::Query, store, "", &e))?;
        for (k, _) in &mut a.results {
            k.drain(..s.prefix.len().min(k.len()));
        }
        Ok(a)
    }
}

fn set_request(s: &Store, i: SaveItem) -> Result<SetRequest, ApiError> {
    Ok(SetRequest {
        key: StateBlock::key(s, &i.key)?,
        value: i.value,
        etag: i.etag,
        concurrency: i.concurrency,
        consistency: i.consistency,
        ttl: i.ttl,
        is_json: i.is_json,
    })
}

fn delete_request(s: &Store, d: DeleteItem) -> Result<DeleteRequest, ApiError> {
    Ok(DeleteRequest {
        key: StateBlock::key(s, &d.key)?,
        etag: d.etag,
        concurrency: d.concurrency,
        consistency: d.consistency,
    })
}

/// `options.concurrency` as text (HTTP); empty is the default.
pub fn parse_concurrency(s: &str) -> Result<Concurrency, String> {
    match s {
        "" | "last-write" => Ok(Concurrency::LastWrite),
        "first-write" => Ok(Concurrency::FirstWrite),
        other => Err(format!(
            "invalid concurrency option {other:?}: use first-write or last-write"
        )),
    }
}

/// `options.consistency` as text (HTTP); empty is the default.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "" | "eventual" => Ok(Consistency::Eventual),
        "strong" => Ok(Consistency::Strong),
        other => Err(format!(
            "invalid consistency option {other:?}: use eventual or strong"
        )),
    }
}

/// `metadata.ttlInSeconds`: an integer; -1 clears, below -1 is an error.
pub fn parse_ttl(v: Option<&str>) -> Result<Ttl, String> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(Ttl::Unset);
    };
    match v.trim().parse::<i64>() {
        Ok(-1) => Ok(Ttl::Clear),
        Ok(n) if n >= 0 => Ok(if n == 0 {
            Ttl::Unset
        } else {
            Ttl::Seconds(n as u64)
        }),
        Ok(_) => Err(format!("ttlInSeconds {v} must be -1 or more")),
        Err(_) => Err(format!("ttlInSeconds {v:?} is not an integer")),
    }
}

/// A save's options and TTL, as failures daprd gives for them (a bad value
/// fails the save: 500 `ERR_STATE_SAVE`, as the store would).
pub fn save_options(
    store: &str,
    concurrency: &str,
    consistency: &str,
    ttl: Option<&str>,
) -> Result<(Concurrency, Consistency, Ttl), ApiError> {
    let fail = |why: String| store_error(Action::Save, store, "", &StateError::Invalid(why));
    Ok((
        parse_concurrency(concurrency).map_err(fail)?,
        parse_consistency(consistency).map_err(fail)?,
        parse_ttl(ttl).map_err(fail)?,
    ))
}

/// Read metadata daprd sends back: `ttlExpireTime` when the value expires.
pub fn read_metadata(item: &Item) -> Option<(&'static str, String)> {
    item.expires
        .map(|t| ("ttlExpireTime", skiff_components::util::rfc3339(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_follow_dapr() {
        let p = |v: &str| {
            let m: Properties = [("keyPrefix", v)].into_iter().collect();
            key_prefix(&m, "store", "app", Some("ns"))
        };
        assert_eq!(
            key_prefix(&Properties::new(), "s", "app", None).as_deref(),
            Ok("app||")
        );
        assert_eq!(p("AppID").as_deref(), Ok("app||"));
        assert_eq!(p("name").as_deref(), Ok("store||"));
        assert_eq!(p("namespace").as_deref(), Ok("ns.app||"));
        assert_eq!(p("none").as_deref(), Ok(""));
        assert_eq!(p("Custom").as_deref(), Ok("custom||"));
        assert!(p("a||b").is_err());
        assert_eq!(
            key_prefix(&Properties::new(), "s", "", None).as_deref(),
            Ok("")
        );
    }

    #[test]
    fn ttls_and_options() {
        assert_eq!(parse_ttl(None), Ok(Ttl::Unset));
        assert_eq!(parse_ttl(Some("-1")), Ok(Ttl::Clear));
        assert_eq!(parse_ttl(Some("5")), Ok(Ttl::Seconds(5)));
        assert!(parse_ttl(Some("-2")).is_err());
        assert!(parse_ttl(Some("soon")).is_err());
        assert!(parse_concurrency("first-write").is_ok());
        assert!(parse_concurrency("firstwrite").is_err());
        assert!(parse_consistency("strong").is_ok());
        let e = store_error(Action::Save, "s", "", &StateError::EtagMismatch("x".into()));
        assert_eq!((e.http.as_u16(), e.grpc), (409, tonic::Code::Aborted));
        let e = store_error(
            Action::Delete,
            "s",
            "k",
            &StateError::EtagInvalid("x".into()),
        );
        assert_eq!((e.http.as_u16(), e.code), (400, "ERR_STATE_DELETE"));
    }
}
