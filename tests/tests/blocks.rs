//! The building blocks' front doors before any component exists: each path
//! of Dapr's HTTP API and each RPC of its runtime service answers exactly
//! what daprd answers when the block has no component configured (never a
//! 404 from a catch-all), the API token is checked once for every route
//! but health, and the unmodified Python SDK sees daprd's gRPC statuses.

use std::process::Command;

use skiff_tests::*;

async fn call(c: &HttpClient, s: &Sidecar, verb: &str, path: &str, body: &'static str) -> Resp {
    send(c, request(verb, &format!("{}{path}", s.http()), body)).await
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON: {}", r.text()))
}

#[tokio::test]
async fn unconfigured_blocks_answer_as_daprd_over_http() {
    let w = World::new();
    let s = w.sidecar("web", SidecarOpts::default());
    let c = http_client();
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "GET",
            "/v1.0/state/orders/k1",
            "",
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0/state/orders",
            r#"[{"key":"k","value":1}]"#,
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0/state/orders/bulk",
            r#"{"keys":["a"]}"#,
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0/state/orders/transaction",
            r#"{"operations":[]}"#,
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
        ),
        (
            "DELETE",
            "/v1.0/state/orders/k1",
            "",
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0-alpha1/state/orders/query",
            "{}",
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0/publish/pubsub/orders",
            "x",
            400,
            "ERR_PUBSUB_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0-alpha1/publish/bulk/pubsub/orders",
            "[]",
            400,
            "ERR_PUBSUB_NOT_CONFIGURED",
        ),
        (
            "GET",
            "/v1.0/secrets/vault/db",
            "",
            500,
            "ERR_SECRET_STORES_NOT_CONFIGURED",
        ),
        (
            "GET",
            "/v1.0/secrets/vault/bulk",
            "",
            500,
            "ERR_SECRET_STORES_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0/bindings/out",
            r#"{"operation":"create"}"#,
            500,
            "ERR_INVOKE_OUTPUT_BINDING",
        ),
        (
            "GET",
            "/v1.0/configuration/cfg?key=a",
            "",
            500,
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
        ),
        (
            "GET",
            "/v1.0-alpha1/configuration/cfg",
            "",
            500,
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0-alpha1/lock/locks",
            r#"{"resourceId":"r","lockOwner":"o","expiryInSeconds":10}"#,
            500,
            "ERR_LOCK_STORE_NOT_CONFIGURED",
        ),
        (
            "POST",
            "/v1.0-alpha1/lock/locks",
            r#"{"resourceId":"r","lockOwner":"o","expiryInSeconds":0}"#,
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "POST",
            "/v1.0-alpha1/unlock/locks",
            r#"{"resourceId":"r","lockOwner":"o"}"#,
            500,
            "ERR_LOCK_STORE_NOT_CONFIGURED",
        ),
        (
            "PUT",
            "/v1.0/actors/cart/1/method/add",
            "",
            500,
            "ERR_ACTOR_RUNTIME_NOT_FOUND",
        ),
        ("GET", "/v1.0/nothing-here", "", 404, "ERR_NOT_FOUND"),
    ];
    for (verb, path, body, status, code) in cases {
        let r = call(&c, &s, verb, path, body).await;
        assert_eq!(r.status.as_u16(), *status, "{verb} {path}: {}", r.text());
        assert_eq!(json(&r)["errorCode"], *code, "{verb} {path}: {}", r.text());
    }
    // daprd's rich error for state: ErrorInfo with the reason and the app.
    let v = json(&call(&c, &s, "GET", "/v1.0/state/orders/k1", "").await);
    assert_eq!(v["message"], "state store orders is not configured");
    assert_eq!(
        v["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(v["details"][0]["reason"], "DAPR_STATE_NOT_CONFIGURED");
    assert_eq!(v["details"][0]["domain"], "dapr.io");
    assert_eq!(v["details"][0]["metadata"]["appID"], "web");
    let v = json(&call(&c, &s, "POST", "/v1.0/bindings/out", "{}").await);
    assert_eq!(
        v["message"],
        "error invoking output binding out: couldn't find output binding out"
    );
}

#[tokio::test]
async fn the_api_token_guards_every_route_but_health() {
    let w = World::new();
    let mut o = SidecarOpts::default();
    o.env.push(("DAPR_API_TOKEN", "s3cret".into()));
    let s = w.sidecar("web", o);
    let c = http_client();
    for path in [
        "/v1.0/state/orders/k",
        "/v1.0/publish/p/t",
        "/v1.0/metadata",
        "/v1.0/invoke/web/method/x",
        "/v1.0-alpha1/lock/l",
        "/v1.0/nothing-here",
    ] {
        let r = call(&c, &s, "POST", path, "").await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(json(&r)["errorCode"], "ERR_API_UNAUTHORIZED");
    }
    assert_eq!(call(&c, &s, "GET", "/v1.0/healthz", "").await.status, 204);
    assert_eq!(
        call(&c, &s, "GET", "/v1.0/healthz/outbound", "")
            .await
            .status,
        204
    );
    let mut req = request("GET", &format!("{}/v1.0/state/orders/k", s.http()), "");
    req.headers_mut()
        .insert("dapr-api-token", "s3cret".parse().expect("ascii"));
    let r = send(&c, req).await;
    assert_eq!(r.status, 500, "past the token: the block answers");
}

#[test]
fn the_python_sdk_sees_daprds_grpc_answers_for_every_rpc() {
    let py = python();
    let w = World::new();
    let s = w.sidecar("sdk", SidecarOpts::default());
    let out = Command::new(&py)
        .arg(python_script("unconfigured.py"))
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run unconfigured.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
