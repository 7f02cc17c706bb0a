//! W3C trace context on the call path: `traceparent` read (or, from gRPC
//! callers, `grpc-trace-bin`), a span per sidecar hop, and the context
//! passed on with this hop's span as the parent. `tracestate` and `baggage`
//! travel untouched.
//!
//! Tracing is on when the Configuration has `spec.tracing`. Sampling is
//! parent-based: a caller's sampled flag is honoured, and a trace started
//! here is sampled when its id falls under `samplingRate` (so every hop of
//! one trace decides alike). Unsampled calls still get ids and propagate;
//! only sampled spans are recorded and queued for export. The queue is
//! bounded and never waited on: a full queue drops the span and counts it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;

use super::metrics::{self, SpanDrop};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const GRPC_TRACE_BIN: HeaderName = HeaderName::from_static("grpc-trace-bin");

/// Spans waiting for the exporter; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The caller's sidecar, sending to another sidecar.
    Client,
    /// The callee's sidecar, serving a call from another sidecar.
    Server,
}

/// An attribute value.
#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished, sampled span, as queued for export.
#[derive(Debug)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: Option<String>,
}

/// What a finished span says about its call.
#[derive(Debug, Default)]
pub struct Described {
    pub name: String,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the call failed.
    pub error: Option<String>,
}

/// The ids of the span this sidecar starts for one call.
#[derive(Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    kind: Kind,
    /// When it started (monotonic, and wall clock for export); read only
    /// for sampled spans, so an unsampled call reads no clock.
    started: Option<(Instant, u64)>,
}

/// Starts and records spans; one per sidecar, cheap to share.
#[derive(Debug)]
pub struct Tracer {
    /// A trace started here is sampled when the low 64 bits of its id are
    /// below this (rate × 2^64).
    threshold: u64,
    always: bool,
    queue: Option<mpsc::Sender<SpanData>>,
}

impl Tracer {
    /// `rate` in [0, 1]; `queue` is the exporter's (None: sampled spans
    /// have nowhere to go and are not recorded).
    pub fn new(rate: f64, queue: Option<mpsc::Sender<SpanData>>) -> Self {
        let rate = rate.clamp(0.0, 1.0);
        Self {
            threshold: (rate * u64::MAX as f64) as u64,
            always: rate >= 1.0,
            queue,
        }
    }

    /// A span for a call whose incoming headers are `h`: a child of the
    /// caller's context when it sent one, else the root of a new trace.
    pub fn start(&self, h: &HeaderMap, kind: Kind) -> Span {
        let incoming = h
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .or_else(|| h.get(&GRPC_TRACE_BIN).and_then(parse_grpc_trace_bin));
        let (trace_id, parent_id, sampled) = match incoming {
            Some((t, p, flags)) => (t, Some(p), flags & 1 == 1),
            None => {
                let t = new_trace_id();
                (t, None, self.samples(&t))
            }
        };
        // Sampled travels on in the flags whether or not there is an
        // exporter (parent-based sampling, as daprd); only a span with
        // somewhere to go is timed and recorded.
        let recorded = sampled && self.queue.is_some();
        Span {
            trace_id,
            span_id: new_span_id(),
            parent_id,
            sampled,
            kind,
            started: recorded.then(|| (Instant::now(), unix_ns(SystemTime::now()))),
        }
    }

    /// Whether spans go anywhere (an exporter is configured): callers may
    /// skip work that only feeds a span.
    pub fn exporting(&self) -> bool {
        self.queue.is_some()
    }

    fn samples(&self, trace_id: &[u8; 16]) -> bool {
        if self.always {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        u64::from_be_bytes(low) < self.threshold
    }

    /// Records `span` if sampled: never blocks, drops when the queue is
    /// full. `describe` runs only for sampled spans.
    pub fn finish(&self, span: &Span, describe: impl FnOnce() -> Described) {
        let (Some(q), Some((start, start_unix_ns))) = (&self.queue, span.started) else {
            return;
        };
        let Described {
            name,
            attributes,
            error,
        } = describe();
        let end = start_unix_ns + u64::try_from(start.elapsed().as_nanos()).unwrap_or(0);
        let data = SpanData {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_id: span.parent_id,
            name,
            kind: span.kind,
            start_unix_ns,
            end_unix_ns: end,
            attributes,
            error,
        };
        if q.try_send(data).is_err()
            && let Some(m) = metrics::get()
        {
            m.spans_dropped(SpanDrop::QueueFull, 1);
        }
    }
}

impl Span {
    /// Whether this span will be exported: only then is it worth
    /// describing (its name and attributes cost allocations).
    pub fn is_recorded(&self) -> bool {
        self.started.is_some()
    }

    /// Passes this span on as the parent of the next hop: `traceparent`
    /// always, and `grpc-trace-bin` too when `grpc` (gRPC apps).
    pub fn inject(&self, h: &mut HeaderMap, grpc: bool) {
        let flags = u8::from(self.sampled);
        // Every call's value is new: marked sensitive, HTTP/2 sends it as a
        // never-indexed literal instead of churning the HPACK table and
        // evicting the headers that do repeat (app ids, content type).
        let mut tp = traceparent(&self.trace_id, &self.span_id, flags);
        tp.set_sensitive(true);
        h.insert(TRACEPARENT, tp);
        if grpc {
            let mut bin = grpc_trace_bin(&self.trace_id, &self.span_id, flags);
            bin.set_sensitive(true);
            h.insert(GRPC_TRACE_BIN, bin);
        } else {
            h.remove(&GRPC_TRACE_BIN);
        }
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`. Later versions
/// are read by their first four fields, as the spec asks; version `ff` and
/// all-zero ids are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent = [0u8; 8];
    for (i, b) in parent.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

/// The `traceparent` value naming `span` as the parent.
pub fn traceparent(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> HeaderValue {
    HeaderValue::from_bytes(&traceparent_text(trace, span, flags))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `traceparent` text on the stack, for callers that want it as text
/// (a CloudEvent's fields) rather than as a header.
pub fn traceparent_text(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 15)];
        }
    };
    put(3, trace);
    put(36, span);
    put(53, &[flags]);
    out[35] = b'-';
    out[52] = b'-';
    out
}

/// OpenCensus' binary context, base64 as gRPC carries `-bin` metadata:
/// version 0, field 0 trace id, field 1 span id, field 2 options.
pub fn grpc_trace_bin(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> HeaderValue {
    let mut raw = [0u8; 29];
    raw[1] = 0;
    raw[2..18].copy_from_slice(trace);
    raw[18] = 1;
    raw[19..27].copy_from_slice(span);
    raw[27] = 2;
    raw[28] = flags;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw);
    HeaderValue::from_str(&b64).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn parse_grpc_trace_bin(v: &HeaderValue) -> Option<([u8; 16], [u8; 8], u8)> {
    // Other encoders pad; the alphabet is the same.
    let s = v.as_bytes();
    let end = s.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&s[..end])
        .ok()?;
    if raw.len() < 29 || raw[0] != 0 || raw[1] != 0 || raw[18] != 1 || raw[27] != 2 {
        return None;
    }
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&raw[2..18]);
    let mut span = [0u8; 8];
    span.copy_from_slice(&raw[19..27]);
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, raw[28]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trip() {
        let (t, p, f) = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(f, 1);
        assert_eq!(traceparent(&t, &p, f).to_str().expect("ascii"), TP);
    }

    #[test]
    fn traceparent_rejects_malformed() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may append fields.
        let v1 = format!("01{}-extra", &TP[2..]);
        assert!(parse_traceparent(v1.as_bytes()).is_some());
    }

    #[test]
    fn grpc_trace_bin_round_trip() {
        let (t, p, f) = parse_traceparent(TP.as_bytes()).expect("valid");
        let v = grpc_trace_bin(&t, &p, f);
        assert_eq!(parse_grpc_trace_bin(&v), Some((t, p, f)));
        // Padded base64 from other encoders is read too.
        let padded = HeaderValue::from_str(&format!("{}=", v.to_str().expect("ascii"))).expect("v");
        assert_eq!(parse_grpc_trace_bin(&padded), Some((t, p, f)));
    }

    #[test]
    fn child_spans_keep_the_trace_and_name_their_parent() {
        let (tx, _rx) = mpsc::channel(4);
        let tr = Tracer::new(0.0, Some(tx));
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        let s = tr.start(&h, Kind::Client);
        let (t, p, _) = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(s.trace_id, t);
        assert_eq!(s.parent_id, Some(p));
        assert!(s.sampled, "the caller's sampled flag wins over rate 0");
        let mut out = HeaderMap::new();
        s.inject(&mut out, true);
        let (t2, p2, f2) = parse_traceparent(out[&TRACEPARENT].as_bytes()).expect("injected");
        assert_eq!((t2, p2, f2), (t, s.span_id, 1));
        assert!(out.contains_key(&GRPC_TRACE_BIN));
    }

    #[test]
    fn sampling_rate_applies_to_new_traces() {
        let (tx, _rx) = mpsc::channel(4);
        let none = Tracer::new(0.0, Some(tx.clone()));
        let all = Tracer::new(1.0, Some(tx.clone()));
        let tenth = Tracer::new(0.1, Some(tx));
        let h = HeaderMap::new();
        let n = 20_000;
        assert_eq!(
            (0..n)
                .filter(|_| none.start(&h, Kind::Client).sampled)
                .count(),
            0
        );
        assert_eq!(
            (0..n)
                .filter(|_| all.start(&h, Kind::Client).sampled)
                .count(),
            n
        );
        let k = (0..n)
            .filter(|_| tenth.start(&h, Kind::Client).sampled)
            .count();
        assert!((1600..2400).contains(&k), "{k} of {n} sampled at 0.1");
    }

    #[test]
    fn a_full_queue_drops_without_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let tr = Tracer::new(1.0, Some(tx));
        let h = HeaderMap::new();
        for _ in 0..3 {
            let s = tr.start(&h, Kind::Server);
            tr.finish(&s, Described::default);
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "only one fitted");
    }
}
