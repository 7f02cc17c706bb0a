//! The secrets block: Dapr's secrets API over the configured secret
//! stores, with the Configuration's secret scopes applied (a denied secret
//! is 403 on a single get and silently left out of a bulk get). Values go
//! to the app and nowhere else: no log line, metric label or error message
//! carries one.

pub mod grpc;
pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ::http::StatusCode;
use skiff_components::secrets::{Secret, SecretError, SecretStore};
use tonic::Code;

use crate::config::component::SecretScope;
use crate::errors::ApiError;

#[derive(Default)]
pub struct SecretsBlock {
    stores: HashMap<String, Arc<dyn SecretStore>>,
    scopes: Vec<SecretScope>,
}

impl SecretsBlock {
    pub fn new(scopes: Vec<SecretScope>) -> Self {
        Self {
            stores: HashMap::new(),
            scopes,
        }
    }

    pub fn add(&mut self, name: String, store: Arc<dyn SecretStore>) {
        self.stores.insert(name, store);
    }

    /// A loaded store, for `secretKeyRef`s of later components.
    pub fn driver(&self, name: &str) -> Option<&Arc<dyn SecretStore>> {
        self.stores.get(name)
    }

    fn store(&self, name: &str) -> Result<&Arc<dyn SecretStore>, ApiError> {
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
        let s = self.store(store)?;
        if !self.allowed(store, name) {
            return Err(ApiError::new(
                "ERR_PERMISSION_DENIED",
                StatusCode::FORBIDDEN,
                Code::PermissionDenied,
                format!("access denied by policy to get \"{name}\" from \"{store}\""),
            ));
        }
        s.get(name).await.map_err(|e| get_error(store, name, &e))
    }

    pub async fn bulk(&self, store: &str) -> Result<BTreeMap<String, Secret>, ApiError> {
        let s = self.store(store)?;
        let mut all = s.bulk_get().await.map_err(|e| get_error(store, "", &e))?;
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
