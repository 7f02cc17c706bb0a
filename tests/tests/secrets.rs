//! Secrets and component loading end to end: the local file and env
//! secret stores over HTTP, the Configuration's secret scopes, a Redis
//! password resolved through `secretKeyRef` before the state store starts
//! (and never seen in logs, metadata or errors), and components that fail
//! to start: one line naming the file, the component and the cause, or
//! left out with `ignoreErrors`.

use skiff_tests::servers::Redis;
use skiff_tests::*;

const PASSWORD: &str = "hunter2-Zq9-not-in-logs";

async fn get(c: &HttpClient, s: &Sidecar, path: &str) -> Resp {
    send(c, request("GET", &format!("{}{path}", s.http()), "")).await
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON: {} {}", r.status, r.text()))
}

fn file_store(w: &World, name: &str, extra: &str) {
    let f = w.home.path().join(format!("{name}.json"));
    std::fs::write(
        &f,
        format!(
            r#"{{"db-password":"s3cret","redis-pass":"{PASSWORD}","nested":{{"user":"u","port":5432}},"other":"x"}}"#
        ),
    )
    .expect("secrets file");
    w.component(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n{extra}",
            f.display()
        ),
    );
}

#[tokio::test]
async fn file_and_env_stores_over_http() {
    let w = World::new();
    file_store(&w, "files", "");
    file_store(&w, "multi", "  - name: multiValued\n    value: \"true\"\n");
    w.component(
        "env.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: env\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata:\n  - name: prefix\n    value: SKIFFT_\n",
    );
    let s = w.sidecar(
        "sec",
        SidecarOpts {
            env: vec![
                ("SKIFFT_DB_PASS", "from-env".into()),
                ("NOT_PREFIXED", "hidden".into()),
            ],
            ..SidecarOpts::default()
        },
    );
    let c = http_client();
    let r = get(&c, &s, "/v1.0/secrets/files/db-password").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r), serde_json::json!({"db-password": "s3cret"}));
    // Nested objects are flattened with ':'; numbers print as Go prints them.
    assert_eq!(
        json(&get(&c, &s, "/v1.0/secrets/files/nested:user").await),
        serde_json::json!({"nested:user": "u"})
    );
    let bulk = json(&get(&c, &s, "/v1.0/secrets/files/bulk").await);
    assert_eq!(bulk["other"], serde_json::json!({"other": "x"}));
    assert_eq!(
        bulk["nested:port"],
        serde_json::json!({"nested:port": "%!s(float64=5432)"})
    );
    // multiValued: one secret per top-level key, holding its children.
    assert_eq!(
        json(&get(&c, &s, "/v1.0/secrets/multi/nested").await),
        serde_json::json!({"user": "u", "port": "%!s(float64=5432)"})
    );
    let r = get(&c, &s, "/v1.0/secrets/files/missing").await;
    assert_eq!(r.status, 500);
    assert_eq!(json(&r)["errorCode"], "ERR_SECRET_GET");

    assert_eq!(
        json(&get(&c, &s, "/v1.0/secrets/env/DB_PASS").await),
        serde_json::json!({"DB_PASS": "from-env"})
    );
    let env_bulk = json(&get(&c, &s, "/v1.0/secrets/env/bulk").await);
    assert_eq!(
        env_bulk,
        serde_json::json!({"DB_PASS": {"DB_PASS": "from-env"}}),
        "only the prefixed variables, prefix stripped"
    );
    let r = get(&c, &s, "/v1.0/secrets/nope/x").await;
    assert_eq!(json(&r)["errorCode"], "ERR_SECRET_STORE_NOT_FOUND");
}

#[tokio::test]
async fn configuration_scopes_limit_what_an_app_reads() {
    let w = World::new();
    file_store(&w, "files", "");
    let cfg = w.home.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: scoped\nspec:\n  secrets:\n    scopes:\n    - storeName: files\n      defaultAccess: deny\n      allowedSecrets: [\"db-password\"]\n",
    )
    .expect("config");
    let s = w.sidecar(
        "sec",
        SidecarOpts {
            args: vec!["--config".into(), cfg.display().to_string()],
            ..SidecarOpts::default()
        },
    );
    let c = http_client();
    assert_eq!(
        get(&c, &s, "/v1.0/secrets/files/db-password").await.status,
        200
    );
    let r = get(&c, &s, "/v1.0/secrets/files/other").await;
    assert_eq!(
        (r.status.as_u16(), json(&r)["errorCode"].as_str()),
        (403, Some("ERR_PERMISSION_DENIED"))
    );
    let bulk = json(&get(&c, &s, "/v1.0/secrets/files/bulk").await);
    assert_eq!(
        bulk,
        serde_json::json!({"db-password": {"db-password": "s3cret"}}),
        "bulk leaves denied secrets out"
    );
}

fn redis_component(store: &str, secret: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: red\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"{{HOST}}\"\n  - name: redisPassword\n    secretKeyRef:\n      name: {secret}\n      key: {secret}\nauth:\n  secretStore: {store}\n"
    )
}

/// A Redis that wants [`PASSWORD`], and the `red` state store that reads
/// it from the `files` secret store.
fn password_redis(w: &World) -> Redis {
    let r = Redis::start_with(
        &w.home.path().join("redis"),
        free_port(),
        &["--requirepass", PASSWORD],
    );
    file_store(w, "files", "");
    w.component(
        "red.yaml",
        &redis_component("files", "redis-pass").replace("{HOST}", &r.addr()),
    );
    r
}

#[tokio::test]
async fn a_redis_password_comes_from_a_secret_and_stays_secret() {
    let w = World::new();
    let r = password_redis(&w);
    let log = w.home.path().join("skiffd.log");
    let s = w.sidecar(
        "sec",
        SidecarOpts {
            log_file: Some(log.clone()),
            args: vec!["--log-level".into(), "debug".into()],
            ..SidecarOpts::default()
        },
    );
    let c = http_client();
    let url = format!("{}/v1.0/state/red", s.http());
    let saved = send(&c, request("POST", &url, r#"[{"key":"k","value":"v"}]"#)).await;
    assert_eq!(saved.status, 204, "{}", saved.text());
    assert_eq!(
        send(&c, request("GET", &format!("{url}/k"), ""))
            .await
            .text(),
        r#""v""#
    );
    assert_eq!(r.cli(&["hget", "sec||k", "data"]), r#""v""#);
    let meta = get(&c, &s, "/v1.0/metadata").await.text();
    assert!(meta.contains("\"red\""), "{meta}");
    assert!(!meta.contains(PASSWORD), "the password is in the metadata");
    drop(s);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.contains("red"), "the log names the component: {logs}");
    assert!(!logs.contains(PASSWORD), "the password is in the log");

    // A wrong password: the sidecar refuses to start, naming the
    // component and the file, and still not printing the secret.
    let w2 = World::new();
    let f = w2.home.path().join("files.json");
    std::fs::write(&f, r#"{"redis-pass":"wrong-Zq9-password"}"#).expect("secrets");
    w2.component(
        "files.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
            f.display()
        ),
    );
    w2.component(
        "red.yaml",
        &redis_component("files", "redis-pass").replace("{HOST}", &r.addr()),
    );
    let err = w2.skiffd_fails("sec", &[]);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("red.yaml") && last.contains("red"),
        "one line naming the file and the component: {last}"
    );
    assert!(!err.contains("wrong-Zq9-password"), "{err}");

    // A secret that does not exist: named, and the start refused.
    let w3 = World::new();
    file_store(&w3, "files", "");
    w3.component(
        "red.yaml",
        &redis_component("files", "no-such-secret").replace("{HOST}", &r.addr()),
    );
    let err = w3.skiffd_fails("sec", &[]);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("no-such-secret"), "{last}");
}

#[tokio::test]
async fn a_component_that_fails_stops_the_sidecar_unless_ignore_errors() {
    let w = World::new();
    w.component(
        "broken.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: broken\nspec:\n  type: state.cassandra\n  version: v1\n  metadata: []\n",
    );
    let err = w.skiffd_fails("app", &[]);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("broken.yaml")
            && last.contains("broken")
            && last.contains("state.cassandra")
            && last.contains("state.sqlite"),
        "one line: file, component, cause and what is served: {last}"
    );

    // The same with ignoreErrors: logged, left out, the sidecar serves.
    w.component(
        "broken.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: broken\nspec:\n  type: state.cassandra\n  version: v1\n  ignoreErrors: true\n  metadata: []\n",
    );
    w.component(
        "mem.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: mem\nspec:\n  type: state.in-memory\n  version: v1\n  metadata: []\n",
    );
    let s = w.sidecar("app", SidecarOpts::default());
    let c = http_client();
    let meta = json(&get(&c, &s, "/v1.0/metadata").await);
    let names: Vec<&str> = meta["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["mem"], "{meta}");
    let r = get(&c, &s, "/v1.0/state/broken/k").await;
    assert_eq!(json(&r)["errorCode"], "ERR_STATE_STORE_NOT_FOUND");

    // A store that cannot be reached: named, with its address.
    let w2 = World::new();
    w2.component(
        "red.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: red\nspec:\n  type: state.redis\n  version: v1\n  initTimeout: 2s\n  metadata:\n  - name: redisHost\n    value: 127.0.0.1:{}\n  - name: dialTimeout\n    value: 500ms\n",
            free_port()
        ),
    );
    let err = w2.skiffd_fails("app", &[]);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("red.yaml") && last.contains("127.0.0.1"),
        "{last}"
    );

    // Invalid YAML: the file and the parser's reason.
    let w3 = World::new();
    w3.component("bad.yaml", "kind: Component\nmetadata: [unclosed\n");
    let err = w3.skiffd_fails("app", &[]);
    assert!(
        err.lines().last().unwrap_or_default().contains("bad.yaml"),
        "{err}"
    );
}

/// Every secret a full run is given: none reaches a log line at any level
/// (trace everywhere, API logging on), and every file holding a private
/// key is readable by its owner only.
#[tokio::test]
async fn no_secret_reaches_any_log_and_key_files_are_private() {
    const API_TOKEN: &str = "api-token-Kx81-not-in-logs";
    const APP_TOKEN: &str = "app-token-Vb27-not-in-logs";
    const WRONG_TOKEN: &str = "wrong-token-Qp40-not-in-logs";
    const BEARER: &str = "bearer-Lm63-not-in-logs";
    let w = World::new();
    let home = w.home.path();
    let _redis = password_redis(&w);
    let sentry_log = home.join("sentry.log");
    let sentry = w.sentry_logged(&sentry_log, &["--log-level", "trace"]);
    let echo = w.echo("callee");
    let log = |name: &str| home.join(format!("{name}.log"));
    let verbose = |name: &str, o: SidecarOpts| SidecarOpts {
        log_file: Some(log(name)),
        args: [o.args, vec!["--enable-api-logging".into()]].concat(),
        env: [o.env, vec![("SKIFF_LOG", "trace".to_owned())]].concat(),
        ..o
    };
    let with_env = |mut o: SidecarOpts, k: &'static str, v: &str| {
        o.env.push((k, v.to_owned()));
        o
    };
    let callee_opts = SidecarOpts::app(echo.http_port).sentry(&sentry);
    let callee = w.sidecar(
        "callee",
        verbose("callee", with_env(callee_opts, "APP_API_TOKEN", APP_TOKEN)),
    );
    let caller_opts = SidecarOpts::default().sentry(&sentry);
    let caller = w.sidecar(
        "caller",
        verbose("caller", with_env(caller_opts, "DAPR_API_TOKEN", API_TOKEN)),
    );
    // A sidecar with the embedded CA writes its own keys under SKIFF_HOME.
    let embedded = w.sidecar(
        "embedded",
        verbose("embedded", SidecarOpts::default().mtls()),
    );

    let c = http_client();
    let call = |path: &str, token: &str, body: &'static str| {
        let mut req = request(
            if body.is_empty() { "GET" } else { "POST" },
            &format!("{}{path}", caller.http()),
            body,
        );
        req.headers_mut()
            .insert("dapr-api-token", token.parse().expect("hv"));
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {BEARER}").parse().expect("hv"),
        );
        req
    };
    let r1 = send(
        &c,
        call("/v1.0/invoke/callee/method/echo", API_TOKEN, "ping"),
    )
    .await;
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(
        r1.echoed_headers()["dapr-api-token"],
        APP_TOKEN,
        "the callee's app gets its own token"
    );
    let r2 = send(
        &c,
        call("/v1.0/invoke/callee/method/echo", WRONG_TOKEN, "ping"),
    )
    .await;
    assert_eq!(r2.status, 401, "{}", r2.text());
    assert!(!r2.text().contains(WRONG_TOKEN), "{}", r2.text());
    let r3 = send(&c, call("/v1.0/secrets/files/redis-pass", API_TOKEN, "")).await;
    assert_eq!(r3.status, 200, "{}", r3.text());
    assert!(r3.text().contains(PASSWORD));
    let r4 = send(
        &c,
        call("/v1.0/state/red", API_TOKEN, r#"[{"key":"k","value":"v"}]"#),
    )
    .await;
    assert_eq!(r4.status, 204, "{}", r4.text());
    let r5 = send(&c, call("/v1.0/state/red/k", API_TOKEN, "")).await;
    assert_eq!(r5.text(), r#""v""#);
    let r6 = send(&c, call("/v1.0/metadata", API_TOKEN, "")).await;
    assert!(!r6.text().contains(PASSWORD), "{}", r6.text());
    let md = get(&c, &embedded, "/v1.0/metadata").await.text();
    assert!(md.contains("spiffe://"), "embedded mTLS on: {md}");

    // The private keys on disk: 0600, and never in a log.
    let mut keys = Vec::new();
    let mut dirs = vec![home.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p)
                && text.contains("PRIVATE KEY-----")
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = e.metadata().expect("metadata").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
                keys.push((p, text));
            }
        }
    }
    let names: Vec<String> = keys
        .iter()
        .filter_map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(
        names.iter().filter(|n| *n == "issuer.key").count() >= 2,
        "sentry's and the embedded CA's issuer keys: {names:?}"
    );

    drop((caller, callee, embedded, sentry));
    let mut logs = Vec::new();
    for f in [log("caller"), log("callee"), log("embedded"), sentry_log] {
        let text = std::fs::read_to_string(&f).expect("log");
        assert!(
            text.contains(" TRACE ") && text.lines().count() > 5,
            "{} has the trace lines: {text}",
            f.display()
        );
        logs.push((f, text));
    }
    let mut secrets: Vec<String> = [PASSWORD, API_TOKEN, APP_TOKEN, WRONG_TOKEN, BEARER]
        .map(String::from)
        .to_vec();
    secrets.push("PRIVATE KEY".into());
    for (_, pem) in &keys {
        // The key's base64 body, line by line (the last may be short).
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(String::from),
        );
    }
    for (f, text) in &logs {
        for s in &secrets {
            if let Some(line) = text.lines().find(|l| l.contains(s.as_str())) {
                panic!("{} has a secret in: {line}", f.display());
            }
        }
    }
}
