//! The secrets block: Dapr's secrets API over the configured secret
//! stores, with the Configuration's secret scopes applied (a denied secret
//! is 403 on a single get and silently left out of a bulk get). Values go
//! to the app and nowhere else: no log line, metric label or error message
//! carries one.

pub mod errors;
pub mod grpc;
pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use skiff_components::secrets::{Secret, SecretStore};

use crate::blocks::call::Envelope;
use crate::config::component::SecretScope;
use crate::errors::ApiError;
use crate::telemetry::metrics::{ComponentOps, StoreKind};

#[derive(Default)]
pub struct SecretsBlock {
    stores: HashMap<String, Store>,
    scopes: Vec<SecretScope>,
}

/// One loaded secret store: its driver and its envelope.
struct Store {
    driver: Arc<dyn SecretStore>,
    call: Envelope<ComponentOps>,
}

/// The block's families, `dapr_component_secret_*`: `operation` label
/// values by index ([`GET`], [`BULK_GET`]).
pub struct Ops;

impl StoreKind for Ops {
    const KIND: &'static str = "secret";
    const OPS: &'static [&'static str] = &["get", "bulk_get"];
}

const GET: usize = 0;
const BULK_GET: usize = 1;

impl SecretsBlock {
    pub fn new(scopes: Vec<SecretScope>) -> Self {
        Self {
            stores: HashMap::new(),
            scopes,
        }
    }

    pub fn add(
        &mut self,
        name: String,
        driver: Arc<dyn SecretStore>,
        call: Envelope<ComponentOps>,
    ) {
        self.stores.insert(name, Store { driver, call });
    }

    /// A loaded store, for `secretKeyRef`s of later components.
    pub fn driver(&self, name: &str) -> Option<&Arc<dyn SecretStore>> {
        self.stores.get(name).map(|s| &s.driver)
    }

    fn store(&self, name: &str) -> Result<&Store, ApiError> {
        if self.stores.is_empty() {
            return Err(errors::not_configured());
        }
        self.stores
            .get(name)
            .ok_or_else(|| errors::store_not_found(name))
    }

    fn allowed(&self, store: &str, secret: &str) -> bool {
        self.scopes
            .iter()
            .find(|s| s.store_name == store)
            .is_none_or(|s| s.allows(secret))
    }

    pub async fn get(&self, store: &str, name: &str) -> Result<Secret, ApiError> {
        let s = self.store(store)?;
        if !self.allowed(store, name) {
            return Err(errors::denied(store, name));
        }
        let r = s.call.call(GET, || s.driver.get(name)).await;
        r.map_err(|e| errors::get_failed(store, name, &e))
    }

    pub async fn bulk(&self, store: &str) -> Result<BTreeMap<String, Secret>, ApiError> {
        let s = self.store(store)?;
        let r = s.call.call(BULK_GET, || s.driver.bulk_get()).await;
        let mut all = r.map_err(|e| errors::get_failed(store, "", &e))?;
        all.retain(|name, _| self.allowed(store, name));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use arc_swap::ArcSwap;
    use skiff_components::BoxFuture;
    use skiff_components::secrets::SecretError;

    use super::*;
    use crate::blocks::call::PolicyRef;
    use crate::config::{Documents, parse_documents};
    use crate::policy::Policies;

    /// Fails its first `fail` gets, then answers.
    struct Flaky {
        fail: u32,
        calls: AtomicU32,
    }

    impl SecretStore for Flaky {
        fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::Relaxed);
                if name == "missing" {
                    return Err(SecretError::NotFound(name.into()));
                }
                if n < self.fail {
                    return Err(SecretError::Backend("vault is down".into()));
                }
                Ok(Secret::from([("k".to_owned(), "v".to_owned())]))
            })
        }

        fn bulk_get(&self) -> BoxFuture<'_, Result<BTreeMap<String, Secret>, SecretError>> {
            Box::pin(async { Ok(BTreeMap::new()) })
        }
    }

    const RESILIENCY: &str = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      twice:\n        policy: constant\n        duration: 10ms\n        maxRetries: 2\n  targets:\n    components:\n      vault:\n        outbound:\n          retry: twice\n";

    fn block(fail: u32, with_policy: bool) -> (SecretsBlock, Arc<Flaky>) {
        let resources = if with_policy {
            parse_documents(RESILIENCY, std::path::Path::new("r.yaml")).expect("yaml")
        } else {
            Vec::new()
        };
        let docs = Documents {
            configuration: None,
            resources,
        };
        let live = Arc::new(ArcSwap::from_pointee(
            Policies::from_documents(&docs, "app").expect("policies"),
        ));
        let store = Arc::new(Flaky {
            fail,
            calls: AtomicU32::new(0),
        });
        let mut b = SecretsBlock::new(Vec::new());
        b.add(
            "vault".into(),
            store.clone(),
            Envelope::new(
                PolicyRef::new(&live, "vault", "Secretstore"),
                Arc::default(),
            ),
        );
        (b, store)
    }

    #[tokio::test(start_paused = true)]
    async fn secret_reads_run_under_the_stores_policy() {
        let (b, store) = block(2, true);
        let got = b.get("vault", "db").await.expect("retried into success");
        assert_eq!(got["k"], "v");
        assert_eq!(store.calls.load(Ordering::Relaxed), 3);
        // A missing secret is an answer: not retried.
        let (b, store) = block(0, true);
        assert!(b.get("vault", "missing").await.is_err());
        assert_eq!(store.calls.load(Ordering::Relaxed), 1);
        // Without a policy, one call.
        let (b, store) = block(1, false);
        let e = b.get("vault", "db").await.expect_err("no retry");
        assert_eq!(e.code, "ERR_SECRET_GET");
        assert_eq!(store.calls.load(Ordering::Relaxed), 1);
    }
}
