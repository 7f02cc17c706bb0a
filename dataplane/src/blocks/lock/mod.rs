//! The lock block (Dapr's alpha distributed lock): TryLock and Unlock over
//! the configured lock stores, with daprd's checks in daprd's order, its
//! error codes, and its key layout — the resource id becomes
//! `lock||<app-id>||<id>` (`keyPrefix: appid`, the default), `lock||<store>||<id>`
//! (`name`), `lock||<id>` (`none`) or `lock||<prefix>||<id>`, and may not
//! contain `||`. Driver calls run under the store's
//! `targets.components.<store>.outbound` policy and are counted in
//! `dapr_component_lock_*`.

pub mod errors;
pub mod grpc;
pub mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_components::Properties;
use skiff_components::lock::{LockStore, Unlocked};

use crate::blocks::call::Envelope;
use crate::errors::ApiError;
use crate::telemetry::metrics::{ComponentOps, StoreKind};

/// The block's families, `dapr_component_lock_*`: `operation` label
/// values by index ([`TRY_LOCK`], [`UNLOCK`]).
pub struct Ops;

impl StoreKind for Ops {
    const KIND: &'static str = "lock";
    const OPS: &'static [&'static str] = &["try_lock", "unlock"];
}

const TRY_LOCK: usize = 0;
const UNLOCK: usize = 1;

const SEPARATOR: &str = "||";

/// How a store's keys are prefixed (its `keyPrefix` metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prefix {
    AppId,
    StoreName,
    None,
    Custom(String),
}

impl Prefix {
    /// From the component's metadata (`keyPrefix`, any case).
    pub fn from_meta(meta: &Properties) -> Result<Self, String> {
        let v = meta
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("keyPrefix"))
            .map(|(_, v)| v.to_ascii_lowercase());
        Ok(match v.as_deref().map(str::trim) {
            None | Some("") | Some("appid") => Self::AppId,
            Some("name") => Self::StoreName,
            Some("none") => Self::None,
            Some(p) if p.contains(SEPARATOR) => {
                return Err(format!("keyPrefix {p:?} may not contain {SEPARATOR:?}"));
            }
            Some(p) => Self::Custom(p.to_owned()),
        })
    }
}

pub struct Store {
    pub name: String,
    pub driver: Arc<dyn LockStore>,
    pub prefix: Prefix,
    /// Its policy and `dapr_component_lock_*` series.
    pub call: Envelope<ComponentOps>,
}

#[derive(Default)]
pub struct LockBlock {
    app_id: String,
    stores: HashMap<String, Store>,
}

impl LockBlock {
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_owned(),
            stores: HashMap::new(),
        }
    }

    pub fn add(&mut self, s: Store) {
        self.stores.insert(s.name.clone(), s);
    }

    /// daprd's checks, in its order, for both calls.
    fn store(&self, store: &str, resource: &str, owner: &str) -> Result<&Store, ApiError> {
        if self.stores.is_empty() {
            return Err(super::Block::Lock.not_configured(store, &self.app_id));
        }
        if resource.is_empty() {
            return Err(errors::malformed(format!(
                "ResourceId is empty in lock store {store}"
            )));
        }
        if owner.is_empty() {
            return Err(errors::malformed(format!(
                "LockOwner is empty in lock store {store}"
            )));
        }
        self.stores
            .get(store)
            .ok_or_else(|| errors::store_not_found(store))
    }

    /// The key the driver sees (Dapr's `GetModifiedLockKey`).
    fn key(&self, s: &Store, resource: &str) -> Result<String, String> {
        if resource.contains(SEPARATOR) {
            return Err(format!(
                "input key/keyPrefix '{resource}' can't contain '{SEPARATOR}'"
            ));
        }
        Ok(match &s.prefix {
            Prefix::None => format!("lock{SEPARATOR}{resource}"),
            Prefix::AppId if self.app_id.is_empty() => format!("lock{SEPARATOR}{resource}"),
            Prefix::AppId => format!("lock{SEPARATOR}{}{SEPARATOR}{resource}", self.app_id),
            Prefix::StoreName => format!("lock{SEPARATOR}{}{SEPARATOR}{resource}", s.name),
            Prefix::Custom(p) => format!("lock{SEPARATOR}{p}{SEPARATOR}{resource}"),
        })
    }

    pub async fn try_lock(
        &self,
        store: &str,
        resource: &str,
        owner: &str,
        expiry_secs: i64,
    ) -> Result<bool, ApiError> {
        if expiry_secs <= 0 {
            return Err(errors::malformed(format!(
                "ExpiryInSeconds is not positive in lock store {store}"
            )));
        }
        let s = self.store(store, resource, owner)?;
        let failed = errors::try_lock_failed;
        let key = self.key(s, resource).map_err(failed)?;
        let expiry = Duration::from_secs(expiry_secs.unsigned_abs());
        let r = (s.call)
            .call(TRY_LOCK, || s.driver.try_lock(&key, owner, expiry))
            .await;
        r.map_err(|e| failed(e.to_string()))
    }

    /// Dapr's status number: 0 success, 1 no such lock, 2 another owner's.
    pub async fn unlock(&self, store: &str, resource: &str, owner: &str) -> Result<i32, ApiError> {
        let s = self.store(store, resource, owner)?;
        let failed = errors::unlock_failed;
        let key = self.key(s, resource).map_err(failed)?;
        let r = s.call.call(UNLOCK, || s.driver.unlock(&key, owner)).await;
        r.map(|u: Unlocked| u as i32)
            .map_err(|e| failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(prefix: Prefix) -> LockBlock {
        let mut b = LockBlock::new("app1");
        b.add(Store {
            name: "ls".into(),
            driver: skiff_components::lock::memory::MemoryLock::open(&Properties::new()),
            prefix,
            call: Envelope::new(
                crate::blocks::call::PolicyRef::none("ls", "Lock"),
                Arc::default(),
            ),
        });
        b
    }

    #[test]
    fn keys_follow_dapr_strategies() {
        let k = |p| {
            let b = block(p);
            let s = &b.stores["ls"];
            b.key(s, "r1")
        };
        assert_eq!(k(Prefix::AppId).as_deref(), Ok("lock||app1||r1"));
        assert_eq!(k(Prefix::StoreName).as_deref(), Ok("lock||ls||r1"));
        assert_eq!(k(Prefix::None).as_deref(), Ok("lock||r1"));
        assert_eq!(k(Prefix::Custom("p".into())).as_deref(), Ok("lock||p||r1"));
        let b = block(Prefix::AppId);
        assert!(b.key(&b.stores["ls"], "a||b").is_err());
    }

    #[tokio::test]
    async fn checks_come_in_daprs_order() {
        let code = |e: ApiError| e.code;
        let empty = LockBlock::new("a");
        assert_eq!(
            code(empty.try_lock("ls", "r", "o", 0).await.expect_err("expiry")),
            "ERR_MALFORMED_REQUEST"
        );
        assert_eq!(
            code(empty.try_lock("ls", "r", "o", 5).await.expect_err("none")),
            "ERR_LOCK_STORE_NOT_CONFIGURED"
        );
        let b = block(Prefix::AppId);
        assert_eq!(
            code(b.try_lock("ls", "", "o", 5).await.expect_err("id")),
            "ERR_MALFORMED_REQUEST"
        );
        assert_eq!(
            code(b.unlock("ls", "r", "").await.expect_err("owner")),
            "ERR_MALFORMED_REQUEST"
        );
        assert_eq!(
            code(b.try_lock("nope", "r", "o", 5).await.expect_err("store")),
            "ERR_LOCK_STORE_NOT_FOUND"
        );
        assert_eq!(
            code(b.try_lock("ls", "a||b", "o", 5).await.expect_err("key")),
            "ERR_TRY_LOCK"
        );
        assert!(b.try_lock("ls", "r", "o", 5).await.expect("lock"));
        assert!(!b.try_lock("ls", "r", "p", 5).await.expect("lock"));
        assert_eq!(b.unlock("ls", "r", "p").await.expect("unlock"), 2);
        assert_eq!(b.unlock("ls", "r", "o").await.expect("unlock"), 0);
        assert_eq!(b.unlock("ls", "r", "o").await.expect("unlock"), 1);
    }
}
