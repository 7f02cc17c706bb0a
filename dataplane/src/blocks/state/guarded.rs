//! A state store behind its component's outbound resiliency policy: the
//! same [`StateStore`] to the block, each driver call run through
//! [`call::run`] with the policy as the policy files say now (a store
//! without one makes the call as it is).

use std::sync::Arc;
use std::time::Duration;

use skiff_components::BoxFuture;
use skiff_components::state::query::{Answer, Query};
use skiff_components::state::{
    BulkItem, Consistency, DeleteRequest, Features, Item, Op, Querier, SetRequest, StateError,
    StateStore, Transactional,
};

use crate::blocks::call::{self, OutboundError, PolicyRef};
use crate::policy::resiliency::ComponentPolicy;

impl OutboundError for StateError {
    fn permanent(&self) -> bool {
        matches!(
            self,
            Self::EtagMismatch(_) | Self::EtagInvalid(_) | Self::Invalid(_)
        )
    }

    fn timed_out(after: Duration) -> Self {
        Self::Backend(format!(
            "timeout: no answer within {after:?} (resiliency policy)"
        ))
    }

    fn breaker_open(breaker: &str) -> Self {
        Self::Backend(format!("circuit breaker {breaker} is open"))
    }
}

pub struct Guarded {
    inner: Arc<dyn StateStore>,
    policy: PolicyRef,
}

impl Guarded {
    pub fn wrap(inner: Arc<dyn StateStore>, policy: PolicyRef) -> Arc<dyn StateStore> {
        Arc::new(Self { inner, policy })
    }
}

/// Runs `attempt` under `p` when there is a policy, else once.
async fn guarded<T, F, Fut>(
    p: Option<Arc<ComponentPolicy>>,
    mut attempt: F,
) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StateError>>,
{
    match p {
        Some(p) => call::run(&p, attempt).await,
        None => attempt().await,
    }
}

impl StateStore for Guarded {
    fn features(&self) -> Features {
        self.inner.features()
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        consistency: Consistency,
    ) -> BoxFuture<'a, Result<Option<Item>, StateError>> {
        Box::pin(guarded(self.policy.outbound(), move || {
            self.inner.get(key, consistency)
        }))
    }

    fn set(&self, req: SetRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(guarded(self.policy.outbound(), move || {
            self.inner.set(req.clone())
        }))
    }

    fn delete(&self, req: DeleteRequest) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(guarded(self.policy.outbound(), move || {
            self.inner.delete(req.clone())
        }))
    }

    /// The whole bulk get is one call to the policy; keys that failed come
    /// back as their own errors, which is not a failed call.
    fn bulk_get<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<BulkItem>> {
        Box::pin(async move {
            let r: Result<Vec<BulkItem>, StateError> = guarded(self.policy.outbound(), || async {
                let got = self.inner.bulk_get(keys).await;
                // All failed alike: the store is down; let the policy see it.
                match got.first() {
                    Some(Err(e)) if got.iter().all(Result::is_err) => Err(e.clone()),
                    _ => Ok(got),
                }
            })
            .await;
            r.unwrap_or_else(|e| keys.iter().map(|_| Err(e.clone())).collect())
        })
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        self.inner
            .transactional()
            .map(|_| self as &dyn Transactional)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        self.inner.querier().map(|_| self as &dyn Querier)
    }
}

impl Transactional for Guarded {
    fn multi(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let Some(tx) = self.inner.transactional() else {
                return Err(StateError::Invalid("no transactions".into()));
            };
            guarded(self.policy.outbound(), || tx.multi(ops.clone())).await
        })
    }
}

impl Querier for Guarded {
    fn query<'a>(&'a self, prefix: &'a str, q: Query) -> BoxFuture<'a, Result<Answer, StateError>> {
        Box::pin(async move {
            let Some(inner) = self.inner.querier() else {
                return Err(StateError::Invalid("no query API".into()));
            };
            guarded(self.policy.outbound(), || inner.query(prefix, q.clone())).await
        })
    }
}
