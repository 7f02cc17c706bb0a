//! The load generator: HTTP/1.1, h2c and gRPC unary against one URL.
//!
//! Two modes. **Open loop** (`rate`): requests are due on a fixed schedule
//! and latency counts from the due time, so a server that stalls cannot slow
//! the load down and hide its own latency. **Closed loop** (`concurrency`): N
//! requests always in flight, each sent as soon as the previous one returns;
//! this finds the maximum throughput. Warm-up requests are sent but not
//! recorded. Every run is bounded by a duration and, optionally, a count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::hist::{Latency, Percentiles};
use crate::schedule::Schedule;

/// Open-loop requests in flight at most; beyond, a due request is counted as
/// an `overload` error instead of piling up without bound.
pub const MAX_OPEN_LOOP_IN_FLIGHT: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Http1,
    H2c,
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fixed rate, requests per second.
    Open { rate: f64 },
    /// Fixed number in flight.
    Closed { concurrency: usize },
}

/// What to send, how, and for how long.
#[derive(Clone, Debug)]
pub struct Spec {
    pub url: Uri,
    pub proto: Proto,
    pub method: Method,
    pub headers: HeaderMap,
    /// HTTP: the body. gRPC: the protobuf message (framed here).
    pub payload: Bytes,
    pub connections: usize,
    pub mode: Mode,
    pub duration: Duration,
    pub warmup: Duration,
    pub max_requests: Option<u64>,
    pub timeout: Duration,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad URL {0}: needs http://host:port/path")]
    Url(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    H2Handshake {
        addr: String,
        #[source]
        source: h2::Error,
    },
}

/// A run's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub proto: Proto,
    pub mode: Mode,
    pub connections: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub achieved_rps: f64,
    pub latency: Percentiles,
    /// CPU the generator itself used, in cores (1.0 = one core busy).
    pub generator_cpu_cores: f64,
    #[serde(skip)]
    pub histogram: Option<Arc<Latency>>,
}

/// One request's outcome.
type Outcome = Result<(), String>;

/// Connections to the target.
enum Conns {
    /// HTTP/1.1: one request at a time per connection; idle ones wait here.
    H1 {
        idle_tx: async_channel::Sender<http1::SendRequest<Full<Bytes>>>,
        idle_rx: async_channel::Receiver<http1::SendRequest<Full<Bytes>>>,
    },
    /// HTTP/2 straight on the h2 crate: every connection multiplexes; calls
    /// rotate over them. hyper's client would send a body from a separate
    /// task, flushing HEADERS and DATA in two writes; here both are queued
    /// before the connection task runs, so a request is one write.
    H2 {
        conns: Vec<h2::client::SendRequest<Bytes>>,
        next: AtomicUsize,
    },
}

struct Target {
    spec: Spec,
    conns: Conns,
    body: Bytes,
    addr: String,
    /// The request URI and headers, built once: HTTP/1.1 gets origin-form
    /// and a Host header, gRPC its content-type and `te`.
    uri: Uri,
    headers: HeaderMap,
}

/// Runs a load and reports it.
pub async fn run(spec: Spec) -> Result<Report, LoadError> {
    let target = Arc::new(Target::connect(spec.clone()).await?);
    let cpu_start = crate::procfs::self_cpu_seconds();
    let counters = Arc::new(Counters::default());
    let progress = spec
        .progress
        .then(|| tokio::spawn(progress_line(counters.clone(), spec.duration + spec.warmup)));
    let start = Instant::now();
    let record_from = start + spec.warmup;
    let end = record_from + spec.duration;
    let hist = match spec.mode {
        Mode::Closed { concurrency } => {
            closed_loop(&target, concurrency, record_from, end, &counters).await
        }
        Mode::Open { rate } => open_loop(&target, rate, record_from, end, &counters).await,
    };
    if let Some(p) = progress {
        p.abort();
        eprint!("\r{:80}\r", "");
    }
    let measured = (Instant::now().min(end + spec.timeout) - record_from)
        .as_secs_f64()
        .max(1e-9);
    let cpu = crate::procfs::self_cpu_seconds() - cpu_start;
    let wall = (Instant::now() - start).as_secs_f64().max(1e-9);
    let errors = counters
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let ok = hist.len();
    let failed: u64 = errors.values().sum();
    Ok(Report {
        url: spec.url.to_string(),
        proto: spec.proto,
        mode: spec.mode,
        connections: spec.connections,
        duration_s: measured,
        requests: ok + failed,
        ok,
        errors,
        achieved_rps: ok as f64 / measured,
        latency: hist.percentiles(),
        generator_cpu_cores: cpu / wall,
        histogram: Some(Arc::new(hist)),
    })
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    // Errors are rare; a mutex keeps the map simple.
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, kind: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }
}

fn within_budget(spec: &Spec, counters: &Counters) -> bool {
    spec.max_requests
        .is_none_or(|m| counters.sent.load(Ordering::Relaxed) < m)
}

async fn closed_loop(
    t: &Arc<Target>,
    concurrency: usize,
    record_from: Instant,
    end: Instant,
    c: &Arc<Counters>,
) -> Latency {
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (t, c) = (t.clone(), c.clone());
            tokio::spawn(async move {
                let mut h = Latency::default();
                while Instant::now() < end && within_budget(&t.spec, &c) {
                    c.sent.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let r = t.call().await;
                    finish(&c, &mut h, sent, record_from, r);
                }
                h
            })
        })
        .collect();
    merge(workers).await
}

async fn open_loop(
    t: &Arc<Target>,
    rate: f64,
    record_from: Instant,
    end: Instant,
    c: &Arc<Counters>,
) -> Latency {
    let mut pacer = match crate::schedule::Pacer::new(
        Schedule::new(Instant::now().into_std(), rate),
        end.into_std(),
    ) {
        Ok(p) => p,
        Err(e) => {
            c.error(format!("pacer: {e}"));
            return Latency::default();
        }
    };
    // Samples go to one histogram here: a histogram per request would cost
    // more than the request.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut all = Latency::default();
    let mut flights = InFlight::default();
    loop {
        tokio::select! {
            biased;
            Some(us) = rx.recv() => all.record_us(us),
            due = pacer.next() => {
                let due = match due {
                    Ok(Some(d)) => Instant::from_std(d),
                    Ok(None) => break,
                    Err(e) => {
                        c.error(format!("pacer: {e}"));
                        break;
                    }
                };
                flights.expire(Instant::now(), c);
                if !within_budget(&t.spec, c) {
                    break;
                }
                c.sent.fetch_add(1, Ordering::Relaxed);
                if flights.len() >= MAX_OPEN_LOOP_IN_FLIGHT {
                    c.error("overload".into());
                    continue;
                }
                let claim = Arc::new(AtomicBool::new(false));
                let deadline = due + t.spec.timeout;
                let (t, c, tx, mine) = (t.clone(), c.clone(), tx.clone(), claim.clone());
                let task = tokio::spawn(async move {
                    let r = t.call_inner().await;
                    if mine.swap(true, Ordering::AcqRel) {
                        return; // already counted as a timeout
                    }
                    // Latency from the due time, not from when the send happened.
                    if let Some(us) = outcome(&c, due, record_from, r) {
                        let _ = tx.send(us);
                    }
                });
                flights.push(deadline, claim, task);
            }
        }
    }
    drop(tx);
    // The schedule is over: wait for what is in flight, each until its deadline.
    while let Some(deadline) = flights.next_deadline() {
        tokio::select! {
            Some(us) = rx.recv() => all.record_us(us),
            _ = tokio::time::sleep_until(deadline) => flights.expire(Instant::now(), c),
            _ = flights.front_done() => flights.expire(Instant::now(), c),
        }
    }
    while let Ok(us) = rx.try_recv() {
        all.record_us(us);
    }
    all
}

/// Open-loop requests in flight, oldest first, with their deadlines.
///
/// The open loop enforces timeouts itself on each tick instead of giving
/// every request a tokio timer: registering a timer earlier than the time
/// driver's next wake-up writes the runtime's eventfd, a syscall per request
/// that showed up as a tenth of the generator's CPU. Every request has the
/// same timeout and due times only grow, so deadlines are in order and only
/// the front needs looking at. A timeout is noticed at the first tick after
/// it, at most one request interval late.
#[derive(Default)]
struct InFlight {
    queue: std::collections::VecDeque<Flight>,
}

struct Flight {
    deadline: Instant,
    /// Whoever sets this first counts the request: the task on completion or
    /// the sweep on timeout, never both.
    claim: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl InFlight {
    fn push(
        &mut self,
        deadline: Instant,
        claim: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    ) {
        self.queue.push_back(Flight {
            deadline,
            claim,
            task,
        });
    }

    /// Drops finished requests from the front and times out expired ones.
    fn expire(&mut self, now: Instant, c: &Counters) {
        while let Some(f) = self.queue.front() {
            if f.task.is_finished() {
                self.queue.pop_front();
            } else if f.deadline <= now {
                if !f.claim.swap(true, Ordering::AcqRel) {
                    f.task.abort();
                    c.done.fetch_add(1, Ordering::Relaxed);
                    c.error("timeout".into());
                }
                self.queue.pop_front();
            } else {
                break;
            }
        }
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|f| f.deadline)
    }

    /// Resolves when the oldest request finishes.
    async fn front_done(&mut self) {
        if let Some(f) = self.queue.front_mut() {
            let _ = (&mut f.task).await;
        }
    }
}

/// Counts a finished request; returns its latency when it is to be recorded.
fn outcome(c: &Counters, from: Instant, record_from: Instant, r: Outcome) -> Option<u64> {
    c.done.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(()) if from >= record_from => Some((Instant::now() - from).as_micros() as u64),
        Err(kind) if from >= record_from => {
            c.error(kind);
            None
        }
        _ => None,
    }
}

fn finish(c: &Counters, h: &mut Latency, from: Instant, record_from: Instant, r: Outcome) {
    if let Some(us) = outcome(c, from, record_from, r) {
        h.record_us(us);
    }
}

async fn merge(workers: Vec<tokio::task::JoinHandle<Latency>>) -> Latency {
    let mut all = Latency::default();
    for w in workers {
        if let Ok(h) = w.await {
            all.merge(&h);
        }
    }
    all
}

async fn progress_line(c: Arc<Counters>, total: Duration) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let e = start.elapsed().as_secs_f64();
        let done = c.done.load(Ordering::Relaxed);
        eprint!(
            "\r[{e:5.1}s/{:.0}s] sent {} done {done} errors {} ({:.0}/s)   ",
            total.as_secs_f64(),
            c.sent.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            done as f64 / e
        );
    }
}

impl Target {
    async fn connect(spec: Spec) -> Result<Self, LoadError> {
        let authority = spec
            .url
            .authority()
            .ok_or_else(|| LoadError::Url(spec.url.to_string()))?;
        if spec.url.scheme_str() != Some("http") {
            return Err(LoadError::Url(spec.url.to_string()));
        }
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let n = spec.connections.max(1);
        let conns = match spec.proto {
            Proto::Http1 => {
                let (idle_tx, idle_rx) = async_channel::bounded(n);
                for _ in 0..n {
                    let _ = idle_tx.try_send(connect_h1(&addr).await?);
                }
                Conns::H1 { idle_tx, idle_rx }
            }
            Proto::H2c | Proto::Grpc => {
                let mut conns = Vec::with_capacity(n);
                for _ in 0..n {
                    conns.push(connect_h2(&addr).await?);
                }
                Conns::H2 {
                    conns,
                    next: AtomicUsize::new(0),
                }
            }
        };
        let body = match spec.proto {
            Proto::Grpc => grpc_frame(&spec.payload),
            _ => spec.payload.clone(),
        };
        let mut headers = spec.headers.clone();
        let uri = match spec.proto {
            Proto::Http1 => {
                if let Ok(h) = HeaderValue::from_str(&addr) {
                    headers.entry(http::header::HOST).or_insert(h);
                }
                let pq = spec.url.path_and_query().map_or("/", |p| p.as_str());
                Uri::try_from(pq).map_err(|_| LoadError::Url(spec.url.to_string()))?
            }
            Proto::H2c => spec.url.clone(),
            Proto::Grpc => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
                spec.url.clone()
            }
        };
        Ok(Self {
            spec,
            conns,
            body,
            addr,
            uri,
            headers,
        })
    }

    fn request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.spec.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    async fn call(&self) -> Outcome {
        match tokio::time::timeout(self.spec.timeout, self.call_inner()).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        }
    }

    async fn call_inner(&self) -> Outcome {
        match &self.conns {
            Conns::H1 { idle_tx, idle_rx } => {
                let mut conn = idle_rx
                    .recv()
                    .await
                    .map_err(|_| "no connection".to_string())?;
                let result = async {
                    conn.ready().await.map_err(|e| format!("io: {e}"))?;
                    let resp = conn
                        .send_request(self.request(Full::new(self.body.clone())))
                        .await
                        .map_err(|e| format!("io: {e}"))?;
                    check_http(resp).await
                }
                .await;
                // A broken connection is replaced so the pool keeps its size.
                if conn.is_closed() {
                    match connect_h1(&self.addr).await {
                        Ok(c) => conn = c,
                        Err(_) => return result.and(Err("connect".into())),
                    }
                }
                let _ = idle_tx.send(conn).await;
                result
            }
            Conns::H2 { conns, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % conns.len();
                let head = self.request(());
                let mut tx = conns[i]
                    .clone()
                    .ready()
                    .await
                    .map_err(|e| format!("io: {e}"))?;
                let (resp, mut stream) = tx
                    .send_request(head, self.body.is_empty())
                    .map_err(|e| format!("io: {e}"))?;
                if !self.body.is_empty() {
                    // Flow control may hold part of it back; h2 sends the
                    // rest as the window opens.
                    stream
                        .send_data(self.body.clone(), true)
                        .map_err(|e| format!("io: {e}"))?;
                }
                let resp = resp.await.map_err(|e| format!("io: {e}"))?;
                check_h2(resp, self.spec.proto == Proto::Grpc).await
            }
        }
    }
}

/// Reads an h2 response to the end, handing back flow-control credit as it
/// goes, and judges it by HTTP status or, for gRPC, by `grpc-status`.
async fn check_h2(resp: http::Response<h2::RecvStream>, grpc: bool) -> Outcome {
    let (parts, mut body) = resp.into_parts();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("io: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if !grpc {
        return if parts.status.is_success() {
            Ok(())
        } else {
            Err(format!("http {}", parts.status.as_u16()))
        };
    }
    if parts.status != StatusCode::OK {
        return Err(format!("http {}", parts.status.as_u16()));
    }
    let trailers = body.trailers().await.map_err(|e| format!("io: {e}"))?;
    let status = grpc_status(&parts.headers).or_else(|| trailers.as_ref().and_then(grpc_status));
    match status {
        Some(0) => Ok(()),
        Some(code) => Err(format!("grpc-status {code}")),
        None => Err("grpc: no status".into()),
    }
}

async fn check_http(resp: http::Response<hyper::body::Incoming>) -> Outcome {
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("io: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("http {}", status.as_u16()))
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Frames a protobuf message for a unary gRPC call.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// A protobuf message with one `bytes` field (number 1) of `size` bytes:
/// `skiff.echo.v1.EchoMessage.payload`, and harmless to other messages.
pub fn bytes_field_message(size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size + 11);
    b.put_u8(0x0a);
    let mut n = size as u64;
    while n >= 0x80 {
        b.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    b.put_u8(n as u8);
    b.put_bytes(b'x', size);
    b.freeze()
}

async fn tcp(addr: &str) -> Result<TokioIo<TcpStream>, LoadError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = s.set_nodelay(true);
    Ok(TokioIo::new(s))
}

async fn connect_h1(addr: &str) -> Result<http1::SendRequest<Full<Bytes>>, LoadError> {
    let (tx, conn) =
        http1::handshake(tcp(addr).await?)
            .await
            .map_err(|source| LoadError::Handshake {
                addr: addr.to_owned(),
                source,
            })?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn connect_h2(addr: &str) -> Result<h2::client::SendRequest<Bytes>, LoadError> {
    let io = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = io.set_nodelay(true);
    let (tx, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(io)
        .await
        .map_err(|source| LoadError::H2Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// A lean gRPC unary caller on one h2 connection: the request is framed
/// by hand and the answer judged by `grpc-status` without decoding it, so
/// a benchmark's figures hold the server's cost and little of a client's
/// (tonic's client adds its own tens of microseconds per call here).
#[derive(Clone)]
pub struct GrpcUnary {
    tx: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl GrpcUnary {
    pub async fn connect(addr: &str) -> Result<Self, LoadError> {
        Ok(Self {
            tx: connect_h2(addr).await?,
            authority: addr.to_owned(),
        })
    }

    /// Calls `method` (`/package.Service/Method`) with the encoded
    /// message `msg`.
    pub async fn call(&self, method: &str, msg: &[u8]) -> Result<(), String> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.as_str())
            .path_and_query(method)
            .build()
            .map_err(|e| format!("uri: {e}"))?;
        let mut head = Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        *head.version_mut() = http::Version::HTTP_2;
        let mut tx = self
            .tx
            .clone()
            .ready()
            .await
            .map_err(|e| format!("io: {e}"))?;
        let (resp, mut stream) = tx
            .send_request(head, false)
            .map_err(|e| format!("io: {e}"))?;
        stream
            .send_data(grpc_frame(msg), true)
            .map_err(|e| format!("io: {e}"))?;
        let resp = resp.await.map_err(|e| format!("io: {e}"))?;
        check_h2(resp, true).await
    }
}

pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (n, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not name:value"))?;
    let name = HeaderName::from_bytes(n.trim().as_bytes())
        .map_err(|e| format!("header name {n:?}: {e}"))?;
    let value = HeaderValue::from_str(v.trim()).map_err(|e| format!("header value {v:?}: {e}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_field_encoding() {
        let m = bytes_field_message(1024);
        assert_eq!(&m[..3], &[0x0a, 0x80, 0x08]);
        assert_eq!(m.len(), 1027);
        assert_eq!(&bytes_field_message(3)[..], b"\x0a\x03xxx");
        let f = grpc_frame(b"abc");
        assert_eq!(&f[..], b"\x00\x00\x00\x00\x03abc");
    }

    #[test]
    fn headers_parse() {
        let (n, v) = parse_header("dapr-app-id: rpc").expect("valid");
        assert_eq!(n, "dapr-app-id");
        assert_eq!(v, "rpc");
        assert!(parse_header("nocolon").is_err());
    }
}
