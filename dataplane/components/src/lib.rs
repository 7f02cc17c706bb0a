//! Skiff's component drivers: one object-safe trait per building block
//! ([`state::StateStore`], [`secrets::SecretStore`], [`pubsub::PubSub`]),
//! the drivers behind
//! them, and the [`registry`] from Dapr's type names (`state.redis`,
//! `secretstores.local.file`, ...) to constructors.
//!
//! A driver comes ready from its constructor (`open(&Properties, &Deps)`):
//! connected, schema made, metadata checked; there is no second init
//! phase. Each driver is behind a Cargo feature of its own; a type that was
//! not built in is still known to the registry, which names the feature.
//!
//! Traits return boxed futures, as `skiff_resolvers::Resolver` does: one
//! allocation per component call is noise next to the round trip to a
//! store, and the invocation hot path never pays it. This crate knows
//! nothing of HTTP, gRPC or the sidecar's handler contexts: the building
//! blocks in `skiff-dataplane` hold Dapr's API semantics (key prefixes,
//! value encoding, error codes) and call these traits with plain values.

pub mod bindings;
pub mod configuration;
#[cfg(feature = "https-client")]
pub mod https;
pub mod lock;
pub mod metadata;
#[cfg(feature = "state-postgresql")]
mod pgconn;
pub mod pubsub;
#[cfg(any(
    feature = "state-redis",
    feature = "pubsub-redis",
    feature = "lock-redis"
))]
pub mod redisconn;
pub mod registry;
pub mod secrets;
#[cfg(any(feature = "state-sqlite", feature = "pubsub-sqlite"))]
mod sqliteopen;
pub mod state;
pub mod util;

use std::pin::Pin;

pub use metadata::{MetadataError, Properties};

/// The future a component call returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
