//! HTTP/1.1 on both sides of the sidecar, without a connection task between
//! a call and its socket: [`client`] talks to HTTP apps, [`server`] serves
//! the HTTP API port. This module holds what both directions share: body
//! framing, the streaming body reader ([`H1Body`], chunked coding included)
//! and the body writer.

pub mod client;
pub mod server;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::body::{BoxError, OutBody};

/// First read buffer; body reads grow towards the maximum as a long body
/// keeps coming.
pub(crate) const READ_BUF_START: usize = 8 << 10;
pub(crate) const READ_BUF_MAX: usize = 256 << 10;
/// Header lines a message may have.
pub(crate) const MAX_HEADERS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("sending the request: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the app closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("reading the body to forward: {0}")]
    RequestBody(#[source] BoxError),
}

impl Http1Error {
    /// The app never saw this request, or dropped the connection before a
    /// byte of its answer: what a connection closed while idle looks like.
    pub(crate) fn is_stale(&self) -> bool {
        matches!(self, Self::ClosedBeforeAnswer | Self::Write(_))
    }
}

/// How a body this side sends is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// As the message's own `content-length` says, or no body at all.
    AsIs,
    /// `content-length` added.
    Length(u64),
    Chunked,
}

impl BodyFraming {
    /// For a request: chunked unless the length is known.
    pub(crate) fn of(h: &HeaderMap, method: &Method, body: &impl Body) -> Self {
        if h.contains_key(CONTENT_LENGTH) {
            return Self::AsIs;
        }
        match body.size_hint().exact() {
            // Methods whose body means something say so even when empty.
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => Self::AsIs,
            Some(n) => Self::Length(n),
            None => Self::Chunked,
        }
    }
}

/// A body in memory up to this size is copied behind its head so both
/// leave in one write; larger ones are written from their own buffer.
pub(crate) const MERGE_BODY_BYTES: usize = 16 << 10;

/// The length of `body` when it is small enough to join its head's write.
pub(crate) fn merged_len<B: Body>(body: &B) -> Option<usize> {
    body.size_hint()
        .exact()
        .filter(|&n| n <= MERGE_BODY_BYTES as u64)
        .map(|n| n as usize)
}

/// What a head with `headers` takes written, plus room for the start
/// line and the lines this hop adds (host, framing, connection): a head
/// buffer sized once instead of grown twice on the way.
pub(crate) fn head_capacity(headers: &http::HeaderMap) -> usize {
    const START_AND_ADDED: usize = 128;
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + START_AND_ADDED
}

pub(crate) fn header_line(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a body this side receives is framed (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Until the peer closes the connection (responses only).
    Close,
}

/// Whether the connection stays open after this message.
pub(crate) fn keeps_alive(h: &HeaderMap, http10: bool) -> bool {
    let says = |word: &str| {
        h.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(word)))
        })
    };
    if http10 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

/// Reads what is available into the spare capacity of `buf`.
pub(crate) fn poll_read_buf<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes a streamed body, chunked or as it is, after the message's head
/// when given one. All progress lives here, so a poll abandoned half-way
/// loses nothing.
pub(crate) struct BodyWriter<B> {
    body: B,
    framing: BodyFraming,
    /// The message head, not written yet: it waits for the body's first
    /// frame when that is ready at once, so both leave in one write.
    head: Option<BytesMut>,
    /// Bytes taken from the body and not yet written, in order: a chunk's
    /// size line, its data and its CRLF leave in one vectored write.
    queue: [Bytes; 3],
    done: bool,
}

impl<B: OutBody> BodyWriter<B> {
    pub(crate) fn new(body: B, framing: BodyFraming) -> Self {
        Self {
            body,
            framing,
            head: None,
            queue: Default::default(),
            done: false,
        }
    }

    pub(crate) fn with_head(body: B, framing: BodyFraming, head: BytesMut) -> Self {
        Self {
            head: Some(head),
            ..Self::new(body, framing)
        }
    }

    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Http1Error>> {
        loop {
            if self.queue.iter().any(|b| !b.is_empty()) {
                let mut slices = [io::IoSlice::new(&[]); 3];
                let mut k = 0;
                for b in self.queue.iter().filter(|b| !b.is_empty()) {
                    slices[k] = io::IoSlice::new(b);
                    k += 1;
                }
                let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))
                    .map_err(Http1Error::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Http1Error::Write(io::ErrorKind::WriteZero.into())));
                }
                for b in &mut self.queue {
                    let k = n.min(b.len());
                    b.advance(k);
                    n -= k;
                }
                continue;
            }
            if self.done {
                return Pin::new(&mut *io).poll_flush(cx).map_err(Http1Error::Write);
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(f) => f,
                // The body is not ready: the head goes on its own.
                Poll::Pending => match self.head.take() {
                    Some(h) => {
                        self.queue[0] = h.freeze();
                        continue;
                    }
                    None => return Poll::Pending,
                },
            };
            let chunked = self.framing == BodyFraming::Chunked;
            let mut lead = self.head.take().unwrap_or_default();
            match frame {
                Some(Ok(frame)) => {
                    // HTTP/1.1 trailers are not forwarded.
                    let data = match frame.into_data() {
                        Ok(d) if !d.is_empty() => d,
                        _ => {
                            self.head = (!lead.is_empty()).then_some(lead);
                            continue;
                        }
                    };
                    if !chunked {
                        self.queue = [lead.freeze(), data, Bytes::new()];
                        continue;
                    }
                    write_hex(&mut lead, data.len());
                    lead.extend_from_slice(b"\r\n");
                    // A last chunk takes the end of the body along.
                    let tail: &'static [u8] = if self.body.is_end_stream() {
                        self.done = true;
                        b"\r\n0\r\n\r\n"
                    } else {
                        b"\r\n"
                    };
                    self.queue = [lead.freeze(), data, Bytes::from_static(tail)];
                }
                Some(Err(e)) => return Poll::Ready(Err(Http1Error::RequestBody(e))),
                None => {
                    self.done = true;
                    if chunked {
                        lead.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.queue[0] = lead.freeze();
                }
            }
        }
    }
}

pub(crate) fn write_hex(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The connection a body is read from.
#[derive(Debug)]
pub(crate) enum ReadIo {
    /// A client connection, owned while its answer is read.
    Whole(TcpStream),
    /// The read half of a connection whose write half is elsewhere: a
    /// client's still sending the request body, or a server's loop that
    /// writes the answer.
    Half(OwnedReadHalf),
}

impl ReadIo {
    fn poll_read_buf(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::Whole(s) => poll_read_buf(s, buf, cx),
            Self::Half(s) => poll_read_buf(s, buf, cx),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyState {
    /// Bytes of the body (or of the current chunk) still to come.
    Length(u64),
    /// Inside chunked coding: the next chunk's size line is due...
    ChunkSize,
    /// ...the chunk's data...
    ChunkData(u64),
    /// ...the CRLF after it...
    ChunkEnd,
    /// ...or the trailer section after the last chunk.
    Trailers,
    Close,
    Done,
}

impl From<Framing> for BodyState {
    fn from(f: Framing) -> Self {
        match f {
            Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::ChunkSize,
            Framing::Close => Self::Close,
        }
    }
}

/// A body read from an HTTP/1.1 connection as it is polled: an app's
/// answer (client side) or a caller's request (server side).
#[derive(Debug)]
pub struct H1Body {
    io: Option<ReadIo>,
    buf: BytesMut,
    state: BodyState,
    end: End,
}

/// What happens to the connection once the body has been read to its end.
#[derive(Debug)]
pub(crate) enum End {
    /// Back to the client's idle pool (when `reusable`).
    Pool {
        reusable: bool,
        pool: Weak<dyn Handback>,
    },
    /// Back to the server loop, which reads the next request.
    Server(Arc<dyn Handback>),
    /// Nothing (the connection closes).
    Close,
}

/// Who takes a connection back when a body read from it is done with it:
/// the client's idle pool, or a served connection's loop. A trait, so this
/// module names neither.
pub(crate) trait Handback: Send + Sync + std::fmt::Debug {
    /// The body was read to its end: the connection, and what was read
    /// past the body.
    fn give_back(&self, io: ReadIo, rest: BytesMut);
    /// The body was dropped before its end.
    fn abandoned(&self) {}
}

/// A body as an HTTP/1.1 connection hands it over: none, all of it (it
/// came in the same read as its head, as most do), or a stream read from
/// the socket as it is polled.
#[derive(Debug)]
pub enum Received {
    Empty,
    Whole(Bytes),
    Stream(H1Body),
}

impl H1Body {
    pub(crate) fn new(io: ReadIo, buf: BytesMut, framing: Framing, end: End) -> Self {
        let mut b = Self {
            io: Some(io),
            buf,
            state: BodyState::from(framing),
            end,
        };
        if b.state == BodyState::Done {
            b.finish();
        }
        b
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // Dropped before its end: a served connection cannot read its next
        // request (the rest of this one is in the way), so it closes.
        if let (Some(_), End::Server(back)) = (self.io.take(), &self.end) {
            back.abandoned();
        }
    }
}

/// What the chunked-coding parser made of the bytes in hand.
enum Step {
    NeedMore,
    Progressed,
    /// The body is over; its trailers (often none).
    End(HeaderMap),
}

/// A chunk-size line longer than this is not HTTP.
const MAX_CHUNK_LINE: usize = 4096;

impl H1Body {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        loop {
            match self.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(n) | BodyState::ChunkData(n) if !self.buf.is_empty() => {
                    let take = (self.buf.len() as u64).min(n) as usize;
                    let data = self.buf.split_to(take).freeze();
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), l) => BodyState::Length(l),
                        (_, 0) => BodyState::ChunkEnd,
                        (_, l) => BodyState::ChunkData(l),
                    };
                    if self.state == BodyState::ChunkEnd {
                        // The last chunk is often in hand already: reach the
                        // end now, so this data goes out as the last.
                        self.settle();
                    }
                    if self.state == BodyState::Done {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Close if !self.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))));
                }
                BodyState::ChunkSize | BodyState::ChunkEnd | BodyState::Trailers => {
                    match self.parse_chunk_framing() {
                        Ok(Step::Progressed) => continue,
                        Ok(Step::End(trailers)) => {
                            self.state = BodyState::Done;
                            self.finish();
                            if trailers.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(Step::NeedMore) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                _ => {}
            }
            if let Err(e) = ready!(self.poll_fill(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }

    /// Consumes chunk framing already in the buffer, without reading, as
    /// far as the end of a body without trailers.
    fn settle(&mut self) {
        loop {
            if self.state == BodyState::Trailers && !self.buf.starts_with(b"\r\n") {
                return;
            }
            match self.parse_chunk_framing() {
                Ok(Step::Progressed) if matches!(self.state, BodyState::ChunkData(_)) => return,
                Ok(Step::Progressed) => {}
                Ok(Step::End(_)) => {
                    self.state = BodyState::Done;
                    return;
                }
                Ok(Step::NeedMore) | Err(_) => return,
            }
        }
    }

    fn parse_chunk_framing(&mut self) -> Result<Step, Http1Error> {
        match self.state {
            BodyState::ChunkSize => {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(Http1Error::Malformed("chunk size line too long".into()));
                    }
                    return Ok(Step::NeedMore);
                };
                let line = std::str::from_utf8(&self.buf[..eol])
                    .map_err(|_| Http1Error::Malformed("chunk size".into()))?;
                // Chunk extensions (`;name=value`) are allowed and ignored.
                let hex = line.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(hex, 16)
                    .map_err(|_| Http1Error::Malformed(format!("chunk size {hex:?}")))?;
                self.buf.advance(eol + 2);
                self.state = if size == 0 {
                    BodyState::Trailers
                } else {
                    BodyState::ChunkData(size)
                };
                Ok(Step::Progressed)
            }
            BodyState::ChunkEnd => {
                if self.buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(Http1Error::Malformed("chunk not followed by CRLF".into()));
                }
                self.buf.advance(2);
                self.state = BodyState::ChunkSize;
                Ok(Step::Progressed)
            }
            BodyState::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&self.buf, &mut headers) {
                    Ok(httparse::Status::Complete((n, hs))) => {
                        let mut map = HeaderMap::with_capacity(hs.len());
                        for h in hs.iter() {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(h.name.as_bytes()),
                                HeaderValue::from_bytes(h.value),
                            ) {
                                map.append(k, v);
                            }
                        }
                        self.buf.advance(n);
                        Ok(Step::End(map))
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_LINE * 4 => {
                        Err(Http1Error::Malformed("trailers too large".into()))
                    }
                    Ok(httparse::Status::Partial) => Ok(Step::NeedMore),
                    Err(e) => Err(Http1Error::Malformed(format!("trailers: {e}"))),
                }
            }
            _ => Ok(Step::NeedMore),
        }
    }

    /// Reads more of the connection into `buf`; the end of the connection
    /// ends a close-delimited body and is an error for any other.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Http1Error>> {
        let Some(io) = &mut self.io else {
            return Poll::Ready(Err(Http1Error::Read(io::ErrorKind::NotConnected.into())));
        };
        // Read as much as the body still promises, within bounds: large
        // bodies move in large reads.
        let want = match self.state {
            BodyState::Length(n) | BodyState::ChunkData(n) => usize::try_from(n)
                .unwrap_or(READ_BUF_MAX)
                .clamp(1024, READ_BUF_MAX),
            _ => READ_BUF_START,
        };
        if self.buf.capacity() - self.buf.len() < want.min(READ_BUF_START) {
            self.buf.reserve(want);
        }
        let n = ready!(io.poll_read_buf(&mut self.buf, cx)).map_err(Http1Error::Read)?;
        if n == 0 {
            if self.state == BodyState::Close {
                self.state = BodyState::Done;
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(Http1Error::Malformed(
                "the connection closed inside the body".into(),
            )));
        }
        Poll::Ready(Ok(()))
    }

    /// The body has been read to its end: a client's keep-alive connection
    /// with nothing left over goes back to the pool; a served connection
    /// goes back to its loop with whatever was read past this body (a
    /// pipelined request).
    fn finish(&mut self) {
        let Some(io) = self.io.take() else { return };
        let rest = std::mem::take(&mut self.buf);
        match &self.end {
            End::Pool { reusable, pool } => {
                if *reusable
                    && rest.is_empty()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.give_back(io, rest);
                }
            }
            End::Server(back) => back.give_back(io, rest),
            End::Close => {}
        }
    }
}
