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
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http_body_util::BodyExt;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use skiff_resolvers::{AppRef, ResolveError, Resolver};

use crate::body::{Gathered, SkiffBody};
use crate::headers::{self, Identity};
use crate::invoke::balance::Balancer;
use crate::policy::Policies;
use crate::policy::resiliency::AppPolicy;
use crate::policy::retry::Outcome;
use crate::pool::{Pool, PoolError};
use crate::telemetry::metrics::{self, PolicyKind};
use crate::transport::ExpectedPeer;

/// Endpoints tried per call when connections are refused.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error(
        "app id {app} not found in namespace {namespace}: the {resolver} resolver knows no running instance"
    )]
    NoEndpoints {
        app: String,
        namespace: String,
        resolver: &'static str,
    },
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
    #[error(
        "circuit breaker {breaker} is open for app id {app}: every endpoint is failing; calls fail fast until it half-opens"
    )]
    BreakerOpen { app: String, breaker: String },
    #[error("app id {app}: no answer within {after:?} (resiliency timeout)")]
    Timeout { app: String, after: Duration },
}

/// Request bytes kept for replaying a retried call, unless configured.
pub const DEFAULT_REPLAY_BUFFER: usize = 64 << 10;

/// Sends calls to other sidecars.
pub struct Outbound {
    resolver: Arc<dyn Resolver>,
    pool: Pool,
    balancer: Balancer,
    me: Identity,
    policies: Arc<ArcSwap<Policies>>,
    /// Largest request body kept for retries.
    replay_limit: usize,
    /// Send `dapr-caller-*`: only without mTLS, where the callee has no
    /// certificate to read the caller from.
    caller_headers: bool,
}

impl Outbound {
    pub fn new(resolver: Arc<dyn Resolver>, pool: Pool, me: Identity) -> Self {
        Self {
            resolver,
            pool,
            balancer: Balancer::default(),
            me,
            policies: Arc::default(),
            replay_limit: DEFAULT_REPLAY_BUFFER,
            caller_headers: true,
        }
    }

    /// With mTLS the callee names the caller from its certificate, so the
    /// caller's headers would be bytes that nobody reads.
    pub fn with_mtls(mut self, on: bool) -> Self {
        self.caller_headers = !on;
        self
    }

    /// Applies `policies` (resiliency) to outgoing calls.
    pub fn with_policies(mut self, policies: Arc<ArcSwap<Policies>>, replay_limit: usize) -> Self {
        self.policies = policies;
        self.replay_limit = replay_limit;
        self
    }

    pub fn resolver(&self) -> &Arc<dyn Resolver> {
        &self.resolver
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Sends `req` to an instance of `app`. The request's headers must be
    /// prepared (`headers::prepare_outbound`); identity headers are set here
    /// so no caller can choose them. The callee is named by the request's
    /// authority, which HTTP/2 sends with every request anyway.
    pub async fn send(
        &self,
        app: &AppRef,
        mut req: Request<SkiffBody>,
    ) -> Result<Response<SkiffBody>, InvokeError> {
        if self.caller_headers {
            headers::set_caller(req.headers_mut(), &self.me);
        }
        crate::pool::set_authority(&mut req, &callee_authority(app));
        *req.version_mut() = Version::HTTP_2;

        let set = match self.resolver.resolve(app) {
            Ok(s) => Ok(s),
            // First call for this app with a network resolver: one lookup.
            Err(ResolveError::Pending) => self.resolver.lookup(app).await,
            Err(e) => Err(e),
        }
        .map_err(|source| {
            if let Some(m) = metrics::get() {
                m.resolver_error();
            }
            InvokeError::Resolve {
                app: app.app_id.clone(),
                source,
            }
        })?;
        let eps = set.snapshot();
        let policy = self
            .policies
            .load()
            .resiliency
            .for_app(&app.app_id)
            .cloned();
        if let Some(p) = policy {
            // Boxed: the policy path's state machine (capture, backoff,
            // timeouts) is several KiB, and every call's future would
            // otherwise carry it; it is copied whole whenever the call's
            // task is spawned or finishes.
            return Box::pin(self.send_with_policy(app, &eps, req, &p)).await;
        }
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
            count_sent(app, &req);
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
                resolver: self.resolver.name(),
            },
        })
    }
}

impl Outbound {
    /// The call under a resiliency policy: per-attempt timeout, retries with
    /// backoff within the retry budget, and a breaker per endpoint.
    async fn send_with_policy(
        &self,
        app: &AppRef,
        eps: &[skiff_resolvers::Endpoint],
        req: Request<SkiffBody>,
        p: &AppPolicy,
    ) -> Result<Response<SkiffBody>, InvokeError> {
        if eps.is_empty() {
            return Err(InvokeError::NoEndpoints {
                app: app.app_id.clone(),
                namespace: app.namespace.clone(),
                resolver: self.resolver.name(),
            });
        }
        p.budget.deposit();
        if let Some(m) = metrics::get() {
            for (on, kind) in [
                (p.timeout.is_some(), PolicyKind::Timeout),
                (p.retry.is_some(), PolicyKind::Retry),
                (p.breaker.is_some(), PolicyKind::CircuitBreaker),
            ] {
                if on {
                    m.resiliency_executed(&p.document, &p.target, kind);
                }
            }
        }
        let (parts, body) = req.into_parts();
        let (first, replay) = if p.retry.is_some() {
            capture(body, self.replay_limit).await
        } else {
            (body, None)
        };
        // Nothing to replay: one attempt, and the request head moves.
        let Some(replay) = replay else {
            let req = Request::from_parts(parts, first);
            return self.try_once(app, eps, &[], p, req).await?.0;
        };
        let mut first = Some(first);
        let mut retries = 0u32;
        let mut skip: Vec<SocketAddr> = Vec::new();
        loop {
            let body = first
                .take()
                .unwrap_or_else(|| SkiffBody::full(replay.clone()));
            let req = Request::from_parts(parts.clone(), body);
            let (result, outcome, ep) = self.try_once(app, eps, &skip, p, req).await?;
            let retry = p
                .retry
                .as_ref()
                .filter(|r| r.retries(outcome) && r.may_retry(retries));
            let Some(r) = retry else {
                return result;
            };
            if !p.budget.withdraw() {
                p.retries_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(m) = metrics::get() {
                    m.retry_budget_exhausted(&p.target);
                }
                tracing::debug!(app = %app.app_id, "retry budget spent; not retrying");
                return result;
            }
            p.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(m) = metrics::get() {
                m.resiliency_activated(&p.document, &p.target, PolicyKind::Retry);
            }
            // Retry elsewhere while there is somewhere else: the endpoint
            // that just failed is the likeliest to fail again.
            skip.push(ep);
            if skip.len() >= eps.len() {
                skip.clear();
            }
            drop(result);
            tokio::time::sleep(r.delay(retries)).await;
            retries += 1;
        }
    }

    /// One attempt: an endpoint the breakers allow (avoiding `skip` while
    /// others remain), the call within the timeout, and the outcome recorded
    /// on that endpoint's breaker. Fails only when every breaker is open.
    async fn try_once(
        &self,
        app: &AppRef,
        eps: &[skiff_resolvers::Endpoint],
        skip: &[SocketAddr],
        p: &AppPolicy,
        req: Request<SkiffBody>,
    ) -> Result<
        (
            Result<Response<SkiffBody>, InvokeError>,
            Outcome,
            SocketAddr,
        ),
        InvokeError,
    > {
        let Some((ep, breaker, permit)) = self.pick_allowed(eps, skip, p) else {
            return Err(InvokeError::BreakerOpen {
                app: app.app_id.clone(),
                breaker: p
                    .breaker
                    .as_ref()
                    .map_or_else(String::new, |b| b.name.clone()),
            });
        };
        let result = self.attempt(app, ep, req, p.timeout).await;
        if let (Err(InvokeError::Timeout { .. }), Some(m)) = (&result, metrics::get()) {
            m.resiliency_activated(&p.document, &p.target, PolicyKind::Timeout);
        }
        let outcome = classify(&result);
        if let (Some(b), Some(permit)) = (&breaker, permit) {
            b.record(permit, breaker_success(outcome));
        }
        Ok((result, outcome, ep))
    }

    /// An endpoint whose breaker lets a call through (and the permit).
    fn pick_allowed(
        &self,
        eps: &[skiff_resolvers::Endpoint],
        skip: &[SocketAddr],
        p: &AppPolicy,
    ) -> Option<(
        SocketAddr,
        Option<Arc<crate::policy::breaker::Breaker>>,
        Option<crate::policy::breaker::Permit>,
    )> {
        // Endpoints whose breaker is open.
        let mut open: Vec<SocketAddr> = Vec::new();
        loop {
            // Prefer endpoints that did not just fail; fall back to them
            // rather than to nothing.
            let mut avoid = open.clone();
            avoid.extend_from_slice(skip);
            let ep = match self.balancer.pick(eps, &avoid) {
                Some(e) => e.addr,
                None => self.balancer.pick(eps, &open)?.addr,
            };
            match p.breaker(ep) {
                None => return Some((ep, None, None)),
                Some(b) => match b.allow() {
                    Some(permit) => return Some((ep, Some(b), Some(permit))),
                    None => open.push(ep),
                },
            }
        }
    }

    /// One try on one endpoint, within the policy's timeout.
    async fn attempt(
        &self,
        app: &AppRef,
        ep: SocketAddr,
        req: Request<SkiffBody>,
        timeout: Option<Duration>,
    ) -> Result<Response<SkiffBody>, InvokeError> {
        let expect = ExpectedPeer {
            namespace: &app.namespace,
            app_id: &app.app_id,
        };
        let pending = self.balancer.start(ep);
        let call = async {
            let checkout = self.pool.checkout_for(ep, Some(expect)).await?;
            count_sent(app, &req);
            checkout.send(req).await
        };
        let r = match timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(InvokeError::Timeout {
                        app: app.app_id.clone(),
                        after: t,
                    });
                }
            },
            None => call.await,
        };
        match r {
            Ok(resp) => {
                pending.finish();
                Ok(resp)
            }
            Err(e) => {
                if e.is_connect() {
                    self.balancer.mark_down(ep);
                }
                Err(InvokeError::Transport {
                    app: app.app_id.clone(),
                    source: e,
                })
            }
        }
    }
}

/// Dapr's `req_sent_total`: every request that leaves for another sidecar.
fn count_sent(app: &AppRef, req: &Request<SkiffBody>) {
    if let Some(m) = metrics::get() {
        m.invoke_sent(
            &app.app_id,
            req.headers().contains_key(&headers::SKIFF_MODE),
        );
    }
}

/// How an attempt went, as policies see it: an HTTP status outside
/// 200–399, or a gRPC error status in the response head (a trailers-only
/// answer, or the app's status carried back by the callee sidecar).
fn classify(r: &Result<Response<SkiffBody>, InvokeError>) -> Outcome {
    let resp = match r {
        Ok(resp) => resp,
        Err(_) => return Outcome::Transport,
    };
    let grpc = resp
        .headers()
        .get(headers::GRPC_STATUS)
        .or_else(|| resp.headers().get(headers::SKIFF_GRPC_STATUS))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match grpc {
        Some(0) | None if (200..400).contains(&resp.status().as_u16()) => Outcome::Ok,
        Some(code) if code != 0 => Outcome::Grpc(code),
        _ => Outcome::Http(resp.status().as_u16()),
    }
}

/// Breakers count the callee's health: client errors (4xx, and gRPC codes
/// that describe the request) are not its failures.
fn breaker_success(o: Outcome) -> bool {
    match o {
        Outcome::Ok => true,
        Outcome::Http(c) => c < 500,
        // UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
        // UNAVAILABLE, DATA_LOSS.
        Outcome::Grpc(c) => !matches!(c, 2 | 4 | 8 | 13 | 14 | 15),
        Outcome::Transport => false,
    }
}

/// Makes a request body replayable when it fits in `limit`: returns the
/// body to send first and, when replayable, the bytes to send again. A body
/// with a known length within the limit is read whole first; any other body
/// only as far as it has already arrived, so a streaming call (a gRPC bidi
/// stream waiting for its first answer) is never held up, and is simply not
/// retried.
async fn capture(body: SkiffBody, limit: usize) -> (SkiffBody, Option<Bytes>) {
    let mut inc = match body {
        SkiffBody::Empty => return (SkiffBody::Empty, Some(Bytes::new())),
        SkiffBody::Full(b) => {
            let b = b.unwrap_or_default();
            return (SkiffBody::full(b.clone()), Some(b));
        }
        streamed @ (SkiffBody::Incoming(_) | SkiffBody::H2(_)) => streamed,
        other => return (other, None),
    };
    let wait = inc.size_hint().exact().is_some_and(|n| n <= limit as u64);
    let mut got = Gathered::default();
    loop {
        if inc.is_end_stream() {
            return got.replayable();
        }
        let next = if wait {
            Some(inc.frame().await)
        } else {
            inc.frame().now_or_never()
        };
        match next {
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) if got.len() + d.len() <= limit => got.push(d),
                Ok(d) => {
                    got.push(d);
                    return (got.prefixed(None, inc), None);
                }
                // Request trailers (rare): passed on, not replayed.
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return (got.prefixed(trailers, inc), None);
                }
            },
            Some(None) => return got.replayable(),
            Some(Some(Err(_))) | None => return (got.prefixed(None, inc), None),
        }
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
            SkiffBody::H2(b) if b.is_end_stream() => None,
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

/// `{app}.{namespace}`, the authority a call to `app` carries (app ids and
/// namespaces are validated to `[A-Za-z0-9_-]` before they get here).
fn callee_authority(app: &AppRef) -> Authority {
    let mut s = String::with_capacity(app.app_id.len() + 1 + app.namespace.len());
    s.push_str(&app.app_id);
    s.push('.');
    s.push_str(&app.namespace);
    Authority::from_maybe_shared(Bytes::from(s))
        .unwrap_or_else(|_| Authority::from_static("invalid"))
}
