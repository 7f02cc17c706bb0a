//! Configuration stores (Dapr's configuration building block): read
//! items by key, and watch keys for changes. An item is a value with a
//! version and metadata; a deleted key is reported as an empty item, as
//! Dapr's drivers report it.

#[cfg(feature = "configuration-postgresql")]
pub mod postgres;
#[cfg(feature = "configuration-redis")]
pub mod redis;

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use crate::BoxFuture;

/// Changes buffered per subscription before the driver waits for the
/// subscriber (backpressure, never an unbounded queue).
pub const WATCH_BUFFER: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    pub value: String,
    pub version: String,
    pub metadata: BTreeMap<String, String>,
}

pub type Items = BTreeMap<String, Item>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The store failed or is unreachable.
    #[error("{0}")]
    Backend(String),
}

/// The request metadata (`metadata.K` query parameters, gRPC `metadata`).
pub type Metadata = BTreeMap<String, String>;

pub trait ConfigurationStore: Send + Sync {
    /// The items of `keys` that exist (all items when `keys` is empty).
    fn get<'a>(
        &'a self,
        keys: &'a [String],
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<Items, ConfigError>>;

    /// Changes to `keys` (to any key when empty), one batch per change,
    /// until the receiver is dropped.
    fn subscribe<'a>(
        &'a self,
        keys: &'a [String],
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<Items>, ConfigError>>;
}
