//! Service invocation through the HTTP front door: app → skiffd → skiffd → app.

use std::time::{Duration, Instant};

use skiff_tests::*;

struct Pair {
    _echo: Echo,
    caller: Sidecar,
    callee: Sidecar,
    _w: World,
}

fn pair() -> Pair {
    let w = World::new();
    let echo = w.echo("e1");
    let callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let caller = w.sidecar("caller", SidecarOpts::default());
    Pair {
        _echo: echo,
        caller,
        callee,
        _w: w,
    }
}

#[tokio::test]
async fn every_verb_and_status_passes_through() {
    let p = pair();
    let c = http_client();
    for verb in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        let r = send(
            &c,
            request(
                verb,
                &format!("{}/v1.0/invoke/callee/method/items/7", p.caller.http()),
                "body",
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{verb}");
        assert_eq!(r.header("x-echo-method"), verb);
        assert_eq!(r.header("x-echo-uri"), "/items/7");
        if verb != "HEAD" {
            assert_eq!(r.text(), "body", "{verb}");
        }
    }
    for code in [201u16, 204, 404, 418, 503] {
        let r = send(
            &c,
            request(
                "GET",
                &format!(
                    "{}/v1.0/invoke/callee/method/status/{code}",
                    p.caller.http()
                ),
                "",
            ),
        )
        .await;
        assert_eq!(r.status.as_u16(), code);
    }
}

#[tokio::test]
async fn query_strings_and_methods_are_normalised() {
    let p = pair();
    let c = http_client();
    let url = format!(
        "{}/v1.0/invoke/callee/method/a/./b/../c%20d?x=1&y=%2F%20&z=%E2%9C%93",
        p.caller.http()
    );
    let r = send(&c, request("GET", &url, "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-uri"), "/a/c%20d?x=1&y=%2F%20&z=%E2%9C%93");
    let r = send(
        &c,
        request(
            "GET",
            &format!(
                "{}/v1.0/invoke/callee/method/../../etc/passwd",
                p.caller.http()
            ),
            "",
        ),
    )
    .await;
    assert_eq!(r.header("x-echo-uri"), "/etc/passwd");
}

#[tokio::test]
async fn headers_are_added_stripped_and_cannot_be_spoofed() {
    let p = pair();
    let c = http_client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}/v1.0/invoke/callee/method/h", p.caller.http()))
        .header("dapr-caller-app-id", "admin")
        .header("dapr-caller-namespace", "kube-system")
        .header("dapr-callee-app-id", "someone-else")
        .header("skiff-mode", "grpc-proxy")
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .expect("request");
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    let h = r.echoed_headers();
    assert_eq!(h["dapr-caller-app-id"], "caller");
    assert_eq!(h["dapr-caller-namespace"], "default");
    assert_eq!(h["dapr-callee-app-id"], "callee");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(
        h["forwarded"]
            .as_str()
            .unwrap_or_default()
            .starts_with("for=127.0.0.1")
    );
    assert!(h.get("x-hop").is_none(), "{h}");
    assert!(h.get("skiff-mode").is_none(), "{h}");
    assert!(h.get("dapr-api-token").is_none(), "{h}");
    assert!(r.headers.keys().all(|k| !k.as_str().starts_with("skiff-")));
}

#[tokio::test]
async fn header_routing_form_and_h2c_clients() {
    let p = pair();
    for c in [http_client(), h2_client()] {
        let req = http::Request::builder()
            .method("PUT")
            .uri(format!("{}/orders/42?full=1", p.caller.http()))
            .header("dapr-app-id", "callee")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .expect("request");
        let r = send(&c, req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-echo-uri"), "/orders/42?full=1");
        assert!(r.echoed_headers().get("dapr-app-id").is_none());
    }
}

#[tokio::test]
async fn one_mebibyte_body_round_trips_intact() {
    let p = pair();
    let c = http_client();
    let body: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let r = send(
        &c,
        request(
            "POST",
            &format!("{}/v1.0/invoke/callee/method/echo", p.caller.http()),
            body.clone(),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "body corrupted in transit");
}

#[tokio::test]
async fn unknown_app_and_dead_app_fail_fast_with_dapr_errors() {
    let w = World::new();
    let dead_port = free_port();
    let _callee = w.sidecar("lonely", SidecarOpts::app(dead_port));
    let caller = w.sidecar("caller", SidecarOpts::default());
    let c = http_client();
    let start = Instant::now();
    let r = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/ghost/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(r.status, 500);
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(j["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        j["message"].as_str().unwrap_or_default().contains("ghost"),
        "{j}"
    );

    let r = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/lonely/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 500);
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(j["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not reachable"),
        "{j}"
    );

    // A caller-only sidecar has no app to deliver to.
    let r = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/caller/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("--app-port"), "{}", r.text());
}

#[tokio::test]
async fn namespaces_separate_apps() {
    let w = World::new();
    let echo = w.echo("prod-echo");
    let _prod = w.sidecar(
        "orders",
        SidecarOpts {
            namespace: Some("prod"),
            ..SidecarOpts::app(echo.http_port)
        },
    );
    let caller = w.sidecar("caller", SidecarOpts::default());
    let c = http_client();
    let r = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/orders.prod/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_headers()["dapr-caller-namespace"], "default");
    let r = send(
        &c,
        request(
            "GET",
            &format!("{}/v1.0/invoke/orders/method/x", caller.http()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 500, "orders is not in the caller's namespace");
}

#[tokio::test]
async fn api_tokens_are_checked_and_not_forwarded() {
    let w = World::new();
    let echo = w.echo("e");
    let _callee = w.sidecar(
        "callee",
        SidecarOpts {
            env: vec![("APP_API_TOKEN", "app-secret".into())],
            ..SidecarOpts::app(echo.http_port)
        },
    );
    let caller = w.sidecar(
        "caller",
        SidecarOpts {
            env: vec![("DAPR_API_TOKEN", "api-secret".into())],
            ..Default::default()
        },
    );
    let c = http_client();
    let url = format!("{}/v1.0/invoke/callee/method/x", caller.http());
    let r = send(&c, request("GET", &url, "")).await;
    assert_eq!(r.status, 401);
    let mut req = request("GET", &url, "");
    req.headers_mut()
        .insert("dapr-api-token", http::HeaderValue::from_static("wrong"));
    assert_eq!(send(&c, req).await.status, 401);
    let mut req = request("GET", &url, "");
    req.headers_mut().insert(
        "dapr-api-token",
        http::HeaderValue::from_static("api-secret"),
    );
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    // The caller's token stays behind; the callee's app token is delivered.
    assert_eq!(r.echoed_headers()["dapr-api-token"], "app-secret");
    // Health endpoints are exempt.
    let r = send(
        &c,
        request("GET", &format!("{}/v1.0/healthz", caller.http()), ""),
    )
    .await;
    assert_eq!(r.status, 204);
    let r = send(
        &c,
        request("GET", &format!("{}/v1.0/metadata", caller.http()), ""),
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn health_metadata_and_shutdown_endpoints() {
    let p = pair();
    let c = http_client();
    let base = p.callee.http();
    assert_eq!(
        send(&c, request("GET", &format!("{base}/v1.0/healthz"), ""))
            .await
            .status,
        204
    );
    assert_eq!(
        send(
            &c,
            request("GET", &format!("{base}/v1.0/healthz/outbound"), "")
        )
        .await
        .status,
        204
    );
    assert_eq!(
        send(
            &c,
            request("GET", &format!("{base}/v1.0/healthz?appid=callee"), "")
        )
        .await
        .status,
        204
    );
    assert_eq!(
        send(
            &c,
            request("GET", &format!("{base}/v1.0/healthz?appid=other"), "")
        )
        .await
        .status,
        500
    );
    assert_eq!(
        send(
            &c,
            request("PUT", &format!("{base}/v1.0/metadata/team"), "payments")
        )
        .await
        .status,
        204
    );
    let r = send(&c, request("GET", &format!("{base}/v1.0/metadata"), "")).await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(j["id"], "callee");
    assert_eq!(j["extended"]["team"], "payments");
    assert_eq!(j["appConnectionProperties"]["protocol"], "http");
    assert_eq!(j["appConnectionProperties"]["port"], p._echo.http_port);
    assert_eq!(j["appConnectionProperties"]["maxConcurrency"], -1);

    let mut caller = p.caller;
    let r = send(
        &c,
        request("POST", &format!("{}/v1.0/shutdown", caller.http()), ""),
    )
    .await;
    assert_eq!(r.status, 204);
    let status = caller
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exits after /v1.0/shutdown");
    assert!(status.success());
}

#[tokio::test]
async fn h2c_apps_are_reached_over_http2() {
    let w = World::new();
    let echo = w.echo("h2");
    let _callee = w.sidecar(
        "h2app",
        SidecarOpts {
            protocol: Some("h2c"),
            ..SidecarOpts::app(echo.http_port)
        },
    );
    let caller = w.sidecar("caller", SidecarOpts::default());
    let c = http_client();
    let r = send(
        &c,
        request(
            "POST",
            &format!("{}/v1.0/invoke/h2app/method/v?x=1", caller.http()),
            "over h2c",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "over h2c");
    // An HTTP/2 request's URI carries scheme and authority (HTTP/1.1's does not).
    let uri = r.header("x-echo-uri");
    assert!(
        uri.starts_with("http://127.0.0.1:") && uri.ends_with("/v?x=1"),
        "{uri}"
    );
}

#[tokio::test]
async fn an_unhealthy_app_gets_no_calls() {
    let w = World::new();
    let echo = w.echo("sick");
    // The health path answers 500, so one failed probe marks the app down.
    let _callee = w.sidecar(
        "sick",
        SidecarOpts {
            args: [
                "--enable-app-health-check",
                "--app-health-check-path",
                "/status/500",
                "--app-health-probe-interval",
                "1",
                "--app-health-threshold",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            ..SidecarOpts::app(echo.http_port)
        },
    );
    let caller = w.sidecar("caller", SidecarOpts::default());
    let c = http_client();
    let url = format!("{}/v1.0/invoke/sick/method/x", caller.http());
    let mut last = 0;
    // Bounded wait for the first probe (interval 1 s).
    for _ in 0..50 {
        last = send(&c, request("GET", &url, "")).await.status.as_u16();
        if last == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 503, "calls are refused once the app is unhealthy");
    let r = send(&c, request("GET", &url, "")).await;
    assert!(r.text().contains("unhealthy"), "{}", r.text());
}
