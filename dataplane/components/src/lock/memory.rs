//! `lock.in-memory`: locks in this sidecar's memory, for one process (the
//! embedded default of `skiff init`). Expired locks are dropped when next
//! looked at, and swept once the table grows, so abandoned locks cannot
//! pile up. One mutex, never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{LockError, LockStore, Unlocked};
use crate::{BoxFuture, Properties};

/// Sweep expired entries when the table passes this many.
const SWEEP_AT: usize = 1024;

struct Held {
    owner: String,
    until: Instant,
}

pub struct MemoryLock {
    locks: Mutex<HashMap<String, Held>>,
}

impl MemoryLock {
    pub fn open(_meta: &Properties) -> Arc<Self> {
        Arc::new(Self {
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn locks(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LockStore for MemoryLock {
    fn try_lock<'a>(
        &'a self,
        resource: &'a str,
        owner: &'a str,
        expiry: Duration,
    ) -> BoxFuture<'a, Result<bool, LockError>> {
        let now = Instant::now();
        let mut locks = self.locks();
        if locks.len() >= SWEEP_AT {
            locks.retain(|_, h| h.until > now);
        }
        let taken = match locks.get(resource) {
            Some(h) if h.until > now => false,
            _ => {
                locks.insert(
                    resource.to_owned(),
                    Held {
                        owner: owner.to_owned(),
                        until: now + expiry,
                    },
                );
                true
            }
        };
        Box::pin(std::future::ready(Ok(taken)))
    }

    fn unlock<'a>(
        &'a self,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Unlocked, LockError>> {
        let now = Instant::now();
        let mut locks = self.locks();
        let r = match locks.get(resource) {
            None => Unlocked::LockDoesNotExist,
            Some(h) if h.until <= now => {
                locks.remove(resource);
                Unlocked::LockDoesNotExist
            }
            Some(h) if h.owner != owner => Unlocked::LockBelongsToOthers,
            Some(_) => {
                locks.remove(resource);
                Unlocked::Success
            }
        };
        Box::pin(std::future::ready(Ok(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn owner_checks_and_expiry() {
        let l = MemoryLock::open(&Properties::new());
        let s = Duration::from_secs;
        assert!(l.try_lock("r", "a", s(3)).await.expect("lock"));
        assert!(
            !l.try_lock("r", "b", s(3)).await.expect("lock"),
            "held by a"
        );
        assert_eq!(
            l.unlock("r", "b").await.expect("unlock"),
            Unlocked::LockBelongsToOthers
        );
        assert_eq!(
            l.unlock("x", "a").await.expect("unlock"),
            Unlocked::LockDoesNotExist
        );
        tokio::time::advance(s(3)).await;
        // Expired: never outlives its expiry.
        assert_eq!(
            l.unlock("r", "a").await.expect("unlock"),
            Unlocked::LockDoesNotExist
        );
        assert!(l.try_lock("r", "b", s(3)).await.expect("lock"));
        assert_eq!(l.unlock("r", "b").await.expect("unlock"), Unlocked::Success);
        assert!(l.try_lock("r", "a", s(1)).await.expect("lock"));
    }
}
