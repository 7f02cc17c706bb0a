//! Bindings through real sidecars: output bindings over HTTP and gRPC
//! (`bindings.localstorage` confined to its root, `bindings.redis` on a
//! real Redis, `bindings.http` against a real HTTP server), Dapr's error
//! answers, and input bindings (`bindings.cron`) read into an HTTP app
//! after daprd's OPTIONS probe — and not read when the probe says no.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use skiff_proto::runtime as pb;
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_tests::servers::Redis;
use skiff_tests::*;

async fn invoke(c: &HttpClient, s: &Sidecar, name: &str, body: Value) -> Resp {
    send(
        c,
        request(
            "POST",
            &format!("{}/v1.0/bindings/{name}", s.http()),
            body.to_string(),
        ),
    )
    .await
}

fn code(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null)["errorCode"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstorage_over_http_and_grpc_stays_in_its_root() {
    let w = World::new();
    let root = w.home.path().join("files");
    w.component(
        "ls.yaml",
        &component_yaml(
            "files",
            "bindings.localstorage",
            &[("rootPath", root.display().to_string())],
        ),
    );
    let s = w.sidecar("binder", SidecarOpts::default());
    let c = http_client();
    let b64 = base64::engine::general_purpose::STANDARD.encode("hello file");
    let r = invoke(
        &c,
        &s,
        "files",
        json!({"operation": "create", "data": b64, "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).expect("json"),
        json!({"fileName": "a.txt"})
    );
    assert_eq!(
        std::fs::read(root.join("a.txt")).expect("file"),
        b"hello file"
    );
    // data is JSON-encoded on the way: an object arrives as its JSON.
    invoke(
        &c,
        &s,
        "files",
        json!({"operation": "create", "data": {"n": 1}, "metadata": {"fileName": "b.json"}}),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(root.join("b.json")).expect("file"),
        r#"{"n":1}"#
    );
    let r = invoke(
        &c,
        &s,
        "files",
        json!({"operation": "get", "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello file"[..]));
    let r = invoke(&c, &s, "files", json!({"operation": "list"})).await;
    let list: Vec<String> = serde_json::from_slice(&r.body).expect("list");
    assert_eq!(list.len(), 2, "{list:?}");
    let r = invoke(
        &c,
        &s,
        "files",
        json!({"operation": "delete", "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 204);
    assert!(!root.join("a.txt").exists());
    // No escape from the root.
    for bad in ["../outside.txt", "/tmp/x", "sub/../../x"] {
        let r = invoke(
            &c,
            &s,
            "files",
            json!({"operation": "create", "data": "x", "metadata": {"fileName": bad}}),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), code(&r).as_str()),
            (500, "ERR_INVOKE_OUTPUT_BINDING"),
            "{bad}"
        );
    }
    assert!(!w.home.path().join("outside.txt").exists());
    // Dapr's errors.
    let r = invoke(&c, &s, "nope", json!({"operation": "create"})).await;
    assert_eq!(code(&r), "ERR_INVOKE_OUTPUT_BINDING");
    assert!(
        r.text().contains("couldn't find output binding nope"),
        "{}",
        r.text()
    );
    let r = invoke(&c, &s, "files", json!({"operation": "explode"})).await;
    assert!(
        r.text().contains("does not support operation explode"),
        "{}",
        r.text()
    );
    let r = send(
        &c,
        request(
            "POST",
            &format!("{}/v1.0/bindings/files", s.http()),
            "not json",
        ),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );
    // gRPC: data verbatim.
    let mut g = DaprClient::new(s.grpc_channel().await);
    g.invoke_binding(pb::InvokeBindingRequest {
        name: "files".into(),
        data: Bytes::from_static(b"raw bytes"),
        metadata: [("fileName".to_owned(), "c.bin".to_owned())].into(),
        operation: "create".into(),
    })
    .await
    .expect("create");
    let got = g
        .invoke_binding(pb::InvokeBindingRequest {
            name: "files".into(),
            metadata: [("fileName".to_owned(), "c.bin".to_owned())].into(),
            operation: "get".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(&got.data[..], b"raw bytes");
    let e = g
        .invoke_binding(pb::InvokeBindingRequest {
            name: "nope".into(),
            operation: "get".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::Internal);
    // Metadata lists the binding with its direction.
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    let comp = m["components"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "files"))
        .cloned();
    assert_eq!(
        comp.map(|c| c["capabilities"].clone()),
        Some(json!(["OUTPUT_BINDING"])),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_output_binding_sets_gets_expires_and_counts() {
    let w = World::new();
    let r = Redis::start(&w.home.path().join("redis"));
    w.component(
        "rb.yaml",
        &component_yaml("cache", "bindings.redis", &[("redisHost", r.addr())]),
    );
    let s = w.sidecar("binder", SidecarOpts::default());
    let c = http_client();
    let ok = invoke(&c, &s, "cache", json!({"operation": "create", "data": "x", "metadata": {"key": "k1", "ttlInSeconds": "100"}})).await;
    assert_eq!(ok.status.as_u16(), 204, "{}", ok.text());
    // The string "x" arrives JSON-encoded: 3 bytes.
    assert_eq!(r.cli(&["GET", "k1"]).trim(), "\"x\"");
    let ttl: i64 = r.cli(&["TTL", "k1"]).trim().parse().expect("ttl");
    assert!((1..=100).contains(&ttl), "{ttl}");
    let got = invoke(
        &c,
        &s,
        "cache",
        json!({"operation": "get", "metadata": {"key": "k1"}}),
    )
    .await;
    assert_eq!((got.status.as_u16(), &got.body[..]), (200, &b"\"x\""[..]));
    r.cli(&["SET", "n", "41"]);
    invoke(
        &c,
        &s,
        "cache",
        json!({"operation": "increment", "metadata": {"key": "n"}}),
    )
    .await;
    assert_eq!(r.cli(&["GET", "n"]).trim(), "42");
    let got = invoke(
        &c,
        &s,
        "cache",
        json!({"operation": "get", "metadata": {"key": "k1", "delete": "true"}}),
    )
    .await;
    assert_eq!(&got.body[..], b"\"x\"");
    assert_eq!(r.cli(&["EXISTS", "k1"]).trim(), "0", "GETDEL removed it");
    let missing = invoke(&c, &s, "cache", json!({"operation": "get"})).await;
    assert!(
        missing.text().contains("metadata.key is required"),
        "{}",
        missing.text()
    );
}

/// What the recorder saw of one request: method, path, headers, body.
type Seen = Arc<Mutex<Vec<(String, String, http::HeaderMap, Bytes)>>>;

/// An HTTP server that records method, path and headers, and answers
/// `status` (404 for OPTIONS on paths starting with `/closed`).
struct Recorder {
    port: u16,
    seen: Seen,
    _task: tokio::task::JoinHandle<()>,
}

async fn recorder(status: u16) -> Recorder {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (p, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let path = p.uri.path().to_owned();
                            let st = if p.method == http::Method::OPTIONS
                                && path.starts_with("/closed")
                            {
                                404
                            } else {
                                status
                            };
                            seen.lock().expect("lock").push((
                                p.method.to_string(),
                                path,
                                p.headers,
                                body,
                            ));
                            let mut resp = http::Response::new(Full::new(Bytes::from_static(
                                b"{\"answer\":true}",
                            )));
                            *resp.status_mut() = http::StatusCode::from_u16(st).expect("status");
                            resp.headers_mut()
                                .insert("x-from-server", http::HeaderValue::from_static("yes"));
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Recorder {
        port,
        seen,
        _task: task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_output_binding_sends_uppercase_metadata_as_headers() {
    let w = World::new();
    let ok = recorder(200).await;
    let failing = recorder(503).await;
    w.component(
        "h.yaml",
        &component_yaml(
            "web",
            "bindings.http",
            &[("url", format!("http://127.0.0.1:{}/api", ok.port))],
        ),
    );
    w.component(
        "f.yaml",
        &component_yaml(
            "down",
            "bindings.http",
            &[("url", format!("http://127.0.0.1:{}", failing.port))],
        ),
    );
    let s = w.sidecar("binder", SidecarOpts::default());
    let c = http_client();
    let r = invoke(&c, &s, "web", json!({"operation": "create", "data": {"order": 7}, "metadata": {"path": "/orders", "X-Trace-Me": "1", "lowercase": "no"}})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(&r.body[..], b"{\"answer\":true}");
    assert_eq!(
        r.headers
            .get("metadata.statusCode")
            .and_then(|v| v.to_str().ok()),
        Some("200")
    );
    assert_eq!(
        r.headers
            .get("metadata.x-from-server")
            .and_then(|v| v.to_str().ok()),
        Some("yes")
    );
    let seen = ok.seen.lock().expect("lock").clone();
    let (method, path, headers, body) = &seen[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/orders"));
    assert_eq!(
        headers.get("x-trace-me").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        headers.get("lowercase").is_none(),
        "lowercase metadata is not a header"
    );
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    );
    assert_eq!(&body[..], br#"{"order":7}"#);
    let r = invoke(
        &c,
        &s,
        "web",
        json!({"operation": "get", "metadata": {"path": "status"}}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(ok.seen.lock().expect("lock")[1].1, "/api/status");
    let r = invoke(&c, &s, "down", json!({"operation": "post"})).await;
    assert_eq!(code(&r), "ERR_INVOKE_OUTPUT_BINDING");
    assert!(r.text().contains("503"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_input_binding_is_probed_then_posted_to_the_app() {
    let w = World::new();
    let app = recorder(200).await;
    w.component(
        "tick.yaml",
        &component_yaml(
            "tick",
            "bindings.cron",
            &[("schedule", "@every 300ms".into())],
        ),
    );
    // The app says no to this one's probe: it is never read.
    w.component(
        "closed.yaml",
        &component_yaml(
            "closed",
            "bindings.cron",
            &[
                ("schedule", "@every 300ms".into()),
                ("route", "/closed".into()),
            ],
        ),
    );
    let s = w.sidecar("cronapp", SidecarOpts::app(app.port));
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let posts = app
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(m, p, ..)| m == "POST" && p == "/tick")
            .count();
        if posts >= 3 {
            break;
        }
        assert!(Instant::now() < end, "{posts} ticks");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = app.seen.lock().expect("lock").clone();
    let first_tick = seen
        .iter()
        .position(|(m, p, ..)| m == "POST" && p == "/tick")
        .expect("tick");
    let probe = seen
        .iter()
        .position(|(m, p, ..)| m == "OPTIONS" && p == "/tick")
        .expect("probed");
    assert!(probe < first_tick, "probed before the first event");
    let (_, _, headers, body) = &seen[first_tick];
    assert!(body.is_empty());
    assert!(
        headers.contains_key("readtimeutc") && headers.contains_key("timezone"),
        "{headers:?}"
    );
    assert!(
        seen.iter()
            .any(|(m, p, ..)| m == "OPTIONS" && p == "/closed")
    );
    assert!(
        !seen.iter().any(|(m, p, ..)| m == "POST" && p == "/closed"),
        "read although the probe said no"
    );
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    let comp = m["components"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "tick"))
        .cloned();
    assert_eq!(
        comp.map(|c| c["capabilities"].clone()),
        Some(json!(["INPUT_BINDING"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_output_binding_execs_queries_and_closes() {
    let pg = skiff_tests::servers::Postgres::start();
    let w = World::new();
    w.component(
        "pg.yaml",
        &component_yaml(
            "db",
            "bindings.postgresql",
            &[("connectionString", pg.url())],
        ),
    );
    let s = w.sidecar("binder", SidecarOpts::default());
    let c = http_client();
    let exec = |sql: &str, params: Option<&str>| {
        let mut md = json!({"sql": sql});
        if let Some(p) = params {
            md["params"] = json!(p);
        }
        json!({"operation": "exec", "metadata": md})
    };
    let r = invoke(&c, &s, "db", exec("CREATE TABLE items (id INT PRIMARY KEY, name TEXT, price FLOAT8, live BOOL, extra JSONB)", None)).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text());
    let r = invoke(
        &c,
        &s,
        "db",
        exec(
            "INSERT INTO items VALUES ($1, $2, $3, $4, $5::text::jsonb), ($6, $7, $8, $9, NULL)",
            Some(r#"[1, "kayak", 499.5, true, "{\"color\":\"red\"}", 2, "paddle", 39, false]"#),
        ),
    )
    .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text());
    assert_eq!(
        r.headers
            .get("metadata.rows-affected")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let q = json!({"operation": "query", "metadata": {"sql": "SELECT id, name, price, live, extra FROM items WHERE id >= $1 ORDER BY id", "params": "[1]"}});
    let r = invoke(&c, &s, "db", q.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).expect("json"),
        json!([[1, "kayak", 499.5, true, {"color": "red"}], [2, "paddle", 39.0, false, null]])
    );
    assert_eq!(pg.psql("SELECT name FROM items WHERE id = 2"), "paddle");
    // close: the next call connects again.
    assert_eq!(
        invoke(&c, &s, "db", json!({"operation": "close"}))
            .await
            .status
            .as_u16(),
        204
    );
    assert_eq!(invoke(&c, &s, "db", q).await.status.as_u16(), 200);
    // The server's error comes back in Dapr's answer.
    let r = invoke(
        &c,
        &s,
        "db",
        json!({"operation": "query", "metadata": {"sql": "SELECT * FROM nothere"}}),
    )
    .await;
    assert_eq!(code(&r), "ERR_INVOKE_OUTPUT_BINDING");
    assert!(r.text().contains("nothere"), "{}", r.text());
    let r = invoke(&c, &s, "db", json!({"operation": "exec"})).await;
    assert!(
        r.text().contains("metadata.sql is required"),
        "{}",
        r.text()
    );
}

/// `bindings.mqtt3` on a real Mosquitto: the output binding publishes, the
/// input binding of the same component delivers to the app (with the
/// topic in the metadata), and each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt3_binding_publishes_and_delivers_through_mosquitto() {
    let w = World::new();
    let broker = skiff_tests::servers::Mosquitto::start(&w.home.path().join("mqtt"));
    let app = recorder(200).await;
    w.component(
        "mq.yaml",
        &component_yaml(
            "mq",
            "bindings.mqtt3",
            &[
                ("url", broker.url()),
                ("topic", "orders".into()),
                ("consumerID", "skiff-test".into()),
            ],
        ),
    );
    let s = w.sidecar("mqapp", SidecarOpts::app(app.port));
    let c = http_client();
    // The input side subscribes once the app answers its probe.
    let end = Instant::now() + Duration::from_secs(20);
    while !app
        .seen
        .lock()
        .expect("lock")
        .iter()
        .any(|(m, p, ..)| m == "OPTIONS" && p == "/mq")
    {
        assert!(Instant::now() < end, "never probed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut n = 0;
    loop {
        // Publish until one arrives (the subscription may still be on its way).
        n += 1;
        let r = invoke(
            &c,
            &s,
            "mq",
            json!({"operation": "create", "data": {"n": n}}),
        )
        .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
        if app
            .seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(m, p, ..)| m == "POST" && p == "/mq")
        {
            break;
        }
        assert!(Instant::now() < end, "nothing delivered");
    }
    let posts: Vec<_> = app
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(m, ..)| m == "POST")
        .cloned()
        .collect();
    let (_, _, headers, body) = posts.last().expect("a post");
    assert_eq!(
        headers.get("topic").and_then(|v| v.to_str().ok()),
        Some("orders")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(body).expect("json"),
        json!({"n": n})
    );
    let last = n;
    let r = invoke(
        &c,
        &s,
        "mq",
        json!({"operation": "create", "data": {"n": last + 1}}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 204);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let bodies: Vec<Value> = app
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(m, ..)| m == "POST")
            .map(|(_, _, _, b)| serde_json::from_slice(b).unwrap_or(Value::Null))
            .collect();
        if bodies.contains(&json!({"n": last + 1})) {
            assert_eq!(
                bodies
                    .iter()
                    .filter(|b| **b == json!({"n": last + 1}))
                    .count(),
                1,
                "delivered twice: {bodies:?}"
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "the second message never came: {bodies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    let comp = m["components"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "mq"))
        .cloned();
    assert_eq!(
        comp.map(|c| c["capabilities"].clone()),
        Some(json!(["INPUT_BINDING", "OUTPUT_BINDING"]))
    );
}

/// `targets.components.<binding>.inbound`: a tick the app refuses is
/// retried by the policy (three deliveries for one tick), then counted
/// as a failed input event; output calls are counted by operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_bindings_retry_under_the_inbound_policy_and_both_directions_are_counted() {
    let w = World::new();
    let app = recorder(500).await;
    w.component(
        "tick.yaml",
        &component_yaml(
            "tick",
            "bindings.cron",
            &[
                ("schedule", "@every 2s".into()),
                ("direction", "input".into()),
            ],
        ),
    );
    w.component(
        "res.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: inbound\nspec:\n  policies:\n    retries:\n      twice:\n        policy: constant\n        duration: 50ms\n        maxRetries: 2\n  targets:\n    components:\n      tick:\n        inbound:\n          retry: twice\n",
    );
    let root = w.home.path().join("files");
    w.component(
        "ls.yaml",
        &component_yaml(
            "files",
            "bindings.localstorage",
            &[("rootPath", root.display().to_string())],
        ),
    );
    let s = w.sidecar("retrier", SidecarOpts::app(app.port));
    let posts = || {
        app.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(m, p, ..)| m == "POST" && p == "/tick")
            .count()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while posts() == 0 {
        assert!(Instant::now() < end, "no tick");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One tick: the first try and two retries, then nothing until the next.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(posts(), 3, "one tick and its two retries");
    assert!(
        !app.seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(m, ..)| m == "OPTIONS"),
        "direction: input skips the probe"
    );
    let c = http_client();
    invoke(
        &c,
        &s,
        "files",
        json!({"operation": "create", "data": "x", "metadata": {"fileName": "a"}}),
    )
    .await;
    invoke(
        &c,
        &s,
        "files",
        json!({"operation": "get", "metadata": {"fileName": "nope"}}),
    )
    .await;
    let scrape = s.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            r#"dapr_component_input_binding_count{app_id="retrier",component="tick",namespace="default",success="false"}"#
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            r#"dapr_component_output_binding_count{app_id="retrier",component="files",namespace="default",operation="create",success="true"}"#
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            r#"dapr_component_output_binding_count{app_id="retrier",component="files",namespace="default",operation="get",success="false"}"#
        ),
        1.0,
        "{scrape}"
    );
}

/// `bindings.http` over HTTPS with mutual TLS: the server (rustls, a test
/// CA) requires a client certificate; the binding trusts `MTLSRootCA` and
/// presents `MTLSClientCert` / `MTLSClientKey`. Without the client
/// certificate, or without the CA, the call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_output_binding_speaks_mutual_tls() {
    use rustls_pki_types::pem::PemObject;
    let w = World::new();
    let certs = w.home.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    skiff_tests::servers::make_certs(&certs);
    let sh = format!(
        "set -e; cd '{}'; openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=client -keyout client.key -out client.csr; \
         printf 'extendedKeyUsage=clientAuth' > client.cnf; \
         openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.cnf -out client.crt",
        certs.display()
    );
    assert!(
        std::process::Command::new("sh")
            .args(["-c", &sh])
            .output()
            .expect("openssl")
            .status
            .success()
    );
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca")).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("server.crt"))
        .expect("crt")
        .map(|c| c.expect("crt"))
        .collect();
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("server.key")).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = served.clone();
    let _server = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let (acceptor, served) = (acceptor.clone(), s2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        async {
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(
                                Bytes::from_static(b"secure hello"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let url = format!("https://127.0.0.1:{port}");
    let path = |f: &str| certs.join(f).display().to_string();
    // The CA as a path, the client pair as PEM text: both forms are read.
    let client_crt = std::fs::read_to_string(certs.join("client.crt")).expect("crt");
    let client_key = std::fs::read_to_string(certs.join("client.key")).expect("key");
    w.component(
        "m.yaml",
        &component_yaml(
            "mtls",
            "bindings.http",
            &[
                ("url", url.clone()),
                ("MTLSRootCA", path("ca.pem")),
                ("MTLSClientCert", client_crt.replace('\n', "\\n")),
                ("MTLSClientKey", client_key.replace('\n', "\\n")),
            ],
        ),
    );
    w.component(
        "n.yaml",
        &component_yaml(
            "nocert",
            "bindings.http",
            &[("url", url.clone()), ("MTLSRootCA", path("ca.pem"))],
        ),
    );
    w.component(
        "u.yaml",
        &component_yaml("untrusted", "bindings.http", &[("url", url)]),
    );
    let s = w.sidecar("tlsbinder", SidecarOpts::default());
    let c = http_client();
    let r = invoke(&c, &s, "mtls", json!({"operation": "get"})).await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (200, &b"secure hello"[..]),
        "{}",
        r.text()
    );
    for name in ["nocert", "untrusted"] {
        let r = invoke(&c, &s, name, json!({"operation": "get"})).await;
        assert_eq!(
            code(&r),
            "ERR_INVOKE_OUTPUT_BINDING",
            "{name}: {}",
            r.text()
        );
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the mTLS call was served"
    );
}

/// A gRPC app reading an input binding: the sidecar asks
/// `ListInputBindings`, delivers `OnBindingEvent` for the binding listed
/// (never for one that is not), and runs a `create` on each binding the
/// reply names in `to`, with the reply's `data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_app_reads_its_listed_bindings_and_its_reply_goes_to_output_bindings() {
    use skiff_proto::runtime::app_callback_server::{AppCallback, AppCallbackServer};
    #[derive(Clone, Default)]
    struct App(Arc<Mutex<Vec<String>>>);
    #[tonic::async_trait]
    impl AppCallback for App {
        async fn on_invoke(
            &self,
            _: tonic::Request<skiff_proto::common::InvokeRequest>,
        ) -> Result<tonic::Response<skiff_proto::common::InvokeResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("no methods"))
        }
        async fn list_topic_subscriptions(
            &self,
            _: tonic::Request<skiff_proto::google::protobuf::Empty>,
        ) -> Result<tonic::Response<pb::ListTopicSubscriptionsResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("none"))
        }
        async fn on_topic_event(
            &self,
            _: tonic::Request<pb::TopicEventRequest>,
        ) -> Result<tonic::Response<pb::TopicEventResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("none"))
        }
        async fn on_bulk_topic_event(
            &self,
            _: tonic::Request<pb::TopicEventBulkRequest>,
        ) -> Result<tonic::Response<pb::TopicEventBulkResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("none"))
        }
        async fn list_input_bindings(
            &self,
            _: tonic::Request<skiff_proto::google::protobuf::Empty>,
        ) -> Result<tonic::Response<pb::ListInputBindingsResponse>, tonic::Status> {
            Ok(tonic::Response::new(pb::ListInputBindingsResponse {
                bindings: vec!["tick".into()],
            }))
        }
        async fn on_binding_event(
            &self,
            r: tonic::Request<pb::BindingEventRequest>,
        ) -> Result<tonic::Response<pb::BindingEventResponse>, tonic::Status> {
            let r = r.into_inner();
            self.0.lock().expect("lock").push(r.name.clone());
            Ok(tonic::Response::new(pb::BindingEventResponse {
                to: vec!["files".into()],
                data: Bytes::from(format!("from the grpc app after {}", r.name)),
                concurrency: pb::binding_event_response::BindingEventConcurrency::Parallel as i32,
                ..Default::default()
            }))
        }
    }
    let w = World::new();
    let root = w.home.path().join("files");
    w.component(
        "ls.yaml",
        &component_yaml(
            "files",
            "bindings.localstorage",
            &[("rootPath", root.display().to_string())],
        ),
    );
    w.component(
        "tick.yaml",
        &component_yaml(
            "tick",
            "bindings.cron",
            &[("schedule", "@every 300ms".into())],
        ),
    );
    w.component(
        "unlisted.yaml",
        &component_yaml(
            "unlisted",
            "bindings.cron",
            &[("schedule", "@every 300ms".into())],
        ),
    );
    let app = App::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let svc = AppCallbackServer::new(app.clone());
    let _server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let _s = w.sidecar("grpcbinder", SidecarOpts::grpc_app(port));
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let files: Vec<_> = std::fs::read_dir(&root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if files.len() >= 2 {
            let text = std::fs::read_to_string(&files[0]).expect("file");
            assert_eq!(text, "from the grpc app after tick");
            break;
        }
        assert!(
            Instant::now() < end,
            "the reply's `to` made {} files",
            files.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names = app.0.lock().expect("lock").clone();
    assert!(
        names.iter().all(|n| n == "tick"),
        "an unlisted binding was delivered: {names:?}"
    );
}
