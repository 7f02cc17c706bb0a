//! The sidecar's workload identity: getting a certificate, keeping it fresh,
//! and publishing the rustls configs built from it.
//!
//! A certificate comes from sentry (`--sentry-address`) or, self-hosted with
//! no sentry, from an issuer kept under `SKIFF_HOME` that the sidecar signs
//! with in-process. Each new certificate is checked against our own SPIFFE
//! ID and the trust anchors before it is published. Publishing swaps an
//! `ArcSwap`: new connections pick up the new certificate, established ones
//! keep the one they were made with, so rotation drops no call. Until the
//! first certificate is published the identity is not ready: the internal
//! listener refuses connections and outbound calls fail closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use skiff_components::util::{duration_text, rfc3339};
use skiff_proto::sentry::sign_certificate_request::TokenValidator;
use skiff_sentry::ca::{Authority, KeyAlg};
use skiff_sentry::client::{self, Ask};
use skiff_sentry::tls::{self, Anchors, Workload};
use skiff_sentry::{SpiffeId, csr};

/// Renew when this share of a certificate's lifetime (from receipt) is gone.
pub const RENEW_AT: f64 = 0.7;
/// Retry backoff after a failed attempt: doubles from the first to the cap.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
pub const RETRY_CAP: Duration = Duration::from_secs(10);
/// Directory under SKIFF_HOME with the embedded issuer.
pub const EMBEDDED_DIR: &str = "sentry";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Sentry(#[from] client::ClientError),
    #[error("signing our own certificate: {0}")]
    Embedded(String),
    #[error("the new certificate is unusable: {0}")]
    Unusable(#[from] tls::TlsError),
    #[error(
        "the new certificate is not valid until {not_before:?}: this machine's clock is behind the CA's"
    )]
    ClockSkew { not_before: SystemTime },
    #[error("reading the sentry token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IdentityError {
    /// A short, fixed reason for the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Sentry(_) => "sentry_request_failed",
            Self::Embedded(_) => "signing_failed",
            Self::Unusable(_) => "invalid_certificate",
            Self::ClockSkew { .. } => "clock_skew",
            Self::Token { .. } => "token_unreadable",
        }
    }
}

/// Where certificates come from.
pub enum Source {
    Sentry {
        address: String,
        token_file: Option<PathBuf>,
        validator: TokenValidator,
    },
    /// Self-hosted default: sign in-process with the issuer under SKIFF_HOME.
    Embedded {
        authority: Box<Authority>,
        ttl: Duration,
    },
}

/// TLS configs for one certificate.
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub not_after: SystemTime,
}

/// This sidecar's identity and its current certificate, if any yet.
pub struct WorkloadIdentity {
    id: SpiffeId,
    anchors: Anchors,
    current: ArcSwapOption<Tls>,
    /// Why the last attempt failed, for the readiness endpoint (cold path).
    last_error: std::sync::Mutex<Option<String>>,
}

impl WorkloadIdentity {
    pub fn new(id: SpiffeId, anchors: Anchors) -> Arc<Self> {
        Arc::new(Self {
            id,
            anchors,
            current: ArcSwapOption::empty(),
            last_error: std::sync::Mutex::new(None),
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The configs to use for a new connection; `None` until the first
    /// certificate, and again once the current one has expired.
    pub fn current(&self) -> Option<Arc<Tls>> {
        self.current
            .load_full()
            .filter(|t| t.not_after > SystemTime::now())
    }

    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Why there is no usable certificate, when there is none.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.is_ready() {
            return None;
        }
        let last = self.last_error.lock().ok().and_then(|e| e.clone());
        Some(match last {
            Some(e) => format!("no workload certificate for {}: {e}", self.id),
            None => format!("no workload certificate for {} yet", self.id),
        })
    }

    /// The current certificate's expiry (metadata).
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|t| t.not_after)
    }

    /// Its part of `/v1.0/metadata`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "spiffeId": self.id().to_string(),
            "certificateExpiry": self
                .not_after()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        })
    }

    /// Gets one certificate, checks it and publishes it.
    pub async fn refresh(&self, source: &Source) -> Result<SystemTime, IdentityError> {
        let w = match source {
            Source::Sentry {
                address,
                token_file,
                validator,
            } => {
                let token = match token_file {
                    Some(p) => {
                        std::fs::read_to_string(p).map_err(|source| IdentityError::Token {
                            path: p.clone(),
                            source,
                        })?
                    }
                    None => String::new(),
                };
                let ask = Ask {
                    id: &self.id,
                    token: token.trim(),
                    validator: *validator,
                    key_alg: KeyAlg::EcdsaP256,
                };
                client::obtain(address, &self.anchors, &ask).await?
            }
            Source::Embedded { authority, ttl } => self.sign_locally(authority, *ttl)?,
        };
        if w.not_before > SystemTime::now() {
            return Err(IdentityError::ClockSkew {
                not_before: w.not_before,
            });
        }
        w.verify(&self.anchors, &self.id)?;
        let tls = Tls {
            server: tls::server_config(&w, &self.anchors)?,
            client: tls::client_config(&w, &self.anchors)?,
            not_after: w.not_after,
        };
        self.current.store(Some(Arc::new(tls)));
        Ok(w.not_after)
    }

    fn sign_locally(
        &self,
        authority: &Authority,
        ttl: Duration,
    ) -> Result<Workload, IdentityError> {
        let e = |e: &dyn std::fmt::Display| IdentityError::Embedded(e.to_string());
        let (key, req) = csr::generate(&self.id, KeyAlg::EcdsaP256).map_err(|x| e(&x))?;
        let checked = csr::check(req.as_bytes(), &self.id).map_err(|x| e(&x))?;
        let issued = authority.sign(&checked, &self.id, ttl).map_err(|x| e(&x))?;
        Ok(Workload::new(issued.chain, key)?)
    }

    /// Keeps the certificate fresh until the sidecar stops: renews at
    /// [`RENEW_AT`] of each lifetime (with jitter so a fleet does not renew
    /// in step), and retries failures with capped, jittered backoff.
    pub async fn rotate(self: Arc<Self>, source: Source) {
        let mut retry = RETRY_FIRST;
        let mut first = true;
        loop {
            let wait = match self.refresh(&source).await {
                Ok(not_after) => {
                    let m = crate::telemetry::metrics::get();
                    if first {
                        tracing::info!(id = %self.id, expires = %rfc3339(not_after), "workload certificate ready");
                        if let Some(m) = m {
                            m.mtls_init();
                        }
                    } else {
                        tracing::debug!(id = %self.id, expires = %rfc3339(not_after), "workload certificate rotated");
                        if let Some(m) = m {
                            m.cert_rotated();
                        }
                    }
                    first = false;
                    retry = RETRY_FIRST;
                    if let Ok(mut l) = self.last_error.lock() {
                        *l = None;
                    }
                    let life = not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    life.mul_f64(RENEW_AT * (0.9 + 0.1 * fastrand::f64()))
                }
                Err(e) => {
                    if let Ok(mut l) = self.last_error.lock() {
                        *l = Some(e.to_string());
                    }
                    if let Some(m) = crate::telemetry::metrics::get() {
                        m.cert_rotate_failed(e.reason());
                    }
                    match self.current.load().as_ref().map(|t| t.not_after) {
                        Some(exp) if exp <= SystemTime::now() => {
                            tracing::error!(id = %self.id, error = %e, expired = %rfc3339(exp), "cannot renew, and the workload certificate has expired: calls between sidecars fail until renewal succeeds");
                        }
                        _ => {
                            tracing::warn!(id = %self.id, error = %e, retry_in = %duration_text(retry), "getting a workload certificate failed; retrying")
                        }
                    }
                    let w = retry.mul_f64(0.8 + 0.4 * fastrand::f64());
                    retry = (retry * 2).min(RETRY_CAP);
                    w
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }
}
