//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly), and
//! the replay of their seed corpora as unit tests on stable.
//!
//! Each function takes arbitrary bytes and drives one parser the way the
//! sidecar drives it, with the input a peer, an app or an operator
//! controls. None may panic or hang; where a parser has an invariant (the
//! envelope is JSON, a parsed `traceparent` renders back to itself), it is
//! asserted here, so a fuzzer that breaks it reports a crash. The targets
//! are thin wrappers; keeping the bodies here means the corpus replay runs
//! in the ordinary test suite and the code cannot drift from the targets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skiff_sentry::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::blocks::pubsub::{envelope, subscriptions};
use crate::blocks::state;
use crate::config::{self, Documents};
use crate::http1::{self, Received};
use crate::invoke::target;
use crate::policy::acl::{AccessControlSpec, Acl, Operation};
use crate::policy::breaker::{Counts, Trip};
use crate::skiff_body::SkiffBody;
use crate::telemetry::trace;
use crate::transport::PeerInfo;

/// One target's body: it takes the fuzzer's bytes.
pub type Target = fn(&[u8]);

/// The targets, by the names of their files in `fuzz/fuzz_targets/` and
/// their corpus folders in `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_request", http1_request),
    ("invoke_target", invoke_target),
    ("acl", acl),
    ("yaml_documents", yaml_documents),
    ("breaker_trip", breaker_trip),
    ("cloudevent", cloudevent),
    ("cel_route", cel_route),
    ("state_request", state_request),
    ("trace_context", trace_context),
    ("csr", csr),
    ("grpc_request", grpc_request),
];

/// The first line of `data` and the rest (fuzzers mutate both).
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// A loopback listener and a runtime, made once per fuzzing process.
struct Loopback {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

fn loopback() -> &'static Loopback {
    static L: OnceLock<Loopback> = OnceLock::new();
    L.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback listener");
        let addr = listener.local_addr().expect("its address");
        Loopback { rt, listener, addr }
    })
}

/// A served HTTP/1.1 connection that received `data` and then the client's
/// end of stream: the request-head parser, the framing rules, the chunked
/// decoder and pipelining, as the API port runs them. Every answer it
/// writes must be an HTTP/1.1 response, and the connection must end.
pub fn http1_request(data: &[u8]) {
    let l = loopback();
    let settings = http1::server::Settings {
        max_head_bytes: 16 << 10,
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    };
    let out = l.rt.block_on(async {
        let mut client = tokio::net::TcpStream::connect(l.addr)
            .await
            .expect("connect");
        let (server, peer) = l.listener.accept().await.expect("accept");
        let serve = http1::server::serve_connection(
            server,
            PeerInfo::new(peer, None),
            &settings,
            |_, req: Request<Received>| answer_with_length(req),
            std::future::pending(),
        );
        let talk = async {
            // The server may refuse and close early: write errors are fine.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut got = Vec::new();
            let _ = (&mut client).take(4 << 20).read_to_end(&mut got).await;
            got
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(serve, talk).1
        })
        .await
    });
    let got = out.expect("the connection did not end after the client's end of stream");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "not an HTTP/1.1 answer: {:?}",
        text(&got[..got.len().min(64)])
    );
}

/// Reads the body whole (bounded) and answers with its length.
async fn answer_with_length(req: Request<Received>) -> Response<SkiffBody> {
    let mut body = SkiffBody::from(req.into_body());
    let mut n = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
        if n > 1 << 20 {
            break;
        }
    }
    Response::new(SkiffBody::full(n.to_string()))
}

/// An app id and a method as `/v1.0/invoke/{id}/method/{method}` takes
/// them: the path the app is called with starts at `/` and, decoded for a
/// gRPC app, has no `..` segment.
pub fn invoke_target(data: &[u8]) {
    let (id, method) = split_line(data);
    let _ = target::parse_app_id(&text(id), config::DEFAULT_NAMESPACE);
    let method = text(method);
    let (m, q) = match method.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (&*method, None),
    };
    let Ok(p) = target::app_path(m, q) else {
        return;
    };
    assert!(p.path().starts_with('/'), "app path {p:?} from {m:?}");
    // A gRPC app is called with the cleaned path, decoded: still no `..`.
    if let Ok(grpc) = target::method_from_path(p.path()) {
        assert!(
            !grpc.split('/').any(|s| s == ".."),
            "method {grpc:?} climbs"
        );
    }
}

/// An `accessControl` spec (YAML after the first two lines) compiled and
/// asked about the operation the first two lines name (verb, path).
pub fn acl(data: &[u8]) {
    let (verb, rest) = split_line(data);
    let (path, yaml) = split_line(rest);
    let Ok(spec) = yaml_serde::from_str::<AccessControlSpec>(&text(yaml)) else {
        return;
    };
    let Ok(acl) = Acl::compile(spec) else {
        return;
    };
    let verb = Method::from_bytes(verb).ok();
    let path = text(path);
    let caller = SpiffeId::new("public", "default", "caller").ok();
    for who in [caller.as_ref(), None] {
        let op = Operation {
            path: &path,
            verb: verb.as_ref(),
        };
        let _ = acl.decide(who, op);
        let _ = acl.decide(who, Operation { verb: None, ..op });
    }
}

/// A YAML file as `--config` and `--resources-path` read it, then every
/// loader that takes documents: Configuration (ACL, secret scopes),
/// Resiliency, Component and Subscription.
pub fn yaml_documents(data: &[u8]) {
    let Ok(docs) = config::parse_documents(&text(data), Path::new("fuzz.yaml")) else {
        return;
    };
    let mut all = Documents::default();
    for d in docs {
        if d.kind == "Configuration" && all.configuration.is_none() {
            all.configuration = Some(d);
        } else {
            all.resources.push(d);
        }
    }
    let _ = crate::policy::Policies::from_documents(&all, "app");
    let _ = config::component::secret_scopes(all.configuration.as_ref());
    let _ = subscriptions::declarative(&all.resources, "app");
    for d in all.components_for("app") {
        let _ = config::component::ComponentSpec::from_document(d);
    }
}

/// A circuit breaker's `trip` expression, parsed and evaluated on counts
/// taken from the input's tail.
pub fn breaker_trip(data: &[u8]) {
    let (expr, rest) = split_line(data);
    let Ok(trip) = Trip::parse(&text(expr)) else {
        return;
    };
    let n = |i: usize| rest.get(i).map_or(0, |b| u64::from(*b));
    let counts = Counts {
        requests: n(0),
        total_successes: n(1),
        total_failures: n(2),
        consecutive_successes: n(3),
        consecutive_failures: n(4),
    };
    let _ = trip.eval(&counts);
    let _ = trip.eval(&Counts::default());
}

/// Publish bodies wrapped in daprd's envelope: whatever the publisher
/// sent, the envelope is JSON, and its head reads back.
pub fn cloudevent(data: &[u8]) {
    let (ct, body) = split_line(data);
    let ct = text(ct);
    let overrides = [("type", "fuzz.type"), ("source", "fuzz")];
    let input = envelope::Input {
        data: body,
        content_type: &ct,
        topic: "orders",
        pubsub: "pubsub",
        source: "app",
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate: "",
        ttl: Some(Duration::from_secs(60)),
        overrides: &overrides,
    };
    if let Ok(env) = envelope::build(&input) {
        // JSON syntax (a number past f64, e.g. `1e999`, passes through
        // as the publisher wrote it, as daprd's does; found by this target).
        let v: Result<serde::de::IgnoredAny, _> = serde_json::from_slice(&env);
        assert!(v.is_ok(), "the envelope is not JSON: {:?}", text(&env));
        let head = envelope::Head::read(&env);
        assert!(head.is_some(), "the envelope's head does not read back");
        if let Some(h) = head {
            let _ = h.expired();
        }
    }
    let raw = envelope::wrap_raw(body, "orders", "pubsub");
    assert!(
        serde_json::from_slice::<Value>(&raw).is_ok(),
        "raw wrap is not JSON"
    );
    if let Ok(Value::Object(ce)) = serde_json::from_slice::<Value>(body) {
        let _ = envelope::grpc_data(&ce);
    }
}

/// A CEL routing rule (first line) compiled as an app's subscription
/// would give it, then evaluated against an event (the rest).
pub fn cel_route(data: &[u8]) {
    let (expr, event) = split_line(data);
    let list = json!([{
        "pubsubname": "pubsub",
        "topic": "orders",
        "routes": {"rules": [{"match": text(expr), "path": "/rule"}], "default": "/default"},
    }]);
    let (subs, _) = subscriptions::programmatic(list.to_string().as_bytes());
    let event: Option<Value> = serde_json::from_slice(event).ok();
    for s in &subs {
        let _ = s.route(event.as_ref());
        let _ = s.describe();
    }
}

/// A state save: the query string (first line) and the JSON body (the
/// rest), as `POST /v1.0/state/{store}` takes them.
pub fn state_request(data: &[u8]) {
    let (query, body) = split_line(data);
    let query = text(query);
    let args = state::http::query_args(Some(&query));
    let _ = state::http::save_items("store", body, &args);
    let _ = state::parse_ttl(Some(&query));
    let _ = state::parse_concurrency(&query);
    let _ = state::parse_consistency(&query);
}

/// `traceparent` and `grpc-trace-bin` as a caller sends them: what parses
/// renders back to the same context.
pub fn trace_context(data: &[u8]) {
    if let Some((t, s, f)) = trace::parse_traceparent(data) {
        let again = trace::parse_traceparent(trace::traceparent(&t, &s, f).as_bytes());
        assert_eq!(again, Some((t, s, f)), "traceparent does not round-trip");
    }
    if let Ok(v) = HeaderValue::from_bytes(data)
        && let Some((t, s, f)) = trace::parse_grpc_trace_bin(&v)
    {
        let again = trace::parse_grpc_trace_bin(&trace::grpc_trace_bin(&t, &s, f));
        assert_eq!(again, Some((t, s, f)), "grpc-trace-bin does not round-trip");
    }
}

/// A certificate signing request as sentry checks it (PEM or DER), and a
/// SPIFFE ID as a certificate or a token names it.
pub fn csr(data: &[u8]) {
    if let Ok(id) = SpiffeId::new("public", "default", "app") {
        let _ = skiff_sentry::csr::check(data, &id);
    }
    if let Ok(id) = text(data).parse::<SpiffeId>() {
        let again: Result<SpiffeId, _> = id.to_string().parse();
        assert!(again.is_ok(), "SPIFFE ID {id} does not parse back");
    }
}

/// The gRPC door's own request readers (`api::unary`, `protowire`):
/// the frame check, then every RPC's decoder over the same bytes. Whatever
/// prost accepts as that RPC's message, the door must accept too and read
/// the same fields from (a differential check: prost is what the door used
/// before, and what an SDK encodes with).
pub fn grpc_request(data: &[u8]) {
    let frame = bytes::Bytes::copy_from_slice(data);
    // The bytes as a message, and the message inside them as a frame.
    let inside = crate::api::unary::unframe(frame.clone(), 1 << 16).ok();
    if let Some(m) = &inside {
        assert_eq!(m.len() + crate::protowire::FRAME_HEADER, frame.len());
    }
    for msg in std::iter::once(frame).chain(inside) {
        grpc_messages(&msg);
    }
}

/// Each RPC's decoder over `msg`, checked against prost.
fn grpc_messages(msg: &bytes::Bytes) {
    use prost::Message;
    use skiff_proto::runtime as pb;
    let msg = msg.clone();
    let get = state::grpc::decode_get(&msg);
    if let Ok(p) = pb::GetStateRequest::decode(msg.clone()) {
        let (store, key, _) = get.expect("prost read a GetStateRequest the door refused");
        assert_eq!((store, key), (p.store_name.as_str(), p.key.as_str()));
    }
    let save = state::grpc::decode_save(&msg);
    if let Ok(p) = pb::SaveStateRequest::decode(msg.clone()) {
        let (store, items) = save.expect("prost read a SaveStateRequest the door refused");
        assert_eq!(store, p.store_name);
        assert_eq!(items.len(), p.states.len());
        for (a, b) in items.iter().zip(&p.states) {
            assert_eq!(a.key, b.key);
            assert_eq!(a.value, b.value);
            assert_eq!(a.etag, b.etag.as_ref().map(|e| e.value.as_str()));
            assert_eq!(
                a.content_type,
                b.metadata.get("contentType").map(String::as_str)
            );
            assert_eq!(a.ttl, b.metadata.get("ttlInSeconds").map(String::as_str));
        }
    }
    let delete = state::grpc::decode_delete(&msg);
    if let Ok(p) = pb::DeleteStateRequest::decode(msg.clone()) {
        let (store, it) = delete.expect("prost read a DeleteStateRequest the door refused");
        assert_eq!(
            (store, it.key.as_str()),
            (p.store_name.as_str(), p.key.as_str())
        );
        assert_eq!(it.etag, p.etag.map(|e| e.value));
    }
    let event = crate::blocks::pubsub::grpc::decode_event(&msg);
    if let Ok(p) = pb::PublishEventRequest::decode(msg.clone()) {
        let e = event.expect("prost read a PublishEventRequest the door refused");
        assert_eq!(
            (e.pubsub, e.topic),
            (p.pubsub_name.as_str(), p.topic.as_str())
        );
        assert_eq!(
            (&e.data, e.content_type),
            (&p.data, p.data_content_type.as_str())
        );
        let mut got = e.metadata.clone();
        got.sort();
        let mut want: Vec<_> = p.metadata.into_iter().collect();
        want.sort();
        assert_eq!(got, want);
    }
    let invoke = crate::api::grpc::decode_invoke(&msg);
    if let Ok(p) = pb::InvokeServiceRequest::decode(msg.clone()) {
        let call = invoke.expect("prost read an InvokeServiceRequest the door refused");
        assert_eq!(call.is_some(), p.message.is_some());
        if let (Some(c), Some(m)) = (call, p.message) {
            assert_eq!((c.id, c.method), (p.id.as_str(), m.method.as_str()));
            let any = m.data.unwrap_or_default();
            assert_eq!((c.type_url, &c.data), (any.type_url.as_str(), &any.value));
            assert_eq!(c.content_type, m.content_type);
            let ext = m.http_extension.unwrap_or_default();
            assert_eq!(c.querystring, ext.querystring);
            assert_eq!(
                c.verb,
                skiff_proto::common::http_extension::Verb::try_from(ext.verb).unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name)
    }

    /// Every seed (and every crasher kept beside them) runs clean, on
    /// stable, in the ordinary suite: a regression shows up without a
    /// fuzzer.
    #[test]
    fn seed_corpora_replay_clean() {
        for (name, run) in TARGETS {
            let dir = corpus(name);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.expect("a corpus entry").path())
                .collect();
            assert!(!files.is_empty(), "{name}: no seeds in {}", dir.display());
            for f in files {
                let data = std::fs::read(&f).expect("a seed");
                run(&data);
            }
        }
    }

    /// The gRPC seeds are messages prost reads, so the differential check
    /// in [`grpc_request`] compares something from the first run on.
    #[test]
    fn grpc_seeds_are_real_messages() {
        use prost::Message;
        use skiff_proto::runtime as pb;
        let seed = |n: &str| {
            bytes::Bytes::from(std::fs::read(corpus("grpc_request").join(n)).expect("a seed"))
        };
        let g = pb::GetStateRequest::decode(seed("get_state.bare")).expect("GetStateRequest");
        assert_eq!(g.key, "order-1");
        let s = pb::SaveStateRequest::decode(seed("save_state.bare")).expect("SaveStateRequest");
        assert_eq!(s.states.len(), 2);
        let p = pb::PublishEventRequest::decode(seed("publish_event.bare")).expect("publish");
        assert_eq!(p.metadata.len(), 2);
        let i = pb::InvokeServiceRequest::decode(seed("invoke_service.bare")).expect("invoke");
        assert_eq!(i.message.expect("message").method, "orders/new");
        let i = pb::InvokeServiceRequest::decode(seed("invoke_merged.bare")).expect("merged");
        assert_eq!(i.message.expect("message").content_type, "ct");
        let save = seed("save_state.bare");
        let (_, items) = state::grpc::decode_save(&save).expect("the door's");
        assert_eq!(items[0].content_type, Some("application/json"));
        assert_eq!(items[0].ttl, Some("60"));
        assert_eq!(items[0].etag, Some("7"));
        let merged = seed("invoke_merged.bare");
        let call = crate::api::grpc::decode_invoke(&merged)
            .expect("a merged message and a skipped group")
            .expect("a message");
        assert_eq!((call.method, call.content_type), ("m1", "ct"));
    }

    #[test]
    fn every_target_has_a_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            let f = dir.join(format!("{name}.rs"));
            assert!(f.exists(), "{} missing", f.display());
        }
    }
}
