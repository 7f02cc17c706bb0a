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
