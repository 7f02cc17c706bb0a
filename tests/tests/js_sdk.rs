//! The unmodified Dapr JS SDK (`@dapr/dapr` 3.18, over HTTP, its default)
//! against skiffd's state API on the embedded SQLite store.
//!
//! Needs node and the SDK in `target/js-sdk` (tests/run installs it with
//! npm; or set `SKIFF_JS_MODULES`). Without it the test fails with that
//! instruction: it never passes silently.

use std::process::Command;

use skiff_tests::*;

#[tokio::test]
async fn js_sdk_state_works_unmodified() {
    let modules = js_modules();
    let w = World::new();
    let db = w.home.path().join("state.db");
    w.component(
        "statestore.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n",
            db.display()
        ),
    );
    let s = w.sidecar("jsstate", SidecarOpts::default());
    let out = Command::new("node")
        .arg(js_script("sdk_state.js"))
        .env("NODE_PATH", &modules)
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("STORE", "statestore")
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "JS SDK state client failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done": "js"}"#), "{stdout}");
}

/// The JS SDK's HTTP server subscribes (`server.pubsub.subscribe`) and its
/// client publishes, through the embedded broker.
#[tokio::test]
async fn js_sdk_pubsub_works_unmodified() {
    let modules = js_modules();
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
    let app_port = free_port();
    let s = w.sidecar("jssub", SidecarOpts::app(app_port));
    let out = Command::new("node")
        .arg(js_script("sdk_pubsub.js"))
        .env("NODE_PATH", &modules)
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("APP_PORT", app_port.to_string())
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "JS SDK pub/sub failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done":"js-pubsub"}"#), "{stdout}");
}

/// The JS SDK's bindings (output and a cron input received by its
/// server), lock and configuration (gRPC) calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_bindings_lock_and_configuration_on_redis() {
    let modules = js_modules();
    let w = World::new();
    let redis = skiff_tests::servers::Redis::start_with(
        &w.home.path().join("redis"),
        free_port(),
        &["--notify-keyspace-events", "KA"],
    );
    redis.cli(&["SET", "greeting", "hi||1"]);
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
        "cron.yaml",
        &component_yaml(
            "jscron",
            "bindings.cron",
            &[("schedule", "@every 300ms".into())],
        ),
    );
    w.component(
        "lock.yaml",
        &component_yaml("lockstore", "lock.in-memory", &[]),
    );
    w.component(
        "cfg.yaml",
        &component_yaml("cfg", "configuration.redis", &[("redisHost", redis.addr())]),
    );
    let app_port = free_port();
    let s = w.sidecar("jsblocks", SidecarOpts::app(app_port));
    let out = Command::new("node")
        .arg(js_script("sdk_blocks.js"))
        .env("NODE_PATH", &modules)
        .env("DAPR_HTTP_PORT", s.http_port.to_string())
        .env("DAPR_GRPC_PORT", s.grpc_port.to_string())
        .env("APP_PORT", app_port.to_string())
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "JS SDK blocks failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"done":"js-blocks"}"#), "{stdout}");
    assert_eq!(
        std::fs::read(root.join("js.txt")).expect("file"),
        b"from js"
    );
}
