//! The sidecar's one metrics registry: Dapr's metric names and labels, so
//! existing Dapr dashboards and alerts work unchanged, plus Skiff's own
//! (`skiff_*`) for what Dapr does not measure.
//!
//! Everything is recorded into a process-wide static with plain atomics;
//! the call path never takes a lock that a scrape could hold for long, and
//! never formats a label. Label values are turned into text only when
//! `/metrics` is scraped. Values known only at scrape time (pool and
//! resolver state, breaker states, process figures) come from collectors
//! registered at start.
//!
//! The building blocks' component families (`dapr_component_*`) live
//! beside each block and are rendered here as [`Section`]s ([`sections`]);
//! the resiliency families are in [`resiliency`], path matching in
//! [`paths`], the `process_*` figures in [`process`]. `golden.prom` beside
//! this folder holds the exposition that `blocks::metrics` tests byte for
//! byte.
//!
//! Cardinality follows Dapr's low-cardinality mode: no request paths,
//! except through `spec.metrics.http.pathMatching` patterns; app ids and
//! gRPC method names are bounded per family (see [`registry::MAX_SERIES`]).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use http::Method;
use skiff_sentry::spiffe::SpiffeId;

use super::registry::{Counter, Encoder, Family, Histogram, Timed, labels};

mod paths;
mod process;
mod resiliency;
mod sections;

pub use paths::PathMatching;
use process::render_process;
pub use resiliency::INBOUND_KEY;
use sections::Sections;
pub use sections::{ComponentOps, OpsFamily, Section, StoreKind};

/// A value computed at scrape time.
pub type Collector = Box<dyn Fn(&mut Encoder) + Send + Sync>;

/// HTTP methods with their own label value; anything else is `OTHER`.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// gRPC status names as grpc-go prints them (Dapr's label values).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Resiliency policy kinds (Dapr's `policy` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Timeout = 0,
    Retry = 1,
    CircuitBreaker = 2,
}

const POLICY_NAMES: [&str; 3] = ["timeout", "retry", "circuitbreaker"];
/// Breaker states as Dapr labels them.
pub const CB_STATES: [&str; 3] = ["closed", "half-open", "open"];

/// Why a span never reached the collector.
#[derive(Clone, Copy, Debug)]
pub enum SpanDrop {
    QueueFull = 0,
    ExportFailed = 1,
}

/// Per gRPC method: one series per status code, made on first use.
#[derive(Default)]
pub struct GrpcCodes([OnceLock<Box<Timed>>; 17]);

impl std::fmt::Debug for GrpcCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcCodes")
    }
}

impl GrpcCodes {
    pub fn record(&self, code: u16, d: Duration) {
        let i = usize::from(code).min(16);
        self.0[i].get_or_init(Box::default).record(d);
    }
}

/// The caller's side of invocations to one app.
#[derive(Default)]
pub struct InvokeOut {
    /// Requests sent: unary, streaming.
    sent: [Counter; 2],
    /// Responses received, by (status, streaming).
    received: Family<(u16, bool), Counter>,
    latency: Family<u16, Histogram>,
}

/// The callee's side of invocations from one app.
#[derive(Default)]
pub struct InvokeIn {
    received: Counter,
    responded: Family<u16, Counter>,
}

/// Access-control decisions about one caller: allowed by its app policy,
/// by the global default, blocked by its app policy, by the default.
#[derive(Default)]
pub struct AclCounts([Counter; 4]);

/// Resiliency policies applied to one target.
#[derive(Default)]
pub struct ResiliencyTarget {
    name: OnceLock<Box<str>>,
    executed: [Counter; 3],
    /// Timeout and retry activations; breaker transitions by new state.
    activated: [Counter; 2],
    transitions: [Counter; 3],
}

/// Every metric the sidecar records.
pub struct Metrics {
    app_id: OnceLock<Box<str>>,
    namespace: OnceLock<Box<str>>,
    paths: OnceLock<PathMatching>,
    http_server: Family<(u8, u16, u16), Timed>,
    grpc_server: Family<String, Arc<GrpcCodes>>,
    http_client: Family<(u8, u16), Timed>,
    grpc_client: Family<String, Arc<GrpcCodes>>,
    invoke_out: Family<String, InvokeOut>,
    invoke_in: Family<String, InvokeIn>,
    acl: Family<SpiffeId, AclCounts>,
    resiliency: Family<String, ResiliencyTarget>,
    /// The building blocks' families, defined beside each block.
    sections: Sections,
    retry_budget_exhausted: Family<String, Counter>,
    mtls_init: Counter,
    cert_rotated: Counter,
    cert_rotate_failed: Family<String, Counter>,
    resolver_errors: Counter,
    connections_refused: Counter,
    spans_exported: Counter,
    spans_dropped: [Counter; 2],
    collectors: Mutex<Vec<Collector>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
/// `--enable-metrics` and `spec.metrics.enabled`: when off nothing is
/// recorded, so the call path pays one relaxed load.
static ON: AtomicBool = AtomicBool::new(true);

/// The registry, when recording is on.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    ON.load(Relaxed).then(|| &*METRICS)
}

/// The registry, whether or not recording is on (rendering, collectors).
pub fn registry() -> &'static Metrics {
    &METRICS
}

/// Turns recording on or off for the process.
pub fn set_enabled(on: bool) {
    ON.store(on, Relaxed);
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Label index of an HTTP method.
fn method_index(m: &Method) -> u8 {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

impl Metrics {
    /// A registry of its own (tests); the sidecar records into
    /// [`registry`].
    pub fn new() -> Self {
        let other = || "_other".to_owned();
        Self {
            app_id: OnceLock::new(),
            namespace: OnceLock::new(),
            paths: OnceLock::new(),
            http_server: Family::new((9, 0, 0)),
            grpc_server: Family::new(other()),
            http_client: Family::new((9, 0)),
            grpc_client: Family::new(other()),
            invoke_out: Family::new(other()),
            invoke_in: Family::new(other()),
            acl: Family::new(
                SpiffeId::new("_other", "_other", "_other").unwrap_or_else(|_| unreachable!()),
            ),
            resiliency: Family::new(other()),
            sections: Sections::default(),
            retry_budget_exhausted: Family::new(other()),
            mtls_init: Counter::default(),
            cert_rotated: Counter::default(),
            cert_rotate_failed: Family::new(other()),
            resolver_errors: Counter::default(),
            connections_refused: Counter::default(),
            spans_exported: Counter::default(),
            spans_dropped: Default::default(),
            collectors: Mutex::default(),
        }
    }

    /// Names this sidecar (the `app_id` label) and sets path matching.
    pub fn init(&self, app_id: &str, namespace: &str, paths: PathMatching) {
        let _ = self.app_id.set(app_id.into());
        let _ = self.namespace.set(namespace.into());
        let _ = self.paths.set(paths);
    }

    /// Adds a scrape-time collector.
    pub fn collect(&self, c: Collector) {
        if let Ok(mut v) = self.collectors.lock() {
            v.push(c);
        }
    }

    // --- recording: the call path -------------------------------------

    /// The `path` label index of a request path (0: none).
    pub fn path_index(&self, path: &str) -> u16 {
        self.paths.get().map_or(0, |m| m.index(path))
    }

    /// A call on the HTTP API port, at its response head; `path` from
    /// [`Metrics::path_index`].
    pub fn http_server(&self, method: &Method, status: u16, path: u16, d: Duration) {
        self.http_server
            .with(&(method_index(method), status, path), |t| t.record(d));
    }

    /// The series of a gRPC API method, to record once its status is
    /// known (often only in the trailers).
    pub fn grpc_server(&self, method: &str) -> Arc<GrpcCodes> {
        self.grpc_server.with(method, Arc::clone)
    }

    /// The series of a gRPC app's method, as [`Metrics::grpc_server`].
    pub fn app_grpc_series(&self, method: &str) -> Arc<GrpcCodes> {
        self.grpc_client.with(method, Arc::clone)
    }

    /// A call this sidecar delivered to its HTTP app.
    pub fn app_http(&self, method: &Method, status: u16, d: Duration) {
        self.http_client
            .with(&(method_index(method), status), |t| t.record(d));
    }

    /// A call this sidecar delivered to its gRPC app.
    pub fn app_grpc(&self, method: &str, code: u16, d: Duration) {
        self.grpc_client.with(method, |g| g.record(code, d));
    }

    /// A request sent to another sidecar (each attempt counts).
    pub fn invoke_sent(&self, dst: &str, streaming: bool) {
        self.invoke_out
            .with(dst, |o| o.sent[usize::from(streaming)].inc());
    }

    /// The answer to an invocation as the calling app sees it: the remote
    /// status, or the error status this sidecar returned.
    pub fn invoke_answered(&self, dst: &str, status: u16, streaming: bool, d: Duration) {
        self.invoke_out.with(dst, |o| {
            o.received.with(&(status, streaming), Counter::inc);
            o.latency.with(&status, |h| h.observe(d));
        });
    }

    /// A request received from another sidecar.
    pub fn invoke_received(&self, src: &str) {
        self.invoke_in.with(src, |i| i.received.inc());
    }

    /// The response this sidecar sent back to a calling sidecar.
    pub fn invoke_responded(&self, src: &str, status: u16) {
        self.invoke_in
            .with(src, |i| i.responded.with(&status, Counter::inc));
    }

    /// An access-control decision about `caller`; `global` when no app
    /// policy matched it and the default action decided.
    pub fn acl(&self, caller: &SpiffeId, allowed: bool, global: bool) {
        let i = usize::from(!allowed) * 2 + usize::from(global);
        self.acl.with(caller, |c| c.0[i].inc());
    }

    pub fn retry_budget_exhausted(&self, target: &str) {
        self.retry_budget_exhausted.with(target, Counter::inc);
    }

    pub fn mtls_init(&self) {
        self.mtls_init.inc();
    }

    pub fn cert_rotated(&self) {
        self.cert_rotated.inc();
    }

    pub fn cert_rotate_failed(&self, reason: &str) {
        self.cert_rotate_failed.with(reason, Counter::inc);
    }

    pub fn resolver_error(&self) {
        self.resolver_errors.inc();
    }

    /// A connection closed at accept: `--max-connections` was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn spans_exported(&self, n: u64) {
        self.spans_exported.add(n);
    }

    pub fn spans_dropped(&self, why: SpanDrop, n: u64) {
        self.spans_dropped[why as usize].add(n);
    }

    /// Spans dropped so far, for every reason.
    pub fn spans_dropped_total(&self) -> u64 {
        self.spans_dropped.iter().map(Counter::get).sum()
    }

    // --- rendering: a scrape --------------------------------------------

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut e = Encoder::default();
        let app = self.app_id.get().map_or("", |a| a);
        self.render_http(&mut e, app);
        self.render_grpc(&mut e, app);
        self.render_invocation(&mut e, app);
        self.render_acl(&mut e);
        self.render_resiliency(&mut e, app);
        let ns = self.namespace.get().map_or("", |n| n);
        self.sections.render(&mut e, app, ns);
        self.render_security(&mut e, app);
        self.render_skiff(&mut e, app);
        if let Ok(cs) = self.collectors.lock() {
            for c in cs.iter() {
                c(&mut e);
            }
        }
        e.out
    }

    fn render_http(&self, e: &mut Encoder, app: &str) {
        let paths = self.paths.get();
        let server = |m: u8, s: u16, p: u16| {
            let (method, status) = (METHODS[usize::from(m)], s.to_string());
            match paths.filter(|pm| !pm.is_empty()) {
                Some(pm) => labels(&[
                    ("app_id", app),
                    ("method", method),
                    ("path", pm.label(p)),
                    ("status", &status),
                ]),
                None => labels(&[("app_id", app), ("method", method), ("status", &status)]),
            }
        };
        e.header(
            "dapr_http_server_request_count",
            "counter",
            "Number of HTTP requests completed by the sidecar's HTTP API.",
        );
        self.http_server.each(|&(m, s, p), t| {
            e.sample(
                "dapr_http_server_request_count",
                &server(m, s, p),
                t.count.get(),
            );
        });
        e.header(
            "dapr_http_server_latency",
            "histogram",
            "HTTP API latency in milliseconds, to the response head.",
        );
        self.http_server.each(|&(m, s, p), t| {
            e.histogram("dapr_http_server_latency", &server(m, s, p), &t.latency);
        });
        let client = |m: u8, s: u16| {
            labels(&[
                ("app_id", app),
                ("method", METHODS[usize::from(m)]),
                ("status", &s.to_string()),
            ])
        };
        e.header(
            "dapr_http_client_completed_count",
            "counter",
            "Calls the sidecar completed to its HTTP app.",
        );
        self.http_client.each(|&(m, s), t| {
            e.sample(
                "dapr_http_client_completed_count",
                &client(m, s),
                t.count.get(),
            );
        });
        e.header(
            "dapr_http_client_roundtrip_latency",
            "histogram",
            "Sidecar to HTTP app latency in milliseconds, to the response head.",
        );
        self.http_client.each(|&(m, s), t| {
            e.histogram(
                "dapr_http_client_roundtrip_latency",
                &client(m, s),
                &t.latency,
            );
        });
    }

    fn render_grpc(&self, e: &mut Encoder, app: &str) {
        let fams = [
            (
                &self.grpc_server,
                "dapr_grpc_io_server_completed_rpcs",
                "dapr_grpc_io_server_server_latency",
                "grpc_server_method",
                "grpc_server_status",
                "the sidecar's gRPC API",
            ),
            (
                &self.grpc_client,
                "dapr_grpc_io_client_completed_rpcs",
                "dapr_grpc_io_client_roundtrip_latency",
                "grpc_client_method",
                "grpc_client_status",
                "the sidecar's calls to its gRPC app",
            ),
        ];
        for (fam, count, latency, mkey, skey, what) in fams {
            let each = |f: &mut dyn FnMut(String, &Timed)| {
                fam.each(|method, codes| {
                    for (i, t) in codes.0.iter().enumerate() {
                        if let Some(t) = t.get() {
                            let l =
                                labels(&[("app_id", app), (mkey, method), (skey, GRPC_CODES[i])]);
                            f(l, t);
                        }
                    }
                });
            };
            e.header(count, "counter", &format!("RPCs completed by {what}."));
            each(&mut |l, t| e.sample(count, &l, t.count.get()));
            e.header(
                latency,
                "histogram",
                &format!("Latency of {what} in milliseconds."),
            );
            each(&mut |l, t| e.histogram(latency, &l, &t.latency));
        }
    }

    fn render_invocation(&self, e: &mut Encoder, app: &str) {
        let kind = |s: bool| if s { "streaming" } else { "unary" };
        e.header(
            "dapr_runtime_service_invocation_req_sent_total",
            "counter",
            "Requests sent to other sidecars (each attempt).",
        );
        self.invoke_out.each(|dst, o| {
            for (i, c) in o.sent.iter().enumerate() {
                if c.get() > 0 {
                    let l = labels(&[("app_id", app), ("dst_app_id", dst), ("type", kind(i == 1))]);
                    e.sample(
                        "dapr_runtime_service_invocation_req_sent_total",
                        &l,
                        c.get(),
                    );
                }
            }
        });
        e.header(
            "dapr_runtime_service_invocation_res_recv_total",
            "counter",
            "Invocation answers, by the status the calling app saw.",
        );
        self.invoke_out.each(|dst, o| {
            o.received.each(|&(status, s), c| {
                let l = labels(&[
                    ("app_id", app),
                    ("src_app_id", dst),
                    ("status", &status.to_string()),
                    ("type", kind(s)),
                ]);
                e.sample(
                    "dapr_runtime_service_invocation_res_recv_total",
                    &l,
                    c.get(),
                );
            });
        });
        e.header(
            "dapr_runtime_service_invocation_res_recv_latency_ms",
            "histogram",
            "Invocation latency in milliseconds, to the response head.",
        );
        self.invoke_out.each(|dst, o| {
            o.latency.each(|status, h| {
                let l = labels(&[
                    ("app_id", app),
                    ("src_app_id", dst),
                    ("status", &status.to_string()),
                ]);
                e.histogram("dapr_runtime_service_invocation_res_recv_latency_ms", &l, h);
            });
        });
        e.header(
            "dapr_runtime_service_invocation_req_recv_total",
            "counter",
            "Requests received from other sidecars.",
        );
        self.invoke_in.each(|src, i| {
            let l = labels(&[("app_id", app), ("src_app_id", src)]);
            e.sample(
                "dapr_runtime_service_invocation_req_recv_total",
                &l,
                i.received.get(),
            );
        });
        e.header(
            "dapr_runtime_service_invocation_res_sent_total",
            "counter",
            "Responses sent back to calling sidecars.",
        );
        self.invoke_in.each(|src, i| {
            i.responded.each(|status, c| {
                let l = labels(&[
                    ("app_id", app),
                    ("dst_app_id", src),
                    ("status", &status.to_string()),
                ]);
                e.sample(
                    "dapr_runtime_service_invocation_res_sent_total",
                    &l,
                    c.get(),
                );
            });
        });
    }

    fn render_acl(&self, e: &mut Encoder) {
        let names = [
            "dapr_runtime_acl_app_policy_action_allowed_total",
            "dapr_runtime_acl_global_policy_action_allowed_total",
            "dapr_runtime_acl_app_policy_action_blocked_total",
            "dapr_runtime_acl_global_policy_action_blocked_total",
        ];
        for (i, name) in names.iter().enumerate() {
            e.header(
                name,
                "counter",
                "Calls decided by the access control policy, by caller.",
            );
            self.acl.each(|id, c| {
                let l = labels(&[
                    ("app_id", id.app_id()),
                    ("trustDomain", id.trust_domain()),
                    ("namespace", id.namespace()),
                ]);
                e.sample(name, &l, c.0[i].get());
            });
        }
    }

    fn render_security(&self, e: &mut Encoder, app: &str) {
        let a = labels(&[("app_id", app)]);
        e.header(
            "dapr_runtime_mtls_init_total",
            "counter",
            "Successful mTLS initialisations (first workload certificate).",
        );
        e.sample("dapr_runtime_mtls_init_total", &a, self.mtls_init.get());
        e.header(
            "dapr_runtime_mtls_workload_cert_rotated_total",
            "counter",
            "Successful workload certificate rotations.",
        );
        e.sample(
            "dapr_runtime_mtls_workload_cert_rotated_total",
            &a,
            self.cert_rotated.get(),
        );
        e.header(
            "dapr_runtime_mtls_workload_cert_rotated_fail_total",
            "counter",
            "Failed workload certificate rotations, by reason.",
        );
        self.cert_rotate_failed.each(|reason, c| {
            let l = labels(&[("app_id", app), ("reason", reason)]);
            e.sample(
                "dapr_runtime_mtls_workload_cert_rotated_fail_total",
                &l,
                c.get(),
            );
        });
    }

    fn render_skiff(&self, e: &mut Encoder, app: &str) {
        let a = labels(&[("app_id", app)]);
        e.header(
            "skiff_retry_budget_exhausted_total",
            "counter",
            "Retries the retry budget refused, by target app.",
        );
        self.retry_budget_exhausted.each(|t, c| {
            let l = labels(&[("app_id", app), ("dst_app_id", t)]);
            e.sample("skiff_retry_budget_exhausted_total", &l, c.get());
        });
        e.header(
            "skiff_resolver_errors_total",
            "counter",
            "Name resolution failures on the call path.",
        );
        e.sample(
            "skiff_resolver_errors_total",
            &a,
            self.resolver_errors.get(),
        );
        e.header(
            "skiff_connections_refused_total",
            "counter",
            "Connections closed at accept because a listener had --max-connections open.",
        );
        e.sample(
            "skiff_connections_refused_total",
            &a,
            self.connections_refused.get(),
        );
        e.header(
            "skiff_trace_spans_exported_total",
            "counter",
            "Spans the collector accepted.",
        );
        e.sample(
            "skiff_trace_spans_exported_total",
            &a,
            self.spans_exported.get(),
        );
        e.header(
            "skiff_trace_spans_dropped_total",
            "counter",
            "Spans dropped: export queue full, or the collector failed.",
        );
        for (i, reason) in ["queue_full", "export_failed"].iter().enumerate() {
            let l = labels(&[("app_id", app), ("reason", reason)]);
            e.sample(
                "skiff_trace_spans_dropped_total",
                &l,
                self.spans_dropped[i].get(),
            );
        }
        render_process(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        let m = PathMatching::new(&[
            "/orders/{id}".into(),
            "/v1.0/invoke/{app}/method/items".into(),
        ]);
        assert_eq!(m.label(m.index("/orders/42")), "/orders/{id}");
        assert_eq!(m.label(m.index("/orders/42/x")), "_");
        assert_eq!(
            m.label(m.index("/v1.0/invoke/shop/method/items")),
            "/v1.0/invoke/{app}/method/items"
        );
        assert_eq!(m.label(m.index("/other")), "_");
    }

    #[test]
    fn renders_dapr_names_and_labels() {
        let m = Metrics::new();
        m.init("caller", "default", PathMatching::default());
        m.http_server(&Method::GET, 200, 0, Duration::from_micros(300));
        m.invoke_sent("callee", false);
        m.invoke_answered("callee", 503, false, Duration::from_millis(2));
        m.grpc_server("/echo.Echo/Unary")
            .record(14, Duration::from_millis(1));
        let id = SpiffeId::new("public", "default", "caller").expect("id");
        m.acl(&id, false, true);
        let out = m.render();
        for want in [
            "dapr_http_server_request_count{app_id=\"caller\",method=\"GET\",status=\"200\"} 1\n",
            "dapr_runtime_service_invocation_req_sent_total{app_id=\"caller\",dst_app_id=\"callee\",type=\"unary\"} 1\n",
            "dapr_runtime_service_invocation_res_recv_total{app_id=\"caller\",src_app_id=\"callee\",status=\"503\",type=\"unary\"} 1\n",
            "dapr_grpc_io_server_completed_rpcs{app_id=\"caller\",grpc_server_method=\"/echo.Echo/Unary\",grpc_server_status=\"Unavailable\"} 1\n",
            "dapr_runtime_acl_global_policy_action_blocked_total{app_id=\"caller\",trustDomain=\"public\",namespace=\"default\"} 1\n",
            "dapr_runtime_acl_app_policy_action_blocked_total{app_id=\"caller\",trustDomain=\"public\",namespace=\"default\"} 0\n",
            "# TYPE dapr_http_server_latency histogram\n",
        ] {
            assert!(out.contains(want), "missing {want}\n{out}");
        }
    }
}
