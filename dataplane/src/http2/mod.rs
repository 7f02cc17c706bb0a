//! HTTP/2 on the `h2` crate directly, for every HTTP/2 hop the sidecar
//! serves or dials: the internal port, the gRPC API, h2c on the HTTP API,
//! and the pool's connections to other sidecars and to h2c/gRPC apps.
//!
//! Why not hyper's HTTP/2: hyper's server spawns a task per stream, and its
//! client hands every request to the connection task over a channel, spawns
//! a task for the response future and another to pipe the request body,
//! then sends the response back over a oneshot. On a call that crosses two
//! sidecars that is six task hops and a dozen allocations that carry no
//! bytes (perf/RESULTS.md, issue 8). Here a call's future talks to the
//! connection's shared stream state itself: the caller writes HEADERS and
//! DATA from its own task (so they leave in one write), and the server runs
//! a connection's streams inside the connection's task.
//!
//! This module owns the pieces both directions share: [`RecvBody`] (an
//! incoming stream as an `http_body::Body`, returning flow-control window as
//! its data moves on), [`send_body`] (any body into a stream, within the
//! peer's window, stopping when the peer resets it) and [`KeepaliveWatch`].

pub mod server;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::BoxError;

/// The body of an HTTP/2 stream we receive: a request on a served
/// connection, or a response on a pooled one.
#[derive(Debug)]
pub struct RecvBody {
    stream: h2::RecvStream,
    /// What `content-length` announced and has not arrived yet (h2 itself
    /// refuses a stream whose data does not match it).
    remaining: Option<u64>,
    data_done: bool,
}

impl RecvBody {
    pub fn new(stream: h2::RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Self {
            stream,
            remaining,
            data_done: false,
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The bytes move on to the next hop at once, so the
                    // window they used is the peer's again; the next hop's
                    // own window bounds what waits in this sidecar.
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    if let Some(r) = &mut self.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None if self.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::new(),
        }
    }
}

/// Why a body stopped flowing into a stream.
#[derive(Debug, thiserror::Error)]
pub enum SendBodyError {
    #[error("the peer reset the stream ({0:?})")]
    Reset(h2::Reason),
    #[error("HTTP/2 stream: {0}")]
    Stream(#[source] h2::Error),
    #[error("reading the body to forward: {0}")]
    Body(#[source] BoxError),
    #[error("the peer granted no window for {0:?}; stream reset")]
    Stalled(Duration),
}

/// Streams `body` into `tx` until its end (or trailers). Data is taken
/// from `body` only while the stream has window for it, so a slow reader
/// holds back the sender instead of filling this sidecar's memory; when
/// the peer resets the stream, `body` is dropped, which cancels whatever
/// feeds it (the upstream call, or the app's request).
pub fn send_body<B>(body: B, tx: h2::SendStream<Bytes>) -> SendBody<B> {
    SendBody {
        body,
        tx,
        held: None,
        stall: None,
    }
}

/// The future of [`send_body`]. `Unpin`, so a caller may poll it in place
/// and still hand it to a task of its own later.
pub struct SendBody<B> {
    body: B,
    tx: h2::SendStream<Bytes>,
    /// A chunk taken from the body that waits for window.
    held: Option<(Bytes, bool)>,
    stall: Option<StallTimer>,
}

impl<B> SendBody<B> {
    /// Resets the stream (CANCEL) once the peer has granted no window for
    /// `limit` while a chunk waits: a peer that never reads must not hold
    /// the chunk, and the call behind it, for ever.
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.stall = Some(StallTimer {
            limit,
            sleep: None,
            armed: false,
        });
        self
    }
}

/// How long a send has waited for window. The timer is made at the first
/// wait (most answers fit the window and never need one) and reused.
struct StallTimer {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set while a wait is being timed.
    armed: bool,
}

impl StallTimer {
    /// Whether the wait now going on has lasted the limit.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        // The clock is read when a wait starts, not on every wake-up in it.
        if !std::mem::replace(&mut self.armed, true) {
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }

    fn progressed(&mut self) {
        self.armed = false;
    }
}

impl<B> Future for SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), SendBodyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        poll_send_body(
            &mut me.body,
            &mut me.tx,
            &mut me.held,
            me.stall.as_mut(),
            cx,
        )
    }
}

fn poll_send_body<B>(
    body: &mut B,
    tx: &mut h2::SendStream<Bytes>,
    held: &mut Option<(Bytes, bool)>,
    mut stall: Option<&mut StallTimer>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SendBodyError>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        // Registered on every pass, so a reset wakes us whatever we wait on.
        match tx.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => return Poll::Ready(Err(SendBodyError::Reset(reason))),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(SendBodyError::Stream(e))),
            Poll::Pending => {}
        }
        if let Some((_, eos)) = held {
            // A chunk in hand waits for window before the body is polled
            // again.
            while tx.capacity() == 0 {
                match tx.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(SendBodyError::Stream(e)));
                    }
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(SendBodyError::Stream(h2::Error::from(
                            h2::Reason::STREAM_CLOSED,
                        ))));
                    }
                    Poll::Pending => {
                        if let Some(t) = stall.as_deref_mut()
                            && t.expired(cx)
                        {
                            tx.send_reset(h2::Reason::CANCEL);
                            return Poll::Ready(Err(SendBodyError::Stalled(t.limit)));
                        }
                        return Poll::Pending;
                    }
                }
            }
            if let Some(t) = stall.as_deref_mut() {
                t.progressed();
            }
            let eos = *eos;
            if let Some((data, _)) = held.take() {
                tx.send_data(data, eos).map_err(SendBodyError::Stream)?;
            }
            if eos {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    if data.is_empty() {
                        // Needs no window: an explicit end of stream.
                        tx.send_data(data, eos).map_err(SendBodyError::Stream)?;
                        if eos {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // Claim a byte, not the chunk: h2 raises the claim to
                    // what is buffered when the data is handed over, and a
                    // stream waiting with a large claim would starve others
                    // of the connection window.
                    tx.reserve_capacity(1);
                    *held = Some((data, eos));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        tx.send_trailers(trailers).map_err(SendBodyError::Stream)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                let e: BoxError = e.into();
                let reason = e
                    .downcast_ref::<h2::Error>()
                    .and_then(h2::Error::reason)
                    .unwrap_or(h2::Reason::INTERNAL_ERROR);
                tx.send_reset(reason);
                return Poll::Ready(Err(SendBodyError::Body(e)));
            }
            None => {
                tx.send_data(Bytes::new(), true)
                    .map_err(SendBodyError::Stream)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Writes a connection's frames in one go per pass of its loop.
///
/// h2 writes out its buffer whenever a DATA frame larger than 256 bytes is
/// queued (it chains at most one such frame), so a pass that carries many
/// calls (HEADERS and DATA of forty requests) would make forty writes, and
/// under TLS forty records and forty system calls. The connection's loop
/// holds the [`FlushGate`] while it runs streams and the connection, and
/// releases it at the end of the pass: writes are kept here meanwhile and
/// leave together with the last flush. Large writes (a big body's frames)
/// go straight through, without a copy.
pub struct Coalesce<T> {
    io: T,
    buf: BytesMut,
    gate: Arc<FlushGate>,
    /// `buf` grew past `COALESCE_KEEP` since it was last emptied.
    large: bool,
    /// Written since the last flush that reached `io`: kept bytes, or a
    /// large write that went through but may sit in `io`'s own buffer
    /// (rustls keeps records until flushed).
    dirty: bool,
}

/// Whether the connection's loop is in the middle of a pass (see
/// [`Coalesce`]).
#[derive(Debug, Default)]
pub struct FlushGate {
    held: AtomicBool,
    /// Bytes are kept that a flush was asked for while held.
    owed: AtomicBool,
}

/// A write at least this large, with nothing kept, is not copied.
const COALESCE_DIRECT: usize = 64 << 10;
/// A write buffer up to this is kept between passes.
const COALESCE_KEEP: usize = 8 << 10;
/// Kept bytes are written out once they reach this, held or not.
const COALESCE_MAX: usize = 256 << 10;

impl FlushGate {
    pub fn hold(&self) {
        self.held.store(true, Ordering::Relaxed);
    }

    /// Ends a pass; true when kept bytes wait for a flush (poll the
    /// connection once more to write them).
    pub fn release(&self) -> bool {
        self.held.store(false, Ordering::Relaxed);
        self.owed.swap(false, Ordering::Relaxed)
    }
}

impl<T> Coalesce<T> {
    pub fn new(io: T, gate: Arc<FlushGate>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            gate,
            large: false,
            dirty: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            bytes::Buf::advance(&mut self.buf, n);
        }
        // Written. A small buffer is kept for the next pass (a busy
        // connection would allocate it again for every answer); a large
        // one is let go, so an idle connection holds at most
        // `COALESCE_KEEP` bytes for it.
        if std::mem::take(&mut self.large) {
            self.buf = BytesMut::new();
        } else {
            // Its start moves back at the next `reserve`, without copying.
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        me.dirty = true;
        if me.buf.is_empty() && len >= COALESCE_DIRECT {
            return Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        }
        if me.buf.len() + len > COALESCE_MAX {
            ready!(me.poll_drain(cx))?;
            if len >= COALESCE_DIRECT {
                return Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
            }
        }
        me.buf.reserve(len);
        me.large |= me.buf.capacity() > COALESCE_KEEP;
        for b in bufs {
            me.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if !me.dirty {
            return Poll::Ready(Ok(()));
        }
        if me.gate.held.load(Ordering::Relaxed) {
            me.gate.owed.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        ready!(me.poll_drain(cx))?;
        ready!(Pin::new(&mut me.io).poll_flush(cx))?;
        me.dirty = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

/// Why a connection's keepalive gave up on it.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveError {
    #[error("no PING answer within {0:?}")]
    Timeout(Duration),
    #[error("PING: {0}")]
    Ping(#[source] h2::Error),
}

/// PINGs the peer every `interval` and returns once a PING goes unanswered
/// for `timeout`, so a connection to a vanished peer is closed even when no
/// call is using it. Pending forever without a PING handle.
async fn keepalive(
    ping: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) -> KeepaliveError {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return KeepaliveError::Ping(e),
            Err(_) => return KeepaliveError::Timeout(timeout),
        }
    }
}

/// A connection's keepalive, run as a task of its own: the connection's
/// loop then checks a flag on each pass instead of polling a timer (which
/// it would do several times per call). The task stops with the watch.
pub struct KeepaliveWatch {
    shared: Arc<KeepaliveShared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct KeepaliveShared {
    failed: std::sync::OnceLock<KeepaliveError>,
    waker: futures_util::task::AtomicWaker,
}

impl KeepaliveWatch {
    pub fn spawn(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) -> Self {
        let shared = Arc::new(KeepaliveShared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let e = keepalive(ping, interval, timeout).await;
            let _ = s.failed.set(e);
            s.waker.wake();
        });
        Self { shared, task }
    }

    /// Ready (with the reason) once the peer stopped answering.
    pub fn poll_failed(&self, cx: &mut Context<'_>) -> Poll<&KeepaliveError> {
        if let Some(e) = self.shared.failed.get() {
            return Poll::Ready(e);
        }
        self.shared.waker.register(cx.waker());
        match self.shared.failed.get() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

impl Drop for KeepaliveWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Request and response heads on HTTP/2 must not carry connection-specific
/// headers (h2 refuses them); an HTTP/1.1 app or client may have sent some.
/// Cheap when there are none, which is nearly always: a few lookups of
/// constant names.
pub fn strip_connection_headers(h: &mut HeaderMap) {
    use crate::headers::{KEEP_ALIVE, PROXY_CONNECTION};
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    let found = [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
    .iter()
    .any(|n| h.contains_key(n))
        || h.get(TE).is_some_and(|v| v != "trailers");
    if found {
        crate::headers::strip_hop_by_hop(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records every write that reaches the socket.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncRead for Writes {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.get_mut().0.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn held_flushes_leave_in_one_write_at_release() {
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesce::new(Writes::default(), gate.clone());
        gate.hold();
        for i in 0..40u8 {
            io.write_all(&[i; 300]).await.expect("in-memory io");
            io.flush().await.expect("in-memory io");
        }
        assert!(io.io.0.is_empty(), "nothing written while held");
        assert!(gate.release(), "the held flushes are owed");
        assert!(!gate.release(), "owed once");
        io.flush().await.expect("in-memory io");
        assert_eq!(io.io.0.len(), 1);
        assert_eq!(io.io.0[0].len(), 40 * 300);
        assert_eq!(io.io.0[0][299], 0);
        assert_eq!(io.io.0[0][300], 1);
        assert_eq!(
            io.buf.capacity(),
            0,
            "an idle connection keeps no large buffer"
        );
        // A small one is kept for the next pass: the next write lands in
        // the same memory.
        gate.hold();
        io.write_all(&[1; 100]).await.expect("in-memory io");
        let first = io.buf.as_ptr();
        gate.release();
        io.flush().await.expect("in-memory io");
        gate.hold();
        io.write_all(&[2; 100]).await.expect("in-memory io");
        assert_eq!(io.buf.as_ptr(), first, "the buffer was kept");
        gate.release();
        io.flush().await.expect("in-memory io");
        assert_eq!(io.io.0.len(), 3);
        assert_eq!(io.io.0[2], vec![2; 100]);
    }

    #[tokio::test]
    async fn large_writes_are_not_copied_and_keep_order() {
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesce::new(Writes::default(), gate.clone());
        io.write_all(&[7; COALESCE_DIRECT])
            .await
            .expect("in-memory io");
        assert_eq!(io.io.0.len(), 1, "a large write goes straight through");
        gate.hold();
        io.write_all(&[1; 10]).await.expect("in-memory io");
        // Kept bytes go first, then the large write, uncopied.
        io.write_all(&[2; COALESCE_MAX])
            .await
            .expect("in-memory io");
        assert_eq!(io.io.0.len(), 3);
        assert_eq!(io.io.0[1], vec![1; 10]);
        assert_eq!(io.io.0[2].len(), COALESCE_MAX);
        io.shutdown().await.expect("in-memory io");
    }

    #[tokio::test]
    async fn a_large_write_while_held_still_owes_a_flush() {
        // TLS keeps records in its own buffer until flushed: a large
        // write that went straight through must still be flushed at the
        // end of the pass (uploads over mTLS crawled without this).
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesce::new(Writes::default(), gate.clone());
        gate.hold();
        io.write_all(&[3; COALESCE_DIRECT])
            .await
            .expect("in-memory io");
        io.flush().await.expect("in-memory io");
        assert!(gate.release(), "the direct write is owed a flush");
        io.flush().await.expect("in-memory io");
        assert!(!io.dirty);
        gate.hold();
        io.flush().await.expect("in-memory io");
        assert!(!gate.release(), "nothing written, nothing owed");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_kept_even_when_held() {
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesce::new(Writes::default(), gate.clone());
        gate.hold();
        io.write_all(b"goaway").await.expect("in-memory io");
        io.shutdown().await.expect("in-memory io");
        assert_eq!(io.io.0, vec![b"goaway".to_vec()]);
    }
}
