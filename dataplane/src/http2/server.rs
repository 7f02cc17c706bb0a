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
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::RuntimeFlavor;

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
                    let stream = serve_stream(call, respond);
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
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
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
async fn serve_stream<F, B>(call: F, mut respond: h2::server::SendResponse<Bytes>)
where
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
        respond_with(respond, resp).await;
    }
}

/// Sends `resp` on a served stream: the head, with END_STREAM when there
/// is no body, else the body as it comes.
pub async fn respond_with<B: OutBody>(
    mut respond: h2::server::SendResponse<Bytes>,
    resp: Response<B>,
) {
    let (mut parts, body) = resp.into_parts();
    strip_connection_headers(&mut parts.headers);
    let eos = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(tx) => {
            if !eos && let Err(e) = send_body(body, tx).await {
                tracing::debug!(error = %e, "response body ended early");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "response head refused");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}
