//! Accept loops for the sidecar's listeners, with graceful drain.
//!
//! Each accepted connection is served on its own task: HTTP/2 (the internal
//! and gRPC ports, and h2c on the HTTP port, told apart by its preface) by
//! [`crate::http2::server`], HTTP/1.1 by [`crate::http1::server`]. Handlers
//! see one request type either way. On shutdown the accept loop stops, every connection is
//! asked to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current
//! response), and [`Drain::wait`] returns once all have ended or the grace
//! period is over.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::ConnectionLimits;
use crate::pool::{
    DEFAULT_CONN_WINDOW, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_FRAME,
    DEFAULT_STREAM_WINDOW,
};
use crate::skiff_body::SkiffBody;
use crate::transport::{Acceptor, Io, PeerInfo};
use crate::{http1, http2};

/// Which protocols a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 and h2c (prior knowledge), detected per connection.
    Http1AndH2,
    /// HTTP/2 only (gRPC and the internal port).
    H2Only,
}

/// Tells connections to finish, and waits until they have.
pub struct Drain {
    signal: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

/// A listener's handle on the drain: a shutdown signal and a token whose
/// clones count live connections.
#[derive(Clone)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (signal, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            signal,
            done_tx,
            done_rx,
        }
    }
}

impl Drain {
    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.signal.subscribe(),
            _alive: self.done_tx.clone(),
        }
    }

    /// Signals shutdown and waits up to `grace` for connections to end.
    /// Returns false when the grace period ran out first.
    pub async fn wait(self, grace: Duration) -> bool {
        let Drain {
            signal,
            done_tx,
            mut done_rx,
        } = self;
        let _ = signal.send(true);
        drop(done_tx);
        tokio::time::timeout(grace, done_rx.recv()).await.is_ok()
    }
}

impl Watch {
    async fn signaled(&mut self) {
        // An error means the Drain is gone, which is shutdown too.
        let _ = self.signal.wait_for(|v| *v).await;
    }
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub protocols: Protocols,
    pub max_header_bytes: usize,
    pub limits: ConnectionLimits,
}

impl ListenerConfig {
    fn h1(&self) -> http1::server::Settings {
        http1::server::Settings {
            max_head_bytes: self.max_header_bytes,
            header_timeout: self.limits.header_timeout,
            idle_timeout: self.limits.idle_timeout,
        }
    }

    fn h2(&self) -> http2::server::Settings {
        http2::server::Settings {
            max_concurrent_streams: self.limits.max_concurrent_streams,
            max_header_list_size: u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX),
            stream_window: DEFAULT_STREAM_WINDOW,
            conn_window: DEFAULT_CONN_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            idle_timeout: self.limits.idle_timeout,
            stall_timeout: self.limits.stream_stall_timeout,
        }
    }
}

/// Accepts connections until shutdown, serving each with `handler`.
pub async fn serve<H, F>(
    listener: TcpListener,
    cfg: ListenerConfig,
    acceptor: Acceptor,
    mut watch: Watch,
    handler: H,
) where
    H: Fn(PeerInfo, Request<SkiffBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<SkiffBody>> + Send + 'static,
{
    let cfg = Arc::new(cfg);
    // A permit per open connection: past the limit a new connection is
    // closed at once, so a flood cannot take the memory and descriptors
    // the kept connections need (nor sit in the kernel's backlog).
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_connections));
    let mut refusals = Refusals::default();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = watch.signaled() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(tcp);
            refusals.note(addr, cfg.limits.max_connections);
            continue;
        };
        tokio::spawn(serve_conn(
            permit,
            tcp,
            addr,
            cfg.clone(),
            acceptor.clone(),
            watch.clone(),
            handler.clone(),
        ));
    }
}

async fn serve_conn<H, F>(
    _permit: tokio::sync::OwnedSemaphorePermit,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    cfg: Arc<ListenerConfig>,
    acceptor: Acceptor,
    mut watch: Watch,
    handler: H,
) where
    H: Fn(PeerInfo, Request<SkiffBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<SkiffBody>> + Send + 'static,
{
    let (io, peer) = match acceptor.accept(tcp, addr).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "connection setup failed");
            return;
        }
    };
    let h2 = match (&io, cfg.protocols) {
        (_, Protocols::H2Only) => true,
        (Io::Plain(tcp), Protocols::Http1AndH2) => {
            match starts_with_h2_preface(tcp, cfg.limits.header_timeout).await {
                Ok(h2) => h2,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "no request");
                    return;
                }
            }
        }
        // TLS on a mixed listener would need ALPN; none is configured so.
        (Io::Tls(_), Protocols::Http1AndH2) => false,
    };
    // The codecs hand over bodies of their own types; handlers see one.
    if h2 {
        let shutdown = watch.signaled();
        let handler = move |p, req: Request<http2::RecvBody>| handler(p, req.map(SkiffBody::from));
        if let Err(e) =
            http2::server::serve_connection(io, peer, &cfg.h2(), handler, shutdown).await
        {
            // Garbage, resets and timeouts end one connection; others carry on.
            tracing::debug!(%addr, error = %e, "connection ended with error");
        }
        return;
    }
    let Io::Plain(tcp) = io else {
        return;
    };
    let shutdown = watch.signaled();
    let handler = move |p, req: Request<http1::Received>| handler(p, req.map(SkiffBody::from));
    if let Err(e) = http1::server::serve_connection(tcp, peer, &cfg.h1(), handler, shutdown).await {
        tracing::debug!(%addr, error = %e, "connection ended with error");
    }
}

/// How often a listener past `--max-connections` says so in the log.
const REFUSED_WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections a listener closed at accept: every one is counted, and
/// one log line a `REFUSED_WARN_EVERY` at most says how many, however
/// hard the flood.
#[derive(Default)]
struct Refusals {
    since_warn: u64,
    last_warn: Option<tokio::time::Instant>,
}

impl Refusals {
    fn note(&mut self, addr: SocketAddr, limit: usize) {
        crate::telemetry::metrics::registry().connection_refused();
        self.since_warn += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warn
            .is_some_and(|t| now.duration_since(t) < REFUSED_WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            %addr,
            limit,
            refused = self.since_warn,
            "connection refused: --max-connections reached"
        );
        self.since_warn = 0;
        self.last_warn = Some(now);
    }
}

/// What an HTTP/2 client sends first, prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells h2c from HTTP/1.1 by peeking at the first bytes, leaving them in
/// the socket for whichever codec takes the connection.
async fn starts_with_h2_preface(
    tcp: &tokio::net::TcpStream,
    within: Duration,
) -> std::io::Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            // HTTP/1.1 (or nothing): `http1::server` answers, or closes.
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far (clients send it in one segment, so
        // this is rare): the bytes stay readable, so wait rather than spin.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
