//! Accept loops for the sidecar's listeners, with graceful drain.
//!
//! Each accepted connection is served by hyper on its own task. On shutdown
//! the accept loop stops, every connection is asked to finish (HTTP/2 GOAWAY,
//! HTTP/1.1 close after the current response), and [`Drain::wait`] returns
//! once all have ended or the grace period is over.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::body::SkiffBody;
use crate::pool::{DEFAULT_CONN_WINDOW, DEFAULT_STREAM_WINDOW};
use crate::transport::{Acceptor, PeerInfo};

/// Concurrent streams a client may open on one HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// A client that sends no complete request head within this time is dropped
/// (slowloris protection on HTTP/1.1).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Accepts connections until shutdown, serving each with `handler`.
pub async fn serve<H, F>(
    listener: TcpListener,
    cfg: ListenerConfig,
    acceptor: Acceptor,
    mut watch: Watch,
    handler: H,
) where
    H: Fn(PeerInfo, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<SkiffBody>, Infallible>> + Send + 'static,
{
    let builder = builder(&cfg);
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
        tokio::spawn(serve_conn(
            tcp,
            addr,
            builder.clone(),
            acceptor.clone(),
            watch.clone(),
            handler.clone(),
        ));
    }
}

async fn serve_conn<H, F>(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    acceptor: Acceptor,
    mut watch: Watch,
    handler: H,
) where
    H: Fn(PeerInfo, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<SkiffBody>, Infallible>> + Send + 'static,
{
    let (io, peer) = match acceptor.accept(tcp, addr).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "connection setup failed");
            return;
        }
    };
    let svc = service_fn(move |req| handler(peer.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => log_conn_end(addr, r),
        () = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            log_conn_end(addr, conn.await);
        }
    }
}

fn log_conn_end(addr: SocketAddr, r: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = r {
        // Garbage, resets and timeouts end one connection; others carry on.
        tracing::debug!(%addr, error = %e, "connection ended with error");
    }
}

fn builder(cfg: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .max_buf_size(cfg.max_header_bytes)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(DEFAULT_STREAM_WINDOW)
        .initial_connection_window_size(DEFAULT_CONN_WINDOW)
        .max_frame_size(crate::pool::DEFAULT_MAX_FRAME)
        .keep_alive_interval(crate::pool::DEFAULT_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::pool::DEFAULT_KEEPALIVE_TIMEOUT);
    if cfg.protocols == Protocols::H2Only {
        b = b.http2_only();
    }
    b
}
