//! HTTP/1.1 to an HTTP app: a small client that does its reads and writes
//! in the calling task, with a lock-free pool of idle keep-alive
//! connections.
//!
//! Why not hyper's client: its pool takes a mutex and a hash lookup per
//! checkout, and each request crosses to the connection's task over a
//! channel and comes back over another (perf/RESULTS.md, issue 8). Here a
//! call pops an idle connection, writes its head (with a small body, in the
//! same write), reads the response head, and hands back a body that reads
//! the rest from the socket as the next hop asks for it. The connection goes
//! back to the pool when that body has been read to its end.
//!
//! What it speaks: requests with `content-length` or chunked bodies;
//! responses framed by `content-length`, chunked coding (trailers are
//! passed on) or the connection's close; no body for HEAD, 1xx, 204 and
//! 304; interim 1xx answers skipped. A request that fails on a reused
//! connection before any byte of an answer arrived (the app closed it while
//! idle) is sent once more on a new connection when its body is in memory.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use concurrent_queue::ConcurrentQueue;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::{
    BodyFraming, BodyWriter, End, Framing, H1Body, Handback, Http1Error, MAX_HEADERS,
    MERGE_BODY_BYTES, READ_BUF_START, ReadIo, Received, header_line, keeps_alive, poll_read_buf,
};
use crate::body::OutBody;

/// Idle connections kept per app; more are closed when they come back.
pub const MAX_IDLE: usize = 256;
/// Keep-alive connections to one app.
pub struct Http1Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    addr: SocketAddr,
    host: HeaderValue,
    idle: ConcurrentQueue<Idle>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_head_bytes: usize,
    epoch: Instant,
}

struct Idle {
    conn: Conn,
    since_ms: u64,
}

/// A connection and what has been read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Http1Client {
    /// Starts the idle reaper too, so it must be called inside a runtime.
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_head_bytes: usize,
    ) -> Self {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let inner = Arc::new(Inner {
            addr,
            host,
            idle: ConcurrentQueue::bounded(MAX_IDLE),
            connect_timeout,
            idle_timeout,
            max_head_bytes: max_head_bytes.max(READ_BUF_START),
            epoch: Instant::now(),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Idle connections now (tests, metadata).
    pub fn idle(&self) -> usize {
        self.inner.idle.len()
    }

    /// Sends `req` (its URI holds path and query) and returns the answer
    /// once its head has arrived; the body streams from the connection.
    pub fn send<B: OutBody>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<Received>, Http1Error>> {
        async move {
            let (parts, mut body) = req.into_parts();
            let no_body_expected = parts.method == Method::HEAD;
            let framing = BodyFraming::of(&parts.headers, &parts.method, &body);
            // Sized once: the start line, the headers, and a small body in
            // memory that joins the head's write.
            let pq = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
            let mut head = BytesMut::with_capacity(
                super::head_capacity(&parts.headers)
                    + pq
                    + self.inner.host.len()
                    + super::merged_len(&body).unwrap_or(0),
            );
            encode_head(&parts, &self.inner.host, framing, &mut head);
            // In memory, the request can be sent again; the common small case
            // rides in the head's write.
            let rest = match body.take_in_memory() {
                Some(b) if b.is_empty() => None,
                Some(b) if b.len() <= MERGE_BODY_BYTES => {
                    head.extend_from_slice(&b);
                    None
                }
                Some(b) => Some(b),
                None => {
                    let writer = BodyWriter::with_head(body, framing, head);
                    // Boxed: streaming a request body while watching for an
                    // early answer is a large state machine that the common
                    // call (a body in hand) does not need to carry.
                    return Box::pin(self.send_streamed(writer, no_body_expected)).await;
                }
            };
            let head = head.freeze();
            let mut retried = false;
            loop {
                let (mut conn, reused) = self.inner.checkout().await?;
                let r =
                    exchange_buffered(&mut conn, &head, rest.clone(), self.inner.max_head_bytes)
                        .await;
                match r {
                    Ok(resp) => return Ok(self.respond(conn, resp, no_body_expected)),
                    Err(e) if reused && !retried && e.is_stale() => {
                        tracing::debug!(addr = %self.inner.addr, error = %e, "idle connection was closed by the app; sending again");
                        retried = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// A streamed request body: written while the answer is awaited. An
    /// answer that comes first (an app that answers as it reads) leaves the
    /// rest of the body to a task of its own, and the connection is not
    /// reused.
    async fn send_streamed<B: OutBody>(
        &self,
        mut writer: BodyWriter<B>,
        no_body_expected: bool,
    ) -> Result<Response<Received>, Http1Error> {
        let (mut conn, _) = self.inner.checkout().await?;
        let max = self.inner.max_head_bytes;
        let first = {
            let (mut rd, mut wr) = conn.io.split();
            let buf = &mut conn.buf;
            tokio::select! {
                biased;
                w = std::future::poll_fn(|cx| writer.poll_write(&mut wr, cx)) => match w {
                    Ok(()) => First::Written,
                    Err(e) => First::WriteFailed(e),
                },
                h = read_head(&mut rd, buf, max) => First::Answered(h),
            }
        };
        let head = match first {
            First::Written => read_head(&mut conn.io, &mut conn.buf, max).await?,
            // The app may have answered and closed; its answer (if any)
            // says more than the broken pipe.
            First::WriteFailed(e) => read_head(&mut conn.io, &mut conn.buf, max)
                .await
                .map_err(|_| e)?
                .not_reusable(),
            First::Answered(h) => {
                let h = h?.not_reusable();
                let Conn { io, buf } = conn;
                let (rd, mut wr) = io.into_split();
                tokio::spawn(async move {
                    let sent = std::future::poll_fn(|cx| writer.poll_write(&mut wr, cx)).await;
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "request body to the app ended early");
                    }
                    // Dropping the half would shut the socket for writing,
                    // and many servers close a half-closed connection
                    // before their answer is out; the read half closes it.
                    wr.forget();
                });
                return Ok(self.respond_half(rd, buf, h, no_body_expected));
            }
        };
        Ok(self.respond(conn, head, no_body_expected))
    }

    fn respond(&self, conn: Conn, head: Head, no_body_expected: bool) -> Response<Received> {
        let Head {
            parts,
            framing,
            reusable,
        } = head;
        let framing = if no_body_expected {
            Framing::Length(0)
        } else {
            framing
        };
        if framing == Framing::Length(0) {
            if reusable && conn.buf.is_empty() {
                self.inner.checkin(conn);
            }
            return Response::from_parts(parts, Received::Empty);
        }
        let inner: std::sync::Weak<Inner> = Arc::downgrade(&self.inner);
        let pool: std::sync::Weak<dyn Handback> = inner;
        let end = End::Pool { reusable, pool };
        let body = H1Body::new(ReadIo::Whole(conn.io), conn.buf, framing, end);
        Response::from_parts(parts, Received::Stream(body))
    }

    fn respond_half(
        &self,
        rd: OwnedReadHalf,
        buf: BytesMut,
        head: Head,
        no_body_expected: bool,
    ) -> Response<Received> {
        let framing = if no_body_expected {
            Framing::Length(0)
        } else {
            head.framing
        };
        let body = H1Body::new(ReadIo::Half(rd), buf, framing, End::Close);
        Response::from_parts(head.parts, Received::Stream(body))
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// An idle connection that is still open, else a new one; and whether
    /// it was reused.
    async fn checkout(&self) -> Result<(Conn, bool), Http1Error> {
        let now = self.now_ms();
        let idle_ms = self.idle_timeout.as_millis() as u64;
        while let Ok(idle) = self.idle.pop() {
            if now.saturating_sub(idle.since_ms) < idle_ms && still_open(&idle.conn.io) {
                return Ok((idle.conn, true));
            }
        }
        let io = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| Http1Error::ConnectTimeout(self.connect_timeout))?
            .map_err(Http1Error::Connect)?;
        io.set_nodelay(true).map_err(Http1Error::Connect)?;
        Ok((
            Conn {
                io,
                buf: BytesMut::new(),
            },
            false,
        ))
    }

    fn checkin(&self, conn: Conn) {
        // Full: the connection closes as it drops.
        let _ = self.idle.push(Idle {
            conn,
            since_ms: self.now_ms(),
        });
    }
}

impl Handback for Inner {
    /// A connection whose answer has been read to its end.
    fn give_back(&self, io: ReadIo, buf: BytesMut) {
        if let ReadIo::Whole(io) = io {
            self.checkin(Conn { io, buf });
        }
    }
}

/// An idle connection the app has closed (or sent something on, which an
/// idle HTTP/1.1 connection must not) is readable. The runtime's readiness
/// says "not readable" without a system call; when it says "readable" it
/// may be stale (an edge seen after the last answer was already read), so
/// a non-blocking read tells for sure, and clears it.
fn still_open(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Closes connections idle for longer than the idle timeout.
async fn reap_idle(pool: std::sync::Weak<Inner>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
        return;
    };
    let mut tick = crate::transport::reap_interval(idle_timeout);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = pool.now_ms();
        let idle_ms = pool.idle_timeout.as_millis() as u64;
        for _ in 0..pool.idle.len() {
            let Ok(idle) = pool.idle.pop() else { break };
            if now.saturating_sub(idle.since_ms) < idle_ms && still_open(&idle.conn.io) {
                let _ = pool.idle.push(idle);
            }
        }
    }
}

/// The request line and headers, with `host` and the body's framing added
/// when the request lacks them.
fn encode_head(
    parts: &http::request::Parts,
    host: &HeaderValue,
    framing: BodyFraming,
    out: &mut BytesMut,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if pq.is_empty() { b"/" } else { pq.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        header_line(out, HOST.as_str(), host.as_bytes());
    }
    for (name, value) in &parts.headers {
        // Framing is this hop's business.
        if name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        header_line(out, name.as_str(), value.as_bytes());
    }
    match framing {
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Length(n) => {
            header_line(
                out,
                CONTENT_LENGTH.as_str(),
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        BodyFraming::AsIs => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a request whose body is in memory, then reads the answer's head.
async fn exchange_buffered(
    conn: &mut Conn,
    head: &Bytes,
    body: Option<Bytes>,
    max_head: usize,
) -> Result<Head, Http1Error> {
    conn.io.write_all(head).await.map_err(Http1Error::Write)?;
    if let Some(b) = body {
        conn.io.write_all(&b).await.map_err(Http1Error::Write)?;
    }
    read_head(&mut conn.io, &mut conn.buf, max_head).await
}

/// What happened first while a streamed request body was being written.
enum First {
    Written,
    WriteFailed(Http1Error),
    Answered(Result<Head, Http1Error>),
}

/// A response head and how its body is framed.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    reusable: bool,
}

impl Head {
    fn not_reusable(mut self) -> Self {
        self.reusable = false;
        self
    }
}

/// Reads until a complete response head is in `buf` (skipping interim 1xx
/// answers), then takes it out. Cancel-safe: what was read stays in `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Head, Http1Error> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf)? {
                Parsed::Complete(h) => return Ok(h),
                Parsed::Interim => continue,
                Parsed::Partial if buf.len() >= max => return Err(Http1Error::HeadTooLarge(max)),
                Parsed::Partial => {}
            }
        }
        let answered = !buf.is_empty();
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUF_START);
        }
        let n = std::future::poll_fn(|cx| poll_read_buf(io, buf, cx))
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionReset if !answered => Http1Error::ClosedBeforeAnswer,
                _ => Http1Error::Read(e),
            })?;
        if n == 0 {
            return Err(if answered {
                Http1Error::Malformed("connection closed inside the response head".into())
            } else {
                Http1Error::ClosedBeforeAnswer
            });
        }
    }
}

enum Parsed {
    Complete(Head),
    /// A 1xx answer, consumed; the real one follows.
    Interim,
    Partial,
}

fn parse_head(buf: &mut BytesMut) -> Result<Parsed, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(Http1Error::Malformed(e.to_string())),
    };
    let code = r.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| Http1Error::Malformed(format!("status {code}")))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Http1Error::Malformed("upgrades are not proxied".into()));
        }
        buf.advance(n);
        return Ok(Parsed::Interim);
    }
    let http10 = r.version == Some(0);
    // Where each name and value sit in the buffer, so the values can be
    // slices of one shared head instead of copies.
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Http1Error::Malformed(format!("header name {:?}", h.name)))?;
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(n).freeze();
    let mut map = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Http1Error::Malformed(format!("value of header {name}")))?;
        map.append(name, value);
    }
    let framing = framing_of(status, &map)?;
    let reusable = framing != Framing::Close && keeps_alive(&map, http10);
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = map;
    let (parts, ()) = resp.into_parts();
    Ok(Parsed::Complete(Head {
        parts,
        framing,
        reusable,
    }))
}

/// RFC 9112 §6.3, for responses.
fn framing_of(status: StatusCode, h: &HeaderMap) -> Result<Framing, Http1Error> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if let Some(te) = h.get_all(TRANSFER_ENCODING).iter().next_back() {
        let last = te
            .to_str()
            .ok()
            .and_then(|s| s.rsplit(',').next())
            .map(str::trim);
        return Ok(if last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for v in h.get_all(CONTENT_LENGTH) {
        let n: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Http1Error::Malformed("content-length".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(Http1Error::Malformed("conflicting content-length".into()));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Client")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::skiff_body::SkiffBody;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn client(addr: SocketAddr) -> Http1Client {
        Http1Client::new(
            addr,
            Duration::from_secs(1),
            Duration::from_secs(90),
            64 << 10,
        )
    }

    fn req(method: &str, path: &str, body: SkiffBody) -> Request<SkiffBody> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .expect("request")
    }

    /// A body of unknown length, streamed in `parts`.
    fn streamed(parts: &[&'static str]) -> SkiffBody {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect::<Vec<_>>();
        SkiffBody::Grpc(tonic::body::Body::new(StreamBody::new(
            futures_util::stream::iter(frames),
        )))
    }

    async fn text(resp: Response<Received>) -> String {
        let b = SkiffBody::from(resp.into_body())
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    /// hyper as the app: answers `<method> <path> <body>` with the request's
    /// framing in headers, and counts connections.
    async fn hyper_app() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(|r: Request<hyper::body::Incoming>| async move {
                    let framing = if r.headers().contains_key(TRANSFER_ENCODING) {
                        "chunked"
                    } else {
                        "length"
                    };
                    let host = r.headers().get(HOST).cloned();
                    let line = format!("{} {}", r.method(), r.uri());
                    let body = r.into_body().collect().await?.to_bytes();
                    let mut resp = Response::new(http_body_util::Full::new(Bytes::from(format!(
                        "{line} {}",
                        String::from_utf8_lossy(&body)
                    ))));
                    resp.headers_mut()
                        .insert("x-framing", HeaderValue::from_static(framing));
                    if let Some(h) = host {
                        resp.headers_mut().insert("x-host", h);
                    }
                    Ok::<_, hyper::Error>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, conns)
    }

    /// A raw app: each connection reads one request head, then gets
    /// `answers[i]` (for the i-th connection), written as given.
    async fn raw_app(answers: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            for a in answers {
                let Ok((mut tcp, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut b = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&b[..n]),
                        }
                    }
                    let _ = tcp.write_all(a).await;
                    if a.windows(17).any(|w| w == b"connection: close") {
                        return;
                    }
                    // Hold the connection open until the client closes it.
                    let _ = tcp.read(&mut b).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn keeps_connections_alive_and_frames_bodies() {
        let (addr, conns) = hyper_app().await;
        let c = client(addr);
        let r = c
            .send(req("POST", "/a?x=1", SkiffBody::full("hello")))
            .await
            .expect("send");
        assert_eq!(r.headers()["x-framing"], "length");
        assert_eq!(r.headers()["x-host"], addr.to_string().as_str());
        assert_eq!(text(r).await, "POST /a?x=1 hello");
        let r = c
            .send(req("PUT", "/b", streamed(&["one ", "two"])))
            .await
            .expect("send");
        assert_eq!(r.headers()["x-framing"], "chunked");
        assert_eq!(text(r).await, "PUT /b one two");
        let r = c
            .send(req("GET", "/c", SkiffBody::Empty))
            .await
            .expect("send");
        assert_eq!(text(r).await, "GET /c ");
        // A large body, written from its own buffer.
        let big = "z".repeat(MERGE_BODY_BYTES * 3);
        let r = c
            .send(req("POST", "/d", SkiffBody::full(big.clone())))
            .await
            .expect("send");
        assert_eq!(text(r).await, format!("POST /d {big}"));
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one keep-alive connection");
        assert_eq!(c.idle(), 1);
    }

    #[tokio::test]
    async fn reads_chunked_close_delimited_and_bodiless_answers() {
        let addr = raw_app(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
        ])
        .await;
        let c = client(addr);
        let r = c
            .send(req("GET", "/", SkiffBody::Empty))
            .await
            .expect("chunked");
        assert_eq!(r.status(), 200);
        let collected = SkiffBody::from(r.into_body())
            .collect()
            .await
            .expect("body");
        assert_eq!(
            collected.trailers().map(|t| t["x-sum"].clone()),
            Some(HeaderValue::from_static("42"))
        );
        assert_eq!(&collected.to_bytes()[..], b"hello world");
        assert_eq!(c.idle(), 1, "chunked answer read to its end");
        // Later answers come from new connections of the raw app.
        drop(c);
        let c = client(addr);
        let r = c
            .send(req("GET", "/", SkiffBody::Empty))
            .await
            .expect("close");
        assert_eq!(text(r).await, "until the end");
        assert_eq!(c.idle(), 0, "close-delimited connections are not reused");
        let r = c
            .send(req("GET", "/", SkiffBody::Empty))
            .await
            .expect("204");
        assert_eq!(r.status(), 204);
        assert!(matches!(r.body(), Received::Empty));
    }

    #[tokio::test]
    async fn bad_answers_are_errors() {
        let long_head: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(70 << 10))
                .into_bytes()
                .into_boxed_slice(),
        );
        let addr = raw_app(vec![
            b"SPDY/3 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx",
            long_head,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let c = client(addr);
        for want in ["malformed", "conflicting", "larger than"] {
            let e = c
                .send(req("GET", "/", SkiffBody::Empty))
                .await
                .expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let r = c
            .send(req("GET", "/", SkiffBody::Empty))
            .await
            .expect("head is fine");
        let e = SkiffBody::from(r.into_body())
            .collect()
            .await
            .expect_err("bad chunk size");
        assert!(e.to_string().contains("chunk size"), "{e}");
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_while_idle_is_not_used() {
        let (addr, conns) = hyper_app().await;
        let c = client(addr);
        let r = c
            .send(req("GET", "/1", SkiffBody::Empty))
            .await
            .expect("first");
        assert_eq!(text(r).await, "GET /1 ");
        // Replace the idle connection with one whose far end is closed.
        let Ok(idle) = c.inner.idle.pop() else {
            panic!("one idle connection")
        };
        drop(idle);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (far, _) = l.accept().await.expect("accept");
        drop(far);
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.inner.checkin(Conn {
            io: dead,
            buf: BytesMut::new(),
        });
        let r = c
            .send(req("POST", "/2", SkiffBody::full("again")))
            .await
            .expect("second");
        assert_eq!(text(r).await, "POST /2 again");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_request_body_still_gets_the_rest() {
        // The app answers at once, then reads (and counts) the body.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (got_tx, got_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut tcp, _) = l.accept().await.expect("accept");
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("answer");
            let mut all = Vec::new();
            let _ = tcp.read_to_end(&mut all).await;
            let _ = got_tx.send(all);
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = SkiffBody::Grpc(tonic::body::Body::new(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )));
        let c = client(addr);
        tx.send(Ok(Frame::data(Bytes::from_static(b"early"))))
            .await
            .expect("send");
        let r = c.send(req("POST", "/", body)).await.expect("answered");
        assert_eq!(text(r).await, "ok");
        tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
            .await
            .expect("send");
        drop(tx);
        let all = String::from_utf8(got_rx.await.expect("app read")).expect("utf8");
        assert!(
            all.ends_with("5\r\nearly\r\n4\r\nlate\r\n0\r\n\r\n"),
            "{all}"
        );
        assert_eq!(c.idle(), 0, "not reused after an early answer");
    }
}
