//! Observability through real sidecars: Prometheus counts after known
//! traffic (allowed, denied, retried and failed calls), W3C trace context
//! through two sidecars into a real OTLP receiver (the official
//! `opentelemetry-proto` service, over gRPC and over HTTP), and a dead
//! collector that costs the calls nothing while drops are counted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use skiff_proto::echo::EchoMessage;
use skiff_proto::echo::echo_client::EchoClient;
use skiff_tests::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn get(c: &HttpClient, from: &Sidecar, app: &str, path: &str) -> Resp {
    send(
        c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/{app}/method{path}", from.http()),
            "",
        ),
    )
    .await
}

/// `after - before` of one series.
fn delta(before: &str, after: &str, series: &str) -> f64 {
    sample(after, series) - sample(before, series)
}

#[tokio::test]
async fn metrics_count_allowed_denied_retried_and_failed_calls() {
    let w = World::new();
    let echo = w.echo("e");
    let mut o = SidecarOpts::app(echo.http_port).mtls();
    o.args.extend([
        "--config".into(),
        dir().join("observability/acl.yaml").display().to_string(),
    ]);
    let orders = w.sidecar("orders", o);
    let mut o = SidecarOpts::default().mtls();
    o.args.extend([
        "--resources-path".into(),
        dir().join("policy/resources").display().to_string(),
    ]);
    let web = w.sidecar("web", o);
    wait_outbound_ready(&web, Duration::from_secs(10)).await;
    let c = http_client();
    let (web0, orders0) = (web.scrape().await, orders.scrape().await);

    for i in 0..5 {
        assert_eq!(
            get(&c, &web, "orders", &format!("/allowed/{i}"))
                .await
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(get(&c, &web, "orders", "/denied").await.status, 403);
    }
    // Two 503s, then success: two retries (policy "transient").
    assert_eq!(get(&c, &web, "orders", "/flaky/m?fail=2").await.status, 200);
    assert_eq!(get(&c, &web, "nobody", "/x").await.status, 500);
    // A gRPC proxy call the ACL refuses: a trailers-only PermissionDenied,
    // which "transient" (matching HTTP codes only) retries three times when
    // the request body had fully arrived when it was sent (a stream's body
    // is only replayed if so); `k` is how many attempts went.
    let ch = web.grpc_channel().await;
    let mut g = EchoClient::new(ch);
    let mut r = tonic::Request::new(EchoMessage::default());
    r.metadata_mut()
        .insert("dapr-app-id", "orders".parse().expect("ascii"));
    let err = g.unary(r).await.expect_err("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let (web1, orders1) = (web.scrape().await, orders.scrape().await);
    let expect = |before: &str, after: &str, series: &str, want: f64| {
        assert_eq!(delta(before, after, series), want, "{series}\n{after}");
    };
    let web_app = "app_id=\"web\"";
    let k = delta(
        &web0,
        &web1,
        "dapr_runtime_service_invocation_req_sent_total{app_id=\"web\",dst_app_id=\"orders\",type=\"streaming\"}",
    );
    assert!(k == 1.0 || k == 4.0, "{k} attempts of the gRPC call");
    for (series, want) in [
        (
            format!("dapr_http_server_request_count{{{web_app},method=\"GET\",status=\"200\"}}"),
            6.0,
        ),
        (
            format!("dapr_http_server_request_count{{{web_app},method=\"GET\",status=\"403\"}}"),
            2.0,
        ),
        (
            format!("dapr_http_server_request_count{{{web_app},method=\"GET\",status=\"500\"}}"),
            1.0,
        ),
        (
            format!("dapr_http_server_latency_count{{{web_app},method=\"GET\",status=\"200\"}}"),
            6.0,
        ),
        (
            format!(
                "dapr_http_server_latency_bucket{{{web_app},method=\"GET\",status=\"200\",le=\"+Inf\"}}"
            ),
            6.0,
        ),
        // Every attempt is a request sent: 5 + 2 + 3.
        (
            format!(
                "dapr_runtime_service_invocation_req_sent_total{{{web_app},dst_app_id=\"orders\",type=\"unary\"}}"
            ),
            10.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_recv_total{{{web_app},src_app_id=\"orders\",status=\"200\",type=\"unary\"}}"
            ),
            6.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_recv_total{{{web_app},src_app_id=\"orders\",status=\"403\",type=\"unary\"}}"
            ),
            2.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_recv_total{{{web_app},src_app_id=\"nobody\",status=\"500\",type=\"unary\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_recv_total{{{web_app},src_app_id=\"orders\",status=\"7\",type=\"streaming\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_recv_latency_ms_count{{{web_app},src_app_id=\"orders\",status=\"200\"}}"
            ),
            6.0,
        ),
        (
            format!(
                "dapr_grpc_io_server_completed_rpcs{{{web_app},grpc_server_method=\"/skiff.echo.v1.Echo/Unary\",grpc_server_status=\"PermissionDenied\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "dapr_resiliency_count{{{web_app},name=\"callers\",policy=\"retry\",namespace=\"default\",flow_direction=\"outbound\",target=\"app_orders\",status=\"\"}}"
            ),
            9.0,
        ),
        (
            format!(
                "dapr_resiliency_count{{{web_app},name=\"callers\",policy=\"timeout\",namespace=\"default\",flow_direction=\"outbound\",target=\"app_orders\",status=\"\"}}"
            ),
            9.0,
        ),
        (
            format!(
                "dapr_resiliency_activations_total{{{web_app},name=\"callers\",policy=\"retry\",namespace=\"default\",flow_direction=\"outbound\",target=\"app_orders\",status=\"\"}}"
            ),
            2.0 + k - 1.0,
        ),
    ] {
        expect(&web0, &web1, &series, want);
    }
    let caller = "app_id=\"web\",trustDomain=\"public\",namespace=\"default\"";
    let orders_app = "app_id=\"orders\"";
    for (series, want) in [
        (
            format!(
                "dapr_runtime_service_invocation_req_recv_total{{{orders_app},src_app_id=\"web\"}}"
            ),
            10.0 + k,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_sent_total{{{orders_app},dst_app_id=\"web\",status=\"200\"}}"
            ),
            6.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_sent_total{{{orders_app},dst_app_id=\"web\",status=\"403\"}}"
            ),
            2.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_sent_total{{{orders_app},dst_app_id=\"web\",status=\"503\"}}"
            ),
            2.0,
        ),
        (
            format!(
                "dapr_runtime_service_invocation_res_sent_total{{{orders_app},dst_app_id=\"web\",status=\"7\"}}"
            ),
            k,
        ),
        (
            format!("dapr_runtime_acl_app_policy_action_allowed_total{{{caller}}}"),
            8.0,
        ),
        (
            format!("dapr_runtime_acl_app_policy_action_blocked_total{{{caller}}}"),
            2.0 + k,
        ),
        (
            format!("dapr_runtime_acl_global_policy_action_blocked_total{{{caller}}}"),
            0.0,
        ),
        (
            format!(
                "dapr_http_client_completed_count{{{orders_app},method=\"GET\",status=\"200\"}}"
            ),
            6.0,
        ),
        (
            format!(
                "dapr_http_client_completed_count{{{orders_app},method=\"GET\",status=\"503\"}}"
            ),
            2.0,
        ),
    ] {
        expect(&orders0, &orders1, &series, want);
    }
    // Absolute figures.
    assert_eq!(
        sample(&web1, "dapr_runtime_mtls_init_total{app_id=\"web\"}"),
        1.0
    );
    assert!(
        sample(
            &web1,
            "skiff_pool_connections_open{app_id=\"web\",pool=\"sidecar\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &web1,
            "skiff_resolver_endpoints{app_id=\"web\",resolver=\"local\",dst_app_id=\"orders\",dst_namespace=\"default\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &web1,
            "dapr_resiliency_loaded{app_id=\"web\",name=\"callers\",namespace=\"default\"}"
        ),
        1.0
    );
    assert!(sample(&web1, "process_resident_memory_bytes") > 1e6);
    // Prometheus text at / too, with real histogram buckets.
    let root = send(
        &c,
        request(
            "GET",
            &format!("http://127.0.0.1:{}/", web.metrics_port),
            "",
        ),
    )
    .await;
    assert_eq!(root.status, 200);
    assert!(
        root.text()
            .contains("# TYPE dapr_http_server_latency histogram")
    );
    assert!(
        root.header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    // Metadata shows the effective telemetry and pool.
    let md = get_json(&format!("{}/v1.0/metadata", web.http())).await;
    assert_eq!(md["skiff"]["telemetry"]["metrics"]["enabled"], true, "{md}");
    assert!(
        md["skiff"]["pool"]["connections"].as_u64().unwrap_or(0) >= 1,
        "{md}"
    );
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let w = World::new();
    let mut o = SidecarOpts::default();
    o.args.push("--enable-metrics=false".into());
    let off = w.sidecar("off", o);
    assert!(std::net::TcpStream::connect(("127.0.0.1", off.metrics_port)).is_err());
    let cfg = w.home.path().join("nometrics.yaml");
    std::fs::write(&cfg, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec:\n  metrics:\n    enabled: false\n").expect("write");
    let mut o = SidecarOpts::default();
    o.args
        .extend(["--config".into(), cfg.display().to_string()]);
    let off2 = w.sidecar("off2", o);
    assert!(std::net::TcpStream::connect(("127.0.0.1", off2.metrics_port)).is_err());
}

/// Spans an OTLP receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn take(&self, req: ExportTraceServiceRequest) {
        let mut v = self.0.lock().expect("lock");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                v.extend(ss.spans);
            }
        }
    }

    /// Waits for `n` spans of `trace`.
    async fn wait(&self, trace: &[u8], n: usize) -> Vec<Span> {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let got: Vec<Span> = self
                .0
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < end, "{} of {n} spans arrived", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(r.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The official generated OTLP/gRPC service, on loopback.
async fn grpc_collector() -> (SocketAddr, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let rx = Received::default();
    let svc = TraceServiceServer::new(rx.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, rx)
}

/// OTLP/HTTP: protobuf `ExportTraceServiceRequest` POSTed to /v1/traces.
async fn http_collector() -> (SocketAddr, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let rx = Received::default();
    let got = rx.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let got = got.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let got = got.clone();
                        async move {
                            let ok = req.uri().path() == "/v1/traces"
                                && req.headers()["content-type"] == "application/x-protobuf";
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) if ok => {
                                    got.take(r);
                                    200
                                }
                                _ => 400,
                            };
                            let mut resp = http::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

fn tracing_config(w: &World, name: &str, rate: &str, endpoint: &str, protocol: &str) -> String {
    let p = w.home.path().join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!("apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: {name}}}\nspec:\n  tracing:\n    samplingRate: \"{rate}\"\n    otel:\n      endpointAddress: \"{endpoint}\"\n      isSecure: false\n      protocol: {protocol}\n"),
    )
    .expect("write");
    p.display().to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Two sidecars tracing into `endpoint`, in front of an echo app.
fn traced_pair(w: &World, echo: &Echo, cfg: &str) -> (Sidecar, Sidecar) {
    let with = |o: SidecarOpts| {
        let mut o = o;
        o.args.extend(["--config".into(), cfg.to_owned()]);
        o
    };
    let callee = w.sidecar("orders", with(SidecarOpts::app(echo.http_port)));
    let caller = w.sidecar("web", with(SidecarOpts::default()));
    (caller, callee)
}

async fn trace_through_two_sidecars(protocol: &str) {
    let (addr, rx) = match protocol {
        "grpc" => grpc_collector().await,
        _ => http_collector().await,
    };
    let w = World::new();
    let echo = w.echo("e");
    let cfg = tracing_config(&w, "traced", "1", &addr.to_string(), protocol);
    let (web, _orders) = traced_pair(&w, &echo, &cfg);
    let c = http_client();

    // The app sent a context: the trace continues, one span per hop.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut req = request(
        "GET",
        &format!("{}/v1.0/invoke/orders/method/hello", web.http()),
        "",
    );
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().expect("ascii"),
    );
    req.headers_mut()
        .insert("tracestate", "vendor=opaque".parse().expect("ascii"));
    req.headers_mut()
        .insert("baggage", "user=42".parse().expect("ascii"));
    let resp = send(&c, req).await;
    assert_eq!(resp.status, 200);
    let seen = resp.echoed_headers();
    let tp = seen["traceparent"]
        .as_str()
        .expect("the app got a traceparent")
        .to_owned();
    assert_eq!(seen["tracestate"], "vendor=opaque");
    assert_eq!(seen["baggage"], "user=42");
    let spans = rx.wait(&unhex(trace), 2).await;
    let client = spans.iter().find(|s| s.kind == 3).expect("client span");
    let server = spans.iter().find(|s| s.kind == 2).expect("server span");
    assert_eq!(
        hex(&client.parent_span_id),
        parent,
        "the caller's span hangs off the app's"
    );
    assert_eq!(
        server.parent_span_id, client.span_id,
        "the callee's span hangs off the caller's"
    );
    assert_eq!(
        tp,
        format!("00-{trace}-{}-01", hex(&server.span_id)),
        "the app's parent is the callee's span"
    );
    assert_eq!(client.name, "CallLocal/orders/hello");
    assert!(client.end_time_unix_nano >= client.start_time_unix_nano);

    // No context from the app: a new trace, rooted at the caller's sidecar.
    let resp = get(&c, &web, "orders", "/fresh").await;
    let tp = resp.echoed_headers()["traceparent"]
        .as_str()
        .expect("created")
        .to_owned();
    let new_trace = &tp[3..35];
    assert_ne!(new_trace, trace);
    let spans = rx.wait(&unhex(new_trace), 2).await;
    let root = spans.iter().find(|s| s.kind == 3).expect("client span");
    assert!(root.parent_span_id.is_empty(), "a root span has no parent");
}

#[tokio::test]
async fn traces_reach_an_otlp_grpc_collector_with_parents_right() {
    trace_through_two_sidecars("grpc").await;
}

#[tokio::test]
async fn traces_reach_an_otlp_http_collector_with_parents_right() {
    trace_through_two_sidecars("http").await;
}

#[tokio::test]
async fn grpc_callers_may_send_grpc_trace_bin() {
    let (addr, rx) = grpc_collector().await;
    let w = World::new();
    let echo = w.echo("e");
    let cfg = tracing_config(&w, "bin", "1", &addr.to_string(), "grpc");
    let with = |mut o: SidecarOpts| {
        o.args.extend(["--config".into(), cfg.clone()]);
        o
    };
    let _rpc = w.sidecar("rpc", with(SidecarOpts::grpc_app(echo.grpc_port)));
    let web = w.sidecar("web", with(SidecarOpts::default()));
    let ch = web.grpc_channel().await;
    let mut g = EchoClient::new(ch);
    let trace = [7u8; 16];
    let mut raw = vec![0u8, 0];
    raw.extend_from_slice(&trace);
    raw.push(1);
    raw.extend_from_slice(&[9u8; 8]);
    raw.extend_from_slice(&[2, 1]);
    let mut r = tonic::Request::new(EchoMessage {
        payload: Bytes::from_static(b"p"),
        ..Default::default()
    });
    r.metadata_mut()
        .insert("dapr-app-id", "rpc".parse().expect("ascii"));
    r.metadata_mut().insert_bin(
        "grpc-trace-bin",
        tonic::metadata::MetadataValue::from_bytes(&raw),
    );
    g.unary(r).await.expect("proxied");
    let spans = rx.wait(&trace, 2).await;
    let client = spans.iter().find(|s| s.kind == 3).expect("client span");
    assert_eq!(client.parent_span_id, vec![9u8; 8]);
    assert_eq!(client.name, "CallLocal/rpc/skiff.echo.v1.Echo/Unary");
}

#[tokio::test]
async fn sampling_rate_zero_propagates_but_exports_nothing() {
    let (addr, rx) = grpc_collector().await;
    let w = World::new();
    let echo = w.echo("e");
    let cfg = tracing_config(&w, "zero", "0", &addr.to_string(), "grpc");
    let (web, _orders) = traced_pair(&w, &echo, &cfg);
    let c = http_client();
    for _ in 0..20 {
        let resp = get(&c, &web, "orders", "/x").await;
        let tp = resp.echoed_headers()["traceparent"]
            .as_str()
            .expect("propagated")
            .to_owned();
        assert!(tp.ends_with("-00"), "unsampled: {tp}");
    }
    // A sampled caller is honoured whatever the rate.
    let mut req = request(
        "GET",
        &format!("{}/v1.0/invoke/orders/method/y", web.http()),
        "",
    );
    req.headers_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .expect("ascii"),
    );
    assert_eq!(send(&c, req).await.status, 200);
    rx.wait(&unhex("0af7651916cd43dd8448eb211c80319c"), 2).await;
    assert_eq!(rx.len(), 2, "only the sampled trace was exported");
}

/// Without `spec.tracing` daprd still traces (parent-based, sampling rate
/// 0.0001, nothing exported): a caller's `traceparent` reaches the app in
/// the same trace, re-parented by the sidecars, its sampled flag kept.
#[tokio::test]
async fn without_a_tracing_config_traces_continue_as_in_daprd() {
    let w = World::new();
    let echo = w.echo("e");
    let _orders = w.sidecar("orders", SidecarOpts::app(echo.http_port));
    let web = w.sidecar("web", SidecarOpts::default());
    let c = http_client();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    for flags in ["01", "00"] {
        let mut req = request(
            "GET",
            &format!("{}/v1.0/invoke/orders/method/x", web.http()),
            "",
        );
        let sent = format!("00-{trace}-b7ad6b7169203331-{flags}");
        req.headers_mut()
            .insert("traceparent", sent.parse().expect("ascii"));
        let resp = send(&c, req).await;
        assert_eq!(resp.status, 200);
        let got = resp.echoed_headers()["traceparent"]
            .as_str()
            .expect("the app got a traceparent")
            .to_owned();
        let parts: Vec<&str> = got.split('-').collect();
        assert_eq!(parts.len(), 4, "{got}");
        assert_eq!(parts[1], trace, "same trace: {got}");
        assert_ne!(
            parts[2], "b7ad6b7169203331",
            "re-parented by the sidecars: {got}"
        );
        assert_eq!(parts[3], flags, "the caller's flag: {got}");
    }
    // A call without one starts a trace of its own at the caller's sidecar.
    let resp = get(&c, &web, "orders", "/x").await;
    let got = resp.echoed_headers()["traceparent"]
        .as_str()
        .expect("a traceparent for the app")
        .to_owned();
    assert!(got.starts_with("00-") && got.len() == 55, "{got}");
}

#[tokio::test]
async fn a_dead_collector_never_slows_calls_and_drops_are_counted() {
    // Nothing listens here.
    let dead = free_port();
    let w = World::new();
    let echo = w.echo("e");
    let cfg = tracing_config(&w, "dead", "1", &format!("127.0.0.1:{dead}"), "grpc");
    let (web, orders) = traced_pair(&w, &echo, &cfg);
    let c = http_client();
    let n = 200;
    for i in 0..n {
        assert_eq!(
            get(&c, &web, "orders", &format!("/n/{i}")).await.status,
            200
        );
    }
    // Every span is accounted for: each sidecar made one per call, and
    // none reached a collector.
    for s in [&web, &orders] {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let m = s.scrape().await;
            let app = &s.app_id;
            let dropped = sample(
                &m,
                &format!(
                    "skiff_trace_spans_dropped_total{{app_id=\"{app}\",reason=\"export_failed\"}}"
                ),
            ) + sample(
                &m,
                &format!(
                    "skiff_trace_spans_dropped_total{{app_id=\"{app}\",reason=\"queue_full\"}}"
                ),
            );
            assert_eq!(
                sample(
                    &m,
                    &format!("skiff_trace_spans_exported_total{{app_id=\"{app}\"}}")
                ),
                0.0
            );
            if dropped == f64::from(n) {
                break;
            }
            assert!(dropped < f64::from(n), "{dropped} dropped of {n}");
            assert!(
                Instant::now() < end,
                "{app}: {dropped} of {n} drops counted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `/v1.0/healthz?appid=` follows the app when app health checks are on;
/// plain `/v1.0/healthz` (the sidecar itself) stays ready.
#[tokio::test]
async fn health_follows_the_app() {
    let w = World::new();
    let mut echo = w.echo("e");
    let mut o = SidecarOpts::app(echo.http_port);
    o.args.extend(
        [
            "--enable-app-health-check",
            "--app-health-check-path",
            "/healthz",
            "--app-health-probe-interval",
            "1",
            "--app-health-threshold",
            "1",
        ]
        .map(String::from),
    );
    let s = w.sidecar("watched", o);
    let c = http_client();
    let status = |path: &'static str| {
        let (c, url) = (c.clone(), format!("{}{path}", s.http()));
        async move { send(&c, request("GET", &url, "")).await.status.as_u16() }
    };
    let wait_for = |path: &'static str, want: u16| {
        let status = &status;
        async move {
            let end = Instant::now() + Duration::from_secs(10);
            while status(path).await != want {
                assert!(Instant::now() < end, "{path} never answered {want}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("/v1.0/healthz?appid=watched", 204).await;
    echo.proc.kill();
    wait_for("/v1.0/healthz?appid=watched", 500).await;
    assert_eq!(status("/v1.0/healthz").await, 204);
    assert_eq!(status("/v1.0/healthz/outbound").await, 204);
    // The app comes back on its port: healthy again.
    let _back = std::process::Command::new(bin("skiff-echo"))
        .args(["--http-port", &echo.http_port.to_string(), "--name", "e2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("spawn skiff-echo");
    wait_for("/v1.0/healthz?appid=watched", 204).await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A state call is a span of the caller's trace (named as daprd names
/// it, with the store as `db.name`), over HTTP and gRPC alike.
#[tokio::test]
async fn state_calls_are_spans_of_the_callers_trace() {
    let (addr, rx) = grpc_collector().await;
    let w = World::new();
    w.component(
        "mem.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: mem\nspec:\n  type: state.in-memory\n  version: v1\n  metadata: []\n",
    );
    let cfg = tracing_config(&w, "traced", "1", &addr.to_string(), "grpc");
    let s = w.sidecar(
        "app",
        SidecarOpts {
            args: vec!["--config".into(), cfg],
            ..SidecarOpts::default()
        },
    );
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace}-{parent}-01");
    let c = http_client();
    let mut save = request(
        "POST",
        &format!("{}/v1.0/state/mem", s.http()),
        r#"[{"key":"k","value":1}]"#,
    );
    save.headers_mut()
        .insert("traceparent", traceparent.parse().expect("header"));
    assert_eq!(send(&c, save).await.status, 204);
    let mut grpc = skiff_proto::runtime::dapr_client::DaprClient::new(s.grpc_channel().await);
    let mut get = tonic::Request::new(skiff_proto::runtime::GetStateRequest {
        store_name: "mem".into(),
        key: "k".into(),
        ..Default::default()
    });
    get.metadata_mut()
        .insert("traceparent", traceparent.parse().expect("metadata"));
    let got = grpc.get_state(get).await.expect("GetState").into_inner();
    assert_eq!(&got.data[..], b"1");
    let spans = rx.wait(&unhex(trace), 2).await;
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["GetState", "SaveState"]);
    for sp in &spans {
        assert_eq!(hex(&sp.parent_span_id), parent, "{}", sp.name);
        let db = sp
            .attributes
            .iter()
            .find(|a| a.key == "db.name")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref());
        assert!(
            matches!(db, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) if v == "mem"),
            "{}: {db:?}",
            sp.name
        );
    }
}

/// The `(db.system, db.name)` of a span.
fn db_labels(sp: &Span) -> (String, String) {
    let attr = |k: &str| {
        sp.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                    s.clone()
                }
                other => format!("{other:?}"),
            })
            .unwrap_or_default()
    };
    (attr("db.system"), attr("db.name"))
}

/// Every block's API call goes through the one envelope: a span of the
/// caller's trace named as daprd names the call, `db.system` the block's
/// and `db.name` the component (HTTP and gRPC alike), and one count in
/// the block's `dapr_component_*` family with the component's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blocks_calls_are_spans_and_series_of_their_component() {
    let (addr, rx) = grpc_collector().await;
    let w = World::new();
    let redis = skiff_tests::servers::Redis::start(&w.home.path().join("redis"));
    let files = w.home.path().join("files");
    for (file, name, ty, meta) in [
        ("mem.yaml", "mem", "state.in-memory", vec![]),
        ("env.yaml", "env", "secretstores.local.env", vec![]),
        ("locks.yaml", "locks", "lock.in-memory", vec![]),
        (
            "files.yaml",
            "files",
            "bindings.localstorage",
            vec![("rootPath", files.display().to_string())],
        ),
        (
            "conf.yaml",
            "conf",
            "configuration.redis",
            vec![("redisHost", redis.addr())],
        ),
    ] {
        w.component(file, &component_yaml(name, ty, &meta));
    }
    let cfg = tracing_config(&w, "traced", "1", &addr.to_string(), "grpc");
    let s = w.sidecar(
        "app",
        SidecarOpts {
            env: vec![("SKIFF_TEST_SECRET", "s3cret".into())],
            args: vec!["--config".into(), cfg],
            ..SidecarOpts::default()
        },
    );
    let c = http_client();
    let (trace, parent) = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b7");
    let traceparent = format!("00-{trace}-{parent}-01");
    let calls = [
        ("GET", "/v1.0/state/mem/k", ""),
        ("GET", "/v1.0/secrets/env/SKIFF_TEST_SECRET", ""),
        (
            "POST",
            "/v1.0-alpha1/lock/locks",
            r#"{"resourceId":"r","lockOwner":"o","expiryInSeconds":5}"#,
        ),
        (
            "POST",
            "/v1.0/bindings/files",
            r#"{"operation":"create","data":"x","metadata":{"fileName":"a.txt"}}"#,
        ),
        ("GET", "/v1.0/configuration/conf?key=k", ""),
    ];
    for (method, path, body) in calls {
        let mut r = request(method, &format!("{}{path}", s.http()), body);
        r.headers_mut()
            .insert("traceparent", traceparent.parse().expect("header"));
        let got = send(&c, r).await;
        assert!(got.status.is_success(), "{path}: {}", got.text());
    }
    let mut g = skiff_proto::runtime::dapr_client::DaprClient::new(s.grpc_channel().await);
    let grpc_trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    fn traced<M>(m: M, traceparent: &str) -> tonic::Request<M> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("traceparent", traceparent.parse().expect("metadata"));
        r
    }
    let tp = format!("00-{grpc_trace}-{parent}-01");
    use skiff_proto::runtime as pb;
    g.get_secret(traced(
        pb::GetSecretRequest {
            store_name: "env".into(),
            key: "SKIFF_TEST_SECRET".into(),
            ..Default::default()
        },
        &tp,
    ))
    .await
    .expect("GetSecret");
    g.try_lock_alpha1(traced(
        pb::TryLockRequest {
            store_name: "locks".into(),
            resource_id: "g".into(),
            lock_owner: "o".into(),
            expiry_in_seconds: 5,
        },
        &tp,
    ))
    .await
    .expect("TryLock");
    g.invoke_binding(traced(
        pb::InvokeBindingRequest {
            name: "files".into(),
            operation: "create".into(),
            data: b"y".to_vec().into(),
            metadata: [("fileName".to_owned(), "b.txt".to_owned())].into(),
        },
        &tp,
    ))
    .await
    .expect("InvokeBinding");
    g.get_configuration(traced(
        pb::GetConfigurationRequest {
            store_name: "conf".into(),
            keys: vec!["k".into()],
            ..Default::default()
        },
        &tp,
    ))
    .await
    .expect("GetConfiguration");

    let want_http = [
        ("GetConfiguration", "configuration", "conf"),
        ("GetSecret", "secrets", "env"),
        ("GetState", "state", "mem"),
        ("InvokeBinding", "bindings", "files"),
        ("TryLockAlpha1", "lock", "locks"),
    ];
    for (t, want) in [(trace, &want_http[..]), (grpc_trace, &want_http[..])] {
        let want: Vec<_> = want
            .iter()
            .filter(|w| t == trace || w.0 != "GetState")
            .map(|(n, sys, db)| (n.to_string(), sys.to_string(), db.to_string()))
            .collect();
        let spans = rx.wait(&unhex(t), want.len()).await;
        let mut got: Vec<_> = spans
            .iter()
            .map(|sp| {
                assert_eq!(hex(&sp.parent_span_id), parent, "{}", sp.name);
                let (sys, db) = db_labels(sp);
                (sp.name.clone(), sys, db)
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "trace {t}");
    }

    let scrape = s.scrape().await;
    for (family, component, op) in [
        ("dapr_component_state_count", "mem", "get"),
        ("dapr_component_secret_count", "env", "get"),
        ("dapr_component_lock_count", "locks", "try_lock"),
        ("dapr_component_output_binding_count", "files", "create"),
        ("dapr_component_configuration_count", "conf", "get"),
    ] {
        let series = format!(
            "{family}{{app_id=\"app\",component=\"{component}\",namespace=\"default\",operation=\"{op}\",success=\"true\"}}"
        );
        let want = if component == "mem" { 1.0 } else { 2.0 };
        assert_eq!(sample(&scrape, &series), want, "{series}\n{scrape}");
    }
}
