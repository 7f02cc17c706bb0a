//! Bindings (Dapr's bindings building block): output bindings the app
//! calls (`invoke` with an operation), and input bindings that deliver
//! events to the app. An input binding hands each event to the sidecar
//! and waits for the app's answer before it reads on, so a slow app slows
//! the binding instead of piling events up.

#[cfg(feature = "bindings-cron")]
pub mod cron;
#[cfg(feature = "bindings-http")]
pub mod http;
#[cfg(feature = "bindings-localstorage")]
pub mod localstorage;
#[cfg(feature = "bindings-mqtt3")]
pub mod mqtt;
#[cfg(feature = "bindings-postgresql")]
pub mod postgres;
#[cfg(feature = "bindings-redis")]
pub mod redis;

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::BoxFuture;

pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BindingError {
    /// The request is not one this binding can serve (unknown operation,
    /// missing metadata, a path outside the root).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed or is unreachable.
    #[error("{0}")]
    Backend(String),
}

/// One call of an output binding.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub operation: String,
    pub data: Bytes,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default)]
pub struct Response {
    /// `None`: nothing to return (the API answers 204).
    pub data: Option<Bytes>,
    pub metadata: Metadata,
}

pub trait OutputBinding: Send + Sync {
    /// The operations it serves (`create`, `get`, ...).
    fn operations(&self) -> &'static [&'static str];

    fn invoke(&self, req: Request) -> BoxFuture<'_, Result<Response, BindingError>>;
}

/// One event of an input binding, and where the app's answer goes.
pub struct Event {
    pub data: Bytes,
    pub metadata: Metadata,
    /// `Ok` when the app took it; the binding waits for this.
    pub done: oneshot::Sender<Result<(), String>>,
}

pub trait InputBinding: Send + Sync {
    /// Reads events into `events` until the receiver is dropped (the
    /// sidecar stops) — then it returns.
    fn read(&self, events: mpsc::Sender<Event>) -> BoxFuture<'_, Result<(), BindingError>>;
}

/// Sends one event and waits for the app's answer (or for the sidecar to
/// go away: `None`).
pub async fn deliver(
    events: &mpsc::Sender<Event>,
    data: Bytes,
    metadata: Metadata,
) -> Option<Result<(), String>> {
    let (done, answer) = oneshot::channel();
    events
        .send(Event {
            data,
            metadata,
            done,
        })
        .await
        .ok()?;
    answer.await.ok()
}
