//! The connection pool: HTTP/2 connections to remote endpoints (other
//! sidecars, or an h2c/gRPC app), shared by every call.
//!
//! One connection per endpoint carries all calls to it; another opens only
//! when every open one has [`PoolConfig::max_streams`] calls in flight, up to
//! [`PoolConfig::max_conns`]. Picking a connection reads an `ArcSwap`
//! snapshot and atomics, no lock. Connecting is single-flight per endpoint (a
//! burst of first calls makes one connection). A connection whose task ends
//! (peer closed, GOAWAY drained, keepalive PING unanswered) leaves the pool at
//! once; a request that the dying connection never sent is retried on a fresh
//! one. Connections idle for [`PoolConfig::idle_timeout`] are released.
//!
//! A call writes its request on the connection's shared stream state from
//! its own task (`h2` directly, see [`crate::http2`]): the head and a body
//! already in hand leave together in the connection task's next write, and
//! the response is read by the call's task without a channel in between.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::FutureExt;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};

use crate::body::{BoxError, OutBody};
use crate::http2::{self, RecvBody};
use crate::transport::{ConnectError, Connector, ExpectedPeer};
use skiff_sentry::SpiffeId;

/// Calls in flight on one connection before another is opened.
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Connections per endpoint at most; beyond, calls queue on the least loaded.
pub const DEFAULT_MAX_CONNS: usize = 4;
/// An unused connection is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// PING an idle connection this often to find dead peers without traffic...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and give up on it when the PING is not answered in this time.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow control, chosen by measurement (perf/RESULTS.md, 512 MiB
/// through two sidecars): a 64 KiB stream window reaches 350 MiB/s, 1 MiB
/// 530 MiB/s; 4 MiB adds nothing once frames are 256 KiB, and would let one
/// slow reader pin four times the memory. 256 KiB frames lift downloads from
/// ~660 to ~900 MiB/s at the same RSS.
pub const DEFAULT_STREAM_WINDOW: u32 = 1 << 20;
/// The connection window covers every stream the pool puts on a connection
/// at their full window, so it never binds before theirs: with a smaller
/// one (it was 4 MiB) four answers whose readers stopped reading filled it
/// and stalled every other call on the connection until they were reset
/// (the flood test's never-reading clients). It costs no memory by itself;
/// what a stalled stream holds is its own window, for at most
/// `--stream-stall-timeout`.
pub const DEFAULT_CONN_WINDOW: u32 = DEFAULT_MAX_STREAMS as u32 * DEFAULT_STREAM_WINDOW;
/// Largest HTTP/2 frame this side accepts (see the windows above).
pub const DEFAULT_MAX_FRAME: u32 = 256 << 10;
/// Largest response head a pooled connection accepts (hyper's default).
pub const DEFAULT_MAX_HEADER_LIST: u32 = 16 << 20;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub max_streams: usize,
    pub max_conns: usize,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub stream_window: u32,
    pub conn_window: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams: DEFAULT_MAX_STREAMS,
            max_conns: DEFAULT_MAX_CONNS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            stream_window: DEFAULT_STREAM_WINDOW,
            conn_window: DEFAULT_CONN_WINDOW,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("call to {addr} failed: {source}")]
    Send {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    /// A plaintext connection whose peer answered with a TLS record: its
    /// sidecar takes only mTLS.
    #[error(
        "the sidecar at {addr} requires mTLS (it runs with --enable-mtls) and this one does not; \
         start both with --enable-mtls"
    )]
    PeerRequiresMtls { addr: SocketAddr },
    #[error("call to {addr}: reading the request body: {source}")]
    Body {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
}

impl PoolError {
    /// True when the request never left this sidecar, so another endpoint
    /// may be tried without risk of running it twice.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Handshake { .. } | Self::PeerRequiresMtls { .. }
        )
    }

    /// A failed send, told apart: on a plaintext connection, a frame
    /// "too large" is how a TLS alert (`15 03 03 ...`) reads as HTTP/2,
    /// the answer of a TLS-only peer to a plaintext preface.
    fn send(addr: SocketAddr, source: h2::Error, plaintext: bool) -> Self {
        if plaintext && source.reason() == Some(h2::Reason::FRAME_SIZE_ERROR) {
            return Self::PeerRequiresMtls { addr };
        }
        Self::Send { addr, source }
    }
}

/// A shared pool of HTTP/2 connections. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    slots: DashMap<SocketAddr, Arc<Slot>>,
    cfg: PoolConfig,
    connector: Connector,
    /// Tokio's clock, so idleness follows paused time in tests.
    epoch: Instant,
    /// Connections opened, and dials that failed (metrics).
    opened: AtomicU64,
    failed: AtomicU64,
}

/// A pool's state for metrics and metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub endpoints: usize,
    pub connections: usize,
    pub in_flight: usize,
    pub opened: u64,
    pub connect_failures: u64,
}

impl PoolStats {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "endpoints": self.endpoints,
            "connections": self.connections,
            "streamsInFlight": self.in_flight,
            "connectionsOpened": self.opened,
            "connectFailures": self.connect_failures,
        })
    }
}

/// The connections to one endpoint.
struct Slot {
    addr: SocketAddr,
    authority: Authority,
    conns: ArcSwap<Vec<Arc<Conn>>>,
    /// Held only while dialing: makes connecting single-flight.
    connecting: tokio::sync::Mutex<()>,
}

struct Conn {
    tx: h2::client::SendRequest<Bytes>,
    /// The server's verified identity (mTLS only).
    peer: Option<SpiffeId>,
    in_flight: AtomicUsize,
    last_used_ms: AtomicU64,
    closed: AtomicBool,
    pool: Weak<Inner>,
}

/// A connection taken for one call.
pub struct Checkout {
    pool: Arc<Inner>,
    slot: Arc<Slot>,
    lease: Lease,
}

impl Checkout {
    /// Sends `req` (whose URI holds only path and query). A request the
    /// connection could no longer take (it was closing, e.g. after GOAWAY)
    /// is sent once more on a fresh one: nothing of it had left.
    pub fn send<B: OutBody>(
        self,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<Response<PooledBody>, PoolError>> {
        async move {
            let Checkout {
                pool,
                slot,
                mut lease,
            } = self;
            let addr = slot.addr;
            if req.uri().authority().is_none() {
                set_authority(&mut req, &slot.authority);
            }
            let (mut head, body) = req.into_parts();
            http2::strip_connection_headers(&mut head.headers);
            let mut head = Request::from_parts(head, ());
            let mut retried = false;
            let mut tx = loop {
                let mut tx = lease.conn.tx.clone();
                match std::future::poll_fn(|cx| tx.poll_ready(cx)).await {
                    Ok(()) => break tx,
                    Err(e) => {
                        lease.conn.closed.store(true, Ordering::Release);
                        slot.remove(&lease.conn);
                        if retried {
                            let plaintext = lease.conn.peer.is_none();
                            return Err(PoolError::send(addr, e, plaintext));
                        }
                        retried = true;
                        // The replacement must be the same peer.
                        let peer = lease.conn.peer.clone();
                        lease = Box::pin(pool.lease(&slot, peer.as_ref().map(expected))).await?;
                    }
                }
            };
            let eos = body.is_end_stream();
            // Ask for the response head as soon as the request is out: HEAD
            // and friends have nothing to follow.
            *head.version_mut() = http::Version::HTTP_2;
            let plaintext = lease.conn.peer.is_none();
            let (response, stream) = tx
                .send_request(std::mem::take(&mut head), eos)
                .map_err(|source| PoolError::send(addr, source, plaintext))?;
            let response = send_request_body(body, stream, eos, response).await;
            let resp = response.map_err(|source| PoolError::send(addr, source, plaintext))?;
            let (parts, recv) = resp.into_parts();
            let recv = RecvBody::new(recv, &parts.headers);
            Ok(Response::from_parts(parts, PooledBody { recv, lease }))
        }
    }
}

/// A response streamed from a pooled connection: the stream, and the
/// lease that keeps the call counted on its connection until the last
/// frame has passed (or the body is dropped).
#[derive(Debug)]
pub struct PooledBody {
    recv: RecvBody,
    lease: Lease,
}

impl PooledBody {
    pub fn into_parts(self) -> (RecvBody, Lease) {
        (self.recv, self.lease)
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        self.recv.poll_frame(cx)
    }

    pub fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    pub fn size_hint(&self) -> http_body::SizeHint {
        self.recv.size_hint()
    }
}

/// Sends the request body and waits for the response head. A body already
/// in hand (one buffered message) goes out before this task yields, so the
/// connection writes it with the head; a streamed one is piped while the
/// response is awaited, and if the response comes first (a server that
/// answers before reading everything, or a bidi gRPC stream) the rest of
/// the body moves to a task of its own.
async fn send_request_body<B: OutBody>(
    mut body: B,
    mut stream: h2::SendStream<Bytes>,
    eos: bool,
    response: h2::client::ResponseFuture,
) -> Result<Response<h2::RecvStream>, h2::Error> {
    if eos {
        return response.await;
    }
    if let Some(data) = body.take_in_memory() {
        // Handed over at once (h2 holds it until the window allows). An
        // error means the stream is already gone; the response says why.
        let _ = stream.send_data(data, true);
        return response.await;
    }
    let mut pipe = http2::send_body(body, stream);
    let mut response = response;
    tokio::select! {
        biased;
        r = &mut response => {
            // Answered before the body ended: keep sending it, unless the
            // server has reset the stream (the pipe then ends at once).
            if (&mut pipe).now_or_never().is_none() {
                tokio::spawn(async move {
                    if let Err(e) = pipe.await {
                        tracing::debug!(error = %e, "request body ended early");
                    }
                });
            }
            r
        }
        sent = &mut pipe => {
            if let Err(e) = sent {
                tracing::debug!(error = %e, "request body ended early");
            }
            response.await
        }
    }
}

/// One call's claim on a connection; counted until dropped (the response
/// body holds it until its last frame).
#[derive(Debug)]
pub struct Lease {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(pool) = self.conn.pool.upgrade() {
            self.conn
                .last_used_ms
                .store(pool.now_ms(), Ordering::Relaxed);
        }
    }
}

impl Pool {
    /// Creates a pool and its idle reaper. Must be called inside a runtime.
    pub fn new(cfg: PoolConfig, connector: Connector) -> Self {
        let inner = Arc::new(Inner {
            slots: DashMap::new(),
            cfg,
            connector,
            epoch: Instant::now(),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Takes a connection to `addr`, dialing if needed. Fails before any
    /// request is consumed, so the caller may try another endpoint.
    pub async fn checkout(&self, addr: SocketAddr) -> Result<Checkout, PoolError> {
        self.checkout_for(addr, None).await
    }

    /// Like [`checkout`](Self::checkout), and with mTLS the server must be
    /// `expect`: a connection to anyone else is refused before any request
    /// is written to it.
    pub async fn checkout_for(
        &self,
        addr: SocketAddr,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<Checkout, PoolError> {
        let slot = self.inner.slot(addr);
        let lease = self.inner.lease(&slot, expect).await?;
        Ok(Checkout {
            pool: self.inner.clone(),
            slot,
            lease,
        })
    }

    /// Sends `req` (whose URI holds only path and query) to `addr`.
    pub fn send<B: OutBody>(
        &self,
        addr: SocketAddr,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<PooledBody>, PoolError>> {
        async move { self.checkout(addr).await?.send(req).await }
    }

    /// Endpoints, connections and calls in flight, walked at scrape time.
    pub fn stats(&self) -> PoolStats {
        let mut st = PoolStats {
            opened: self.inner.opened.load(Ordering::Relaxed),
            connect_failures: self.inner.failed.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for slot in self.inner.slots.iter() {
            let conns = slot.conns.load();
            st.endpoints += 1;
            st.connections += conns.len();
            st.in_flight += conns
                .iter()
                .map(|c| c.in_flight.load(Ordering::Relaxed))
                .sum::<usize>();
        }
        st
    }

    /// Open connections to `addr` (tests and metrics).
    pub fn connections(&self, addr: SocketAddr) -> usize {
        self.inner
            .slots
            .get(&addr)
            .map_or(0, |s| s.conns.load().len())
    }
}

/// A pooled connection serves a call only if its server is who the call
/// expects; connections were verified at the handshake, so this compares
/// two short strings.
fn checked(
    slot: &Slot,
    c: Arc<Conn>,
    expect: Option<ExpectedPeer<'_>>,
) -> Result<Lease, PoolError> {
    match (expect, &c.peer) {
        (Some(want), Some(found)) if !want.matches(found) => {
            Err(PoolError::Connect(ConnectError::IdentityMismatch {
                addr: slot.addr,
                expected: format!("{}.{}", want.app_id, want.namespace),
                found: found.to_string(),
            }))
        }
        _ => Ok(Lease::new(c)),
    }
}

fn expected(id: &SpiffeId) -> ExpectedPeer<'_> {
    ExpectedPeer {
        namespace: id.namespace(),
        app_id: id.app_id(),
    }
}

/// Gives a request whose URI holds only path and query the absolute form a
/// client connection needs (`http://authority/path?query`).
pub fn set_authority<B>(req: &mut Request<B>, authority: &Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, so this cannot fail.
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        if let Some(s) = self.slots.get(&addr) {
            return s.clone();
        }
        self.slots
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Slot {
                    addr,
                    // A SocketAddr always renders as a valid authority.
                    authority: Authority::try_from(addr.to_string())
                        .unwrap_or_else(|_| Authority::from_static("localhost")),
                    conns: ArcSwap::from_pointee(Vec::new()),
                    connecting: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    async fn lease(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<Lease, PoolError> {
        if let Some(c) = slot.pick(self.cfg.max_streams) {
            return checked(slot, c, expect);
        }
        // Boxed: waiting for a dial and dialing are large state machines
        // that every call's future would otherwise carry (and copy when its
        // task is spawned), while only the rare call that opens a
        // connection runs them.
        Box::pin(self.lease_slow(slot, expect)).await
    }

    /// No usable connection: take the dial lock, and dial unless someone
    /// else just did.
    async fn lease_slow(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<Lease, PoolError> {
        let _dialing = slot.connecting.lock().await;
        // Someone may have connected while we waited.
        if let Some(c) = slot.pick(self.cfg.max_streams) {
            return checked(slot, c, expect);
        }
        if slot.conns.load().len() >= self.cfg.max_conns
            && let Some(c) = slot.least_loaded()
        {
            return checked(slot, c, expect);
        }
        let conn = self.connect(slot, expect).await?;
        Ok(Lease::new(conn))
    }

    /// Dials one connection, counting successes and failures.
    async fn connect(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<Arc<Conn>, PoolError> {
        let r = self.dial(slot, expect).await;
        let counter = if r.is_ok() {
            &self.opened
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    async fn dial(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<Arc<Conn>, PoolError> {
        let addr = slot.addr;
        let (io, peer) = self.connector.connect(addr, expect).await?;
        let gate = Arc::new(http2::FlushGate::default());
        let io = http2::Coalesce::new(io, gate.clone());
        let (tx, conn) = h2::client::Builder::new()
            .initial_window_size(self.cfg.stream_window)
            .initial_connection_window_size(self.cfg.conn_window)
            .max_frame_size(DEFAULT_MAX_FRAME)
            .max_header_list_size(DEFAULT_MAX_HEADER_LIST)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|source| PoolError::Handshake { addr, source })?;
        let c = Arc::new(Conn {
            tx,
            peer,
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(self.now_ms()),
            closed: AtomicBool::new(false),
            pool: Arc::downgrade(self),
        });
        slot.conns.rcu(|v| {
            let mut v = Vec::clone(v);
            v.push(c.clone());
            v
        });
        let weak_slot = Arc::downgrade(slot);
        let weak_conn = Arc::downgrade(&c);
        let (interval, timeout) = (self.cfg.keepalive_interval, self.cfg.keepalive_timeout);
        tokio::spawn(async move {
            let mut conn = conn;
            let keepalive = http2::KeepaliveWatch::spawn(conn.ping_pong(), interval, timeout);
            let end = std::future::poll_fn(|cx| {
                // Every call's frames queued since the last pass leave in
                // one write (see `http2::Coalesce`).
                gate.hold();
                let mut r = Pin::new(&mut conn).poll(cx);
                if r.is_pending() && gate.release() {
                    r = Pin::new(&mut conn).poll(cx);
                }
                if let Poll::Ready(r) = r {
                    return Poll::Ready(r.map_err(|e| e.to_string()));
                }
                keepalive.poll_failed(cx).map(|e| Err(e.to_string()))
            })
            .await;
            if let Err(e) = end {
                tracing::debug!(%addr, error = %e, "pooled connection ended");
            }
            if let (Some(slot), Some(c)) = (weak_slot.upgrade(), weak_conn.upgrade()) {
                c.closed.store(true, Ordering::Release);
                slot.remove(&c);
            }
        });
        tracing::debug!(%addr, "pooled connection opened");
        Ok(c)
    }
}

impl Slot {
    /// The first open connection with fewer than `cap` calls in flight, so
    /// load packs onto few connections.
    fn pick(&self, cap: usize) -> Option<Arc<Conn>> {
        self.conns
            .load()
            .iter()
            .find(|c| c.is_open() && c.in_flight.load(Ordering::Acquire) < cap)
            .cloned()
    }

    /// The open connection with the fewest calls, for when every connection
    /// is at the cap and no more may open (HTTP/2 queues the extra streams).
    fn least_loaded(&self) -> Option<Arc<Conn>> {
        self.conns
            .load()
            .iter()
            .filter(|c| c.is_open())
            .min_by_key(|c| c.in_flight.load(Ordering::Acquire))
            .cloned()
    }

    fn remove(&self, dead: &Arc<Conn>) {
        self.conns.rcu(|v| {
            v.iter()
                .filter(|c| !Arc::ptr_eq(c, dead))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

impl Conn {
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

impl Lease {
    fn new(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { conn }
    }
}

/// Releases connections nobody used for the idle timeout, and forgets
/// endpoints that have no connections left.
async fn reap_idle(pool: Weak<Inner>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.cfg.idle_timeout) else {
        return;
    };
    let mut tick = crate::transport::reap_interval(idle_timeout);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = pool.now_ms();
        let idle_ms = pool.cfg.idle_timeout.as_millis() as u64;
        pool.slots.retain(|_, slot| {
            slot.conns.rcu(|v| {
                v.iter()
                    .filter(|c| {
                        c.in_flight.load(Ordering::Acquire) > 0
                            || now.saturating_sub(c.last_used_ms.load(Ordering::Relaxed)) < idle_ms
                    })
                    .cloned()
                    .collect::<Vec<_>>()
            });
            !slot.conns.load().is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::skiff_body::SkiffBody;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    use super::*;

    /// An in-process HTTP/2 server. Each response waits for a permit from
    /// `gate` (so tests can hold calls in flight); after `close_after`
    /// requests a connection sends GOAWAY.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
    }

    async fn server(close_after: Option<usize>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let (acc, g) = (accepted.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let g = g.clone();
                let served = Arc::new(AtomicUsize::new(0));
                let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(8);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let (g, served, done_tx) = (g.clone(), served.clone(), done_tx.clone());
                        async move {
                            let _p = g.acquire().await;
                            if close_after
                                .is_some_and(|n| served.fetch_add(1, Ordering::SeqCst) + 1 >= n)
                            {
                                let _ = done_tx.try_send(());
                            }
                            Ok::<_, Infallible>(Response::new(SkiffBody::full("ok")))
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = done_rx.recv() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            accepted,
            gate,
        }
    }

    fn get() -> Request<SkiffBody> {
        Request::builder()
            .uri("/x")
            .body(SkiffBody::Empty)
            .expect("request")
    }

    async fn ok(pool: &Pool, addr: SocketAddr) {
        let resp = pool.send(addr, get()).await.expect("send");
        let body = SkiffBody::from(resp.into_body())
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn a_burst_of_first_calls_makes_one_connection() {
        let s = server(None).await;
        let pool = Pool::new(PoolConfig::default(), Connector::default());
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { ok(&pool, s.addr).await })
            })
            .collect();
        for c in calls {
            c.await.expect("join");
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.connections(s.addr), 1);
    }

    #[tokio::test]
    async fn another_connection_opens_at_the_stream_cap() {
        let s = server(None).await;
        // Hold every response until all calls are in flight.
        let held = s.gate.available_permits();
        let closed = s.gate.acquire_many(held as u32).await.expect("gate");
        let cfg = PoolConfig {
            max_streams: 2,
            max_conns: 3,
            ..PoolConfig::default()
        };
        let pool = Pool::new(cfg, Connector::default());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { ok(&pool, s.addr).await })
            })
            .collect();
        // Wait until the pool has dialed all it may.
        for _ in 0..200 {
            if s.accepted.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 3, "capped at max_conns");
        drop(closed);
        for c in calls {
            c.await.expect("join");
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn calls_survive_goaway_by_reconnecting() {
        // The server sends GOAWAY after every request.
        let s = server(Some(1)).await;
        let pool = Pool::new(PoolConfig::default(), Connector::default());
        for _ in 0..5 {
            ok(&pool, s.addr).await;
        }
        assert!(
            s.accepted.load(Ordering::SeqCst) >= 2,
            "reconnected after GOAWAY"
        );
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let pool = Pool::new(PoolConfig::default(), Connector::default());
        let err = pool.send(addr, get()).await.expect_err("refused");
        assert!(err.is_connect(), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn idle_connections_are_released() {
        let s = server(None).await;
        let cfg = PoolConfig {
            idle_timeout: Duration::from_secs(60),
            // Paused time jumps past any PING's answer; this test is about
            // idleness alone.
            keepalive_interval: Duration::from_secs(3600),
            ..PoolConfig::default()
        };
        let pool = Pool::new(cfg, Connector::default());
        ok(&pool, s.addr).await;
        assert_eq!(pool.connections(s.addr), 1);
        // From here on the clock is ours: jump past the idle timeout.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(30)).await;
        tokio::task::yield_now().await;
        assert_eq!(pool.connections(s.addr), 1, "not idle long enough yet");
        tokio::time::advance(Duration::from_secs(46)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.connections(s.addr),
            0,
            "released after the idle timeout"
        );
    }
}
