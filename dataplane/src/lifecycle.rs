//! Whether the sidecar serves calls, and the request to stop: set by the
//! wiring (`runtime`), read by the health endpoints and by the shutdown API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::identity::WorkloadIdentity;

pub struct Lifecycle {
    /// Listening and registered with the resolver.
    started: AtomicBool,
    /// With mTLS: ready only once it holds a workload certificate.
    identity: Option<Arc<WorkloadIdentity>>,
    shutdown: Notify,
}

impl Lifecycle {
    pub fn new(identity: Option<Arc<WorkloadIdentity>>) -> Self {
        Self {
            started: AtomicBool::new(false),
            identity,
            shutdown: Notify::new(),
        }
    }

    /// Started, registered and, with mTLS, holding a workload certificate.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.identity.as_ref().is_none_or(|i| i.is_ready())
    }

    pub fn set_started(&self, on: bool) {
        self.started.store(on, Ordering::Release);
    }

    /// Why the sidecar is not ready, when its certificate says.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.identity.as_ref().and_then(|i| i.not_ready_reason())
    }

    /// Starts a graceful shutdown (`POST /v1.0/shutdown`).
    pub fn trigger_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Returns once a shutdown was asked for through the API.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await;
    }
}
