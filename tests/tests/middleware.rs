//! Middleware pipelines end to end: real sidecars with a Configuration's
//! `httpPipeline` (requests on the HTTP API) and `appHttpPipeline`
//! (requests to the app: invocations and pub/sub deliveries), each
//! middleware type against raw HTTP, an OpenID provider and a token
//! endpoint served by the test on loopback, and the start-up refusals
//! that keep a pipeline from ever being served half built.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skiff_tests::subscriber::{HttpSubscriber, Reply, wait_subscribed};
use skiff_tests::web::{self, SigningKey, WebServer};
use skiff_tests::*;

/// A Configuration with the given pipelines (handler names, in order).
fn config(w: &World, file: &str, http: &[&str], app: &[&str]) -> std::path::PathBuf {
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("      - name: {n}\n        type: TYPE_{n}\n"))
            .collect::<String>()
    };
    let mut y =
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: pipes\nspec:\n"
            .to_owned();
    if !http.is_empty() {
        y.push_str(&format!("  httpPipeline:\n    handlers:\n{}", list(http)));
    }
    if !app.is_empty() {
        y.push_str(&format!("  appHttpPipeline:\n    handlers:\n{}", list(app)));
    }
    // Handlers name their component's type, as Dapr's examples do.
    for n in http.iter().chain(app) {
        let ty = match *n {
            n if n.starts_with("bearer") => "middleware.http.bearer",
            n if n.starts_with("oauth") => "middleware.http.oauth2clientcredentials",
            n if n.starts_with("limit") => "middleware.http.ratelimit",
            n if n.starts_with("check") => "middleware.http.routerchecker",
            n if n.starts_with("alias") => "middleware.http.routeralias",
            n if n.starts_with("upper") => "middleware.http.uppercase",
            n if n.starts_with("opa") => "middleware.http.opa",
            _ => "middleware.http.wasm",
        };
        y = y.replace(&format!("TYPE_{n}\n"), &format!("{ty}\n"));
    }
    let p = w.home.path().join(file);
    std::fs::write(&p, y).expect("write configuration");
    p
}

async fn call(s: &Sidecar, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut req = request(method, &format!("{}{path}", s.http()), body.to_owned());
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::try_from(*k).expect("name"),
            http::HeaderValue::from_str(v).expect("header"),
        );
    }
    send(&http_client(), req).await
}

/// An OpenID provider: discovery document and key set.
async fn provider(keys: Arc<std::sync::Mutex<Vec<Value>>>) -> WebServer {
    let s = WebServer::start(Arc::new(|_: &web::Seen| (404, "text/plain", String::new()))).await;
    let issuer = s.url("");
    s.set_route(Arc::new(move |r: &web::Seen| match r.path.as_str() {
        "/.well-known/openid-configuration" => (
            200,
            "application/json",
            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}).to_string(),
        ),
        "/keys" => (
            200,
            "application/json",
            json!({"keys": *keys.lock().expect("lock")}).to_string(),
        ),
        _ => (404, "text/plain", String::new()),
    }));
    s
}

// Multi-threaded: the provider answers the sidecar's start-up fetch while
// the test waits for the sidecar on its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_refuses_every_bad_token_and_passes_a_good_one() {
    let w = World::new();
    let good_key = SigningKey::new("k1");
    let keys = Arc::new(std::sync::Mutex::new(vec![good_key.jwk()]));
    let idp = provider(keys.clone()).await;
    let issuer = idp.url("");
    // jwksURL left out: the key set is found by OpenID discovery.
    w.component(
        "bearer.yaml",
        &component_yaml(
            "bearer",
            "middleware.http.bearer",
            &[("issuer", issuer.clone()), ("audience", "orders".into())],
        ),
    );
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let cfg = config(&w, "bearer.yaml", &["bearer"], &[]);
    let caller = w.sidecar("caller", SidecarOpts::default().config(&cfg));

    let now = web::now();
    let claims =
        json!({"iss": issuer, "aud": "orders", "sub": "svc", "iat": now, "exp": now + 600});
    let good = good_key.token(&claims);
    let with = |t: &str| format!("Bearer {t}");
    let path = "/v1.0/invoke/callee/method/orders";
    let ok = call(&caller, "GET", path, &[("authorization", &with(&good))], "").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-echo-uri"), "/orders");
    assert_eq!(
        ok.echoed_headers()["authorization"],
        with(&good),
        "the token travels on"
    );
    // "bearer" in any case.
    let lower = call(
        &caller,
        "GET",
        path,
        &[("authorization", &format!("bearer {good}"))],
        "",
    )
    .await;
    assert_eq!(lower.status, 200);

    let mut expired = claims.clone();
    expired["exp"] = json!(now - 3600);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("payments");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let mut early = claims.clone();
    early["nbf"] = json!(now + 3600);
    let stranger = SigningKey::new("k1");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not a JWT", Some(with("not-a-token"))),
        ("another scheme", Some(format!("Basic {good}"))),
        ("expired", Some(with(&good_key.token(&expired)))),
        ("wrong audience", Some(with(&good_key.token(&wrong_aud)))),
        ("wrong issuer", Some(with(&good_key.token(&wrong_iss)))),
        ("not yet valid", Some(with(&good_key.token(&early)))),
        ("wrong key, same kid", Some(with(&stranger.token(&claims)))),
        ("alg none", Some(with(&web::unsigned_token(&claims)))),
        (
            "HMAC keyed with the public key",
            Some(with(&web::hs256_token(
                good_key.jwk().to_string().as_bytes(),
                "k1",
                &claims,
            ))),
        ),
        (
            "tampered claims",
            Some(with(&{
                let parts: Vec<&str> = good.split('.').collect();
                let evil = base64_url(
                    &json!({"iss": issuer, "aud": "orders", "sub": "admin", "exp": now + 600}),
                );
                format!("{}.{evil}.{}", parts[0], parts[2])
            })),
        ),
    ];
    for (what, header) in &cases {
        let h: Vec<(&str, &str)> = header
            .as_deref()
            .map(|v| vec![("authorization", v)])
            .unwrap_or_default();
        let r = call(&caller, "GET", path, &h, "").await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.header("x-echo-server"), "", "{what}: the app was reached");
    }
    // Every route of the API is behind it, not only invocation...
    let meta = call(&caller, "GET", "/v1.0/metadata", &[], "").await;
    assert_eq!(meta.status, 401);
    // ...but health, which probes call without credentials.
    let health = call(&caller, "GET", "/v1.0/healthz", &[], "").await;
    assert_eq!(health.status, 204);

    // Keys rotate: a token from a key published after start passes once
    // the sidecar fetches the set again (at most every 10 s on an unknown
    // kid), and made-up kids do not make it hammer the provider.
    let fetches = || idp.hits().get("/keys").copied().unwrap_or(0);
    let at_start = fetches();
    let next_key = SigningKey::new("k2");
    keys.lock().expect("lock").push(next_key.jwk());
    let rotated = with(&next_key.token(&claims));
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(&caller, "GET", path, &[("authorization", &rotated)], "").await;
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the rotated key was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = fetches();
    for i in 0..20 {
        let k = SigningKey::new(&format!("made-up-{i}"));
        let r = call(
            &caller,
            "GET",
            path,
            &[("authorization", &with(&k.token(&claims)))],
            "",
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert!(
        fetches() - before <= 1,
        "20 unknown kids fetched the key set {} times (at start {at_start})",
        fetches() - before
    );
}

fn base64_url(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_adds_a_token_fetched_once() {
    let w = World::new();
    let endpoint = WebServer::start(Arc::new(|r: &web::Seen| {
        let form = String::from_utf8_lossy(&r.body).into_owned();
        let basic = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // client "app" / secret "s3cret", in the Basic header.
        let scoped = form.contains("scope=read+write") || form.contains("scope=read%20write");
        if basic == "Basic YXBwOnMzY3JldA=="
            && form.contains("grant_type=client_credentials")
            && scoped
        {
            (
                200,
                "application/json",
                json!({"access_token": "tok-1", "token_type": "bearer", "expires_in": 3600})
                    .to_string(),
            )
        } else {
            (
                401,
                "application/json",
                json!({"error": "invalid_client"}).to_string(),
            )
        }
    }))
    .await;
    let meta = |url: String| {
        vec![
            ("clientId", "app".to_owned()),
            ("clientSecret", "s3cret".to_owned()),
            ("scopes", "read,write".to_owned()),
            ("tokenURL", url),
            ("headerName", "authorization".to_owned()),
            ("authStyle", "2".to_owned()),
        ]
    };
    w.component(
        "oauth.yaml",
        &component_yaml(
            "oauth",
            "middleware.http.oauth2clientcredentials",
            &meta(endpoint.url("/token")),
        ),
    );
    // A token endpoint that is not there.
    let closed = free_port();
    w.component(
        "oauth-down.yaml",
        &component_yaml(
            "oauthdown",
            "middleware.http.oauth2clientcredentials",
            &meta(format!("http://127.0.0.1:{closed}/token")),
        ),
    );
    let echo = w.echo("e");
    let cfg = config(&w, "app.yaml", &[], &["oauth"]);
    let callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).config(&cfg));
    let down_cfg = config(&w, "down.yaml", &[], &["oauthdown"]);
    let down = w.sidecar("down", SidecarOpts::app(echo.http_port).config(&down_cfg));
    let caller = w.sidecar("caller", SidecarOpts::default());

    for _ in 0..5 {
        let r = call(&caller, "POST", "/v1.0/invoke/callee/method/pay", &[], "{}").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.echoed_headers()["authorization"], "Bearer tok-1");
    }
    assert_eq!(
        endpoint.hits().get("/token"),
        Some(&1),
        "the token is kept until it expires"
    );
    // The app's own direct calls through its sidecar go through too.
    let own = call(&callee, "GET", "/v1.0/invoke/callee/method/self", &[], "").await;
    assert_eq!(own.echoed_headers()["authorization"], "Bearer tok-1");

    // No token to be had: refused, the app never called (daprd would
    // answer 200 with an empty body).
    let hits_before = app_hits(&echo).await;
    let r = call(&caller, "POST", "/v1.0/invoke/down/method/pay", &[], "{}").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        app_hits(&echo).await,
        hits_before,
        "the app was called without a token"
    );
    drop(down);
}

async fn app_hits(echo: &Echo) -> u64 {
    let r = send(
        &http_client(),
        request(
            "GET",
            &format!("http://127.0.0.1:{}/hits", echo.http_port),
            "",
        ),
    )
    .await;
    serde_json::from_slice::<Value>(&r.body).expect("json")["hits"]
        .as_u64()
        .expect("hits")
}

#[tokio::test]
async fn ratelimit_answers_429_past_the_rate() {
    let w = World::new();
    w.component(
        "limit.yaml",
        &component_yaml(
            "limit",
            "middleware.http.ratelimit",
            &[("maxRequestsPerSecond", "1".into())],
        ),
    );
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let cfg = config(&w, "limit.yaml", &["limit"], &[]);
    let caller = w.sidecar("caller", SidecarOpts::default().config(&cfg));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = call(&caller, "GET", "/v1.0/invoke/callee/method/x", &[], "").await;
        if r.status == 429 {
            assert_eq!(r.text(), "You have reached maximum request limit.\n");
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(
        statuses[0], 200,
        "the burst lets the first through: {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "five at once at one a second: {statuses:?}"
    );
    // Buckets are per path: another path has its own.
    let other = call(&caller, "GET", "/v1.0/invoke/callee/method/y", &[], "").await;
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn handlers_run_in_order_alias_then_checker() {
    let w = World::new();
    w.component(
        "alias.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: alias\nspec:\n  type: middleware.http.routeralias\n  version: v1\n  metadata:\n  - name: routes\n    value: |\n      {\n        \"/mall/activity/info\": \"/v1.0/invoke/callee/method/activity/info\",\n        \"/hello/{name}\": \"/v1.0/invoke/callee/method/hi\"\n      }\n",
    );
    w.component(
        "check.yaml",
        &component_yaml(
            "check",
            "middleware.http.routerchecker",
            &[(
                "rule",
                "^/v1.0/invoke/callee/method/[a-z/]+(\\\\?.*)?$".into(),
            )],
        ),
    );
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let cfg = config(&w, "order.yaml", &["alias", "check"], &[]);
    let caller = w.sidecar("caller", SidecarOpts::default().config(&cfg));

    // The alias rewrites first, so the checker sees the new path.
    let r = call(&caller, "GET", "/mall/activity/info?id=7", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-echo-uri"), "/activity/info?id=7");
    let r = call(&caller, "GET", "/hello/ana", &[], "").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-echo-uri")),
        (200, "/hi?name=ana")
    );
    let r = call(&caller, "GET", "/v1.0/invoke/callee/method/Bad1", &[], "").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (400, "invalid router\n".into())
    );
    assert_eq!(r.header("x-echo-server"), "");

    // The other way round the checker refuses the friendly path.
    let reversed = config(&w, "reversed.yaml", &["check", "alias"], &[]);
    let rev = w.sidecar("rev", SidecarOpts::default().config(&reversed));
    let r = call(&rev, "GET", "/mall/activity/info", &[], "").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn the_app_pipeline_runs_on_invocations_and_on_pubsub_deliveries() {
    let w = World::new();
    w.component(
        "upper.yaml",
        &component_yaml("upper", "middleware.http.uppercase", &[]),
    );
    w.component(
        "pubsub.yaml",
        &component_yaml("bus", "pubsub.in-memory", &[]),
    );
    let echo = w.echo("e");
    let cfg = config(&w, "app.yaml", &[], &["upper"]);
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).config(&cfg));
    let caller = w.sidecar("caller", SidecarOpts::default());
    let r = call(
        &caller,
        "POST",
        "/v1.0/invoke/callee/method/echo",
        &[],
        "hello, straße",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "HELLO, STRASSE".into())
    );

    // A pub/sub delivery to an app behind the same pipeline.
    let sub = HttpSubscriber::start(
        Some(json!([{"pubsubname": "bus", "topic": "t", "route": "/t"}])),
        Arc::new(|_, _| Reply::ok()),
    )
    .await;
    let subscriber = w.sidecar("sub", SidecarOpts::app(sub.port).config(&cfg));
    wait_subscribed(&subscriber, 1).await;
    let p = call(
        &subscriber,
        "POST",
        "/v1.0/publish/bus/t",
        &[("content-type", "application/json")],
        "{\"msg\":\"quiet\"}",
    )
    .await;
    assert_eq!(p.status, 204, "{}", p.text());
    let got = sub.rec.wait_for(1, "/t", Duration::from_secs(10)).await;
    let raw = String::from_utf8_lossy(&got[0].raw).into_owned();
    assert!(
        raw.contains("\"QUIET\""),
        "the delivery went through the pipeline: {raw}"
    );
    // The subscription discovery is an app call too, and passed.
    // The API door of the subscriber has no pipeline: its answers are as
    // they were.
    let m = call(&subscriber, "GET", "/v1.0/metadata", &[], "").await;
    assert!(m.text().contains("\"id\""), "{}", m.text());
}

const POLICY: &str = r#"package http

default allow = false

allow {
    input.request.method == "GET"
    input.request.headers["X-Api-Key"] == "k1"
}

allow = {"allow": false, "status_code": 401, "additional_headers": {"x-reason": "no deletes"}} {
    input.request.method == "DELETE"
}
"#;

fn opa_component(name: &str, policy: &str, extra: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: middleware.http.opa\n  version: v1\n  metadata:\n  - name: includedHeaders\n    value: \"x-api-key\"\n  - name: rego\n    value: |\n"
    );
    for l in policy.lines() {
        y.push_str(&format!("      {l}\n"));
    }
    for (k, v) in extra {
        y.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    y
}

#[tokio::test]
async fn opa_decides_with_its_policy() {
    let w = World::new();
    w.component("opa.yaml", &opa_component("opa", POLICY, &[]));
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let cfg = config(&w, "opa.yaml", &["opa"], &[]);
    let caller = w.sidecar("caller", SidecarOpts::default().config(&cfg));
    let path = "/v1.0/invoke/callee/method/report";
    let r = call(&caller, "GET", path, &[("x-api-key", "k1")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&caller, "GET", path, &[("x-api-key", "k2")], "").await;
    assert_eq!((r.status.as_u16(), r.text()), (403, "Forbidden".into()));
    let r = call(&caller, "POST", path, &[("x-api-key", "k1")], "{}").await;
    assert_eq!(r.status, 403);
    let r = call(&caller, "DELETE", path, &[("x-api-key", "k1")], "").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-reason")),
        (401, "no deletes")
    );
}

#[tokio::test]
async fn a_pipeline_that_cannot_be_built_stops_the_sidecar() {
    let w = World::new();
    w.component(
        "wasm.yaml",
        &component_yaml(
            "filter",
            "middleware.http.wasm",
            &[("url", "file://x.wasm".into())],
        ),
    );
    // A bearer whose key set cannot be had, with ignoreErrors.
    let closed = free_port();
    let mut broken = component_yaml(
        "bearerbroken",
        "middleware.http.bearer",
        &[
            ("issuer", "https://idp.example".into()),
            ("audience", "a".into()),
            ("jwksURL", format!("http://127.0.0.1:{closed}/keys")),
        ],
    );
    broken = broken.replace("  version: v1\n", "  version: v1\n  ignoreErrors: true\n");
    w.component("broken.yaml", &broken);
    w.component(
        "scoped.yaml",
        &format!(
            "{}scopes: [someone-else]\n",
            component_yaml("upper", "middleware.http.uppercase", &[])
        ),
    );

    let refused =
        |cfg: &std::path::Path| w.skiffd_fails("app", &["--config", &cfg.display().to_string()]);
    let cfg = config(&w, "wasm-cfg.yaml", &["filter"], &[]);
    let err = refused(&cfg);
    assert!(
        err.contains("wasm-cfg.yaml")
            && err.contains("spec.httpPipeline.handlers[0] (filter)")
            && err.contains("component filter (middleware.http.wasm)")
            && err.contains("not implemented"),
        "{err}"
    );
    let cfg = config(&w, "missing-cfg.yaml", &[], &["nothere"]);
    let err = refused(&cfg);
    assert!(
        err.contains("spec.appHttpPipeline.handlers[0] (nothere)")
            && err.contains("no component of that name"),
        "{err}"
    );
    let cfg = config(&w, "broken-cfg.yaml", &["bearerbroken"], &[]);
    let err = refused(&cfg);
    assert!(
        err.contains("bearerbroken") && err.contains("jwksURL"),
        "{err}"
    );
    let cfg = config(&w, "scoped-cfg.yaml", &["upper"], &[]);
    let err = refused(&cfg);
    assert!(err.contains("scopes leave app app out"), "{err}");
    // An app pipeline in front of a gRPC app would never run.
    let cfg = config(&w, "grpc-cfg.yaml", &[], &["upperapp"]);
    w.component(
        "upperapp.yaml",
        &component_yaml("upperapp", "middleware.http.uppercase", &[]),
    );
    let err = w.skiffd_fails(
        "app",
        &[
            "--config",
            &cfg.display().to_string(),
            "--app-port",
            &free_port().to_string(),
            "--app-protocol",
            "grpc",
        ],
    );
    assert!(
        err.contains("spec.appHttpPipeline") && err.contains("gRPC"),
        "{err}"
    );
    // A component nobody's pipeline names does not stop anyone.
    let plain = w.sidecar("plain", SidecarOpts::default());
    let m = get_json(&format!("{}/v1.0/metadata", plain.http())).await;
    assert!(
        m["components"].to_string().contains("middleware.http.wasm"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_calls_through_a_bearer_pipeline() {
    let py = python();
    let w = World::new();
    let key = SigningKey::new("k1");
    let keys = Arc::new(std::sync::Mutex::new(vec![key.jwk()]));
    let idp = provider(keys).await;
    let issuer = idp.url("");
    w.component(
        "bearer.yaml",
        &component_yaml(
            "bearer",
            "middleware.http.bearer",
            &[
                ("issuer", issuer.clone()),
                ("audience", "orders".into()),
                ("jwksURL", idp.url("/keys")),
            ],
        ),
    );
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let cfg = config(&w, "bearer.yaml", &["bearer"], &[]);
    let caller = w.sidecar("caller", SidecarOpts::default().config(&cfg));
    let now = web::now();
    let token = key.token(&json!({"iss": issuer, "aud": "orders", "exp": now + 600}));
    let out = std::process::Command::new(&py)
        .arg(python_script("sdk_middleware.py"))
        .env("DAPR_HTTP_PORT", caller.http_port.to_string())
        .env("DAPR_GRPC_PORT", caller.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("TOKEN", &token)
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_middleware.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk_middleware.py failed");
    assert!(stdout.contains("with token: 200 /orders"), "{stdout}");
    assert!(stdout.contains("without token: 401"), "{stdout}");
}

/// The unmodified Python SDK through every other middleware type: the
/// caller's API pipeline aliases, checks, asks OPA, uppercases and rate
/// limits; the callee's app pipeline adds an OAuth2 token fetched from a
/// token endpoint the test serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_calls_through_every_other_middleware_type() {
    let py = python();
    let w = World::new();
    let endpoint = WebServer::start(Arc::new(|r: &web::Seen| {
        if r.path == "/token" {
            let body =
                json!({"access_token": "tok-sdk", "token_type": "bearer", "expires_in": 3600});
            (200, "application/json", body.to_string())
        } else {
            (404, "text/plain", String::new())
        }
    }))
    .await;
    w.component(
        "oauth.yaml",
        &component_yaml(
            "oauth",
            "middleware.http.oauth2clientcredentials",
            &[
                ("clientId", "app".to_owned()),
                ("clientSecret", "s3cret".to_owned()),
                ("scopes", "read".to_owned()),
                ("tokenURL", endpoint.url("/token")),
                ("headerName", "authorization".to_owned()),
            ],
        ),
    );
    w.component(
        "alias.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: alias\nspec:\n  type: middleware.http.routeralias\n  version: v1\n  metadata:\n  - name: routes\n    value: |\n      {\"/v1.0/invoke/callee/method/old\": \"/v1.0/invoke/callee/method/orders\"}\n",
    );
    w.component(
        "check.yaml",
        &component_yaml(
            "check",
            "middleware.http.routerchecker",
            &[("rule", "^/v1.0/invoke/callee/method/[a-z]+$".into())],
        ),
    );
    let policy = "package http\n\ndefault allow = false\n\nallow {\n    input.request.headers[\"X-Api-Key\"] == \"k1\"\n}\n";
    w.component("opa.yaml", &opa_component("opa", policy, &[]));
    w.component(
        "upper.yaml",
        &component_yaml("upper", "middleware.http.uppercase", &[]),
    );
    w.component(
        "limit.yaml",
        &component_yaml(
            "limit",
            "middleware.http.ratelimit",
            &[("maxRequestsPerSecond", "1".into())],
        ),
    );
    let echo = w.echo("e");
    let app_cfg = config(&w, "app.yaml", &[], &["oauth"]);
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port).config(&app_cfg));
    let api_cfg = config(
        &w,
        "api.yaml",
        &["alias", "check", "opa", "upper", "limit"],
        &[],
    );
    let caller = w.sidecar("caller", SidecarOpts::default().config(&api_cfg));
    let out = std::process::Command::new(&py)
        .arg(python_script("sdk_middleware_all.py"))
        .env("DAPR_HTTP_PORT", caller.http_port.to_string())
        .env("DAPR_GRPC_PORT", caller.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_middleware_all.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk_middleware_all.py failed");
    assert!(
        stdout.contains("aliased: 200 /orders HELLO, SDK Bearer tok-sdk"),
        "{stdout}"
    );
    assert!(stdout.contains("checked: 400"), "{stdout}");
    assert!(stdout.contains("opa: 403"), "{stdout}");
    let limited: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("limited count: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("limited count");
    assert!(limited >= 1, "six calls at one a second: {stdout}");
}
