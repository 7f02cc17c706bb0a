//! Serving one HTTP/2 connection: every stream's handler runs inside the
//! connection's own task (one worker) or as a task of its own (several
//! workers, so one busy connection can use them all).
//!
//! Inside one task the streams and the connection take turns: a pass polls
//! the streams that were woken (they queue frames), then the connection
//! (which writes what they queued in one go, reads, and hands over new
//! streams), until neither has anything to do. No channel or task sits
//! between a request and its handler.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::RuntimeFlavor;
use tokio::time::Instant;

use super::{Coalesce, FlushGate, KeepaliveWatch, RecvBody, send_body, strip_connection_headers};
use crate::body::OutBody;
use crate::transport::PeerInfo;

/// A client must finish the HTTP/2 preface and SETTINGS exchange within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a served HTTP/2 connection behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub stream_window: u32,
    pub conn_window: u32,
    pub max_frame_size: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection without a stream this long is sent GOAWAY and closed
    /// (after 3/4 to all of it: the timer is moved on lazily). PINGs do
    /// not count: a client that only keeps the connection alive holds a
    /// descriptor and memory for nothing.
    pub idle_timeout: Duration,
    /// An answer the client grants no window for this long is reset.
    pub stall_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("HTTP/2 handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("keepalive: {0}")]
    Keepalive(String),
}

/// Serves `io` until the client goes away, the connection fails, or
/// `shutdown` completes and the streams in flight have finished (GOAWAY).
pub async fn serve_connection<T, H, F, B>(
    io: T,
    peer: PeerInfo,
    cfg: &Settings,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Fn(PeerInfo, Request<RecvBody>) -> F,
    F: Future<Output = Response<B>> + Send + 'static,
    B: OutBody,
{
    let gate = Arc::new(FlushGate::default());
    let handshake = builder(cfg).handshake::<_, Bytes>(Coalesce::new(io, gate.clone()));
    let mut conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ServeError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    let keepalive = KeepaliveWatch::spawn(
        conn.ping_pong(),
        cfg.keepalive_interval,
        cfg.keepalive_timeout,
    );
    let mut shutdown = pin!(shutdown);
    let mut draining = false;
    let inline = tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
    // Made at the first stream: an empty set still allocates a node the
    // size of a stream's future, which idle connections need not hold.
    let mut streams: Option<FuturesUnordered<_>> = None;
    let sleep = pin!(tokio::time::sleep(cfg.idle_timeout));
    let mut idle = IdleTimer::new(sleep, cfg.idle_timeout);
    poll_fn(|cx| {
        loop {
            // Writes wait for the end of the pass (see `Coalesce`).
            gate.hold();
            // Streams first: the connection below writes what they queued.
            if let Some(s) = streams.as_mut() {
                while let Poll::Ready(Some(())) = s.poll_next_unpin(cx) {}
            }
            if !draining && shutdown.as_mut().poll(cx).is_ready() {
                draining = true;
                conn.graceful_shutdown();
            }
            if let Poll::Ready(e) = keepalive.poll_failed(cx) {
                return Poll::Ready(Err(ServeError::Keepalive(e.to_string())));
            }
            let mut accepted = conn.poll_accept(cx);
            if accepted.is_pending() && gate.release() {
                // The pass is over: this poll writes what it queued.
                accepted = conn.poll_accept(cx);
            }
            match accepted {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let (parts, recv) = req.into_parts();
                    let body = RecvBody::new(recv, &parts.headers);
                    let call = handler(peer.clone(), Request::from_parts(parts, body));
                    let stream = serve_stream(call, respond, cfg.stall_timeout);
                    if inline {
                        // Polled on the next pass of this loop.
                        streams
                            .get_or_insert_with(FuturesUnordered::new)
                            .push(stream);
                    } else {
                        tokio::spawn(stream);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    if !draining && idle.expired(conn.has_streams(), cx) {
                        tracing::debug!(peer = %peer.addr, "idle HTTP/2 connection: GOAWAY");
                        draining = true;
                        conn.graceful_shutdown();
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

/// The idle timeout of one connection. A connection goes idle when its
/// last stream ends; the timer is only moved then, and only when it was
/// last set more than a quarter of the timeout ago, so a busy connection
/// does not touch the timer wheel on every call.
struct IdleTimer<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    timeout: Duration,
    armed: Instant,
    busy: bool,
}

impl<'a> IdleTimer<'a> {
    /// `sleep` was started with `timeout` just now.
    fn new(sleep: Pin<&'a mut tokio::time::Sleep>, timeout: Duration) -> Self {
        Self {
            sleep,
            timeout,
            armed: Instant::now(),
            busy: false,
        }
    }

    /// Whether the connection has been without streams for the timeout.
    fn expired(&mut self, has_streams: bool, cx: &mut std::task::Context<'_>) -> bool {
        if has_streams {
            self.busy = true;
            return false;
        }
        if std::mem::take(&mut self.busy) {
            let now = Instant::now();
            if now.duration_since(self.armed) > self.timeout / 4 {
                self.sleep.as_mut().reset(now + self.timeout);
                self.armed = now;
            }
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

fn builder(cfg: &Settings) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(cfg.max_header_list_size)
        .initial_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.conn_window)
        .max_frame_size(cfg.max_frame_size);
    b
}

/// One stream: the handler's answer, then its body. The client resetting
/// the stream first drops the handler, which cancels the call it made.
async fn serve_stream<F, B>(
    call: F,
    mut respond: h2::server::SendResponse<Bytes>,
    stall_limit: Duration,
) where
    F: Future<Output = Response<B>>,
    B: OutBody,
{
    // Scoped, so the call's state is gone while the body is sent: a
    // stream's future is as large as its largest step, not their sum.
    let answer = {
        let mut call = pin!(call);
        poll_fn(|cx| {
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            call.as_mut().poll(cx).map(Some)
        })
        .await
    };
    if let Some(resp) = answer {
        respond_with(respond, resp, stall_limit).await;
    }
}

/// Sends `resp` on a served stream: the head, with END_STREAM when there
/// is no body, else the body as it comes, resetting the stream when the
/// client grants no window for `stall_limit`.
pub async fn respond_with<B: OutBody>(
    mut respond: h2::server::SendResponse<Bytes>,
    resp: Response<B>,
    stall_limit: Duration,
) {
    let (mut parts, body) = resp.into_parts();
    strip_connection_headers(&mut parts.headers);
    let eos = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(tx) => {
            if !eos && let Err(e) = send_body(body, tx).stall_limit(stall_limit).await {
                tracing::debug!(error = %e, "response body ended early");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "response head refused");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skiff_body::SkiffBody;

    fn settings(idle: Duration) -> Settings {
        Settings {
            max_concurrent_streams: 16,
            max_header_list_size: 16 << 10,
            stream_window: 65_535,
            conn_window: 65_535,
            max_frame_size: 16_384,
            keepalive_interval: Duration::from_secs(3600),
            keepalive_timeout: Duration::from_secs(3600),
            idle_timeout: idle,
            stall_timeout: Duration::from_secs(30),
        }
    }

    /// Serves one in-memory connection whose handler answers after `work`
    /// with `body` bytes; returns the client's handle and the server's task.
    /// The client's streams start with `window` bytes of window.
    async fn serve_with(
        idle: Duration,
        work: Duration,
        body: usize,
        window: u32,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Result<(), ServeError>>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let peer = PeerInfo::new(([127, 0, 0, 1], 1).into(), None);
        let server = tokio::spawn(async move {
            let cfg = settings(idle);
            serve_connection(
                server_io,
                peer,
                &cfg,
                move |_, _| async move {
                    tokio::time::sleep(work).await;
                    Response::new(SkiffBody::full(vec![7u8; body]))
                },
                std::future::pending(),
            )
            .await
        });
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake(client_io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (send, server)
    }

    async fn connect(
        idle: Duration,
        work: Duration,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Result<(), ServeError>>,
    ) {
        serve_with(idle, work, 0, 65_535).await
    }

    async fn get(send: &h2::client::SendRequest<Bytes>) -> h2::client::ResponseFuture {
        let mut send = send.clone().ready().await.expect("ready");
        let (resp, _) = send
            .send_request(Request::get("http://x/big").body(()).expect("req"), true)
            .expect("send");
        resp
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_never_takes_is_reset_after_the_stall_limit() {
        let hour = Duration::from_secs(3600);
        // No window at all: not a byte of the body can leave.
        let (send, _server) = serve_with(hour, Duration::ZERO, 100_000, 0).await;
        let resp = get(&send).await.await.expect("the head needs no window");
        let started = Instant::now();
        let mut body = resp.into_body();
        let end = body
            .data()
            .await
            .and_then(Result::err)
            .expect("reset, not data");
        assert_eq!(end.reason(), Some(h2::Reason::CANCEL), "{end}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
        // A client that reads gets the whole answer, however long it is.
        let (send, _server) = serve_with(hour, Duration::ZERO, 1_000_000, 65_535).await;
        let mut body = get(&send).await.await.expect("head").into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            got += chunk.len();
            body.flow_control()
                .release_capacity(chunk.len())
                .expect("release");
        }
        assert_eq!(got, 1_000_000);
    }

    /// A client that leaves on the first GOAWAY closes its end while the
    /// server still writes its last frames; that is a close too.
    fn closed_by_client(e: ServeError) {
        assert!(
            matches!(&e, ServeError::H2(h) if h.is_io()),
            "a clean close or the client's: {e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_sent_goaway_and_closed() {
        let idle = Duration::from_secs(60);
        let (_send, server) = connect(idle, Duration::ZERO).await;
        let started = Instant::now();
        tokio::time::timeout(idle * 2, server)
            .await
            .expect("closed within the idle timeout")
            .expect("task")
            .map_or_else(closed_by_client, |()| ());
        assert!(started.elapsed() >= idle, "not before the idle timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_longer_than_the_idle_timeout_is_not_cut() {
        let idle = Duration::from_secs(60);
        let (send, server) = connect(idle, idle * 3).await;
        let resp = get(&send)
            .await
            .await
            .expect("an answer after three idle timeouts");
        assert_eq!(resp.status(), 200);
        // Idle from here on: closed again within the timeout.
        let done = Instant::now();
        tokio::time::timeout(idle * 2, server)
            .await
            .expect("closed once idle")
            .expect("task")
            .map_or_else(closed_by_client, |()| ());
        assert!(
            done.elapsed() >= idle * 3 / 4,
            "the timer moved on at the end of the stream"
        );
    }
}
