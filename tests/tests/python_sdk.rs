//! The unmodified Dapr Python SDK against skiffd: `DaprClient.invoke_method`
//! over HTTP and over gRPC (`InvokeService`), a `dapr.ext.grpc.App` behind a
//! sidecar, and a plain grpcio client in proxy mode.
//!
//! Needs a Python venv with `tests/python/requirements.txt`; `tests/run`
//! creates it at `target/py-venv` (or set `SKIFF_PYTHON`). Without it the
//! test fails with that instruction: it never passes silently.

use std::process::{Command, Stdio};

use skiff_tests::*;

#[tokio::test]
async fn dapr_python_sdk_works_unmodified() {
    let py = python();
    let w = World::new();
    let echo = w.echo("e");
    let _web = w.sidecar("web", SidecarOpts::app(echo.http_port));
    let _rpc = w.sidecar("rpc", SidecarOpts::grpc_app(echo.grpc_port));
    let py_port = free_port();
    let child = Command::new(&py)
        .arg(python_script("grpc_app.py"))
        .arg(py_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the dapr.ext.grpc app");
    let _app = Proc {
        child,
        name: "pyapp".into(),
    };
    let _pyapp = w.sidecar(
        "pyapp",
        SidecarOpts {
            args: vec![
                "--enable-app-health-check".into(),
                "--app-health-probe-interval".into(),
                "1".into(),
            ],
            ..SidecarOpts::grpc_app(py_port)
        },
    );
    let caller = w.sidecar("sdkcaller", SidecarOpts::default());
    // The SDK's gRPC App may take a moment to bind after start.
    wait_for_port(py_port);

    for proto in ["http", "grpc"] {
        let out = Command::new(&py)
            .arg(python_script("sdk_client.py"))
            .env("DAPR_HTTP_PORT", caller.http_port.to_string())
            .env("DAPR_GRPC_PORT", caller.grpc_port.to_string())
            .env("DAPR_RUNTIME_HOST", "127.0.0.1")
            .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", proto)
            .env_remove("DAPR_API_TOKEN")
            .output()
            .expect("run sdk_client.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}");
        assert!(
            out.status.success(),
            "{proto}: SDK client failed\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("{{\"done\": \"{proto}\"}}")),
            "{stdout}"
        );
    }
}

fn wait_for_port(port: u16) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the Python gRPC app did not listen on {port} within 20s");
}

/// The SDK's state and secrets calls (gRPC) against the embedded SQLite
/// store and a local file secret store, and against Redis when it is here.
#[tokio::test]
async fn python_sdk_state_and_secrets() {
    let py = python();
    let w = World::new();
    let secrets = w.home.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"db-password":"s3cret"}"#).expect("secrets file");
    w.component(
        "secrets.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: localsecrets\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
            secrets.display()
        ),
    );
    let db = w.home.path().join("state.db");
    w.component(
        "statestore.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n",
            db.display()
        ),
    );
    let s = w.sidecar("pystate", SidecarOpts::default());
    let out = Command::new(&py)
        .arg(python_script("sdk_state.py"))
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("STORE", "statestore")
        .env("SECRETS", "localsecrets")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_state.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "SDK state client failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done": "state"}"#), "{stdout}");
}

/// The SDK's `try_lock` / `unlock` (and its context manager) against the
/// embedded `lock.in-memory` (the conformance suite in `lock.rs` covers
/// `lock.redis`).
#[tokio::test]
async fn python_sdk_lock() {
    let py = python();
    let w = World::new();
    w.component(
        "lock.yaml",
        &component_yaml("lockstore", "lock.in-memory", &[]),
    );
    let s = w.sidecar("pylock", SidecarOpts::default());
    let out = Command::new(&py)
        .arg(python_script("sdk_lock.py"))
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("STORE", "lockstore")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_lock.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "SDK lock client failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done": "lock"}"#), "{stdout}");
}

/// The SDK's `get_configuration`, `subscribe_configuration` and
/// `unsubscribe_configuration` on `configuration.redis`.
#[tokio::test]
async fn python_sdk_configuration_on_redis() {
    let py = python();
    let w = World::new();
    let redis = skiff_tests::servers::Redis::start_with(
        &w.home.path().join("redis"),
        free_port(),
        &["--notify-keyspace-events", "KA"],
    );
    w.component(
        "cfg.yaml",
        &component_yaml("cfg", "configuration.redis", &[("redisHost", redis.addr())]),
    );
    let s = w.sidecar("pycfg", SidecarOpts::default());
    let port = redis
        .addr()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let out = Command::new(&py)
        .arg(python_script("sdk_configuration.py"))
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("STORE", "cfg")
        .env("REDIS_PORT", port)
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_configuration.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "SDK configuration client failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done": "configuration"}"#), "{stdout}");
}

/// The SDK's bindings: `invoke_binding` on `bindings.localstorage`, and a
/// `dapr.ext.grpc.App` reading the input binding it lists (`ticks`, a
/// cron) — and not one it does not list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_bindings() {
    let py = python();
    let w = World::new();
    let root = w.home.path().join("files");
    w.component(
        "files.yaml",
        &component_yaml(
            "files",
            "bindings.localstorage",
            &[("rootPath", root.display().to_string())],
        ),
    );
    w.component(
        "ticks.yaml",
        &component_yaml(
            "ticks",
            "bindings.cron",
            &[("schedule", "@every 300ms".into())],
        ),
    );
    w.component(
        "other.yaml",
        &component_yaml(
            "other",
            "bindings.cron",
            &[("schedule", "@every 300ms".into())],
        ),
    );
    let py_port = free_port();
    let log = w.home.path().join("pyapp.out");
    let child = Command::new(&py)
        .arg(python_script("sdk_binding_app.py"))
        .arg(py_port.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the binding app");
    let _app = Proc {
        child,
        name: "pybind".into(),
    };
    wait_for_port(py_port);
    let s = w.sidecar("pybind", SidecarOpts::grpc_app(py_port));
    let out = Command::new(&py)
        .arg(python_script("sdk_bindings.py"))
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("BINDING", "files")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_bindings.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK bindings client failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#"{"done": "bindings"}"#), "{stdout}");
    assert_eq!(
        std::fs::read(root.join("py.txt")).expect("file"),
        b"from python"
    );
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("tick ").count() >= 2 {
            assert!(text.contains("readTimeUTC"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the app got no ticks:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The SDK's pub/sub: `publish_event`, `publish_events` and a streaming
/// `subscribe` from a client without a port; a `dapr.ext.grpc.App`
/// subscriber (with a routing rule) and a FastAPI app through
/// `dapr.ext.fastapi`, each behind its own sidecar, all on the embedded
/// broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_pubsub() {
    let py = python();
    let w = World::new();
    w.component(
        "ps.yaml",
        &component_yaml(
            "ps",
            "pubsub.skiff.sqlite",
            &[(
                "connectionString",
                w.home.path().join("ps.db").display().to_string(),
            )],
        ),
    );
    let out = w.home.path().join("events.jsonl");
    let start = |kind: &str, port: u16| Proc {
        child: Command::new(&py)
            .arg(python_script("sdk_pubsub_apps.py"))
            .args([kind, &port.to_string()])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a Python subscriber"),
        name: format!("py-{kind}"),
    };
    let (gport, fport) = (free_port(), free_port());
    let _g = start("grpc", gport);
    let _f = start("fastapi", fport);
    wait_for_port(gport);
    wait_for_port(fport);
    let _gs = w.sidecar("pygrpc", SidecarOpts::grpc_app(gport));
    let _fs = w.sidecar("pyfast", SidecarOpts::app(fport));
    let client = w.sidecar("pyclient", SidecarOpts::default());
    // Both apps' subscriptions are in place before anything is published.
    for s in [&_gs, &_fs] {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while get_json(&format!("{}/v1.0/metadata", s.http())).await["subscriptions"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            assert!(
                std::time::Instant::now() < end,
                "{} never subscribed",
                s.app_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let run = Command::new(&py)
        .arg(python_script("sdk_pubsub.py"))
        .env("DAPR_HTTP_PORT", client.http_port.to_string())
        .env("DAPR_GRPC_PORT", client.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run sdk_pubsub.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("{stdout}");
    assert!(
        run.status.success(),
        "SDK pub/sub client failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done": "pubsub"}"#), "{stdout}");
    let want = [
        r#"{"app": "grpc", "topic": "orders", "data": {"n": 1}}"#,
        r#"{"app": "grpc", "topic": "orders", "data": {"n": 2}}"#,
        r#"{"app": "grpc", "topic": "orders", "data": {"n": 3}}"#,
        r#"{"app": "grpc", "topic": "routed-big", "data": "big one"}"#,
        r#"{"app": "fastapi", "topic": "fast", "data": {"f": 1}}"#,
    ];
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = std::fs::read_to_string(&out).unwrap_or_default();
        if want.iter().all(|w| got.lines().any(|l| l == *w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the Python apps got:\n{got}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
