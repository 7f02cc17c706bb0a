//! Distributed lock components (Dapr's lock building block, alpha): a lock
//! on a resource, held by one owner until it unlocks or the lock expires.
//! A lock never outlives its expiry, and only its owner may unlock it.
//! The block hands drivers the resource id already prefixed
//! (`lock||<app>||<id>`, Dapr's `keyPrefix` strategies).

#[cfg(feature = "lock-memory")]
pub mod memory;
#[cfg(feature = "lock-redis")]
pub mod redis;

use std::time::Duration;

use crate::BoxFuture;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// The store failed or is unreachable.
    #[error("{0}")]
    Backend(String),
}

/// What an unlock found (Dapr's `UnlockResponse.Status` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    Success = 0,
    LockDoesNotExist = 1,
    LockBelongsToOthers = 2,
}

pub trait LockStore: Send + Sync {
    /// Takes the lock for `owner` unless someone holds it; whether it did.
    fn try_lock<'a>(
        &'a self,
        resource: &'a str,
        owner: &'a str,
        expiry: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>>;

    /// Releases the lock if `owner` holds it.
    fn unlock<'a>(
        &'a self,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Unlocked, LockError>>;
}
