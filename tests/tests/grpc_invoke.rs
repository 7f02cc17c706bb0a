//! The gRPC front door: `InvokeService` to HTTP and gRPC apps, and proxy mode
//! in every call shape.

use std::time::Duration;

use bytes::Bytes;
use skiff_proto::common::{HttpExtension, InvokeRequest, http_extension::Verb};
use skiff_proto::echo::EchoMessage;
use skiff_proto::echo::echo_client::EchoClient;
use skiff_proto::google::protobuf::Any;
use skiff_proto::runtime as pb;
use skiff_proto::runtime::InvokeServiceRequest;
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;

struct Setup {
    echo: Echo,
    _http_app: Sidecar,
    _grpc_app: Sidecar,
    caller: Sidecar,
    _w: World,
}

fn setup(caller_args: Vec<String>) -> Setup {
    let w = World::new();
    let echo = w.echo("e1");
    let http_app = w.sidecar("web", SidecarOpts::app(echo.http_port));
    let grpc_app = w.sidecar("rpc", SidecarOpts::grpc_app(echo.grpc_port));
    let caller = w.sidecar(
        "caller",
        SidecarOpts {
            args: caller_args,
            ..Default::default()
        },
    );
    Setup {
        echo,
        _http_app: http_app,
        _grpc_app: grpc_app,
        caller,
        _w: w,
    }
}

fn invoke(id: &str, method: &str, verb: Option<Verb>, data: &'static [u8]) -> InvokeServiceRequest {
    InvokeServiceRequest {
        id: id.into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(Any {
                type_url: "type.googleapis.com/test.Blob".into(),
                value: Bytes::from_static(data),
            }),
            content_type: "text/plain".into(),
            http_extension: verb.map(|v| HttpExtension {
                verb: v as i32,
                querystring: "a=1&b=two".into(),
            }),
        }),
    }
}

#[tokio::test]
async fn invoke_service_to_an_http_app() {
    let s = setup(vec![]);
    let mut c = DaprClient::new(s.caller.grpc_channel().await);
    let resp = c
        .invoke_service(invoke("web", "items/1", Some(Verb::Put), b"hello"))
        .await
        .expect("ok");
    assert_eq!(
        resp.metadata()
            .get("dapr-http-status")
            .and_then(|v| v.to_str().ok()),
        Some("200")
    );
    let r = resp.into_inner();
    assert_eq!(&r.data.expect("data").value[..], b"hello");
    assert_eq!(r.content_type, "text/plain");

    // Non-2xx from the app becomes a gRPC error carrying the HTTP status.
    let err = c
        .invoke_service(invoke("web", "status/404", Some(Verb::Get), b""))
        .await
        .expect_err("404");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.metadata()
            .get("dapr-http-status")
            .and_then(|v| v.to_str().ok()),
        Some("404")
    );

    // An HTTP app needs a verb.
    let err = c
        .invoke_service(invoke("web", "x", None, b""))
        .await
        .expect_err("no verb");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .invoke_service(invoke("nobody", "x", Some(Verb::Get), b""))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::Unavailable);
    let err = c
        .invoke_service(invoke("a.b.c", "x", Some(Verb::Get), b""))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn invoke_service_to_a_grpc_app() {
    let s = setup(vec![]);
    let mut c = DaprClient::new(s.caller.grpc_channel().await);
    let r = c
        .invoke_service(invoke("rpc", "echo", None, b"ping"))
        .await
        .expect("ok")
        .into_inner();
    let data = r.data.expect("data");
    assert_eq!(&data.value[..], b"ping");
    assert_eq!(r.content_type, "text/plain");

    let r = c
        .invoke_service(invoke("rpc", "describe", Some(Verb::Patch), b"x"))
        .await
        .expect("ok")
        .into_inner();
    let j: serde_json::Value = serde_json::from_slice(&r.data.expect("data").value).expect("json");
    assert_eq!(j["method"], "describe");
    assert_eq!(j["verb"], "PATCH");
    assert_eq!(j["querystring"], "a=1&b=two");
    assert_eq!(j["typeUrl"], "type.googleapis.com/test.Blob");
    assert_eq!(j["metadata"]["dapr-caller-app-id"], "caller");

    let err = c
        .invoke_service(invoke("rpc", "fail", None, b""))
        .await
        .expect_err("fails");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");
}

#[tokio::test]
async fn invoke_service_over_max_body_size_is_refused() {
    let s = setup(vec!["--max-body-size".into(), "64Ki".into()]);
    let mut c = DaprClient::new(s.caller.grpc_channel().await);
    static BIG: [u8; 100_000] = [7; 100_000];
    let err = c
        .invoke_service(invoke("rpc", "echo", None, &BIG))
        .await
        .expect_err("too big");
    // grpc-go's (daprd's) code and words for an oversized message.
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("received message larger than max (100"),
        "{err:?}"
    );
    // The same on an RPC tonic still decodes.
    let big = pb::GetBulkStateRequest {
        store_name: "s".into(),
        keys: vec![String::from_utf8(BIG.to_vec()).expect("ascii")],
        ..Default::default()
    };
    let err = c.get_bulk_state(big).await.expect_err("too big");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // The sidecar is fine afterwards.
    c.invoke_service(invoke("rpc", "echo", None, b"small"))
        .await
        .expect("small ok");
}

fn with_app_id<T>(msg: T, id: &'static str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("dapr-app-id", id.parse().expect("ascii"));
    r
}

fn msg(p: &'static [u8], count: u32) -> EchoMessage {
    EchoMessage {
        payload: Bytes::from_static(p),
        count,
        ..Default::default()
    }
}

#[tokio::test]
async fn proxy_mode_unary_and_server_streaming() {
    let s = setup(vec![]);
    let mut c = EchoClient::new(s.caller.grpc_channel().await);
    let mut req = with_app_id(msg(b"one", 0), "rpc");
    req.metadata_mut()
        .insert("dapr-caller-app-id", "spoofed".parse().expect("ascii"));
    req.metadata_mut()
        .insert("x-trace-me", "yes".parse().expect("ascii"));
    let r = c.unary(req).await.expect("unary").into_inner();
    assert_eq!(&r.payload[..], b"one");
    assert!(
        r.seen_metadata
            .contains(&"dapr-caller-app-id=caller".to_string()),
        "{:?}",
        r.seen_metadata
    );
    assert!(r.seen_metadata.contains(&"x-trace-me=yes".to_string()));
    assert!(
        !r.seen_metadata
            .iter()
            .any(|m| m.starts_with("dapr-app-id=") || m.starts_with("skiff-"))
    );

    let mut stream = c
        .server_stream(with_app_id(msg(b"s", 5), "rpc"))
        .await
        .expect("stream")
        .into_inner();
    let mut n = 0;
    while let Some(m) = stream.next().await {
        assert_eq!(m.expect("message").count, n);
        n += 1;
    }
    assert_eq!(n, 5);
}

#[tokio::test]
async fn proxy_mode_client_and_bidi_streaming() {
    let s = setup(vec![]);
    let mut c = EchoClient::new(s.caller.grpc_channel().await);
    let up = tokio_stream::iter(vec![msg(b"a", 0), msg(b"b", 0), msg(b"c", 0)]);
    let r = c
        .client_stream(with_app_id(up, "rpc"))
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!(&r.payload[..], b"abc");
    assert_eq!(r.count, 3);

    // Bidi: each message is answered before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoMessage>(1);
    let mut down = c
        .bidi(with_app_id(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            "rpc",
        ))
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..20u32 {
        tx.send(EchoMessage {
            count: i,
            ..Default::default()
        })
        .await
        .expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), down.next())
            .await
            .expect("answer in time");
        assert_eq!(back.expect("some").expect("ok").count, i);
    }
    drop(tx);
    assert!(
        down.next().await.is_none(),
        "stream ends when the client closes"
    );
}

#[tokio::test]
async fn proxy_mode_deadlines_and_errors() {
    let s = setup(vec![]);
    let mut c = EchoClient::new(s.caller.grpc_channel().await);
    // A raw HTTP/2 gRPC call: tonic's client would enforce grpc-timeout on
    // its own, and here the sidecar must.
    let slow = EchoMessage {
        delay_ms: 3_000,
        ..Default::default()
    };
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(prost::Message::encoded_len(&slow) as u32).to_be_bytes());
    frame.extend_from_slice(&prost::Message::encode_to_vec(&slow));
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}/skiff.echo.v1.Echo/Unary", s.caller.grpc_addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("dapr-app-id", "rpc")
        .header("grpc-timeout", "200m")
        .body(http_body_util::Full::new(Bytes::from(frame)))
        .expect("request");
    let start = std::time::Instant::now();
    let r = send(&h2_client(), req).await;
    assert_eq!(r.header("grpc-status"), "4", "DEADLINE_EXCEEDED");
    assert!(start.elapsed() < Duration::from_secs(2));

    let err = c
        .unary(with_app_id(msg(b"x", 0), "nobody"))
        .await
        .expect_err("unknown app");
    assert_eq!(err.code(), Code::Unavailable);
    let err = c
        .unary(with_app_id(msg(b"x", 0), "web"))
        .await
        .expect_err("http app");
    assert_eq!(err.code(), Code::Unimplemented);
    // Without dapr-app-id an unknown service is not found on the sidecar.
    let err = c
        .unary(tonic::Request::new(msg(b"x", 0)))
        .await
        .expect_err("no target");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn proxy_mode_propagates_cancellation_to_the_app() {
    let s = setup(vec![]);
    let mut c = EchoClient::new(s.caller.grpc_channel().await);
    let mut req = with_app_id(
        EchoMessage {
            delay_ms: 5_000,
            ..Default::default()
        },
        "rpc",
    );
    // The client gives up (RST_STREAM); both sidecars must pass that on.
    req.set_timeout(Duration::from_millis(200));
    assert!(c.unary(req).await.is_err());
    let stats = format!("http://127.0.0.1:{}/stats", s.echo.http_port);
    let http = http_client();
    let mut last = String::new();
    for _ in 0..40 {
        last = send(&http, request("GET", &stats, "")).await.text();
        if last == r#"{"cancelled":1}"# {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the app never saw the cancellation: {last}");
}
