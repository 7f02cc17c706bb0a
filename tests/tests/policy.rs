//! Policy on the path, with the example YAML in tests/policy: access control
//! with real mTLS identities, retries, timeouts, a circuit breaker and the
//! retry budget, through real sidecars.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_proto::echo::EchoMessage;
use skiff_proto::echo::echo_client::EchoClient;
use skiff_tests::*;

fn policy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy")
}

async fn call(
    c: &HttpClient,
    from: &Sidecar,
    verb: &str,
    app: &str,
    path: &str,
    body: &'static str,
) -> Resp {
    send(
        c,
        request(
            verb,
            &format!("{}/v1.0/invoke/{app}/method{path}", from.http()),
            body,
        ),
    )
    .await
}

async fn hits(echo: &Echo) -> u64 {
    let r = send(
        &http_client(),
        request(
            "GET",
            &format!("http://127.0.0.1:{}/hits", echo.http_port),
            "",
        ),
    )
    .await;
    serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["hits"]
        .as_u64()
        .expect("hits")
}

fn with_config(o: SidecarOpts, file: &std::path::Path) -> SidecarOpts {
    o.mtls().config(file)
}

#[tokio::test]
async fn access_control_follows_the_verified_caller() {
    let w = World::new();
    // A copy we can edit, to check reloading.
    let acl = w.home.path().join("acl.yaml");
    std::fs::copy(policy_dir().join("acl.yaml"), &acl).expect("copy");
    let echo = w.echo("e");
    let _orders = w.sidecar(
        "orders",
        with_config(SidecarOpts::app(echo.http_port), &acl),
    );
    let _rpc = w.sidecar(
        "rpc",
        with_config(SidecarOpts::grpc_app(echo.grpc_port), &acl),
    );
    let web = w.sidecar("web", SidecarOpts::default().mtls());
    let intruder = w.sidecar("intruder", SidecarOpts::default().mtls());
    let c = http_client();

    assert_eq!(
        call(&c, &web, "POST", "orders", "/allowed/x", "hi")
            .await
            .status,
        200
    );
    assert_eq!(
        call(&c, &web, "GET", "orders", "/ALLOWED/x/y", "")
            .await
            .status,
        200
    );
    let r = call(&c, &web, "DELETE", "orders", "/allowed/x", "").await;
    assert_eq!(r.status, 403, "verb not allowed: {}", r.text());
    assert!(
        r.text().contains("ERR_PERMISSION_DENIED")
            && r.text().contains("spiffe://public/ns/default/web"),
        "{}",
        r.text()
    );
    assert_eq!(
        call(&c, &web, "GET", "orders", "/allowed/admin", "")
            .await
            .status,
        403
    );
    assert_eq!(
        call(&c, &web, "GET", "orders", "/elsewhere", "")
            .await
            .status,
        403
    );
    let hits_before = hits(&echo).await;
    assert_eq!(
        call(&c, &intruder, "POST", "orders", "/allowed/x", "")
            .await
            .status,
        403
    );
    // A header cannot make the intruder "web".
    let mut req = request(
        "POST",
        &format!("{}/v1.0/invoke/orders/method/allowed/x", intruder.http()),
        "",
    );
    req.headers_mut()
        .insert("dapr-caller-app-id", "web".parse().expect("hv"));
    assert_eq!(send(&c, req).await.status, 403);
    assert_eq!(
        hits(&echo).await,
        hits_before,
        "denied calls never reach the app"
    );

    // gRPC proxy calls are matched by full method name.
    let ch = web.grpc_channel().await;
    let mut g = EchoClient::new(ch);
    let msg = || {
        let mut r = tonic::Request::new(EchoMessage {
            payload: Bytes::from_static(b"p"),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("dapr-app-id", "rpc".parse().expect("ascii"));
        r
    };
    assert_eq!(
        &g.unary(msg()).await.expect("allowed").into_inner().payload[..],
        b"p"
    );
    let denied = g.server_stream(msg()).await.expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // The file changes: the intruder is let in, without a restart.
    let text = std::fs::read_to_string(&acl).expect("read");
    std::fs::write(&acl, text.replace("      - appId: web\n", "      - appId: intruder\n        namespace: default\n        defaultAction: allow\n      - appId: web\n")).expect("write");
    let end = Instant::now() + Duration::from_secs(5);
    while call(&c, &intruder, "POST", "orders", "/allowed/x", "")
        .await
        .status
        != 200
    {
        assert!(Instant::now() < end, "the new ACL was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken version is refused and the last good one kept.
    std::fs::write(&acl, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: x}\nspec:\n  accessControl:\n    defaultAction: sometimes\n").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        call(&c, &intruder, "POST", "orders", "/allowed/x", "")
            .await
            .status,
        200
    );
}

struct Res {
    echo: Echo,
    caller: Sidecar,
    _callees: Vec<Sidecar>,
    _w: World,
}

fn resiliency_setup() -> Res {
    let w = World::new();
    let echo = w.echo("e");
    let callees = ["orders", "ledger", "outage"]
        .iter()
        .map(|id| w.sidecar(id, SidecarOpts::app(echo.http_port)))
        .collect();
    let mut o = SidecarOpts::default();
    o.args.extend([
        "--resources-path".into(),
        policy_dir().join("resources").display().to_string(),
    ]);
    let caller = w.sidecar("web", o);
    Res {
        echo,
        caller,
        _callees: callees,
        _w: w,
    }
}

#[tokio::test]
async fn retries_recover_from_transient_failures_and_honour_matching() {
    let r = resiliency_setup();
    let c = http_client();
    let base = hits(&r.echo).await;
    // Two 503s, then success: the body is replayed intact.
    let resp = call(
        &c,
        &r.caller,
        "POST",
        "orders",
        "/flaky/a?fail=2",
        "payload",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "payload");
    assert_eq!(hits(&r.echo).await - base, 3);
    // 404 is not in matching: answered at once.
    let resp = call(
        &c,
        &r.caller,
        "GET",
        "orders",
        "/flaky/b?fail=2&status=404",
        "",
    )
    .await;
    assert_eq!(resp.status, 404);
    assert_eq!(hits(&r.echo).await - base, 4);
    // maxRetries 3: four attempts, then the last answer.
    let resp = call(&c, &r.caller, "GET", "orders", "/flaky/c?fail=9", "").await;
    assert_eq!(resp.status, 503);
    assert_eq!(hits(&r.echo).await - base, 8);
}

#[tokio::test]
async fn a_timeout_cuts_a_slow_call() {
    let r = resiliency_setup();
    let c = http_client();
    let start = Instant::now();
    let resp = call(&c, &r.caller, "GET", "orders", "/slow?ms=3000", "").await;
    assert_eq!(resp.status, 500, "{}", resp.text());
    assert!(
        resp.text().contains("no answer within 300ms"),
        "{}",
        resp.text()
    );
    // Four attempts of 300 ms plus backoff, not one of 3 s.
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let r = resiliency_setup();
    let c = http_client();
    for _ in 0..3 {
        assert_eq!(
            call(&c, &r.caller, "GET", "ledger", "/status/500", "")
                .await
                .status,
            500
        );
    }
    let before = hits(&r.echo).await;
    let resp = call(&c, &r.caller, "GET", "ledger", "/echo", "").await;
    assert_eq!(resp.status, 500);
    assert!(
        resp.text().contains("circuit breaker ledger-cb is open"),
        "{}",
        resp.text()
    );
    assert_eq!(hits(&r.echo).await, before, "an open breaker fails fast");
    let md = get_json(&format!("{}/v1.0/metadata", r.caller.http())).await;
    let states = &md["skiff"]["resiliency"]["apps"]["ledger"]["breakers"];
    assert!(
        states
            .as_object()
            .is_some_and(|m| m.values().all(|v| v == "open")),
        "{md}"
    );
    // After its 1 s timeout one probe goes through and closes it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        call(&c, &r.caller, "GET", "ledger", "/echo", "")
            .await
            .status,
        200
    );
    assert_eq!(
        call(&c, &r.caller, "GET", "ledger", "/echo", "")
            .await
            .status,
        200
    );
    assert_eq!(hits(&r.echo).await, before + 2);
}

#[tokio::test]
async fn the_retry_budget_caps_amplification_in_an_outage() {
    let r = resiliency_setup();
    let c = http_client();
    let base = hits(&r.echo).await;
    let start = Instant::now();
    let calls = 100;
    for _ in 0..calls {
        assert_eq!(
            call(&c, &r.caller, "GET", "outage", "/status/503", "")
                .await
                .status,
            503
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let attempts = hits(&r.echo).await - base;
    // Without a budget: 100 × 11 attempts. With it: the calls, a fifth more,
    // and the floor of 10 retries a second (plus its initial 10).
    let cap = calls as f64 * 1.2 + 10.0 + 10.0 * (secs + 1.0);
    assert!(
        (attempts as f64) <= cap,
        "{attempts} attempts for {calls} calls in {secs:.1}s (cap {cap:.0})"
    );
    assert!(attempts > calls, "some retries happened");
    // The counts are exposed (for the metrics exporter, and here).
    let md = get_json(&format!("{}/v1.0/metadata", r.caller.http())).await;
    let outage = &md["skiff"]["resiliency"]["apps"]["outage"];
    assert_eq!(outage["retries"].as_u64(), Some(attempts - calls), "{md}");
    assert!(
        outage["retriesRefusedByBudget"].as_u64().unwrap_or(0) > 0,
        "{md}"
    );
}

#[test]
fn invalid_policies_stop_the_start_naming_file_and_field() {
    let w = World::new();
    let dir = w.home.path().join("bad");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let text =
        std::fs::read_to_string(policy_dir().join("resources/resiliency.yaml")).expect("read");
    std::fs::write(
        dir.join("r.yaml"),
        text.replace("retry: transient", "retry: transiant"),
    )
    .expect("write");
    let out = std::process::Command::new(bin("skiffd"))
        .args([
            "--app-id",
            "x",
            "--dapr-http-port",
            &free_port().to_string(),
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--metrics-port",
            "0",
        ])
        .arg("--resources-path")
        .arg(&dir)
        .env("SKIFF_HOME", w.home.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("r.yaml")
            && last.contains("spec.targets.apps.orders.retry")
            && last.contains("transiant"),
        "{last}"
    );
}

/// Sends `body` to the sidecar's HTTP API on a raw connection, its head and
/// its body in separate writes (so the body is not in the sidecar's first
/// read), framed by length or chunked; returns the answer's status and
/// body (de-chunked).
async fn post_late_body(port: u16, path: &str, body: &[u8], chunked: bool) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {}", body.len())
    };
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{framing}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("head");
    tokio::time::sleep(Duration::from_millis(30)).await;
    for part in body.chunks(10 << 10) {
        if chunked {
            tcp.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await
                .expect("chunk size");
        }
        tcp.write_all(part).await.expect("body");
        if chunked {
            tcp.write_all(b"\r\n").await.expect("chunk end");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if chunked {
        tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
    }
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.expect("answer");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..split]).to_lowercase();
    let status = head[9..12].parse().expect("status");
    let mut rest = &all[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, rest.to_vec());
    }
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk line");
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("hex"), 16)
            .expect("chunk size");
        if n == 0 {
            return (status, out);
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
        rest = &rest[eol + 2 + n + 2..];
    }
}

/// A request body that the HTTP API did not get with its head (a 40 KiB
/// body in later writes, with a length or chunked) fits the retry buffer,
/// so a retry policy replays it whole; it was once sent only once.
#[tokio::test]
async fn retries_replay_an_http1_body_that_arrived_after_its_head() {
    let r = resiliency_setup();
    let payload: Vec<u8> = (0..40 << 10).map(|i| b'a' + (i % 26) as u8).collect();
    let base = hits(&r.echo).await;
    for (i, chunked) in [false, true].into_iter().enumerate() {
        let path = format!("/v1.0/invoke/orders/method/flaky/late-{i}?fail=2");
        let (status, body) = post_late_body(r.caller.http_port, &path, &payload, chunked).await;
        assert_eq!(
            status,
            200,
            "chunked {chunked}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            body == payload,
            "chunked {chunked}: the replayed body arrived whole"
        );
    }
    // Two failures and the success, for each of the two calls.
    assert_eq!(hits(&r.echo).await - base, 6);
}
