//! The app channel: how the callee sidecar delivers calls to its own app.
//!
//! - `http` apps: HTTP/1.1 over a keep-alive connection pool
//!   ([`crate::http1::client`]).
//! - `h2c` apps: HTTP/2 without TLS, on the same [`Pool`] the sidecars share.
//! - `grpc` apps: proxied gRPC calls pass through frame for frame on that
//!   pool; HTTP-style invocations become `AppCallback/OnInvoke` calls (see
//!   [`grpc`]), the one place the sidecar must buffer a body.
//!
//! It also enforces `--app-max-concurrency`, adds `APP_API_TOKEN`, runs
//! the app health probe, and passes every request to an HTTP (or h2c) app
//! through the Configuration's `appHttpPipeline` (health probes excepted,
//! as in daprd; gRPC apps have none).

pub mod grpc;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderValue, Request, Response, Uri, Version};
use skiff_components::BoxFuture;
use tokio::sync::Semaphore;

use crate::config::{AppProtocol, Settings};
use crate::headers::DAPR_API_TOKEN;
use crate::http1::{self, client::Http1Client};
use crate::middleware::{Cx, Pipeline};
use crate::pool::{Pool, PoolConfig, PoolError};
use crate::skiff_body::SkiffBody;
use crate::transport::Connector;

/// Idle keep-alive connections to an HTTP/1.1 app are closed after this.
pub const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connecting to the app (same host) should be immediate.
pub const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("app at {addr} is not reachable: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: http1::Http1Error,
    },
    #[error("app at {addr}: {source}")]
    Http1 {
        addr: SocketAddr,
        #[source]
        source: http1::Http1Error,
    },
    #[error("app at {1}: {0}")]
    H2(#[source] PoolError, SocketAddr),
    #[error("app is not healthy (app health check failing)")]
    Unhealthy,
    #[error("the app's concurrency limit is closed")]
    Closed,
}

impl AppError {
    fn h2(e: PoolError, addr: SocketAddr) -> Self {
        Self::H2(e, addr)
    }
}

/// How the sidecar reaches its app, as `/v1.0/metadata` reports it
/// (`appConnectionProperties`), whether or not it has one.
#[derive(Debug)]
pub struct Properties {
    port: u16,
    protocol: AppProtocol,
    channel_address: std::net::IpAddr,
    max_concurrency: usize,
    health: Option<crate::config::AppHealthSettings>,
}

impl Properties {
    pub fn new(s: &Settings) -> Self {
        Self {
            port: s.app_port.unwrap_or(0),
            protocol: s.app_protocol,
            channel_address: s.app_channel_address,
            max_concurrency: s.app_max_concurrency,
            health: s.app_health.clone(),
        }
    }

    pub fn describe(&self, app: Option<&AppChannel>) -> serde_json::Value {
        let mut conn = serde_json::json!({
            "port": self.port,
            "protocol": self.protocol.as_str(),
            "channelAddress": self.channel_address.to_string(),
            // daprd reports -1 for unlimited.
            "maxConcurrency": if self.max_concurrency == 0 { -1 } else { self.max_concurrency as i64 },
        });
        if let (Some(h), Some(app)) = (&self.health, app) {
            conn["health"] = serde_json::json!({
                "healthCheckPath": h.path,
                "healthProbeInterval": format!("{}s", h.interval.as_secs()),
                "healthProbeTimeout": format!("{}ms", h.timeout.as_millis()),
                "healthThreshold": h.threshold,
                "healthy": app.is_healthy(),
            });
        }
        conn
    }
}

/// Connections from this sidecar to its app.
pub struct AppChannel {
    pub protocol: AppProtocol,
    addr: SocketAddr,
    http1: Http1Client,
    h2: Pool,
    limiter: Option<Arc<Semaphore>>,
    app_token: Option<HeaderValue>,
    healthy: AtomicBool,
    pub max_body_size: usize,
    /// `spec.appHttpPipeline`.
    pipeline: Option<Arc<Pipeline>>,
}

impl AppChannel {
    /// `None` when the sidecar has no app (`--app-port` unset).
    pub fn new(s: &Settings) -> Option<Self> {
        let port = s.app_port?;
        let addr = SocketAddr::new(s.app_channel_address, port);
        let http1 = Http1Client::new(
            addr,
            APP_CONNECT_TIMEOUT,
            HTTP1_IDLE_TIMEOUT,
            s.max_header_bytes,
        );
        Some(Self {
            protocol: s.app_protocol,
            addr,
            http1,
            h2: Pool::new(PoolConfig::default(), Connector::new(APP_CONNECT_TIMEOUT)),
            limiter: (s.app_max_concurrency > 0)
                .then(|| Arc::new(Semaphore::new(s.app_max_concurrency))),
            app_token: s
                .app_api_token
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok()),
            healthy: AtomicBool::new(true),
            max_body_size: s.max_body_size,
            pipeline: None,
        })
    }

    /// Sends requests to the app through `pipeline` (HTTP and h2c apps).
    pub fn with_pipeline(mut self, pipeline: Option<Arc<Pipeline>>) -> Self {
        self.pipeline = pipeline.filter(|_| !self.speaks_grpc());
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP/2 (h2c, gRPC) pool to the app; HTTP/1.1 apps have their own
    /// keep-alive client ([`Http1Client`]).
    pub fn pool_stats(&self) -> crate::pool::PoolStats {
        self.h2.stats()
    }

    /// A gRPC app: HTTP-style calls become `OnInvoke`, and it is handed
    /// `grpc-trace-bin`.
    pub fn speaks_grpc(&self) -> bool {
        matches!(self.protocol, AppProtocol::Grpc | AppProtocol::Grpcs)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn set_healthy(&self, v: bool) {
        self.healthy.store(v, Ordering::Release);
    }

    /// Delivers a request as it is (HTTP or h2c app, or a proxied gRPC call
    /// to a gRPC app), through the app pipeline when there is one. `req`'s
    /// URI holds path and query only.
    pub fn forward(
        &self,
        req: Request<SkiffBody>,
    ) -> impl Future<Output = Result<Response<SkiffBody>, AppError>> {
        // Not an async block: one would hold `req` beside the delivery
        // that owns it, and every call's future would grow by a request.
        match &self.pipeline {
            None => Either::Left(self.deliver(req)),
            Some(p) => Either::Right(self.deliver_through(p, req)),
        }
    }

    /// The pipeline's handlers first (before a concurrency slot is taken:
    /// a handler may wait on a token endpoint); an answer of theirs is the
    /// app's answer.
    fn deliver_through<'a>(
        &'a self,
        p: &'a Pipeline,
        req: Request<SkiffBody>,
    ) -> BoxFuture<'a, Result<Response<SkiffBody>, AppError>> {
        Box::pin(async move {
            let cx = Cx {
                remote: None,
                max_body_size: self.max_body_size,
                scheme: if self.protocol == AppProtocol::Https {
                    "https"
                } else {
                    "http"
                },
            };
            let req = match p.run(req, &cx).await {
                Ok(r) => r,
                Err(answer) => return Ok(answer),
            };
            let resp = self.deliver(req).await?;
            Ok(if p.changes_answers() {
                p.respond(resp, &cx).await
            } else {
                resp
            })
        })
    }

    fn deliver(
        &self,
        mut req: Request<SkiffBody>,
    ) -> impl Future<Output = Result<Response<SkiffBody>, AppError>> {
        async move {
            self.prepare(&mut req);
            let _permit = self.permit().await?;
            // A small body read whole first, so it leaves with its head
            // (see `skiff_body::gather_small`).
            let body = std::mem::take(req.body_mut());
            *req.body_mut() = crate::skiff_body::gather_small(body)
                .await
                .map_err(|e| self.body_failed(e))?;
            match self.protocol {
                AppProtocol::Http | AppProtocol::Https => self.send_http1(req).await,
                AppProtocol::H2c | AppProtocol::Grpc | AppProtocol::Grpcs => {
                    self.send_h2_raw(req).await
                }
            }
        }
    }

    /// The request's own body failed while it was read ahead.
    fn body_failed(&self, e: crate::body::BoxError) -> AppError {
        match self.protocol {
            AppProtocol::Http | AppProtocol::Https => AppError::Http1 {
                addr: self.addr,
                source: http1::Http1Error::RequestBody(e),
            },
            _ => AppError::h2(
                PoolError::Body {
                    addr: self.addr,
                    source: e,
                },
                self.addr,
            ),
        }
    }

    /// Sends a request on the HTTP/2 connection to a gRPC app (OnInvoke,
    /// health checks).
    pub(crate) async fn send_h2(
        &self,
        mut req: Request<SkiffBody>,
    ) -> Result<Response<SkiffBody>, AppError> {
        self.prepare(&mut req);
        let _permit = self.permit().await?;
        self.send_h2_raw(req).await
    }

    /// A GET to an HTTP app, for health probes.
    pub(crate) async fn get_http1(&self, path: &str) -> Result<Response<SkiffBody>, AppError> {
        let mut req = Request::new(SkiffBody::Empty);
        *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
        self.prepare(&mut req);
        self.send_http1(req).await
    }

    fn send_http1(
        &self,
        req: Request<SkiffBody>,
    ) -> impl Future<Output = Result<Response<SkiffBody>, AppError>> {
        let addr = self.addr;
        self.http1.send(req).map(move |r| match r {
            Ok(resp) => Ok(resp.map(SkiffBody::from)),
            Err(
                source @ (http1::Http1Error::Connect(_) | http1::Http1Error::ConnectTimeout(_)),
            ) => Err(AppError::Unreachable { addr, source }),
            Err(source) => Err(AppError::Http1 { addr, source }),
        })
    }

    fn send_h2_raw(
        &self,
        mut req: Request<SkiffBody>,
    ) -> impl Future<Output = Result<Response<SkiffBody>, AppError>> {
        *req.version_mut() = Version::HTTP_2;
        let addr = self.addr;
        self.h2.send(addr, req).map(move |r| match r {
            Ok(resp) => Ok(resp.map(SkiffBody::from)),
            Err(e) => Err(AppError::h2(e, addr)),
        })
    }

    fn prepare(&self, req: &mut Request<SkiffBody>) {
        match &self.app_token {
            Some(t) => {
                req.headers_mut().insert(DAPR_API_TOKEN, t.clone());
            }
            None => {
                req.headers_mut().remove(DAPR_API_TOKEN);
            }
        }
    }

    /// Held until the app's response head arrives: bounds the calls the app
    /// is working on at once.
    async fn permit(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, AppError> {
        match &self.limiter {
            None => Ok(None),
            Some(s) => s
                .clone()
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| AppError::Closed),
        }
    }
}
