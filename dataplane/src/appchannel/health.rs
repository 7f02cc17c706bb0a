//! App health probing (`--enable-app-health-check`): an HTTP GET of the
//! health path, or `AppCallbackHealthCheck/HealthCheck` for gRPC apps, every
//! interval. After `threshold` failures in a row the app is unhealthy and the
//! sidecar stops delivering calls to it; one success makes it healthy again.
//!
//! Also the one way the sidecar learns that the app has come up at all
//! ([`wait_listening`]), before it asks the app what it subscribes to or
//! reads input bindings into it.

use std::sync::Arc;

use http::HeaderMap;
use skiff_proto::google::protobuf::Empty;
use skiff_proto::runtime::HealthCheckResponse;

use super::AppChannel;
use super::grpc::unary;
use crate::config::{AppHealthSettings, AppProtocol};

/// How often a port that takes no connection yet is tried again.
pub const LISTEN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits until the app's port takes connections; false when `stop`
/// changed first (the sidecar is shutting down).
pub async fn wait_listening(
    app: &AppChannel,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        if tokio::net::TcpStream::connect(app.addr()).await.is_ok() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(LISTEN_POLL) => {}
            _ = stop.changed() => return false,
        }
    }
}

/// Consecutive-failure counting with a threshold.
#[derive(Debug)]
pub struct HealthState {
    threshold: u32,
    failures: u32,
    healthy: bool,
}

impl HealthState {
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: 0,
            healthy: true,
        }
    }

    /// Records a probe; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        let before = self.healthy;
        if ok {
            self.failures = 0;
            self.healthy = true;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.threshold {
                self.healthy = false;
            }
        }
        (before != self.healthy).then_some(self.healthy)
    }
}

/// Probes until the task is dropped.
pub async fn probe_loop(app: Arc<AppChannel>, cfg: AppHealthSettings) {
    let mut state = HealthState::new(cfg.threshold);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(cfg.timeout, probe(&app, &cfg.path))
            .await
            .unwrap_or(false);
        if let Some(healthy) = state.record(ok) {
            tracing::info!(healthy, "app health changed");
            app.set_healthy(healthy);
        }
    }
}

async fn probe(app: &AppChannel, path: &str) -> bool {
    match app.protocol {
        AppProtocol::Grpc | AppProtocol::Grpcs => unary::<Empty, HealthCheckResponse>(
            app,
            skiff_proto::paths::APP_HEALTH_CHECK,
            &Empty {},
            HeaderMap::new(),
        )
        .await
        .is_ok(),
        _ => app
            .get_http1(path)
            .await
            .is_ok_and(|r| r.status().is_success()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_then_recovery() {
        let mut s = HealthState::new(3);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), Some(false));
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), Some(true));
        assert_eq!(s.record(false), None);
    }
}
