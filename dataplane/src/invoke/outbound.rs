//! The caller side: from a parsed call to the remote sidecar's response.
//!
//! Resolve the app (a lock-free snapshot of its endpoints), then one loop:
//! pick an endpoint with the balancer (and, under a policy, its breaker),
//! take a pooled connection and send, and let the call's [`Plan`] say
//! whether a failed attempt is tried again. The plan is the app's
//! Resiliency policy (timeouts, retries with backoff within a budget,
//! breakers per endpoint) or the built-in one: an endpoint that cannot be
//! connected to is marked down and another is tried (the request has not
//! left, so this is safe for every method, up to [`MAX_CONNECT_ATTEMPTS`]);
//! a call that fails on the connection after it was handed over (the remote
//! sidecar died and the pooled connection had not noticed yet) is tried on
//! another endpoint only when that is free and safe: an idempotent method
//! whose body is empty or already in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::Either;
use http_body_util::BodyExt;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use skiff_resolvers::{AppRef, ResolveError, Resolver};

use crate::headers;
use crate::invoke::balance::{Balancer, Pending};
use crate::invoke::wire::{self, Identity};
use crate::policy::Policies;
use crate::policy::breaker::{Breaker, Permit};
use crate::policy::resiliency::AppPolicy;
use crate::policy::retry::Outcome;
use crate::pool::{Pool, PoolError};
use crate::skiff_body::{Gathered, SkiffBody};
use crate::telemetry::metrics::{self, PolicyKind};
use crate::transport::ExpectedPeer;
use skiff_resolvers::Endpoint;

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
    /// The caller's own deadline (`grpc-timeout`) passed first.
    #[error("deadline exceeded waiting for the target")]
    Deadline,
}

/// Request bytes kept for replaying a retried call, unless configured.
pub const DEFAULT_REPLAY_BUFFER: usize = 64 << 10;

/// Sends calls to other sidecars.
pub struct Outbound {
    resolver: Arc<dyn Resolver>,
    pool: Pool,
    balancer: Balancer,
    policies: Arc<ArcSwap<Policies>>,
    /// Largest request body kept for retries.
    replay_limit: usize,
    /// Who we are, sent as `dapr-caller-*` only without mTLS, where the
    /// callee has no certificate to read the caller from.
    caller: Option<Identity>,
}

impl Outbound {
    pub fn new(resolver: Arc<dyn Resolver>, pool: Pool, me: Identity) -> Self {
        Self {
            resolver,
            pool,
            balancer: Balancer::default(),
            policies: Arc::default(),
            replay_limit: DEFAULT_REPLAY_BUFFER,
            caller: Some(me),
        }
    }

    /// With mTLS the callee names the caller from its certificate, so the
    /// caller's headers would be bytes that nobody reads.
    pub fn with_mtls(mut self, on: bool) -> Self {
        if on {
            self.caller = None;
        }
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
    /// prepared (`headers::prepare_outbound`); the hop's own headers are
    /// set here (`wire::outbound_head`), so no caller can choose them.
    ///
    /// Not an `async fn`: which loop runs is decided here, so the common
    /// call (a resolved app, no policy) is the loop's own future, not one
    /// that holds it (see `envelope`).
    pub fn send<'a>(
        &'a self,
        app: &'a AppRef,
        mut req: Request<SkiffBody>,
    ) -> impl Future<Output = Result<Response<SkiffBody>, InvokeError>> + Send + 'a {
        wire::outbound_head(&mut req, app, self.caller.as_ref());
        let policy = self
            .policies
            .load()
            .resiliency
            .for_app(&app.app_id)
            .cloned();
        let plan = policy.map_or(Plan::Builtin, Plan::Policy);
        match (self.resolver.resolve(app), plan) {
            (Ok(set), Plan::Builtin) => Either::Left(self.call(app, set, req, Plan::Builtin)),
            // Boxed: the policy path's state machine (capture, backoff,
            // timeouts) is several KiB, and every call's future would
            // otherwise carry it; it is copied whole whenever the call's
            // task is spawned or finishes.
            (Ok(set), plan) => {
                Either::Right(Box::pin(self.call(app, set, req, plan)) as BoxedSend<'a>)
            }
            // First call for this app with a network resolver: one lookup.
            (Err(ResolveError::Pending), plan) => {
                let slow: BoxedSend<'a> = Box::pin(async move {
                    let set = self
                        .resolver
                        .lookup(app)
                        .await
                        .map_err(|e| resolve_failed(app, e))?;
                    self.call(app, set, req, plan).await
                });
                Either::Right(slow)
            }
            (Err(e), _) => {
                let failed: BoxedSend<'a> =
                    Box::pin(std::future::ready(Err(resolve_failed(app, e))));
                Either::Right(failed)
            }
        }
    }

    /// The endpoint loop every call runs, under its plan.
    fn call<'a>(
        &'a self,
        app: &'a AppRef,
        set: Arc<skiff_resolvers::EndpointSet>,
        req: Request<SkiffBody>,
        plan: Plan,
    ) -> impl Future<Output = Result<Response<SkiffBody>, InvokeError>> + Send + 'a {
        async move {
            let eps = set.snapshot();
            let eps = &eps[..];
            if eps.is_empty() {
                return Err(self.no_endpoints(app));
            }
            plan.started();
            let (mut req, replay) = match &plan {
                // Boxed: every call shares this function, and the built-in
                // policy's must not carry the policy path's state.
                Plan::Policy(p) if p.retry.is_some() => {
                    Box::pin(replayable(req, self.replay_limit)).await
                }
                _ => {
                    let replay = plan.replay_buffered(&req, eps.len());
                    (req, replay)
                }
            };
            // Endpoints this call should avoid: those that failed it.
            let mut avoid: Vec<SocketAddr> = Vec::new();
            let mut last: Option<InvokeError> = None;
            let mut retries = 0u32;
            loop {
                let (ep, permit) = match plan.pick(&self.balancer, eps, &avoid) {
                    Pick::Endpoint(ep, permit) => (ep, permit),
                    Pick::None => return Err(last.unwrap_or_else(|| self.no_endpoints(app))),
                    Pick::AllOpen(breaker) => {
                        return Err(InvokeError::BreakerOpen {
                            app: app.app_id.clone(),
                            breaker,
                        });
                    }
                };
                let pending = self.balancer.start(ep);
                // One inline await of the call (boxed under a timeout, which only
                // policies set), so the built-in path's future holds it once.
                let sent = match plan.timeout() {
                    None => Ok(self.try_endpoint(app, ep, req, pending).await),
                    Some(t) => Box::pin(tokio::time::timeout(
                        t,
                        self.try_endpoint(app, ep, req, pending),
                    ))
                    .await
                    .map_err(|_| t),
                };
                // The common call: answered, with no policy to judge it.
                if matches!(plan, Plan::Builtin)
                    && let Ok(Ok(resp)) = sent
                {
                    return Ok(resp);
                }
                let tried = self.tried(app, ep, sent);
                let outcome = plan.judge(&tried, permit);
                let resend = tried.unsent.is_some() || replay.is_some();
                let delay = match plan.again(&tried, outcome, resend, retries, eps.len(), &avoid) {
                    Again::No => return tried.result,
                    Again::Now => None,
                    Again::After(d) => Some(d),
                };
                let Tried {
                    result,
                    connect_failed,
                    unsent,
                } = tried;
                // The request once more: as it was when it never left, else
                // from what was kept to replay it.
                let Some(next) = unsent.or_else(|| replay.as_ref().map(Replay::request)) else {
                    return result;
                };
                req = next;
                plan.retrying(app, &self.balancer, ep, connect_failed);
                // Elsewhere while there is somewhere else: the endpoint that
                // just failed is the likeliest to fail again.
                avoid.push(ep);
                if plan.avoids_in_rounds() && avoid.len() >= eps.len() {
                    avoid.clear();
                }
                last = result.err();
                if let Some(d) = delay {
                    Box::pin(tokio::time::sleep(d)).await;
                    retries += 1;
                }
            }
        }
    }

    /// A connection to `ep`, then the call on it; a request that never
    /// left comes back with the error.
    fn try_endpoint(
        &self,
        app: &AppRef,
        ep: SocketAddr,
        mut req: Request<SkiffBody>,
        pending: Pending,
    ) -> impl Future<Output = Sent> {
        async move {
            let expect = ExpectedPeer {
                namespace: &app.namespace,
                app_id: &app.app_id,
            };
            let checkout = match self.pool.checkout_for(ep, Some(expect)).await {
                Ok(c) => c,
                Err(e) => return Err((e, Some(req))),
            };
            let body = std::mem::take(req.body_mut());
            *req.body_mut() = crate::skiff_body::gather_small(body)
                .await
                .map_err(|source| (PoolError::Body { addr: ep, source }, None))?;
            count_sent(app, &req);
            let resp = checkout.send(req).await.map_err(|e| (e, None))?;
            pending.finish();
            Ok(resp.map(SkiffBody::from))
        }
    }

    /// How the try on `ep` went (`sent` is `Err` when no answer came within
    /// the policy's timeout); an endpoint that refused the connection is set
    /// aside.
    fn tried(&self, app: &AppRef, ep: SocketAddr, sent: Result<Sent, Duration>) -> Tried {
        match sent {
            Ok(Ok(resp)) => Tried::answered(resp),
            Err(after) => Tried::failed(InvokeError::Timeout {
                app: app.app_id.clone(),
                after,
            }),
            Ok(Err((e, unsent))) => {
                let connect_failed = e.is_connect();
                if connect_failed {
                    tracing::debug!(app = %app.app_id, endpoint = %ep, error = %e, "endpoint unreachable");
                    self.balancer.mark_down(ep);
                }
                Tried {
                    result: Err(InvokeError::Transport {
                        app: app.app_id.clone(),
                        source: e,
                    }),
                    connect_failed,
                    unsent,
                }
            }
        }
    }

    fn no_endpoints(&self, app: &AppRef) -> InvokeError {
        InvokeError::NoEndpoints {
            app: app.app_id.clone(),
            namespace: app.namespace.clone(),
            resolver: self.resolver.name(),
        }
    }
}

/// How one attempt went.
struct Tried {
    result: Result<Response<SkiffBody>, InvokeError>,
    /// No connection could be made: the request never left.
    connect_failed: bool,
    /// The request, when it never left and so can go elsewhere as it is.
    unsent: Option<Request<SkiffBody>>,
}

impl Tried {
    fn answered(resp: Response<SkiffBody>) -> Self {
        Self {
            result: Ok(resp),
            connect_failed: false,
            unsent: None,
        }
    }

    fn failed(e: InvokeError) -> Self {
        Self {
            result: Err(e),
            connect_failed: false,
            unsent: None,
        }
    }
}

/// What a call may do when an attempt fails: the app's Resiliency policy,
/// or the built-in policy (connect failover and safe replay, no timeout,
/// no breaker).
enum Plan {
    Policy(Arc<AppPolicy>),
    Builtin,
}

enum Pick {
    Endpoint(SocketAddr, Option<(Arc<Breaker>, Permit)>),
    /// Every endpoint was tried (the built-in policy).
    None,
    /// Every endpoint's breaker is open (the breaker's name).
    AllOpen(String),
}

enum Again {
    No,
    Now,
    After(Duration),
}

impl Plan {
    fn timeout(&self) -> Option<Duration> {
        match self {
            Self::Policy(p) => p.timeout,
            Self::Builtin => None,
        }
    }

    /// Whether the endpoints to avoid start afresh once all were tried
    /// (retries go round); the built-in policy stops instead.
    fn avoids_in_rounds(&self) -> bool {
        matches!(self, Self::Policy(_))
    }

    /// An original call: its share of the retry budget, and Dapr's
    /// `resiliency_count` for each policy that applies.
    fn started(&self) {
        let Self::Policy(p) = self else { return };
        p.budget.deposit();
        if let Some(m) = metrics::get() {
            m.policy_applied(
                &p.document,
                &p.label,
                [p.timeout.is_some(), p.retry.is_some(), p.breaker.is_some()],
            );
        }
    }

    /// What it takes to send `req` again without waiting for anything:
    /// the built-in policy keeps only an idempotent call whose body is
    /// already in memory, and only when there is another endpoint to go
    /// to. (A policy with retries keeps the body, see [`replayable`].)
    fn replay_buffered(&self, req: &Request<SkiffBody>, endpoints: usize) -> Option<Replay> {
        match self {
            Self::Builtin if endpoints > 1 => Replay::of_buffered(req),
            _ => None,
        }
    }

    /// An endpoint for the next attempt: one whose breaker lets a call
    /// through (with its permit), avoiding `avoid` while others remain.
    fn pick(&self, balancer: &Balancer, eps: &[Endpoint], avoid: &[SocketAddr]) -> Pick {
        let Self::Policy(p) = self else {
            return match balancer.pick(eps, avoid) {
                Some(e) => Pick::Endpoint(e.addr, None),
                None => Pick::None,
            };
        };
        // Endpoints whose breaker is open.
        let mut open: Vec<SocketAddr> = Vec::new();
        loop {
            // Prefer endpoints that did not just fail; fall back to them
            // rather than to nothing.
            let mut skip = open.clone();
            skip.extend_from_slice(avoid);
            let ep = match balancer
                .pick(eps, &skip)
                .or_else(|| balancer.pick(eps, &open))
            {
                Some(e) => e.addr,
                None => {
                    let name = p
                        .breaker
                        .as_ref()
                        .map_or_else(String::new, |b| b.name.clone());
                    return Pick::AllOpen(name);
                }
            };
            match p.breaker(ep) {
                None => return Pick::Endpoint(ep, None),
                Some(b) => match b.allow() {
                    Some(permit) => return Pick::Endpoint(ep, Some((b, permit))),
                    None => open.push(ep),
                },
            }
        }
    }

    /// How the attempt went as the plan sees it, recorded on the
    /// endpoint's breaker. The built-in policy looks no further than
    /// whether an answer came.
    fn judge(&self, tried: &Tried, permit: Option<(Arc<Breaker>, Permit)>) -> Outcome {
        let Self::Policy(p) = self else {
            return if tried.result.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Transport
            };
        };
        if let (Err(InvokeError::Timeout { .. }), Some(m)) = (&tried.result, metrics::get()) {
            m.resiliency_activated(&p.document, &p.label, PolicyKind::Timeout);
        }
        let outcome = classify(&tried.result);
        if let Some((b, permit)) = permit {
            b.record(permit, breaker_success(outcome));
        }
        outcome
    }

    /// Whether a failed attempt is tried again, and when. `resend`: the
    /// request can be sent again (it never left, or it was kept).
    fn again(
        &self,
        tried: &Tried,
        outcome: Outcome,
        resend: bool,
        retries: u32,
        endpoints: usize,
        avoid: &[SocketAddr],
    ) -> Again {
        if tried.result.is_ok() && outcome == Outcome::Ok || !resend {
            return Again::No;
        }
        match self {
            Self::Builtin => {
                // Attempts so far, this one included.
                let attempts = avoid.len() + 1;
                // A connection that could not be made goes elsewhere; one
                // that broke under the call is replayed elsewhere only when
                // there is another endpoint left.
                let elsewhere = tried.connect_failed || endpoints > attempts;
                if tried.result.is_err() && elsewhere && attempts < MAX_CONNECT_ATTEMPTS {
                    Again::Now
                } else {
                    Again::No
                }
            }
            Self::Policy(p) => {
                let Some(r) = p.retry.as_ref() else {
                    return Again::No;
                };
                if !(r.retries(outcome) && r.may_retry(retries)) {
                    return Again::No;
                }
                if !p.budget.withdraw() {
                    p.retries_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(m) = metrics::get() {
                        m.retry_budget_exhausted(&p.target);
                    }
                    tracing::debug!(target = %p.target, "retry budget spent; not retrying");
                    return Again::No;
                }
                Again::After(r.delay(retries))
            }
        }
    }

    /// A retry is on its way (counted under a policy). The built-in
    /// policy sets an endpoint whose connection broke aside for a while,
    /// as it does one that refused to connect.
    fn retrying(&self, app: &AppRef, balancer: &Balancer, ep: SocketAddr, connect_failed: bool) {
        match self {
            Self::Policy(p) => {
                p.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(m) = metrics::get() {
                    m.resiliency_activated(&p.document, &p.label, PolicyKind::Retry);
                }
            }
            Self::Builtin if connect_failed => {
                tracing::debug!(app = %app.app_id, "trying another endpoint");
            }
            Self::Builtin => {
                tracing::debug!(app = %app.app_id, endpoint = %ep, "connection failed under the call; replaying on another endpoint");
                balancer.mark_down(ep);
            }
        }
    }
}

/// A try's result: the answer, or why not and, when it never left, the
/// request.
type Sent = Result<Response<SkiffBody>, (PoolError, Option<Request<SkiffBody>>)>;

type BoxedSend<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<SkiffBody>, InvokeError>> + Send + 'a>>;

/// A resolver's failure, counted.
fn resolve_failed(app: &AppRef, source: ResolveError) -> InvokeError {
    if let Some(m) = metrics::get() {
        m.resolver_error();
    }
    InvokeError::Resolve {
        app: app.app_id.clone(),
        source,
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
    let h = resp.headers();
    let grpc = headers::grpc_code(
        h.get(headers::GRPC_STATUS)
            .or_else(|| h.get(headers::SKIFF_GRPC_STATUS)),
    )
    .map(u32::from);
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

/// A policy with retries keeps the request's body, bounded (see
/// [`capture`]), and its head.
async fn replayable(req: Request<SkiffBody>, limit: usize) -> (Request<SkiffBody>, Option<Replay>) {
    let (parts, body) = req.into_parts();
    let (first, kept) = capture(body, limit).await;
    let replay = kept.map(|body| Replay::new(&parts, body));
    (Request::from_parts(parts, first), replay)
}

/// Makes a request body replayable when it fits in `limit`: returns the
/// body to send first and, when replayable, the bytes to send again. A body
/// with a known length within the limit, or one whose sender does not wait
/// for an answer first (HTTP/1.1, chunked too), is read up to the limit
/// first; any other body only as far as it has already arrived, so a
/// streaming call (a gRPC bidi stream waiting for its first answer) is
/// never held up, and is simply not retried.
async fn capture(body: SkiffBody, limit: usize) -> (SkiffBody, Option<Bytes>) {
    let mut inc = match body {
        SkiffBody::Empty => return (SkiffBody::Empty, Some(Bytes::new())),
        SkiffBody::Full(b) => {
            let b = b.unwrap_or_default();
            return (SkiffBody::full(b.clone()), Some(b));
        }
        // Read from a connection (HTTP/2, or HTTP/1.1 past its first
        // read) or produced as polled: read ahead as far as allowed.
        streamed => streamed,
    };
    let wait = inc.size_hint().exact().is_some_and(|n| n <= limit as u64) || !inc.is_full_duplex();
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

/// What it takes to send a call again: its head, and its body's bytes.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    fn new(parts: &http::request::Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body,
        }
    }

    /// Only when that costs no buffering (an empty or in-memory body) and
    /// is safe (an idempotent method): the built-in policy's replay.
    fn of_buffered(req: &Request<SkiffBody>) -> Option<Self> {
        if !req.method().is_idempotent() {
            return None;
        }
        let body = match req.body() {
            SkiffBody::Full(b) => b.clone().unwrap_or_default(),
            b if b.is_streamed() && !b.is_end_stream() => return None,
            _ => Bytes::new(),
        };
        Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        })
    }

    fn request(&self) -> Request<SkiffBody> {
        let mut req = Request::new(SkiffBody::full(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.version_mut() = Version::HTTP_2;
        req
    }
}
