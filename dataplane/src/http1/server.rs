//! HTTP/1.1 for the HTTP API port: one task per connection reads a request
//! head, runs the handler, writes the answer and reads the next.
//!
//! Why not hyper's server: it keeps read and write buffers for every
//! connection, idle or not, and feeds the request body through a channel
//! from its dispatcher. Here an idle keep-alive connection holds no buffer,
//! a request body that arrived with its head is handed over as one `Bytes`
//! (what most calls are), and a longer one is read straight from the
//! socket by whoever forwards it: the body borrows the connection's read
//! half and gives it back (with anything read past its end, a pipelined
//! request) once read to its end, through a lock-free slot.
//!
//! What it refuses, and how: a malformed head, conflicting or invalid
//! `content-length`, `transfer-encoding` together with `content-length`
//! (request smuggling) are 400; an unknown transfer coding 501; a head over
//! the size limit or with too many fields 431; another HTTP version 505;
//! each with `connection: close`. A head not finished within the header
//! timeout, or a keep-alive connection idle past the idle timeout, is
//! closed without an answer. A request body left unread by the handler
//! closes the connection after the answer (its rest is in the way of the
//! next request).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use concurrent_queue::ConcurrentQueue;
use futures_util::FutureExt;
use futures_util::future::FusedFuture;
use futures_util::task::AtomicWaker;
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{
    BodyFraming, BodyWriter, End, Framing, H1Body, Http1Error, MAX_HEADERS, READ_BUF_START, ReadIo,
    Received, header_line, keeps_alive, merged_len, poll_read_buf,
};
use crate::body::OutBody;
use crate::transport::PeerInfo;

/// How served HTTP/1.1 connections behave.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request head (request line and fields).
    pub max_head_bytes: usize,
    /// A started request head must be complete within this (slowloris).
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Where a request body that borrowed the connection's read half gives it
/// back. One per connection, reused for every request.
#[derive(Debug)]
pub(crate) struct Handback {
    state: AtomicU8,
    waker: AtomicWaker,
    slot: ConcurrentQueue<(OwnedReadHalf, BytesMut)>,
}

const LENT: u8 = 0;
const RETURNED: u8 = 1;
const ABANDONED: u8 = 2;

impl super::Handback for Handback {
    /// The body was read to its end: the read half, and what was read past
    /// the body.
    fn give_back(&self, io: ReadIo, rest: BytesMut) {
        if let ReadIo::Half(rd) = io {
            // The slot is empty: the loop emptied it before lending again.
            let _ = self.slot.push((rd, rest));
            self.state.store(RETURNED, Ordering::Release);
            self.waker.wake();
        }
    }

    fn abandoned(&self) {
        self.state.store(ABANDONED, Ordering::Release);
        self.waker.wake();
    }
}

impl Handback {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(LENT),
            waker: AtomicWaker::new(),
            slot: ConcurrentQueue::bounded(1),
        }
    }

    /// Waits until the body is done with the read half; `None` when it was
    /// dropped unfinished.
    async fn take_back(&self) -> Option<(OwnedReadHalf, BytesMut)> {
        let state = poll_fn(|cx| {
            let s = self.state.load(Ordering::Acquire);
            if s != LENT {
                return Poll::Ready(s);
            }
            self.waker.register(cx.waker());
            match self.state.load(Ordering::Acquire) {
                LENT => Poll::Pending,
                s => Poll::Ready(s),
            }
        })
        .await;
        self.state.store(LENT, Ordering::Relaxed);
        match state {
            RETURNED => self.slot.pop().ok(),
            _ => None,
        }
    }
}

/// Why a request could not be served: the answer to send before closing.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    why: String,
}

impl Refusal {
    fn new(status: StatusCode, why: impl Into<String>) -> Self {
        Self {
            status,
            why: why.into(),
        }
    }

    fn bad(why: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, why)
    }
}

/// A parsed request head and what serving it needs to know.
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    http10: bool,
}

/// Serves `tcp` until the client closes it, an error or timeout ends it, or
/// `shutdown` completes (between requests; a request in flight finishes
/// first and its answer says `connection: close`).
pub async fn serve_connection<H, F, B>(
    tcp: TcpStream,
    peer: PeerInfo,
    cfg: &Settings,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Http1Error>
where
    H: Fn(PeerInfo, Request<Received>) -> F,
    F: Future<Output = Response<B>>,
    B: OutBody,
{
    let (rd, mut wr) = tcp.into_split();
    let mut rd = Some(rd);
    let mut buf = BytesMut::new();
    let mut shutdown = pin!(shutdown.fuse());
    let mut back: Option<Arc<Handback>> = None;
    // One idle timer for the connection's life, moved on lazily: moving a
    // timer for every request is a timer-wheel update each time, and an
    // idle limit need not be exact (a connection is closed after 3/4 to
    // all of the idle timeout without a request).
    let mut idle = pin!(tokio::time::sleep(cfg.idle_timeout));
    let mut armed = Instant::now();
    loop {
        let Some(reader) = rd.as_mut() else {
            return Ok(());
        };
        if buf.is_empty() {
            // Idle: no buffer is held while waiting.
            buf = BytesMut::new();
            let now = Instant::now();
            if now.duration_since(armed) > cfg.idle_timeout / 4 {
                idle.as_mut().reset(now + cfg.idle_timeout);
                armed = now;
            }
            tokio::select! {
                biased;
                r = reader.readable() => r.map_err(Http1Error::Read)?,
                () = &mut idle => return Ok(()),
                () = &mut shutdown => return Ok(()),
            }
        }
        // A head nearly always arrives whole in one read: the header timer
        // is started only for one that did not.
        let read = {
            let mut read = pin!(read_head(reader, &mut buf, cfg.max_head_bytes));
            match (&mut read).now_or_never() {
                Some(r) => r,
                None => match tokio::time::timeout(cfg.header_timeout, read).await {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                },
            }
        };
        let head = match read {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(r) => {
                refuse(reader, &mut wr, &r).await;
                return Err(Http1Error::Malformed(r.why));
            }
        };
        let draining = (&mut shutdown).now_or_never().is_some() || shutdown.is_terminated();
        let keep_alive = head.keep_alive && !draining;
        if head.expect_continue {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(Http1Error::Write)?;
        }
        let head_only = head.parts.method == Method::HEAD;
        let http10 = head.http10;
        let (body, lent) = match head.framing {
            Framing::Length(0) => (Received::Empty, false),
            // All of it is here already (most calls): one `Bytes`.
            Framing::Length(n) if buf.len() as u64 >= n => {
                (Received::Whole(buf.split_to(n as usize).freeze()), false)
            }
            framing => {
                let b: Arc<dyn super::Handback> = back
                    .get_or_insert_with(|| Arc::new(Handback::new()))
                    .clone();
                let Some(r) = rd.take() else { return Ok(()) };
                let start = std::mem::take(&mut buf);
                let body = H1Body::new(ReadIo::Half(r), start, framing, End::Server(b));
                (Received::Stream(body), true)
            }
        };
        let req = Request::from_parts(head.parts, body);
        // Boxed: the handler's future is the largest state of a call (5 KiB
        // for the HTTP API's), and inline it would be reserved in every
        // connection's task, idle or not, on this listener's HTTP/2 ones too.
        let resp = Box::pin(handler(peer.clone(), req)).await;
        let clean = write_response(&mut wr, resp, head_only, http10, keep_alive).await?;
        if !clean {
            return Ok(());
        }
        if lent {
            let Some(b) = &back else { return Ok(()) };
            match b.take_back().await {
                Some((r, rest)) => {
                    rd = Some(r);
                    buf = rest;
                }
                None => return Ok(()),
            }
        }
    }
}

/// Reads until a complete request head is in `buf`, then takes it out.
/// `Ok(None)`: the client closed the connection before sending anything.
async fn read_head(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Head>, Refusal> {
    loop {
        if !buf.is_empty() {
            if let Some(h) = parse_head(buf)? {
                return Ok(Some(h));
            }
            if buf.len() >= max {
                return Err(Refusal::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("request head larger than {max} bytes"),
                ));
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUF_START);
        }
        let n = poll_fn(|cx| poll_read_buf(rd, buf, cx))
            .await
            .map_err(|e| Refusal::bad(format!("reading the request: {e}")))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(Refusal::bad("connection closed inside the request head"));
        }
    }
}

/// A complete head from the front of `buf`, or `None` for more bytes.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        // A well-formed version other than 1.x is 505; anything else in
        // its place is not HTTP at all.
        Err(httparse::Error::Version) if names_another_version(buf) => {
            return Err(Refusal::new(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are served here",
            ));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(e) => return Err(Refusal::bad(format!("malformed request: {e}"))),
    };
    let method = Method::from_bytes(r.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refusal::bad("invalid method"))?;
    let http10 = r.version == Some(0);
    // Names and values become slices of one shared copy of the head.
    let base = buf.as_ptr() as usize;
    let target = r.path.unwrap_or_default();
    let target = (target.as_ptr() as usize - base, target.len());
    let mut spans = Vec::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Refusal::bad(format!("invalid header name {:?}", h.name)))?;
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(n).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|e| Refusal::bad(format!("invalid request target: {e}")))?;
    // Room for what the sidecar adds on the way (forwarding, identity and
    // trace headers), so the map is not rebuilt larger mid-call.
    let mut headers = HeaderMap::with_capacity(spans.len() + 8);
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Refusal::bad(format!("invalid value of header {name}")))?;
        headers.append(name, value);
    }
    let framing = request_framing(&headers, http10)?;
    let keep_alive = keeps_alive(&headers, http10);
    let expect_continue = !http10
        && framing != Framing::Length(0)
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
        http10,
    }))
}

/// Whether the request line ends in `HTTP/<digit>.<digit>`.
fn names_another_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// RFC 9112 §6.3, for requests, strictly: a message whose length two
/// fields disagree on is refused rather than guessed at.
fn request_framing(h: &HeaderMap, http10: bool) -> Result<Framing, Refusal> {
    let mut codings = h.get_all(TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        if h.contains_key(CONTENT_LENGTH) {
            return Err(Refusal::bad(
                "both transfer-encoding and content-length: refused",
            ));
        }
        if http10 {
            return Err(Refusal::bad("transfer-encoding in an HTTP/1.0 request"));
        }
        let last = codings
            .last()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.rsplit(',').next())
            .map(str::trim);
        if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "only the chunked transfer coding is supported",
            ));
        }
        return Ok(Framing::Chunked);
    }
    let mut length = None;
    for v in h.get_all(CONTENT_LENGTH) {
        let n: u64 = v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Refusal::bad("invalid content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Refusal::bad("conflicting content-length"));
        }
        length = Some(n);
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

/// Writes `resp`; false when the connection must close after it.
async fn write_response<B: OutBody>(
    wr: &mut OwnedWriteHalf,
    resp: Response<B>,
    head_only: bool,
    http10: bool,
    keep_alive: bool,
) -> Result<bool, Http1Error> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep = keep_alive;
    let framing = if bodiless || parts.headers.contains_key(CONTENT_LENGTH) {
        BodyFraming::AsIs
    } else {
        match body.size_hint().exact() {
            Some(n) => BodyFraming::Length(n),
            // HTTP/1.0 has no chunked coding: the close ends the body.
            None if http10 => {
                keep = false;
                BodyFraming::AsIs
            }
            None => BodyFraming::Chunked,
        }
    };
    // A small body in memory joins the head's write (below): room for it
    // now, so the buffer is allocated once.
    let merged = if bodiless { None } else { merged_len(&body) };
    let mut head =
        BytesMut::with_capacity(super::head_capacity(&parts.headers) + merged.unwrap_or(0));
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // Framing and the connection's fate are this hop's to say.
        if name == TRANSFER_ENCODING || name == http::header::CONNECTION {
            continue;
        }
        header_line(&mut head, name.as_str(), value.as_bytes());
    }
    match framing {
        BodyFraming::Length(n) => header_line(
            &mut head,
            "content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        BodyFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::AsIs => {}
    }
    if !keep {
        head.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if !bodiless {
        // A small message in memory rides in the head's write; anything
        // else is written from its own buffers.
        match merged.and_then(|_| body.take_in_memory()) {
            Some(b) => head.extend_from_slice(&b),
            None => {
                let mut writer = BodyWriter::with_head(body, framing, head);
                poll_fn(|cx| writer.poll_write(wr, cx)).await?;
                return Ok(keep);
            }
        }
    }
    wr.write_all(&head).await.map_err(Http1Error::Write)?;
    Ok(keep)
}

/// How long a refused client may go on sending before the connection is
/// dropped (see [`refuse`]).
const LINGER: Duration = Duration::from_millis(500);

/// The answer to a request that cannot be served, then the close. The
/// client may still be sending (a head too large to read whole): closing
/// with unread bytes would reset the connection, and a reset can make the
/// client's kernel discard the answer before it is read. So the write side
/// is shut first and the rest of the input is read and dropped, briefly.
async fn refuse(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf, r: &Refusal) {
    tracing::debug!(status = r.status.as_u16(), why = %r.why, "request refused");
    let body = Bytes::from(format!("{}\n", r.why));
    let mut out = BytesMut::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(r.status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(r.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(&body);
    if wr.write_all(&out).await.is_err() || wr.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = BytesMut::with_capacity(READ_BUF_START);
        loop {
            sink.clear();
            match poll_fn(|cx| poll_read_buf(rd, &mut sink, cx)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use crate::skiff_body::SkiffBody;
    use std::net::SocketAddr;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn settings() -> Settings {
        Settings {
            max_head_bytes: 16 << 10,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        }
    }

    /// Serves one connection whose request body goes through
    /// `skiff_body::gather_small`: the gathered body's exact size (if any), then
    /// everything it held once read to its end.
    async fn gathered(first: &[u8], later: &[u8]) -> (Option<u64>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (hint_tx, mut hint_rx) = tokio::sync::mpsc::unbounded_channel();
        let (all_tx, mut all_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, peer) = l.accept().await.expect("accept");
            let handler = move |_: PeerInfo, req: Request<Received>| {
                let (hint_tx, all_tx) = (hint_tx.clone(), all_tx.clone());
                async move {
                    let body = crate::skiff_body::gather_small(SkiffBody::from(req.into_body()))
                        .await
                        .expect("gathered");
                    let _ = hint_tx.send(http_body::Body::size_hint(&body).exact());
                    let all = body.collect().await.expect("rest").to_bytes();
                    let _ = all_tx.send(all.to_vec());
                    Response::new(SkiffBody::Empty)
                }
            };
            let _ = serve_connection(
                tcp,
                PeerInfo::new(peer, None),
                &settings(),
                handler,
                std::future::pending(),
            )
            .await;
        });
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(first).await.expect("write");
        let hint = hint_rx.recv().await.expect("gathered");
        c.write_all(later).await.expect("write");
        (hint, all_rx.recv().await.expect("read"))
    }

    const CHUNKED: &[u8] = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_chunked_body_in_hand_whole_is_forwarded_with_a_known_length() {
        let req = [CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"].concat();
        let (hint, all) = gathered(&req, b"").await;
        assert_eq!(hint, Some(5), "whole: it can leave with the head");
        assert_eq!(all, b"hello");
    }

    #[tokio::test]
    async fn a_chunked_body_partly_in_hand_streams_the_rest_after_it() {
        let req = [CHUNKED, b"5\r\nhello\r\n"].concat();
        let (hint, all) = gathered(&req, b"3\r\nabc\r\n0\r\n\r\n").await;
        assert_eq!(hint, None, "open-ended: the rest streams");
        assert_eq!(all, b"helloabc");
    }

    /// A server whose handler answers `<method> <uri> <body>`; a path of
    /// `/ignore` answers without reading the body, `/stream` with a body
    /// of unknown length.
    async fn server(cfg: Settings) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = stop_rx.shared();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = l.accept().await {
                let (cfg, stop) = (cfg.clone(), stop.clone());
                tokio::spawn(async move {
                    let handler = |_: PeerInfo, req: Request<Received>| async move {
                        let (parts, body) = req.into_parts();
                        let body = SkiffBody::from(body);
                        if parts.uri.path() == "/ignore" {
                            return Response::new(SkiffBody::full("ignored"));
                        }
                        let b = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let text = format!(
                            "{} {} {}",
                            parts.method,
                            parts.uri,
                            String::from_utf8_lossy(&b)
                        );
                        if parts.uri.path() == "/stream" {
                            let s =
                                futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                                    http_body::Frame::data(Bytes::from(text)),
                                )]);
                            return Response::new(SkiffBody::Grpc(tonic::body::Body::new(
                                http_body_util::StreamBody::new(s),
                            )));
                        }
                        if parts.uri.path() == "/nothing" {
                            let mut r = Response::new(SkiffBody::Empty);
                            *r.status_mut() = StatusCode::NO_CONTENT;
                            return r;
                        }
                        Response::new(SkiffBody::full(text))
                    };
                    let shutdown = async move {
                        let _ = stop.await;
                    };
                    let _ =
                        serve_connection(tcp, PeerInfo::new(peer, None), &cfg, handler, shutdown)
                            .await;
                });
            }
        });
        (addr, stop_tx)
    }

    /// Sends `bytes`, then reads until the server closes or `until` shows up.
    async fn exchange(addr: SocketAddr, bytes: &[u8], until: Option<&str>) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b))
                .await
                .expect("answer in time")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[..n]);
            if until.is_some_and(|u| String::from_utf8_lossy(&out).contains(u)) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn keep_alive_pipelining_and_chunked_bodies() {
        let (addr, _stop) = server(settings()).await;
        let reqs = b"POST /a?x=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhelloPUT /b HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n4;ext\r\n two\r\n0\r\n\r\nGET /stream HTTP/1.1\r\nhost: h\r\n\r\nGET /last HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n";
        let out = exchange(addr, reqs, None).await;
        let answers: Vec<&str> = out.split("HTTP/1.1 200 OK").skip(1).collect();
        assert_eq!(answers.len(), 4, "{out}");
        assert!(
            answers[0].contains("content-length: 17") && answers[0].ends_with("POST /a?x=1 hello"),
            "{out}"
        );
        assert!(answers[1].ends_with("PUT /b one two"), "{out}");
        assert!(
            answers[2].contains("transfer-encoding: chunked")
                && answers[2].contains("\r\n\r\nc\r\nGET /stream \r\n0\r\n\r\n"),
            "{out}"
        );
        assert!(
            answers[3].contains("connection: close") && answers[3].ends_with("GET /last "),
            "{out}"
        );
    }

    #[tokio::test]
    async fn expect_continue_head_204_and_http10() {
        let (addr, _stop) = server(settings()).await;
        let out = exchange(
            addr,
            b"POST /c HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            None,
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
            "{out}"
        );
        let out = exchange(
            addr,
            b"HEAD /h HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            None,
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("\r\n\r\n"),
            "{out}"
        );
        let out = exchange(
            addr,
            b"GET /nothing HTTP/1.1\r\nconnection: close\r\n\r\n",
            None,
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 204 No Content") && !out.contains("content-length"),
            "{out}"
        );
        // HTTP/1.0: closes by default; a body of unknown length ends with it.
        let out = exchange(addr, b"GET /stream HTTP/1.0\r\n\r\n", None).await;
        assert!(
            out.contains("connection: close") && out.ends_with("GET /stream "),
            "{out}"
        );
        let out = exchange(
            addr,
            b"GET /k HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
            Some("GET /k "),
        )
        .await;
        assert!(out.contains("connection: keep-alive"), "{out}");
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_the_right_status() {
        let (addr, _stop) = server(settings()).await;
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"
                    .to_vec(),
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n".to_vec(),
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: -3\r\n\r\n".to_vec(),
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(),
                "501",
            ),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), "505"),
            (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400"),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), "400"),
            (format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(), "431"),
            (
                format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(64 << 10)).into_bytes(),
                "431",
            ),
        ];
        for (bytes, want) in cases {
            let out = exchange(addr, &bytes, None).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want} ")) && out.contains("connection: close"),
                "{:?} → {out}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(50)])
            );
        }
    }

    #[tokio::test]
    async fn an_unread_body_closes_the_connection_after_the_answer() {
        let (addr, _stop) = server(settings()).await;
        // The body is not all there when the handler answers without it.
        let out = exchange(
            addr,
            b"POST /ignore HTTP/1.1\r\ncontent-length: 100\r\n\r\nabc",
            None,
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("ignored"),
            "{out}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_connections_are_closed() {
        let (addr, stop) = server(settings()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nhost:")
            .await
            .expect("write");
        let mut b = [0u8; 64];
        // Half a head: closed after the header timeout, without an answer.
        let n = tokio::time::timeout(Duration::from_secs(6), slow.read(&mut b))
            .await
            .expect("closed by the header timeout");
        assert_eq!(n.unwrap_or(0), 0);
        let n = tokio::time::timeout(Duration::from_secs(6), idle.read(&mut b))
            .await
            .expect("closed by the idle timeout");
        assert_eq!(n.unwrap_or(0), 0);
        // Shutdown closes an idle keep-alive connection at once.
        let mut kept = TcpStream::connect(addr).await.expect("connect");
        kept.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let n = kept.read(&mut b).await.expect("answer");
        assert!(n > 0);
        let _ = stop.send(());
        let n = tokio::time::timeout(Duration::from_secs(1), kept.read(&mut b))
            .await
            .expect("closed on shutdown");
        assert_eq!(n.unwrap_or(0), 0);
    }
}
