//! Malformed input gets a clear answer and never hurts other connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use skiff_tests::*;

fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn malformed_requests_then_a_normal_call_succeeds() {
    let w = World::new();
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let caller = w.sidecar("caller", SidecarOpts::default());
    let port = caller.http_port;

    // Keep a healthy keep-alive connection open throughout.
    let c = http_client();
    let ok = |r: &Resp| r.status == 200;
    let url = format!("{}/v1.0/invoke/callee/method/ping", caller.http());
    assert!(ok(&send(&c, request("GET", &url, "")).await));

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET /v1.0/invoke/callee/method/x%zz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "400"),
        (b"GET /v1.0/invoke/callee/method/x%00y HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "400"),
        (b"GET /v1.0/invoke/callee/method/x%0Dy HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "400"),
        (b"GET /v1.0/invoke/a.b.c/method/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "400"),
        (b"GET /v1.0/invoke/callee/methodx HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "400"),
        (b"GET /v1.0/invoke/ghost/method/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "500"),
        (b"GET /nothing HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(), "404"),
        (
            format!("GET /v1.0/healthz HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "a".repeat(64 * 1024)).into_bytes(),
            "431",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n".to_vec(), ""),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400"),
    ];
    for (bytes, want) in &cases {
        let resp = raw(port, bytes);
        if want.is_empty() {
            assert!(
                !resp.starts_with("HTTP/1.1 2"),
                "garbage must not succeed: {resp}"
            );
        } else {
            assert_eq!(
                status_of(&resp),
                *want,
                "request {:?} got {resp}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
            );
        }
    }
    // A connection that sends half a request and goes away.
    drop(TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
        s.write_all(b"POST /v1.0/invoke/callee/method/x HTTP/1.1\r\ncontent-length: 100\r\n\r\nabc")
    }));
    // Garbage on the gRPC and internal ports too.
    let _ = raw(caller.grpc_port, b"hello, are you gRPC?\r\n\r\n");

    assert!(
        ok(&send(&c, request("GET", &url, "")).await),
        "the kept connection still works"
    );
    assert!(
        ok(&send(&http_client(), request("GET", &url, "")).await),
        "a new connection works"
    );
}

/// A raw gRPC call on the API door: `frame` as the whole body.
async fn grpc_raw(s: &Sidecar, method: &str, frame: Vec<u8>, extra: &[(&str, &str)]) -> Resp {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/dapr.proto.runtime.v1.Dapr/{method}",
            s.grpc_addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = b
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .expect("request");
    send(&h2_client(), req).await
}

/// gRPC framing the API door must refuse with a status, never a hang or
/// a dropped connection, keeping its answers as they are today (the door
/// is being rewritten: these pin it).
#[tokio::test]
async fn malformed_grpc_frames_get_a_status_then_a_normal_call_succeeds() {
    let w = World::new();
    let s = w.sidecar("frames", SidecarOpts::default());
    // Declares 100 bytes, carries 3.
    let mut short = vec![0u8, 0, 0, 0, 100];
    short.extend_from_slice(b"abc");
    // Compressed flag without grpc-encoding.
    let compressed = vec![1u8, 0, 0, 0, 0];
    // Not protobuf: field 1 as a length-delimited field longer than the message.
    let garbage = vec![0u8, 0, 0, 0, 2, 0x0a, 0x7f];
    // A compression daprd does not take.
    let gzip = vec![1u8, 0, 0, 0, 0];
    // What, the body, extra headers, the grpc-status expected.
    type Case<'a> = (&'a str, Vec<u8>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        ("short frame", short, &[], "13"),
        ("compressed flag, no encoding", compressed, &[], "13"),
        ("not protobuf", garbage, &[], "13"),
        ("gzip", gzip, &[("grpc-encoding", "gzip")], "12"),
    ];
    // GetMetadata is decoded by tonic, GetState by the door itself: both
    // answer alike.
    for method in ["GetMetadata", "GetState"] {
        for (what, frame, extra, want) in &cases {
            let r = grpc_raw(&s, method, frame.clone(), extra).await;
            assert_eq!(r.status, 200, "{method}, {what}: {}", r.text());
            assert_eq!(
                r.header("grpc-status"),
                *want,
                "{method}, {what}: {}",
                r.header("grpc-message")
            );
        }
    }
    // Two messages where a unary call takes one.
    let mut two = vec![0u8, 0, 0, 0, 0];
    two.extend_from_slice(&[0, 0, 0, 0, 0]);
    let r = grpc_raw(&s, "GetState", two, &[]).await;
    assert_eq!(
        r.header("grpc-status"),
        "13",
        "{}",
        r.header("grpc-message")
    );
    // Then a well-formed call: not an error (its status is in the
    // trailers), and one whole gRPC message back.
    let ok = grpc_raw(&s, "GetMetadata", vec![0, 0, 0, 0, 0], &[]).await;
    assert_eq!(
        ok.header("grpc-status"),
        "",
        "{}",
        ok.header("grpc-message")
    );
    let b = &ok.body;
    assert!(b.len() > 5 && b[0] == 0, "{b:?}");
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    assert_eq!(len, b.len() - 5, "one whole message");
}

/// `grpc-timeout` bounds a call the door serves itself: an invocation of
/// an app that takes 5 s ends at 300 ms with `DeadlineExceeded`, and the
/// door serves the next call at once.
#[tokio::test]
async fn grpc_timeout_ends_a_slow_call_with_deadline_exceeded() {
    use prost::Message;
    use skiff_proto::common::{HttpExtension, InvokeRequest, http_extension::Verb};
    let w = World::new();
    let echo = w.echo("slow");
    let _app = w.sidecar("web", SidecarOpts::app(echo.http_port));
    let s = w.sidecar("deadline", SidecarOpts::default());
    let call = |ms: &str| {
        let m = skiff_proto::runtime::InvokeServiceRequest {
            id: "web".into(),
            message: Some(InvokeRequest {
                method: "slow".into(),
                http_extension: Some(HttpExtension {
                    verb: Verb::Get.into(),
                    querystring: format!("ms={ms}"),
                }),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(m.len() as u32).to_be_bytes());
        frame.extend_from_slice(&m);
        frame
    };
    let r = grpc_raw(
        &s,
        "InvokeService",
        call("5000"),
        &[("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!(r.header("grpc-status"), "4", "{}", r.header("grpc-message"));
    assert!(
        r.header("grpc-message").contains("deadline"),
        "{}",
        r.header("grpc-message")
    );
    let r = grpc_raw(&s, "InvokeService", call("1"), &[("grpc-timeout", "20S")]).await;
    assert_eq!(r.header("grpc-status"), "", "{}", r.header("grpc-message"));
    assert_eq!(r.header("dapr-http-status"), "200");
}
