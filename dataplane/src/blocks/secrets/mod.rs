//! The secrets block: Dapr's secrets API over the configured secret
//! stores, with the Configuration's secret scopes applied (a denied secret
//! is 403 on a single get and silently left out of a bulk get). Values go
//! to the app and nowhere else: no log line, metric label or error message
//! carries one.

pub mod grpc;
pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ::http::StatusCode;
use skiff_components::secrets::{Secret, SecretError, SecretStore};
use tonic::Code;

use crate::config::component::SecretScope;
use crate::errors::ApiError;
use crate::telemetry::metrics::{self, ComponentOps};

#[derive(Default)]
pub struct SecretsBlock {
    stores: HashMap<String, (Arc<dyn SecretStore>, Arc<ComponentOps>)>,
    scopes: Vec<SecretScope>,
}

/// `operation` label indexes ([`metrics::SECRET_OPS`]).
const GET: usize = 0;
const BULK_GET: usize = 1;

fn record<T, E>(ops: &ComponentOps, op: usize, started: Instant, r: &Result<T, E>) {
    if metrics::get().is_some() {
        ops.record(op, r.is_ok(), started.elapsed());
    }
}

impl SecretsBlock {
    pub fn new(scopes: Vec<SecretScope>) -> Self {
        Self {
            stores: HashMap::new(),
            scopes,
        }
    }

    pub fn add(&mut self, name: String, store: Arc<dyn SecretStore>, ops: Arc<ComponentOps>) {
        self.stores.insert(name, (store, ops));
    }

    /// A loaded store, for `secretKeyRef`s of later components.
    pub fn driver(&self, name: &str) -> Option<&Arc<dyn SecretStore>> {
        self.stores.get(name).map(|(s, _)| s)
    }

    fn store(&self, name: &str) -> Result<&(Arc<dyn SecretStore>, Arc<ComponentOps>), ApiError> {
        if self.stores.is_empty() {
            return Err(ApiError::new(
                "ERR_SECRET_STORES_NOT_CONFIGURED",
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::FailedPrecondition,
                "secret store is not configured".into(),
            ));
        }
        self.stores.get(name).ok_or_else(|| {
            // daprd answers 401 here (its docs say 400).
            ApiError::new(
                "ERR_SECRET_STORE_NOT_FOUND",
                StatusCode::UNAUTHORIZED,
                Code::InvalidArgument,
                format!("failed finding secret store with key {name}"),
            )
        })
    }

    fn allowed(&self, store: &str, secret: &str) -> bool {
        self.scopes
            .iter()
            .find(|s| s.store_name == store)
            .is_none_or(|s| s.allows(secret))
    }

    pub async fn get(&self, store: &str, name: &str) -> Result<Secret, ApiError> {
        let (s, ops) = self.store(store)?;
        if !self.allowed(store, name) {
            return Err(ApiError::new(
                "ERR_PERMISSION_DENIED",
                StatusCode::FORBIDDEN,
                Code::PermissionDenied,
                format!("access denied by policy to get \"{name}\" from \"{store}\""),
            ));
        }
        let t0 = Instant::now();
        let r = s.get(name).await;
        record(ops, GET, t0, &r);
        r.map_err(|e| get_error(store, name, &e))
    }

    pub async fn bulk(&self, store: &str) -> Result<BTreeMap<String, Secret>, ApiError> {
        let (s, ops) = self.store(store)?;
        let t0 = Instant::now();
        let r = s.bulk_get().await;
        record(ops, BULK_GET, t0, &r);
        let mut all = r.map_err(|e| get_error(store, "", &e))?;
        all.retain(|name, _| self.allowed(store, name));
        Ok(all)
    }
}

fn get_error(store: &str, name: &str, e: &SecretError) -> ApiError {
    let message = if name.is_empty() {
        format!("failed getting secrets from secret store {store}: {e}")
    } else {
        format!("failed getting secret with key {name} from secret store {store}: {e}")
    };
    ApiError::new(
        "ERR_SECRET_GET",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        message,
    )
}
