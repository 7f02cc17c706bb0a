//! The caller side: from a parsed call to the remote sidecar's response.
//!
//! Resolve the app (a lock-free snapshot of its endpoints), pick one with the
//! balancer, take a pooled connection and send. An endpoint that cannot be
//! connected to is marked down and another is tried: the request has not left
//! yet, so this is safe for every method. A call that fails on the
//! connection after it was handed over (the remote sidecar died and the pooled
//! connection had not noticed yet) is tried on another endpoint only when that
//! is free and safe: an idempotent method whose body is empty or already in
//! memory. Other retries are the resiliency policy's job.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body;
use skiff_resolvers::{AppRef, ResolveError, Resolver};

use crate::body::SkiffBody;
use crate::headers::{self, Identity};
use crate::invoke::balance::Balancer;
use crate::pool::{Pool, PoolError};
use crate::transport::ExpectedPeer;

/// Endpoints tried per call when connections are refused.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("app id {app} not found in namespace {namespace}: no running instance is registered")]
    NoEndpoints { app: String, namespace: String },
    #[error("resolving app id {app}: {source}")]
    Resolve {
        app: String,
        #[source]
        source: ResolveError,
    },
    #[error("app id {app}: {source}")]
    Transport {
        app: String,
        #[source]
        source: PoolError,
    },
}

/// Sends calls to other sidecars.
pub struct Outbound {
    resolver: Arc<dyn Resolver>,
    pool: Pool,
    balancer: Balancer,
    me: Identity,
}

impl Outbound {
    pub fn new(resolver: Arc<dyn Resolver>, pool: Pool, me: Identity) -> Self {
        Self {
            resolver,
            pool,
            balancer: Balancer::default(),
            me,
        }
    }

    pub fn resolver(&self) -> &Arc<dyn Resolver> {
        &self.resolver
    }

    /// Sends `req` to an instance of `app`. The request's headers must be
    /// prepared (`headers::prepare_outbound`); identity headers are set here
    /// so no caller can choose them.
    pub async fn send(
        &self,
        app: &AppRef,
        mut req: Request<SkiffBody>,
    ) -> Result<Response<SkiffBody>, InvokeError> {
        let callee_app = header_value(&app.app_id);
        let callee_ns = header_value(&app.namespace);
        headers::set_identity(req.headers_mut(), &self.me, &callee_app, &callee_ns);
        *req.version_mut() = Version::HTTP_2;

        let set = self
            .resolver
            .resolve(app)
            .map_err(|source| InvokeError::Resolve {
                app: app.app_id.clone(),
                source,
            })?;
        let eps = set.snapshot();
        // Replay needs another endpoint to go to; with one, skip the copy.
        let mut replay = if eps.len() > 1 {
            Replay::capture(&req)
        } else {
            None
        };
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_err = None;
        while tried.len() < MAX_CONNECT_ATTEMPTS {
            let Some(ep) = self.balancer.pick(&eps, &tried) else {
                break;
            };
            let pending = self.balancer.start(ep.addr);
            let expect = ExpectedPeer {
                namespace: &app.namespace,
                app_id: &app.app_id,
            };
            let checkout = match self.pool.checkout_for(ep.addr, Some(expect)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(app = %app.app_id, endpoint = %ep.addr, error = %e, "endpoint unreachable; trying another");
                    self.balancer.mark_down(ep.addr);
                    tried.push(ep.addr);
                    last_err = Some(e);
                    continue;
                }
            };
            match checkout.send(req).await {
                Ok(resp) => {
                    pending.finish();
                    return Ok(resp);
                }
                Err(e) => match replay.take() {
                    Some(r) if eps.len() > tried.len() + 1 => {
                        tracing::debug!(app = %app.app_id, endpoint = %ep.addr, error = %e, "connection failed under the call; replaying on another endpoint");
                        self.balancer.mark_down(ep.addr);
                        tried.push(ep.addr);
                        req = r.request();
                        replay = Replay::capture(&req);
                        last_err = Some(e);
                    }
                    _ => {
                        return Err(InvokeError::Transport {
                            app: app.app_id.clone(),
                            source: e,
                        });
                    }
                },
            }
        }
        Err(match last_err {
            Some(source) => InvokeError::Transport {
                app: app.app_id.clone(),
                source,
            },
            None => InvokeError::NoEndpoints {
                app: app.app_id.clone(),
                namespace: app.namespace.clone(),
            },
        })
    }
}

/// What it takes to send a call again: only captured when that costs no
/// buffering (an empty or in-memory body) and is safe (an idempotent method).
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl Replay {
    fn capture(req: &Request<SkiffBody>) -> Option<Self> {
        if !req.method().is_idempotent() {
            return None;
        }
        let body = match req.body() {
            SkiffBody::Empty => None,
            SkiffBody::Full(b) => b.clone(),
            SkiffBody::Incoming(b) if b.is_end_stream() => None,
            _ => return None,
        };
        Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        })
    }

    fn request(self) -> Request<SkiffBody> {
        let mut req = Request::new(self.body.map_or(SkiffBody::Empty, SkiffBody::full));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        *req.version_mut() = Version::HTTP_2;
        req
    }
}

/// App ids and namespaces are validated to a header-safe alphabet before they
/// get here.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
