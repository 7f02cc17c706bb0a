//! The one body type that flows through the sidecar's handlers.
//!
//! An enum rather than a boxed trait object: the common cases (a streamed
//! body handed from one connection to another, a small buffered message,
//! nothing) cost no allocation. It sits above the codecs and the pool: each
//! of them speaks its own body type (`http1::Received`, `http2::RecvBody`,
//! `pool::PooledBody`) and sends any [`OutBody`], and `From` impls here wrap
//! what they hand back. Code that must know whether bytes are still to
//! come asks [`SkiffBody::is_streamed`], never a list of variants.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, OutBody};
use crate::http1::{H1Body, Received};
use crate::http2::RecvBody;
use crate::pool::{Lease, PooledBody};
use crate::telemetry::metrics::GrpcCodes;

/// A request or response body anywhere on the path.
#[derive(Debug, Default)]
pub enum SkiffBody {
    #[default]
    Empty,
    /// A complete message; `None` once yielded.
    Full(Option<Bytes>),
    /// A request on a served HTTP/2 stream.
    H2(RecvBody),
    /// A response streamed from a pooled connection; its lease is released
    /// when the body ends or is dropped.
    Pooled(PooledBody),
    /// A body read from an HTTP/1.1 connection: an app's answer, or a
    /// request on the HTTP API port that did not come whole with its head.
    H1(H1Body),
    /// A response produced by a tonic service.
    Grpc(tonic::body::Body),
    /// A request whose first bytes were read ahead (for a retry that then
    /// could not be offered): those bytes, the trailers if they were read
    /// too (the stream is then over), else the rest of the stream.
    Prefixed(Option<Bytes>, Option<http::HeaderMap>, Box<SkiffBody>),
    /// A streamed gRPC response whose status is recorded as its trailers
    /// pass (the lease, when pooled, as in `Pooled`).
    Observed(RecvBody, Option<Lease>, GrpcDone),
    /// The same for any other body (a tonic response); boxed, as it nests.
    ObservedBoxed(Box<SkiffBody>, GrpcDone),
    /// A unary gRPC answer the door wrote itself: the framed message, an
    /// uncopied tail of it, then `grpc-status: 0` as trailers (`true` once
    /// sent).
    Unary(Option<Bytes>, Option<Bytes>, bool),
}

impl SkiffBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Self::Empty
        } else {
            Self::Full(Some(b))
        }
    }

    /// Whether bytes of this body may still be on their way (read from a
    /// connection or produced as it is polled), rather than all in memory.
    pub fn is_streamed(&self) -> bool {
        !matches!(self, Self::Empty | Self::Full(_))
    }

    /// Whether its sender may wait for an answer before it has sent all of
    /// it (an HTTP/2 stream: a gRPC bidi call). An HTTP/1.1 request body
    /// is sent whole before its answer is read, so waiting for more of it
    /// never deadlocks.
    pub fn is_full_duplex(&self) -> bool {
        match self {
            Self::Empty | Self::Full(_) | Self::H1(_) => false,
            Self::Prefixed(_, _, rest) => rest.is_full_duplex(),
            _ => true,
        }
    }
}

impl From<RecvBody> for SkiffBody {
    fn from(b: RecvBody) -> Self {
        Self::H2(b)
    }
}

impl From<PooledBody> for SkiffBody {
    fn from(b: PooledBody) -> Self {
        Self::Pooled(b)
    }
}

impl From<Received> for SkiffBody {
    fn from(b: Received) -> Self {
        match b {
            Received::Empty => Self::Empty,
            Received::Whole(b) => Self::full(b),
            Received::Stream(b) => Self::H1(b),
        }
    }
}

impl OutBody for SkiffBody {
    fn take_in_memory(&mut self) -> Option<Bytes> {
        match self {
            Self::Empty => Some(Bytes::new()),
            Self::Full(b) => Some(b.take().unwrap_or_default()),
            _ => None,
        }
    }
}

/// Records a gRPC call's status and duration once: from its trailers, or
/// `Unknown` when the stream ends without them, `Unavailable` when it
/// breaks, `Canceled` when it is dropped unfinished.
pub struct GrpcDone {
    codes: Arc<GrpcCodes>,
    start: Instant,
    recorded: bool,
}

impl std::fmt::Debug for GrpcDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcDone")
            .field("recorded", &self.recorded)
            .finish()
    }
}

impl GrpcDone {
    fn finish(&mut self, code: u16) {
        if !self.recorded {
            self.recorded = true;
            self.codes.record(code, self.start.elapsed());
        }
    }

    fn see(&mut self, r: &Option<Result<Frame<Bytes>, BoxError>>) {
        match r {
            Some(Ok(f)) => {
                if let Some(t) = f.trailers_ref() {
                    self.finish(crate::headers::grpc_status(t).unwrap_or(2));
                }
            }
            Some(Err(_)) => self.finish(14),
            None => self.finish(2),
        }
    }
}

impl Drop for GrpcDone {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// Records a gRPC response's status in `codes`: at once when the head
/// carries it (a trailers-only answer), else when the trailers pass.
pub fn observe_grpc(
    resp: http::Response<SkiffBody>,
    codes: Arc<GrpcCodes>,
    start: Instant,
) -> http::Response<SkiffBody> {
    if let Some(code) = crate::headers::grpc_status(resp.headers()) {
        codes.record(code, start.elapsed());
        return resp;
    }
    if matches!(resp.body(), SkiffBody::Unary(..)) {
        // Its status is known: the answer is whole and succeeded.
        codes.record(0, start.elapsed());
        return resp;
    }
    let done = GrpcDone {
        codes,
        start,
        recorded: false,
    };
    resp.map(|b| match b {
        SkiffBody::H2(i) => SkiffBody::Observed(i, None, done),
        SkiffBody::Pooled(p) => {
            let (i, l) = p.into_parts();
            SkiffBody::Observed(i, Some(l), done)
        }
        other => SkiffBody::ObservedBoxed(Box::new(other), done),
    })
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(e)
}

impl Body for SkiffBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is Unpin, so no pin projection is needed.
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::H2(b) => b.poll_frame(cx).map_err(boxed),
            Self::Pooled(b) => b.poll_frame(cx).map_err(boxed),
            Self::H1(b) => b.poll_frame(cx).map_err(boxed),
            Self::Grpc(b) => Pin::new(b).poll_frame(cx).map_err(boxed),
            Self::Observed(b, _, done) => {
                let r = ready!(b.poll_frame(cx)).map(|r| r.map_err(boxed));
                done.see(&r);
                Poll::Ready(r)
            }
            Self::ObservedBoxed(b, done) => {
                let r = ready!(Pin::new(&mut **b).poll_frame(cx));
                done.see(&r);
                Poll::Ready(r)
            }
            Self::Unary(head, tail, done) => {
                if let Some(b) = head.take().or_else(|| tail.take()) {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if std::mem::replace(done, true) {
                    return Poll::Ready(None);
                }
                let mut t = http::HeaderMap::with_capacity(1);
                t.insert(
                    crate::headers::GRPC_STATUS,
                    http::HeaderValue::from_static("0"),
                );
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Self::Prefixed(prefix, trailers, rest) => {
                if let Some(b) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if let Some(t) = trailers.take() {
                    // Trailers end a stream: `rest` has nothing after them.
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Pin::new(&mut **rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::H2(b) | Self::Observed(b, _, _) => b.is_end_stream(),
            Self::Pooled(b) => b.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
            Self::Grpc(b) => b.is_end_stream(),
            Self::Prefixed(p, t, rest) => p.is_none() && t.is_none() && rest.is_end_stream(),
            Self::ObservedBoxed(b, _) => b.is_end_stream(),
            Self::Unary(_, _, done) => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::H2(b) | Self::Observed(b, _, _) => b.size_hint(),
            Self::Pooled(b) => b.size_hint(),
            Self::ObservedBoxed(b, _) => b.size_hint(),
            Self::H1(b) => b.size_hint(),
            Self::Grpc(b) => b.size_hint(),
            Self::Unary(h, t, _) => SizeHint::with_exact(
                (h.as_ref().map_or(0, Bytes::len) + t.as_ref().map_or(0, Bytes::len)) as u64,
            ),
            Self::Prefixed(p, _, rest) => {
                let n = p.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + n);
                if let Some(u) = r.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}

/// The bytes of a body read ahead. One chunk (a small message arrives in
/// one) is kept as it came, without a copy.
#[derive(Default)]
pub struct Gathered {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
}

impl Gathered {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.rest
            .as_ref()
            .map_or_else(|| self.first.as_ref().map_or(0, Bytes::len), BytesMut::len)
    }

    pub fn push(&mut self, d: Bytes) {
        // An empty chunk (a DATA frame that only carries END_STREAM) must
        // not turn one kept chunk into a copy.
        if d.is_empty() {
            return;
        }
        match (&mut self.rest, self.first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&d),
            (None, None) => self.first = Some(d),
            (None, Some(first)) => {
                let mut buf = BytesMut::with_capacity(first.len() + d.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&d);
                self.rest = Some(buf);
            }
        }
    }

    pub fn into_bytes(self) -> Bytes {
        match self.rest {
            Some(buf) => buf.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }

    pub fn replayable(self) -> (SkiffBody, Option<Bytes>) {
        let b = self.into_bytes();
        (SkiffBody::full(b.clone()), Some(b))
    }

    pub fn prefixed(self, trailers: Option<http::HeaderMap>, rest: SkiffBody) -> SkiffBody {
        let b = self.into_bytes();
        let prefix = (!b.is_empty()).then_some(b);
        SkiffBody::Prefixed(prefix, trailers, Box::new(rest))
    }
}

/// A request body of known length up to this is read whole before the
/// request is written (see [`gather_small`]).
pub const COALESCE_BODY_BYTES: usize = 16 << 10;

/// A streamed body of known length up to [`COALESCE_BODY_BYTES`], read
/// whole: the next hop then writes it with the request head in one write
/// (which the peer reads in one go), instead of the head alone and the data
/// after it. The bytes are nearly always in hand already; this waits for
/// the rest of a small message, never for a stream. A body of unknown
/// length (gRPC, chunked) gives what it already holds, without waiting:
/// whole if its end is in hand too (a unary gRPC message arrives with
/// END_STREAM), else as a prefix of the rest. Anything else is returned
/// as it is.
pub async fn gather_small(body: SkiffBody) -> Result<SkiffBody, BoxError> {
    let limit = COALESCE_BODY_BYTES as u64;
    let hint = body.size_hint();
    let streamed = body.is_streamed();
    match hint.exact() {
        Some(n) if streamed && n > 0 && n <= limit => read_small(body).await,
        None if streamed && hint.lower() <= limit => take_in_hand(body),
        _ => Ok(body),
    }
}

/// The whole of a small body of known length.
async fn read_small(mut body: SkiffBody) -> Result<SkiffBody, BoxError> {
    let mut got = Gathered::default();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        match frame?.into_data() {
            Ok(d) => got.push(d),
            Err(f) => return Ok(got.prefixed(f.into_trailers().ok(), SkiffBody::Empty)),
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok(SkiffBody::full(got.into_bytes()))
}

/// What a body of unknown length holds already, up to
/// [`COALESCE_BODY_BYTES`]; polled without waiting (the real waker is
/// registered by whoever polls the rest). A failed body fails the call,
/// as it would have when forwarded.
fn take_in_hand(mut body: SkiffBody) -> Result<SkiffBody, BoxError> {
    use futures_util::FutureExt;
    let mut got = Gathered::default();
    loop {
        if body.is_end_stream() {
            return Ok(SkiffBody::full(got.into_bytes()));
        }
        if got.len() >= COALESCE_BODY_BYTES {
            return Ok(got.prefixed(None, body));
        }
        match http_body_util::BodyExt::frame(&mut body).now_or_never() {
            Some(Some(frame)) => match frame?.into_data() {
                Ok(d) => got.push(d),
                Err(f) => return Ok(got.prefixed(f.into_trailers().ok(), SkiffBody::Empty)),
            },
            Some(None) => return Ok(SkiffBody::full(got.into_bytes())),
            // Nothing more in hand: the rest streams.
            None if got.is_empty() => return Ok(body),
            None => return Ok(got.prefixed(None, body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodies_in_memory_are_not_streamed() {
        assert!(!SkiffBody::Empty.is_streamed());
        assert!(!SkiffBody::full("x").is_streamed());
        let rest = SkiffBody::Prefixed(Some(Bytes::from_static(b"a")), None, Box::default());
        assert!(rest.is_streamed());
        assert!(!rest.is_full_duplex(), "as its rest");
    }

    #[test]
    fn in_memory_bytes_are_taken_once() {
        let mut b = SkiffBody::full("abc");
        assert_eq!(b.take_in_memory().as_deref(), Some(&b"abc"[..]));
        assert!(b.is_end_stream());
        assert_eq!(SkiffBody::Empty.take_in_memory().as_deref(), Some(&b""[..]));
    }
}
