//! The secret store contract ([`SecretStore`]) and the local drivers:
//! `secretstores.local.file` and `secretstores.local.env`. Secrets are
//! values the sidecar hands to the app or to another component's metadata;
//! errors name the store and the secret, never its value.

#[cfg(feature = "secretstores-local")]
pub mod local;

use std::collections::BTreeMap;

use crate::BoxFuture;

/// One secret: its keys and values (a single-valued store answers
/// `{name: value}`).
pub type Secret = BTreeMap<String, String>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Backend(String),
}

pub trait SecretStore: Send + Sync + 'static {
    /// `MULTIPLE_KEY_VALUES_PER_SECRET` when a secret holds several keys.
    fn features(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>>;

    /// Every secret, by name.
    fn bulk_get(&self) -> BoxFuture<'_, Result<BTreeMap<String, Secret>, SecretError>>;
}
