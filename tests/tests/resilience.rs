//! Several instances, instance death, big streamed bodies, graceful drain.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use skiff_proto::echo::EchoMessage;
use skiff_proto::echo::echo_client::EchoClient;
use skiff_tests::*;

#[tokio::test]
async fn two_instances_share_calls_and_survive_a_kill() {
    let w = World::new();
    let (e1, e2) = (w.echo("e1"), w.echo("e2"));
    let mut b1 = w.sidecar("svc", SidecarOpts::app(e1.http_port));
    let _b2 = w.sidecar("svc", SidecarOpts::app(e2.http_port));
    let caller = w.sidecar("caller", SidecarOpts::default());
    let c = http_client();
    let url = format!("{}/v1.0/invoke/svc/method/who", caller.http());
    let mut seen: HashMap<String, u32> = HashMap::new();
    // The caller's registry view refreshes every 500 ms: the second
    // instance may join a moment after the first calls. Bounded in calls
    // and time; both must get calls once both are known.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    for _ in 0..2_000 {
        let r = send(&c, request("GET", &url, "")).await;
        assert_eq!(r.status, 200);
        *seen
            .entry(r.header("x-echo-server").to_owned())
            .or_default() += 1;
        if seen.len() == 2 && seen.values().all(|n| *n >= 5) || std::time::Instant::now() > end {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both instances receive calls: {seen:?}");

    // Kill one sidecar without letting it deregister; every later call lands.
    b1.proc.kill();
    for i in 0..60 {
        let r = send(&c, request("GET", &url, "")).await;
        assert_eq!(r.status, 200, "call {i} after the kill: {}", r.text());
        assert_eq!(r.header("x-echo-server"), "e2");
    }
}

/// Samples the peak RSS of processes while a transfer runs.
fn watch_rss(pids: Vec<u32>) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (s, p) = (stop.clone(), peak.clone());
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            for pid in &pids {
                let kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| {
                                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                            })
                    })
                    .unwrap_or(0);
                p.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (stop, peak, h)
}

const BIG: usize = 200 << 20;
const CHUNK: usize = 256 << 10;

/// Over mTLS, as production runs: TLS buffers records of its own, which the
/// HTTP/2 write coalescing must still flush.
#[tokio::test]
async fn two_hundred_mebibytes_stream_both_ways_in_bounded_memory() {
    let w = World::new();
    let echo = w.echo("e");
    let callee = w.sidecar("big", SidecarOpts::app(echo.http_port).mtls());
    let caller = w.sidecar("caller", SidecarOpts::default().mtls());
    let (stop, peak, h) = watch_rss(vec![caller.proc.pid(), callee.proc.pid()]);

    // Upload: a generated body, never held whole by anyone.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", caller.http_port))
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let frames = futures_util::stream::iter(
        (0..BIG / CHUNK)
            .map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let req = http::Request::post("/v1.0/invoke/big/method/sink")
        .header("host", "localhost")
        .body(StreamBody::new(frames))
        .expect("request");
    let resp = tx.send_request(req).await.expect("upload");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{{\"bytes\":{BIG}}}")
    );

    // Download: streamed from the app, counted as it arrives.
    let c = http_client();
    let resp = c
        .request(request(
            "GET",
            &format!(
                "{}/v1.0/invoke/big/method/source?bytes={BIG}",
                caller.http()
            ),
            "",
        ))
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.expect("frame").data_ref() {
            n += d.len();
        }
    }
    assert_eq!(n, BIG);

    stop.store(true, Ordering::Relaxed);
    h.join().expect("sampler");
    let peak_mib = peak.load(Ordering::Relaxed) / 1024;
    assert!(peak_mib > 0, "RSS was sampled");
    eprintln!("peak sidecar RSS during 2 x 200 MiB: {peak_mib} MiB");
    assert!(
        peak_mib < 64,
        "sidecar RSS peaked at {peak_mib} MiB during a 200 MiB transfer"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_deregisters() {
    let w = World::new();
    let echo = w.echo("e");
    let mut callee = w.sidecar("slow", SidecarOpts::grpc_app(echo.grpc_port));
    let caller = w.sidecar("caller", SidecarOpts::default());
    let ch = caller.grpc_channel().await;
    let mut c = EchoClient::new(ch);
    let mut req = tonic::Request::new(EchoMessage {
        payload: Bytes::from_static(b"late"),
        delay_ms: 800,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("dapr-app-id", "slow".parse().expect("ascii"));
    let call = tokio::spawn(async move { c.unary(req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    callee.proc.terminate();
    let r = call
        .await
        .expect("join")
        .expect("in-flight call completes during drain");
    assert_eq!(&r.into_inner().payload[..], b"late");
    let status = callee
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exits");
    assert!(status.success(), "{status}");

    // Deregistered: the app is gone at once, not after a staleness timeout.
    let r = send(
        &http_client(),
        request(
            "GET",
            &format!("{}/v1.0/invoke/slow/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("not found"), "{}", r.text());
}
