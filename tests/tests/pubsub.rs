//! Pub/sub through real sidecars: one conformance suite (publish over HTTP
//! and gRPC, the envelope, programmatic and declarative subscriptions,
//! routing rules, dead letters, raw payloads, bulk publish, Dapr's error
//! answers) run against every driver — `pubsub.in-memory`,
//! `pubsub.skiff.sqlite` and `pubsub.redis` on a real Redis — then the
//! delivery guarantees, a gRPC subscriber app, streaming subscriptions,
//! scopes, and the nothing-lost run with kills and restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use skiff_proto::runtime as pb;
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_tests::servers::{NatsCluster, Redis};
use skiff_tests::subscriber::{
    Behave, Delivery, GrpcSubscriber, HttpSubscriber, Reply, succeed, wait_subscribed,
};
use skiff_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A driver under test and the component YAML for it.
enum Driver {
    Memory,
    Sqlite,
    Redis(Redis),
    JetStream(NatsCluster),
}

impl Driver {
    fn yaml(&self, w: &World, name: &str, extra: &[(&str, String)]) -> String {
        let (ty, mut meta) = match self {
            Self::Memory => ("pubsub.in-memory", vec![]),
            Self::Sqlite => (
                "pubsub.skiff.sqlite",
                vec![(
                    "connectionString",
                    w.home.path().join("ps.db").display().to_string(),
                )],
            ),
            Self::Redis(r) => (
                "pubsub.redis",
                vec![
                    ("redisHost", r.addr()),
                    ("redeliverInterval", "200ms".to_owned()),
                ],
            ),
            Self::JetStream(n) => (
                "pubsub.jetstream",
                vec![("natsURL", n.urls()), ("replicas", "3".to_owned())],
            ),
        };
        meta.extend_from_slice(extra);
        component_yaml(name, ty, &meta)
    }
}

fn redis(w: &World) -> Redis {
    Redis::start(&w.home.path().join("redis"))
}

async fn call(c: &HttpClient, verb: &str, url: &str, body: impl Into<bytes::Bytes>) -> Resp {
    send(c, request(verb, url, body)).await
}

async fn publish(c: &HttpClient, s: &Sidecar, path: &str, ct: Option<&str>, body: &str) -> Resp {
    let mut req = request(
        "POST",
        &format!("{}/v1.0/publish/{path}", s.http()),
        body.to_owned(),
    );
    if let Some(ct) = ct {
        req.headers_mut()
            .insert("content-type", ct.parse().expect("ct"));
    }
    send(c, req).await
}

fn code(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["errorCode"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The subscriptions the conformance app lists at `/dapr/subscribe`.
fn app_subscriptions() -> Value {
    json!([
        {"pubsubname": "ps", "topic": "orders", "route": "/orders"},
        {"pubsubname": "ps", "topic": "routed", "routes": {
            "rules": [{"match": "event.type == \"big\"", "path": "/big"},
                      {"match": "has(event.data.n) && event.data.n > 10", "path": "/many"}],
            "default": "/small"}},
        {"pubsubname": "ps", "topic": "dropme", "route": "/dropme", "deadLetterTopic": "dead"},
        {"pubsubname": "ps", "topic": "dead", "route": "/dead"},
        {"pubsubname": "ps", "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}},
        {"pubsubname": "ps", "topic": "flaky", "route": "/flaky"},
    ])
}

fn declarative(w: &World) {
    w.component(
        "sub.yaml",
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: decl\nspec:\n  pubsubname: ps\n  topic: decl\n  routes:\n    rules:\n    - match: event.data == \"special\"\n      path: /decl-special\n    default: /decl\nscopes:\n- sub\n",
    );
}

/// The conformance app: DROPs on /dropme, fails each /flaky message once.
fn conformance_behaviour() -> Behave {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    Arc::new(move |path, ev| match path {
        "/dropme" => Reply::status("DROP"),
        "/flaky" => {
            let id = ev["id"].as_str().unwrap_or_default().to_owned();
            if seen.lock().expect("lock").insert(id) {
                Reply::http(500)
            } else {
                Reply::ok()
            }
        }
        _ => Reply::ok(),
    })
}

async fn conformance(d: Driver) {
    let w = World::new();
    w.component("ps.yaml", &d.yaml(&w, "ps", &[]));
    declarative(&w);
    let app = HttpSubscriber::start(Some(app_subscriptions()), conformance_behaviour()).await;
    let s = w.sidecar("sub", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 7).await;

    // JSON, over HTTP: the envelope daprd builds.
    let r = publish(&c, &s, "ps/orders", Some("application/json"), r#"{"n": 1}"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app.rec.wait_for(1, "/orders", WAIT).await;
    let e = &got[0].event;
    assert_eq!(e["data"], json!({"n": 1}));
    assert_eq!(
        (
            e["datacontenttype"].as_str(),
            e["topic"].as_str(),
            e["pubsubname"].as_str()
        ),
        (Some("application/json"), Some("orders"), Some("ps"))
    );
    assert_eq!(
        (
            e["source"].as_str(),
            e["type"].as_str(),
            e["specversion"].as_str()
        ),
        (Some("sub"), Some("com.dapr.event.sent"), Some("1.0"))
    );
    assert_eq!(e["id"].as_str().map(str::len), Some(36));
    assert_eq!(
        got[0].headers["content-type"],
        "application/cloudevents+json"
    );
    assert_eq!(got[0].headers["pubsubname"], "ps");
    assert!(got[0].headers.contains_key("traceparent"));
    assert!(
        e["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-")),
        "{e}"
    );

    // No content type: text/plain, data a string.
    publish(&c, &s, "ps/orders", None, "hello").await;
    let got = app.rec.wait_for(2, "/orders", WAIT).await;
    let e = &got[1].event;
    assert_eq!(
        (e["datacontenttype"].as_str(), e["data"].as_str()),
        (Some("text/plain"), Some("hello"))
    );

    // Over gRPC.
    let mut g = DaprClient::new(s.grpc_channel().await);
    g.publish_event(pb::PublishEventRequest {
        pubsub_name: "ps".into(),
        topic: "orders".into(),
        data: r#"{"via":"grpc"}"#.into(),
        data_content_type: "application/json".into(),
        metadata: HashMap::new(),
    })
    .await
    .expect("gRPC publish");
    let got = app.rec.wait_for(3, "/orders", WAIT).await;
    assert_eq!(got[2].event["data"]["via"], "grpc");

    // Routing rules, in order, then the default; a CloudEvent passes through.
    let ce = r#"{"specversion":"1.0","type":"big","source":"me","id":"ce-1","data":{"n":1}}"#;
    publish(
        &c,
        &s,
        "ps/routed",
        Some("application/cloudevents+json"),
        ce,
    )
    .await;
    publish(
        &c,
        &s,
        "ps/routed",
        Some("application/json"),
        r#"{"n": 50}"#,
    )
    .await;
    publish(&c, &s, "ps/routed", Some("application/json"), r#"{"n": 2}"#).await;
    let big = app.rec.wait_for(1, "/big", WAIT).await;
    assert_eq!(
        (big[0].event["id"].as_str(), big[0].event["source"].as_str()),
        (Some("ce-1"), Some("me"))
    );
    assert_eq!(big[0].event["topic"], "routed");
    app.rec.wait_for(1, "/many", WAIT).await;
    app.rec.wait_for(1, "/small", WAIT).await;

    // DROP goes to the dead-letter topic, whose subscriber gets it.
    publish(&c, &s, "ps/dropme", None, "poison").await;
    let dead = app.rec.wait_for(1, "/dead", WAIT).await;
    assert_eq!(dead[0].event["data"], "poison");
    assert_eq!(
        app.rec.got().iter().filter(|d| d.path == "/dropme").count(),
        1,
        "dropped once, not retried"
    );

    // A raw payload: no envelope in the broker; the app gets data_base64.
    let r = publish(
        &c,
        &s,
        "ps/raw?metadata.rawPayload=true",
        Some("application/octet-stream"),
        "\u{1}raw",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let raw = app.rec.wait_for(1, "/raw", WAIT).await;
    let b = base64::engine::general_purpose::STANDARD
        .decode(raw[0].event["data_base64"].as_str().expect("data_base64"))
        .expect("base64");
    assert_eq!(b, b"\x01raw");

    // A 500 is retried until the app takes it.
    publish(&c, &s, "ps/flaky", None, "again").await;
    let flaky = app.rec.wait_for(2, "/flaky", WAIT).await;
    assert_eq!(flaky[0].event["id"], flaky[1].event["id"]);

    // Declarative (v2alpha1, with a rule).
    publish(&c, &s, "ps/decl", Some("application/json"), r#""special""#).await;
    publish(&c, &s, "ps/decl", None, "plain").await;
    app.rec.wait_for(1, "/decl-special", WAIT).await;
    app.rec.wait_for(1, "/decl", WAIT).await;

    // Bulk publish over HTTP and gRPC.
    let bulk = json!([
        {"entryId": "1", "event": {"b": 1}, "contentType": "application/json"},
        {"entryId": "2", "event": "two", "contentType": "text/plain"},
        {"entryId": "3", "event": {"b": 3}, "contentType": "application/json", "metadata": {"k": "v"}},
    ]);
    let r = call(
        &c,
        "POST",
        &format!("{}/v1.0-alpha1/publish/bulk/ps/orders", s.http()),
        bulk.to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    g.bulk_publish_event(pb::BulkPublishRequest {
        pubsub_name: "ps".into(),
        topic: "orders".into(),
        entries: vec![pb::BulkPublishRequestEntry {
            entry_id: "g1".into(),
            event: "grpc-bulk".into(),
            content_type: "text/plain".into(),
            metadata: HashMap::new(),
        }],
        metadata: HashMap::new(),
    })
    .await
    .expect("gRPC bulk");
    let got = app.rec.wait_for(7, "/orders", WAIT).await;
    let datas: Vec<String> = got.iter().map(|d| d.event["data"].to_string()).collect();
    for want in [r#"{"b":1}"#, r#""two""#, r#"{"b":3}"#, r#""grpc-bulk""#] {
        assert!(datas.iter().any(|d| d == want), "{want} in {datas:?}");
    }
    let dup = json!([{"entryId": "1", "event": 1}, {"entryId": "1", "event": 2}]);
    let r = call(
        &c,
        "POST",
        &format!("{}/v1.0-alpha1/publish/bulk/ps/orders", s.http()),
        dup.to_string(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_PUBSUB_EVENTS_SER"),
        "{}",
        r.text()
    );

    // Dapr's answers to bad publishes.
    let r = publish(&c, &s, "nope/orders", None, "x").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (404, "ERR_PUBSUB_NOT_FOUND"),
        "{}",
        r.text()
    );
    let r = publish(
        &c,
        &s,
        "ps/orders",
        Some("application/cloudevents+json"),
        "{not json",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (500, "ERR_PUBSUB_CLOUD_EVENTS_SER"),
        "{}",
        r.text()
    );
    let r = publish(&c, &s, "ps/orders?metadata.rawPayload=maybe", None, "x").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "ERR_PUBSUB_REQUEST_METADATA"),
        "{}",
        r.text()
    );
    let r = publish(&c, &s, "ps", None, "x").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (404, "ERR_TOPIC_NAME_EMPTY"),
        "{}",
        r.text()
    );
    let e = g
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "nope".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown pubsub");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The metadata API lists the component and the subscriptions.
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    assert!(
        m["components"]
            .as_array()
            .expect("components")
            .iter()
            .any(|c| c["name"] == "ps")
    );
    let subs = m["subscriptions"].as_array().expect("subscriptions");
    assert!(
        subs.iter()
            .any(|x| x["topic"] == "decl" && x["type"] == "DECLARATIVE"),
        "{subs:?}"
    );
    assert!(
        subs.iter()
            .any(|x| x["topic"] == "routed" && x["type"] == "PROGRAMMATIC"),
        "{subs:?}"
    );

    // Metrics: Dapr's names and labels.
    let scrape = s.scrape().await;
    assert!(
        sample(
            &scrape,
            r#"dapr_component_pubsub_ingress_count{app_id="sub",component="ps",namespace="default",process_status="drop",status="drop",topic="dropme"}"#
        ) >= 1.0,
        "{scrape}"
    );
    assert!(
        sample(
            &scrape,
            r#"dapr_component_pubsub_egress_count{app_id="sub",component="ps",namespace="default",success="true",topic="orders"}"#
        ) >= 7.0
    );
    assert_eq!(app.rec.overlaps(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    conformance(Driver::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    conformance(Driver::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis() {
    let w = World::new();
    conformance(Driver::Redis(redis(&w))).await;
}

/// Two sidecars, one publishing, one subscribing: the embedded broker is
/// shared through the file; Redis through the server.
async fn across_sidecars(d: Driver) {
    let w = World::new();
    w.component("ps.yaml", &d.yaml(&w, "ps", &[]));
    let subs = json!([{"pubsubname": "ps", "topic": "t", "route": "/t"}]);
    let app = HttpSubscriber::start(Some(subs), succeed()).await;
    let publisher = w.sidecar("pub", SidecarOpts::default());
    let c = http_client();
    // Published before the subscriber exists: kept for the new group.
    publish(&c, &publisher, "ps/t", None, "early").await;
    let s = w.sidecar("sub", SidecarOpts::app(app.port));
    wait_subscribed(&s, 1).await;
    for i in 0..20 {
        let r = publish(&c, &publisher, "ps/t", None, &format!("m{i}")).await;
        assert_eq!(r.status, 204);
    }
    let got = app.rec.wait_for(21, "/t", WAIT).await;
    assert!(got.iter().all(|d| d.event["source"] == "pub"));
    assert!(got.iter().any(|d| d.event["data"] == "early"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_shared_by_sidecars_on_one_machine() {
    across_sidecars(Driver::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_shared_by_sidecars() {
    let w = World::new();
    across_sidecars(Driver::Redis(redis(&w))).await;
}

/// A handler slower than the claim time is not delivered again while it
/// runs; at most `concurrency` run at once.
async fn slow_handlers_and_backpressure(d: Driver) {
    let w = World::new();
    w.component(
        "ps.yaml",
        &d.yaml(
            &w,
            "ps",
            &[
                ("processingTimeout", "600ms".into()),
                ("concurrency", "3".into()),
            ],
        ),
    );
    let subs = json!([{"pubsubname": "ps", "topic": "slow", "route": "/slow"}]);
    let app = HttpSubscriber::start(
        Some(subs),
        Arc::new(|_, _| Reply::ok().after(Duration::from_millis(1500))),
    )
    .await;
    let s = w.sidecar("sub", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 1).await;
    for i in 0..9 {
        publish(&c, &s, "ps/slow", None, &format!("s{i}")).await;
    }
    let got = app.rec.wait_for(9, "/slow", Duration::from_secs(40)).await;
    // Give a lapsed claim time to show up as a second delivery.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = app.rec.got();
    assert_eq!(
        app.rec.overlaps(),
        0,
        "a message was delivered twice at the same time"
    );
    assert_eq!(
        got_after.len(),
        got.len(),
        "redelivered although acked: {:?}",
        got_after
            .iter()
            .map(|d| d.event["data"].clone())
            .collect::<Vec<_>>()
    );
    assert!(
        app.rec.max_concurrent() <= 3,
        "{} at once",
        app.rec.max_concurrent()
    );
    assert_eq!(app.rec.max_concurrent(), 3, "the limit was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_keep_their_claim_in_memory() {
    slow_handlers_and_backpressure(Driver::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_keep_their_claim_sqlite() {
    slow_handlers_and_backpressure(Driver::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_keep_their_claim_redis() {
    let w = World::new();
    slow_handlers_and_backpressure(Driver::Redis(redis(&w))).await;
}

/// Waits until `series` is rendered with the value `want`; panics with
/// the last scrape after [`WAIT`].
async fn wait_gauge(s: &Sidecar, series: &str, want: f64) {
    let end = Instant::now() + WAIT;
    loop {
        let m = s.scrape().await;
        if m.lines().any(|l| l.starts_with(series)) && sample(&m, series) == want {
            return;
        }
        assert!(Instant::now() < end, "{series} never read {want}:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `skiff_pubsub_backlog` counts what the broker holds that the group has
/// not fetched: with two handlers held open and a limit of two, 18 of 20
/// wait in the broker (none buffered in the sidecar); it reads 0 once
/// everything is delivered.
async fn backlog_gauge(d: Driver) {
    let w = World::new();
    w.component("ps.yaml", &d.yaml(&w, "ps", &[("concurrency", "2".into())]));
    let subs = json!([{"pubsubname": "ps", "topic": "held", "route": "/held"}]);
    let (open, gate) = tokio::sync::watch::channel(false);
    let app = HttpSubscriber::start(
        Some(subs),
        Arc::new(move |_, _| Reply::ok().when_open(gate.clone())),
    )
    .await;
    let s = w.sidecar("sub", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 1).await;
    for i in 0..20 {
        let r = publish(&c, &s, "ps/held", None, &format!("h{i}")).await;
        assert_eq!(r.status.as_u16(), 204);
    }
    let labels = r#"{app_id="sub",component="ps",namespace="default",topic="held"}"#;
    wait_gauge(&s, &format!("skiff_pubsub_backlog{labels}"), 18.0).await;
    wait_gauge(&s, &format!("skiff_pubsub_in_flight{labels}"), 2.0).await;
    open.send(true).expect("gate");
    app.rec.wait_for(20, "/held", Duration::from_secs(40)).await;
    wait_gauge(&s, &format!("skiff_pubsub_backlog{labels}"), 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauge_in_memory() {
    backlog_gauge(Driver::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauge_sqlite() {
    backlog_gauge(Driver::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauge_redis() {
    let w = World::new();
    backlog_gauge(Driver::Redis(redis(&w))).await;
}

/// With `concurrency: 1` messages arrive in publish order, retries
/// included.
async fn ordered(d: Driver) {
    let w = World::new();
    w.component("ps.yaml", &d.yaml(&w, "ps", &[("concurrency", "1".into())]));
    let subs = json!([{"pubsubname": "ps", "topic": "seq", "route": "/seq"}]);
    let tries = Arc::new(std::sync::Mutex::new(HashMap::<i64, u32>::new()));
    let t = tries.clone();
    let app = HttpSubscriber::start(
        Some(subs),
        Arc::new(move |_, ev| {
            let n = ev["data"]["n"].as_i64().unwrap_or(-1);
            let mut t = t.lock().expect("lock");
            let k = t.entry(n).or_default();
            *k += 1;
            if n % 7 == 3 && *k == 1 {
                Reply::status("RETRY")
            } else {
                Reply::ok()
            }
        }),
    )
    .await;
    let s = w.sidecar("sub", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 1).await;
    for n in 0..40 {
        publish(
            &c,
            &s,
            "ps/seq",
            Some("application/json"),
            &format!(r#"{{"n":{n}}}"#),
        )
        .await;
    }
    let got = app
        .rec
        .wait_for(40 + 6, "/seq", Duration::from_secs(40))
        .await;
    let order: Vec<i64> = got
        .iter()
        .map(|d| d.event["data"]["n"].as_i64().expect("n"))
        .collect();
    let mut dedup = order.clone();
    dedup.dedup();
    assert_eq!(dedup, (0..40).collect::<Vec<_>>(), "order: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_keeps_order_sqlite() {
    ordered(Driver::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_keeps_order_redis() {
    let w = World::new();
    ordered(Driver::Redis(redis(&w))).await;
}

/// SIGTERM with deliveries running: they finish and are acked; nothing is
/// dead-lettered; a restart delivers nothing twice.
async fn graceful_shutdown(d: Driver) {
    let w = World::new();
    w.component("ps.yaml", &d.yaml(&w, "ps", &[("concurrency", "4".into())]));
    let subs = json!([
        {"pubsubname": "ps", "topic": "work", "route": "/work", "deadLetterTopic": "dead"},
        {"pubsubname": "ps", "topic": "dead", "route": "/dead"},
    ]);
    let app = HttpSubscriber::start(
        Some(subs.clone()),
        Arc::new(|_, _| Reply::ok().after(Duration::from_millis(1200))),
    )
    .await;
    let mut s = w.sidecar(
        "sub",
        SidecarOpts {
            args: vec!["--dapr-graceful-shutdown-seconds".into(), "5".into()],
            ..SidecarOpts::app(app.port)
        },
    );
    let c = http_client();
    wait_subscribed(&s, 2).await;
    for i in 0..8 {
        publish(&c, &s, "ps/work", None, &format!("w{i}")).await;
    }
    // Four are running; four wait in the broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.proc.terminate();
    let status = s
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exited within the grace");
    assert!(status.success(), "{status}");
    let done = app.rec.got();
    assert_eq!(done.len(), 4, "the running four finished: {done:?}");
    // Restart: the other four arrive, the first four do not come again.
    let app2 = HttpSubscriber::start(Some(subs), succeed()).await;
    let _s2 = w.sidecar("sub", SidecarOpts::app(app2.port));
    let got = app2.rec.wait_for(4, "/work", WAIT).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all: Vec<String> = done
        .iter()
        .chain(app2.rec.got().iter())
        .map(|d| d.event["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 8, "{all:?}");
    assert_eq!(all.len(), 8, "nothing twice: {all:?}");
    assert!(got.iter().all(|d| d.path == "/work"));
    assert!(
        app2.rec.got().iter().all(|d| d.path != "/dead"),
        "nothing dead-lettered by a shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acks_finished_and_releases_the_rest_sqlite() {
    graceful_shutdown(Driver::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acks_finished_and_releases_the_rest_redis() {
    let w = World::new();
    graceful_shutdown(Driver::Redis(redis(&w))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_app_subscribes_and_gets_on_topic_event() {
    let w = World::new();
    w.component("ps.yaml", &Driver::Memory.yaml(&w, "ps", &[]));
    let subs = vec![
        pb::TopicSubscription {
            pubsub_name: "ps".into(),
            topic: "g".into(),
            routes: Some(pb::TopicRoutes {
                rules: vec![pb::TopicRule {
                    r#match: "event.data.kind == 'x'".into(),
                    path: "x".into(),
                }],
                default: "other".into(),
            }),
            ..Default::default()
        },
        pb::TopicSubscription {
            pubsub_name: "ps".into(),
            topic: "drop".into(),
            dead_letter_topic: "gdead".into(),
            ..Default::default()
        },
        pb::TopicSubscription {
            pubsub_name: "ps".into(),
            topic: "gdead".into(),
            ..Default::default()
        },
    ];
    let app = GrpcSubscriber::start(
        subs,
        Arc::new(|_, ev| {
            if ev["topic"] == "drop" {
                Reply::status("DROP")
            } else {
                Reply::ok()
            }
        }),
    )
    .await;
    let s = w.sidecar("gsub", SidecarOpts::grpc_app(app.port));
    let c = http_client();
    wait_subscribed(&s, 3).await;
    publish(&c, &s, "ps/g", Some("application/json"), r#"{"kind":"x"}"#).await;
    publish(&c, &s, "ps/g", Some("application/json"), r#"{"kind":"y"}"#).await;
    publish(&c, &s, "ps/drop", None, "bye").await;
    let x = app.rec.wait_for(1, "x", WAIT).await;
    assert_eq!(x[0].event["data"], r#"{"kind":"x"}"#);
    assert_eq!(
        (
            x[0].event["topic"].as_str(),
            x[0].event["pubsubname"].as_str()
        ),
        (Some("g"), Some("ps"))
    );
    let ext = x[0].event["extensions"].as_array().expect("extensions");
    assert!(
        ext.iter().any(|k| k == "traceparent") && !ext.iter().any(|k| k == "id"),
        "{ext:?}"
    );
    app.rec.wait_for(1, "other", WAIT).await;
    let dead = app
        .rec
        .wait_until(WAIT, "dead letter", |g| {
            g.iter().any(|d| d.event["topic"] == "gdead")
        })
        .await;
    assert!(dead.iter().any(|d| d.event["data"] == "bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_subscription_for_an_app_without_a_port() {
    use pb::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
    use pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
    let w = World::new();
    w.component("ps.yaml", &Driver::Sqlite.yaml(&w, "ps", &[]));
    let s = w.sidecar("streamer", SidecarOpts::default());
    let mut g = DaprClient::new(s.grpc_channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(In::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "ps".into(),
                topic: "st".into(),
                metadata: HashMap::new(),
                dead_letter_topic: None,
            },
        )),
    })
    .await
    .expect("send");
    let mut stream = g
        .subscribe_topic_events_alpha1(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    let first = stream.message().await.expect("msg").expect("some");
    assert!(matches!(
        first.subscribe_topic_events_response_type,
        Some(Out::InitialResponse(_))
    ));
    let c = http_client();
    for i in 0..3 {
        publish(&c, &s, "ps/st", None, &format!("e{i}")).await;
    }
    let mut seen = Vec::new();
    let mut retried = false;
    while seen.len() < 3 {
        let m = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("some");
        let Some(Out::EventMessage(e)) = m.subscribe_topic_events_response_type else {
            continue;
        };
        // The first one is answered RETRY once: it comes again.
        let status = if !retried {
            retried = true;
            1
        } else {
            seen.push(String::from_utf8_lossy(&e.data).into_owned());
            0
        };
        tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(In::EventProcessed(
                pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                    id: e.id,
                    status: Some(pb::TopicEventResponse { status }),
                },
            )),
        })
        .await
        .expect("ack");
    }
    seen.sort();
    assert_eq!(seen, ["e0", "e1", "e2"]);
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    assert!(
        m["subscriptions"]
            .as_array()
            .expect("subs")
            .iter()
            .any(|x| x["type"] == "STREAMING"),
        "{m}"
    );
    // The client goes away: its subscription leaves the metadata.
    drop(tx);
    drop(stream);
    let end = Instant::now() + WAIT;
    loop {
        let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
        if m["subscriptions"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the closed stream is still listed: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_topics() {
    let w = World::new();
    w.component(
        "ps.yaml",
        &Driver::Memory.yaml(
            &w,
            "ps",
            &[
                ("publishingScopes", "limited=allowed".into()),
                ("subscriptionScopes", "limited=allowed".into()),
                ("protectedTopics", "secret".into()),
            ],
        ),
    );
    let subs = json!([
        {"pubsubname": "ps", "topic": "allowed", "route": "/allowed"},
        {"pubsubname": "ps", "topic": "other", "route": "/other"},
    ]);
    let app = HttpSubscriber::start(Some(subs), succeed()).await;
    let s = w.sidecar("limited", SidecarOpts::app(app.port));
    let free = w.sidecar("free", SidecarOpts::default());
    let c = http_client();
    wait_subscribed(&s, 1).await;
    let r = publish(&c, &s, "ps/other", None, "x").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (403, "ERR_PUBSUB_FORBIDDEN"),
        "{}",
        r.text()
    );
    assert!(
        r.text()
            .contains("topic other is not allowed for app id limited"),
        "{}",
        r.text()
    );
    assert_eq!(publish(&c, &s, "ps/allowed", None, "x").await.status, 204);
    // An app the scopes do not list is free, except for protected topics.
    assert_eq!(publish(&c, &free, "ps/other", None, "x").await.status, 204);
    assert_eq!(publish(&c, &free, "ps/secret", None, "x").await.status, 403);
    let m = get_json(&format!("{}/v1.0/metadata", s.http())).await;
    let subs = m["subscriptions"].as_array().expect("subs");
    assert_eq!(
        subs.len(),
        1,
        "the out-of-scope subscription is left out: {subs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cel_rule_stops_the_start_naming_file_and_rule() {
    let w = World::new();
    w.component("ps.yaml", &Driver::Memory.yaml(&w, "ps", &[]));
    w.component(
        "bad-sub.yaml",
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: broken\nspec:\n  pubsubname: ps\n  topic: t\n  routes:\n    rules:\n    - match: event.type ==\n      path: /x\n",
    );
    let err = w.skiffd_fails("app", &["--app-port", &free_port().to_string()]);
    assert!(
        err.contains("bad-sub.yaml") && err.contains("broken") && err.contains("event.type =="),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expired_messages_are_not_delivered() {
    let w = World::new();
    w.component("ps.yaml", &Driver::Sqlite.yaml(&w, "ps", &[]));
    let publisher = w.sidecar("pub", SidecarOpts::default());
    let c = http_client();
    let subs = json!([{"pubsubname": "ps", "topic": "ttl", "route": "/ttl"}]);
    // Published before the subscriber runs, with a TTL that runs out first.
    let r = publish(
        &c,
        &publisher,
        "ps/ttl?metadata.ttlInSeconds=1",
        None,
        "stale",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    publish(
        &c,
        &publisher,
        "ps/ttl?metadata.ttlInSeconds=600",
        None,
        "fresh",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let app = HttpSubscriber::start(Some(subs), succeed()).await;
    let _s = w.sidecar("sub", SidecarOpts::app(app.port));
    let got = app.rec.wait_for(1, "/ttl", WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let datas: Vec<Value> = app
        .rec
        .got()
        .iter()
        .map(|d| d.event["data"].clone())
        .collect();
    assert_eq!(datas, [json!("fresh")], "{got:?}");
    assert!(got[0].event["expiration"].as_str().is_some());
}

// ---- the nothing-lost run --------------------------------------------------

/// How the subscriber treats message `n` on its `k`-th delivery.
fn lossy_reply(n: u64, k: u32) -> Reply {
    match n % 50 {
        // The odd DROP (dead-lettered).
        7 => Reply::status("DROP"),
        // Fails the first time, in two ways.
        11 | 23 if k == 1 => Reply::status("RETRY"),
        13 | 37 if k == 1 => Reply::http(500),
        // Slower than the claim time.
        41 if k == 1 => Reply::ok().after(Duration::from_millis(1500)),
        _ => Reply::ok(),
    }
}

async fn nothing_lost(mut d: Driver, redis_dir: Option<std::path::PathBuf>, total: u64) {
    let w = World::new();
    let claim = ("processingTimeout", "700ms".to_owned());
    w.component(
        "ps.yaml",
        &d.yaml(&w, "ps", &[claim, ("concurrency", "16".into())]),
    );
    let subs = json!([
        {"pubsubname": "ps", "topic": "load", "route": "/load", "deadLetterTopic": "load-dead"},
        {"pubsubname": "ps", "topic": "load-dead", "route": "/dead"},
    ]);
    let counts = Arc::new(std::sync::Mutex::new(HashMap::<u64, u32>::new()));
    let behave: Behave = {
        let counts = counts.clone();
        Arc::new(move |path, ev| {
            let n = ev["data"]["n"].as_u64().unwrap_or(u64::MAX);
            if path == "/dead" {
                return Reply::ok();
            }
            let mut c = counts.lock().expect("lock");
            let k = c.entry(n).or_default();
            *k += 1;
            lossy_reply(n, *k)
        })
    };
    let mut rec_app = HttpSubscriber::start(Some(subs.clone()), behave).await;
    rec_app
        .rec
        .key_by(|e| format!("{}:{}", e["topic"], e["data"]["n"]));
    let app_port = rec_app.port;
    let opts = || SidecarOpts {
        args: vec!["--dapr-graceful-shutdown-seconds".into(), "3".into()],
        ..SidecarOpts::app(app_port)
    };
    let pubs = [
        w.sidecar("pub1", SidecarOpts::default()),
        w.sidecar("pub2", SidecarOpts::default()),
    ];
    let mut sub = w.sidecar("lossy", opts());
    wait_subscribed(&sub, 2).await;

    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let publisher = {
        let acked = acked.clone();
        let urls: Vec<String> = pubs
            .iter()
            .map(|p| format!("{}/v1.0/publish/ps/load", p.http()))
            .collect();
        tokio::spawn(async move {
            let c = http_client();
            let deadline = Instant::now() + Duration::from_secs(180);
            for n in 0..total {
                if Instant::now() > deadline {
                    break;
                }
                let mut req = request("POST", &urls[(n % 2) as usize], format!(r#"{{"n":{n}}}"#));
                req.headers_mut()
                    .insert("content-type", "application/json".parse().expect("ct"));
                // A publish that fails is not acknowledged: not counted.
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(10), c.request(req)).await
                    && r.status() == 204
                {
                    acked.lock().expect("lock").push(n);
                }
            }
        })
    };
    let progress = |k: usize| {
        let counts = counts.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(60);
            while counts.lock().expect("lock").len() < k && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let total_us = usize::try_from(total).expect("fits");
    // Mid-run: SIGKILL the subscriber's sidecar and start it again.
    progress(total_us / 5).await;
    sub.proc.kill();
    sub = w.sidecar("lossy", opts());
    // SIGTERM it with work in flight, and start it again.
    progress(total_us * 2 / 5).await;
    sub.proc.terminate();
    let _ = sub.proc.wait_exit(Duration::from_secs(10));
    let _sub = w.sidecar("lossy", opts());
    // Restart the broker (Redis with AOF on).
    progress(total_us * 3 / 5).await;
    // Or kill one JetStream node, and bring it back later.
    if let Driver::JetStream(n) = &mut d {
        n.kill(1);
    }
    if let (Driver::Redis(r), Some(dir)) = (&mut d, &redis_dir) {
        let port = r.port;
        r.cli(&["bgrewriteaof"]);
        r.proc.terminate();
        let _ = r.proc.wait_exit(Duration::from_secs(10));
        *r = Redis::start_with(
            dir,
            port,
            &["--appendonly", "yes", "--appendfsync", "always"],
        );
    }
    if let Driver::JetStream(n) = &mut d {
        progress(total_us * 4 / 5).await;
        n.start_node(1);
    }
    publisher.await.expect("publisher");
    let acked: Vec<u64> = acked.lock().expect("lock").clone();
    assert!(
        acked.len() as u64 > total * 9 / 10,
        "most publishes were acknowledged: {}",
        acked.len()
    );

    // Drain: every acknowledged publish delivered (SUCCESS) or dead-lettered.
    let dropped = |n: u64| n % 50 == 7;
    let want_success: Vec<u64> = acked.iter().copied().filter(|n| !dropped(*n)).collect();
    let want_dead: Vec<u64> = acked.iter().copied().filter(|n| dropped(*n)).collect();
    let got = rec_app
        .rec
        .wait_until(Duration::from_secs(120), "drain", |g| {
            let ok: std::collections::HashSet<u64> = g
                .iter()
                .filter(|d| d.path == "/load")
                .filter_map(|d| d.event["data"]["n"].as_u64())
                .collect();
            let dead: std::collections::HashSet<u64> = g
                .iter()
                .filter(|d| d.path == "/dead")
                .filter_map(|d| d.event["data"]["n"].as_u64())
                .collect();
            want_success.iter().all(|n| ok.contains(n))
                && want_dead.iter().all(|n| dead.contains(n))
        })
        .await;
    let dead: BTreeMap<u64, usize> =
        got.iter()
            .filter(|d| d.path == "/dead")
            .fold(BTreeMap::new(), |mut m, d| {
                *m.entry(d.event["data"]["n"].as_u64().unwrap_or(u64::MAX))
                    .or_default() += 1;
                m
            });
    assert!(
        dead.keys().all(|n| dropped(*n)),
        "only DROPs in the dead-letter topic: {dead:?}"
    );
    let deliveries = got.iter().filter(|d| d.path == "/load").count();
    let distinct = got
        .iter()
        .filter(|d| d.path == "/load")
        .filter_map(|d| d.event["data"]["n"].as_u64())
        .collect::<std::collections::HashSet<_>>()
        .len();
    // The app asks for one redelivery of each message it fails once.
    let asked = acked
        .iter()
        .filter(|n| matches!(*n % 50, 11 | 13 | 23 | 37))
        .count();
    let beyond = deliveries.saturating_sub(distinct).saturating_sub(asked);
    eprintln!(
        "nothing-lost: {} acked publishes, {deliveries} deliveries of {distinct} distinct messages, {} dead-lettered, {asked} redeliveries the app asked for, {beyond} duplicates beyond those, {} overlaps",
        acked.len(),
        dead.len(),
        rec_app.rec.overlaps()
    );
    assert_eq!(
        rec_app.rec.overlaps(),
        0,
        "a message was delivered twice at the same time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_sqlite() {
    nothing_lost(Driver::Sqlite, None, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_redis() {
    let w = World::new();
    let dir = w.home.path().join("redis");
    let r = Redis::start_with(
        &dir,
        free_port(),
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    nothing_lost(Driver::Redis(r), Some(dir), 10_000).await;
}

/// Bulk subscribe: batches of at most `maxMessagesCount` in Dapr's bulk
/// envelope, one status per entry; RETRY entries come again alone, DROP
/// goes to the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_subscribe_delivers_batches_with_a_status_per_entry() {
    let w = World::new();
    w.component("ps.yaml", &Driver::Sqlite.yaml(&w, "ps", &[]));
    let subs = json!([
        {"pubsubname": "ps", "topic": "many", "route": "/many", "deadLetterTopic": "many-dead",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 5, "maxAwaitDurationMs": 300}},
        {"pubsubname": "ps", "topic": "many-dead", "route": "/dead"},
    ]);
    let retried = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let r2 = retried.clone();
    let app = HttpSubscriber::start(
        Some(subs),
        Arc::new(move |path, ev| {
            if path != "/many" {
                return Reply::ok();
            }
            let statuses: Vec<Value> = ev["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let data = e["event"]["data"].as_str().unwrap_or_default().to_owned();
                    let status = if data == "drop" {
                        "DROP"
                    } else if data.ends_with('7') && r2.lock().expect("lock").insert(data.clone()) {
                        "RETRY"
                    } else {
                        "SUCCESS"
                    };
                    json!({"entryId": e["entryId"], "status": status})
                })
                .collect();
            Reply {
                status: 200,
                body: json!({"statuses": statuses}).to_string(),
                delay: Duration::ZERO,
                gate: None,
            }
        }),
    )
    .await;
    let s = w.sidecar("bulk", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 2).await;
    let mut entries: Vec<Value> = (0..12)
        .map(|i| json!({"entryId": i.to_string(), "event": format!("m{i}"), "contentType": "text/plain"}))
        .collect();
    entries.push(json!({"entryId": "d", "event": "drop", "contentType": "text/plain"}));
    let r = call(
        &c,
        "POST",
        &format!("{}/v1.0-alpha1/publish/bulk/ps/many", s.http()),
        Value::Array(entries).to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app
        .rec
        .wait_until(WAIT, "every entry settled", |g| {
            let ok: std::collections::HashSet<String> = g
                .iter()
                .filter(|d| d.path == "/many")
                .flat_map(|d| d.event["entries"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e["event"]["data"].as_str().map(str::to_owned))
                .collect();
            (0..12).all(|i| ok.contains(&format!("m{i}"))) && g.iter().any(|d| d.path == "/dead")
        })
        .await;
    let batches: Vec<&Delivery> = got.iter().filter(|d| d.path == "/many").collect();
    assert!(
        batches
            .iter()
            .all(|b| b.event["type"] == "com.dapr.event.sent.bulk")
    );
    assert!(batches.iter().all(|b| {
        b.event["entries"]
            .as_array()
            .is_some_and(|e| !e.is_empty() && e.len() <= 5)
    }));
    assert!(
        batches
            .iter()
            .all(|b| b.event["topic"] == "many" && b.event["pubsubname"] == "ps")
    );
    // m7 came twice (RETRY once); the others once.
    let count = |d: &str| {
        batches
            .iter()
            .flat_map(|b| b.event["entries"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["event"]["data"] == d)
            .count()
    };
    assert_eq!(count("m7"), 2);
    assert_eq!(count("m3"), 1);
    let dead: Vec<&Delivery> = got.iter().filter(|d| d.path == "/dead").collect();
    assert_eq!(dead[0].event["data"], "drop");
}

/// `targets.components.<pubsub>.inbound`: its retries run, then the
/// message goes to the dead letter; its timeout cuts a hanging app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_resiliency_retries_then_dead_letters() {
    let w = World::new();
    w.component("ps.yaml", &Driver::Sqlite.yaml(&w, "ps", &[]));
    w.component(
        "resiliency.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: inbound\nspec:\n  policies:\n    timeouts:\n      quick: 300ms\n    retries:\n      twice:\n        policy: constant\n        duration: 50ms\n        maxRetries: 2\n  targets:\n    components:\n      ps:\n        inbound:\n          timeout: quick\n          retry: twice\n",
    );
    let subs = json!([
        {"pubsubname": "ps", "topic": "bad", "route": "/bad", "deadLetterTopic": "bad-dead"},
        {"pubsubname": "ps", "topic": "bad-dead", "route": "/dead"},
    ]);
    let app = HttpSubscriber::start(
        Some(subs),
        Arc::new(|path, ev| match (path, ev["data"].as_str()) {
            ("/bad", Some("hang")) => Reply::ok().after(Duration::from_secs(3)),
            ("/bad", _) => Reply::http(503),
            _ => Reply::ok(),
        }),
    )
    .await;
    let s = w.sidecar("inbound", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 2).await;
    publish(&c, &s, "ps/bad", None, "fails").await;
    publish(&c, &s, "ps/bad", None, "hang").await;
    let dead = app
        .rec
        .wait_until(WAIT, "both dead-lettered", |g| {
            g.iter().filter(|d| d.path == "/dead").count() >= 2
        })
        .await;
    // One try and two retries each, no more.
    let tries = |d: &str| {
        dead.iter()
            .filter(|x| x.path == "/bad" && x.event["data"] == d)
            .count()
    };
    assert_eq!(tries("fails"), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.rec
            .got()
            .iter()
            .filter(|x| x.path == "/bad" && x.event["data"] == "fails")
            .count(),
        3
    );
}

fn nats(w: &World) -> NatsCluster {
    NatsCluster::start(&w.home.path().join("nats"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_jetstream() {
    let w = World::new();
    conformance(Driver::JetStream(nats(&w))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_keep_their_claim_jetstream() {
    let w = World::new();
    slow_handlers_and_backpressure(Driver::JetStream(nats(&w))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acks_finished_and_releases_the_rest_jetstream() {
    let w = World::new();
    graceful_shutdown(Driver::JetStream(nats(&w))).await;
}

/// A three-node JetStream cluster with one node SIGKILLed mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauge_jetstream() {
    let w = World::new();
    backlog_gauge(Driver::JetStream(nats(&w))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_jetstream() {
    let w = World::new();
    nothing_lost(Driver::JetStream(nats(&w)), None, 10_000).await;
}

/// `trimAcked: true` on Redis: once every group has acked, the stream is
/// trimmed (Dapr's streams grow forever without `maxLenApprox`, which can
/// drop undelivered entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_trim_acked_keeps_the_stream_short() {
    let w = World::new();
    let d = Driver::Redis(redis(&w));
    w.component(
        "ps.yaml",
        &d.yaml(&w, "ps", &[("trimAcked", "true".into())]),
    );
    let subs = json!([{"pubsubname": "ps", "topic": "trimmed", "route": "/t"}]);
    let app = HttpSubscriber::start(Some(subs), succeed()).await;
    let s = w.sidecar("trim", SidecarOpts::app(app.port));
    let c = http_client();
    wait_subscribed(&s, 1).await;
    for i in 0..300 {
        publish(&c, &s, "ps/trimmed", None, &format!("m{i}")).await;
    }
    app.rec.wait_for(300, "/t", WAIT).await;
    let Driver::Redis(r) = &d else { unreachable!() };
    let end = Instant::now() + WAIT;
    loop {
        let len: u64 = r.cli(&["xlen", "trimmed"]).parse().unwrap_or(u64::MAX);
        if len <= 1 {
            break;
        }
        assert!(Instant::now() < end, "the stream still holds {len} entries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A publish Redis refuses is a failed publish. redis-rs hands a server's
/// error reply to a single command back as a value; the soak found
/// publishes acknowledged while a restarted Redis answered `-LOADING`. A
/// stream key holding a string (`-WRONGTYPE`) refuses the same way, every
/// time.
#[tokio::test]
async fn a_publish_redis_refuses_is_an_error_not_an_ack() {
    let w = World::new();
    let r = redis(&w);
    r.cli(&["SET", "taken", "not-a-stream"]);
    let d = Driver::Redis(r);
    w.component("ps.yaml", &d.yaml(&w, "ps", &[]));
    let s = w.sidecar("pub", SidecarOpts::default());
    let c = http_client();
    let refused = send(
        &c,
        request("POST", &format!("{}/v1.0/publish/ps/taken", s.http()), "{}"),
    )
    .await;
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert!(
        refused.text().contains("ERR_PUBSUB_PUBLISH_MESSAGE"),
        "{}",
        refused.text()
    );
    assert!(
        refused.text().contains("WRONGTYPE"),
        "the cause is named: {}",
        refused.text()
    );
    let fine = send(
        &c,
        request("POST", &format!("{}/v1.0/publish/ps/free", s.http()), "{}"),
    )
    .await;
    assert_eq!(fine.status, 204, "{}", fine.text());
}

/// Entries left idle behind many live ones at the head of Redis's pending
/// list are still reclaimed: `XAUTOCLAIM` scans at most ten times `COUNT`
/// entries a call, so the driver follows the cursor it returns instead of
/// starting at `0-0` every time (with `concurrency: 1` it would look at
/// the first ten only, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reclaims_idle_entries_behind_live_ones() {
    let w = World::new();
    let r = redis(&w);
    r.cli(&["XGROUP", "CREATE", "deep", "sub", "0", "MKSTREAM"]);
    let mut ids = Vec::new();
    for n in 0..30 {
        let ev = json!({"specversion": "1.0", "id": format!("e{n}"), "source": "t",
            "type": "com.dapr.event.sent", "datacontenttype": "application/json",
            "topic": "deep", "pubsubname": "ps", "data": {"n": n}});
        ids.push(
            r.cli(&["XADD", "deep", "*", "data", &ev.to_string()])
                .trim()
                .to_owned(),
        );
    }
    // A consumer that took all thirty and still works on the first twenty
    // (their claims renewed every 200 ms); the last ten it dropped.
    r.cli(&[
        "XREADGROUP",
        "GROUP",
        "sub",
        "ghost",
        "COUNT",
        "30",
        "STREAMS",
        "deep",
        ">",
    ]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (stop, port, live) = (stop.clone(), r.port.to_string(), ids[..20].to_vec());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("redis-cli")
                    .args(["-p", &port, "XCLAIM", "deep", "sub", "ghost", "0"])
                    .args(&live)
                    .arg("JUSTID")
                    .output();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let d = Driver::Redis(r);
    w.component(
        "ps.yaml",
        &d.yaml(
            &w,
            "ps",
            &[
                ("concurrency", "1".into()),
                ("processingTimeout", "1s".into()),
            ],
        ),
    );
    let (app, got) =
        HttpSubscriber::numbers(json!([{"pubsubname": "ps", "topic": "deep", "route": "/deep"}]))
            .await;
    let _s = w.sidecar("sub", SidecarOpts::app(app.port));
    let end = Instant::now() + Duration::from_secs(20);
    let dropped: std::collections::BTreeSet<u64> = (20..30).collect();
    while !dropped.is_subset(&got.lock().expect("lock")) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = toucher.join();
    let got = got.lock().expect("lock").clone();
    assert!(
        dropped.is_subset(&got),
        "the entries idle behind twenty live ones were not reclaimed: got {got:?}"
    );
}

/// A streaming subscriber that opens its stream and never reads it (no
/// HTTP/2 window at all) is reset once `--stream-stall-timeout` passes
/// without a byte taken, and the events queued to it are not lost: a
/// subscriber that reads gets every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_subscriber_that_never_reads_is_reset_and_loses_nothing() {
    use pb::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
    use pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
    use prost::Message;
    let w = World::new();
    w.component("ps.yaml", &Driver::Sqlite.yaml(&w, "ps", &[]));
    let s = w.sidecar(
        "stalled",
        SidecarOpts {
            args: vec!["--stream-stall-timeout".into(), "1s".into()],
            ..SidecarOpts::default()
        },
    );
    let initial = |topic: &str| pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(In::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "ps".into(),
                topic: topic.into(),
                metadata: HashMap::new(),
                dead_letter_topic: None,
            },
        )),
    };

    // The client that never reads: a window of 0, the first message sent,
    // its side of the stream left open.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.grpc_port))
        .await
        .expect("connect");
    let (h2, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let req = http::Request::post(format!(
        "http://127.0.0.1:{}/dapr.proto.runtime.v1.Dapr/SubscribeTopicEventsAlpha1",
        s.grpc_port
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let (resp, mut send) = h2.send_request(req, false).expect("send");
    let m = initial("stall").encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(m.len() as u32).to_be_bytes());
    frame.extend_from_slice(&m);
    send.send_data(frame.into(), false).expect("first message");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("a head in time")
        .expect("a head");
    assert_eq!(resp.status(), 200);
    let c = http_client();
    for i in 0..3 {
        publish(&c, &s, "ps/stall", None, &format!("s{i}")).await;
    }
    let mut body = resp.into_body();
    let end = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("reset within the stall timeout, not left open");
    let reason = match end {
        Some(Err(e)) => e.reason(),
        other => panic!("a reset, not {other:?}"),
    };
    assert_eq!(reason, Some(h2::Reason::CANCEL));
    drop(send);

    // A subscriber that reads gets all three.
    let mut g = DaprClient::new(s.grpc_channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(initial("stall")).await.expect("send");
    let mut stream = g
        .subscribe_topic_events_alpha1(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("every event in time")
            .expect("ok")
            .expect("some");
        let Some(Out::EventMessage(e)) = m.subscribe_topic_events_response_type else {
            continue;
        };
        let data = String::from_utf8_lossy(&e.data).into_owned();
        if !seen.contains(&data) {
            seen.push(data);
        }
        tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(In::EventProcessed(
                pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                    id: e.id,
                    status: Some(pb::TopicEventResponse { status: 0 }),
                },
            )),
        })
        .await
        .expect("ack");
    }
    seen.sort();
    assert_eq!(seen, ["s0", "s1", "s2"]);
}
