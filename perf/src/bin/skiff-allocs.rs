//! `skiff-allocs`: heap allocations per call of the hot RPCs, counted on
//! the sidecar's own thread.
//!
//! The sidecar runs in this process, on one thread with a current-thread
//! runtime (as `skiffd` with one worker), over in-memory components and an
//! echo app on another thread. The load comes from a third thread. Only the
//! sidecar thread's allocations are counted, so the figures are the door's
//! and the block's, not a driver's (in-memory stores allocate little) and
//! not the client's. Counts are exact and repeatable, unlike latency on a
//! shared machine: the tool to judge "no per-call allocation you can
//! avoid".
//!
//! Usage: `skiff-allocs [--calls N] [--json FILE] [--check]`; with
//! `SKIFF_ALLOCS_TRACE=N`, the first N allocations of one call of each RPC
//! are printed with their backtraces. `--check` fails when a row is over
//! its budget ([`BUDGET`]); the test suite runs it, so a change that adds
//! an allocation to a hot path has to raise the budget and say why here.
//!
//! ## Where each allocation goes (the budget's reasons)
//! Every gRPC call (7): h2 decodes the request's headers into a `HeaderMap`
//! (2: its index and its entries); the stream's future in the
//! connection's set (1: one per stream, no spawned task; 12 KB in debug);
//! the answer's headers and its `grpc-status` trailers (2 + 2: h2 takes
//! owned maps).
//! - `GetState` (+4): the store key `app||key` (drivers take owned keys),
//!   the in-memory driver's copy of the item's ETag, the driver's boxed
//!   future (object-safe driver traits), the framed answer.
//! - `SaveState` (+5): the decoded items, the item's key (a `SaveItem`
//!   owns it for both doors) and the store key built from it, the
//!   driver's new ETag and its boxed future.
//! - `PublishEvent` (+7): the CloudEvent's `traceparent` text, its buffer
//!   (sized once), its `id`, the buffer handed on as `Bytes`, the
//!   driver's topic and boxed future, the pub/sub's in-memory delivery.
//! - `InvokeService` (~48, caller and callee both, in this one process):
//!   the boxed invocation (5 KB, kept out of the door's future), the
//!   target's app id and method path, the outbound `traceparent` and
//!   authority, h2's own copies of the pseudo headers, the callee's
//!   request headers and its stream's future, `Forwarded` headers (and the
//!   map's growth they cause), the HTTP/1.1 request head to the app (sized
//!   once), the app connection's read buffer and the answer's parsed head
//!   (names not in `http`'s table are copied), the caller's decode of the
//!   answer's headers, the InvokeResponse message.
//!
//! Every HTTP/1.1 call (~8): a read buffer per request (idle connections
//! hold none: a deliberate trade, see `http1::server`), the parsed head's
//! shared copy and its header map (3), the handler's boxed future and the
//! block dispatch's (2), the answer's headers map (2), its head buffer.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skiff_alloc_count::{Counting, Snapshot, count_this_thread, snapshot};
use skiff_perf::topology::{free_port, wait_port};
use skiff_proto::common::{HttpExtension, InvokeRequest, StateItem, http_extension::Verb};
use skiff_proto::google::protobuf::Any;
use skiff_proto::runtime as pb;
use skiff_proto::runtime::dapr_client::DaprClient;
use tonic::transport::Channel;

#[global_allocator]
static ALLOC: Counting = Counting;

/// The app id of the in-process sidecar (invocations go to itself).
const APP_ID: &str = "allocs";
/// Payload of every call, as in `skiff-perf state`.
const VALUE_BYTES: usize = 1024;
/// Unmeasured calls first: pools, caches and maps reach their size.
const WARMUP: usize = 200;

#[derive(Parser)]
#[command(
    name = "skiff-allocs",
    version,
    about = "Heap allocations per call of the hot RPCs"
)]
struct Cli {
    /// Measured calls per RPC.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Fail when a row allocates more per call than its budget.
    #[arg(long)]
    check: bool,
}

/// Allocations per call each row may make: today's counts rounded up, with
/// one to spare for the sidecar's own timers (policy and resolver scans)
/// that run on the counted thread. The module doc says where each goes.
const BUDGET: &[(&str, &str, f64)] = &[
    ("grpc", "SaveState", 14.0),
    ("grpc", "GetState", 12.0),
    ("grpc", "PublishEvent", 15.0),
    ("grpc", "InvokeService", 49.0),
    ("http", "SaveState", 20.0),
    ("http", "GetState", 18.0),
    ("http", "PublishEvent", 20.0),
    ("http", "InvokeService", 48.0),
];

/// The rows over their budget, as lines to print.
fn over_budget(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| {
            let budget = BUDGET
                .iter()
                .find(|(d, rpc, _)| *d == r.door && *rpc == r.rpc)
                .map(|b| b.2)?;
            (r.allocs_per_call > budget).then(|| {
                format!(
                    "{} {}: {:.1} allocations per call, over its budget of {budget}",
                    r.door, r.rpc, r.allocs_per_call
                )
            })
        })
        .collect()
}

#[derive(serde::Serialize)]
struct Row {
    door: &'static str,
    rpc: &'static str,
    allocs_per_call: f64,
    bytes_per_call: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-allocs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Ports {
    app: u16,
    http: u16,
    grpc: u16,
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.calls == 0 {
        bail!("--calls must be at least 1");
    }
    let work = std::env::temp_dir().join(format!("skiff-allocs-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let r = measure(cli, &work);
    let _ = std::fs::remove_dir_all(&work);
    let rows = r?;
    print_rows(&rows);
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if cli.check {
        let over = over_budget(&rows);
        if !over.is_empty() {
            bail!("{}", over.join("; "));
        }
    }
    Ok(())
}

fn measure(cli: &Cli, work: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    std::fs::write(
        work.join("components.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\n\
         spec:\n  type: state.in-memory\n  version: v1\n---\n\
         apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n\
         spec:\n  type: pubsub.in-memory\n  version: v1\n",
    )?;
    let app = TcpListener::bind("127.0.0.1:0")?;
    let ports = Ports {
        app: app.local_addr()?.port(),
        http: free_port()?,
        grpc: free_port()?,
    };
    std::thread::Builder::new()
        .name("echo-app".into())
        .spawn(move || echo_app(app))?;
    start_sidecar(&ports, work)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(drive(cli.calls, &ports))
}

fn echo_app(l: TcpListener) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async move {
        let _ = l.set_nonblocking(true);
        if let Ok(l) = tokio::net::TcpListener::from_std(l) {
            skiff_perf::echo::serve_http(l, Arc::from("allocs")).await;
        }
    });
}

/// Starts the sidecar on a thread of its own, whose allocations count.
fn start_sidecar(p: &Ports, work: &std::path::Path) -> anyhow::Result<()> {
    let args = [
        "skiffd".to_owned(),
        "--app-id".into(),
        APP_ID.into(),
        "--app-port".into(),
        p.app.to_string(),
        "--dapr-http-port".into(),
        p.http.to_string(),
        "--dapr-grpc-port".into(),
        p.grpc.to_string(),
        "--metrics-port".into(),
        "0".into(),
        "--resources-path".into(),
        work.display().to_string(),
        "--skiff-home".into(),
        work.join("home").display().to_string(),
    ];
    let flags = <skiff_dataplane::config::Flags as clap::Parser>::try_parse_from(args)?;
    let settings = flags.settings()?;
    std::thread::Builder::new()
        .name("sidecar".into())
        .spawn(move || {
            count_this_thread();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("skiff-allocs: the sidecar's runtime: {e}");
                    return;
                }
            };
            if let Err(e) = rt.block_on(skiff_dataplane::runtime::run(settings)) {
                eprintln!("skiff-allocs: the sidecar stopped: {e:#}");
            }
        })?;
    Ok(())
}

/// Runs `call` `WARMUP` times, then `n` times counted.
async fn count<F, Fut>(label: &str, n: usize, mut call: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for _ in 0..WARMUP {
        call().await?;
    }
    if let Some(t) = std::env::var("SKIFF_ALLOCS_TRACE")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        // One traced call first, outside the count.
        eprintln!("=== {label}: the first {t} allocations of one call");
        skiff_alloc_count::trace_next(t);
        call().await?;
        skiff_alloc_count::trace_next(0);
    }
    let before: Snapshot = snapshot();
    for _ in 0..n {
        call().await?;
    }
    let d = snapshot() - before;
    Ok((d.allocs as f64 / n as f64, d.bytes as f64 / n as f64))
}

async fn drive(n: usize, p: &Ports) -> anyhow::Result<Vec<Row>> {
    wait_port(p.http).await?;
    wait_port(p.grpc).await?;
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    let json = Bytes::from(format!("\"{}\"", "x".repeat(VALUE_BYTES - 2)));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", p.grpc))?
        .connect()
        .await?;
    let grpc = DaprClient::new(channel);
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let base = format!("http://127.0.0.1:{}", p.http);
    let mut rows = Vec::new();
    let mut row = |door, rpc, (a, b): (f64, f64)| {
        rows.push(Row {
            door,
            rpc,
            allocs_per_call: a,
            bytes_per_call: b,
        });
    };

    let save = pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![StateItem {
            key: "k".into(),
            value: value.clone(),
            ..Default::default()
        }],
    };
    row(
        "grpc",
        "SaveState",
        count("grpc SaveState", n, || {
            let mut c = grpc.clone();
            let r = save.clone();
            async move { Ok(c.save_state(r).await.map(drop)?) }
        })
        .await?,
    );
    let get = pb::GetStateRequest {
        store_name: "statestore".into(),
        key: "k".into(),
        ..Default::default()
    };
    row(
        "grpc",
        "GetState",
        count("grpc GetState", n, || {
            let mut c = grpc.clone();
            let r = get.clone();
            async move {
                let got = c.get_state(r).await?.into_inner();
                anyhow::ensure!(got.data.len() == VALUE_BYTES, "GetState: wrong value");
                Ok(())
            }
        })
        .await?,
    );
    let publish = pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "t".into(),
        data: value.clone(),
        data_content_type: "application/octet-stream".into(),
        ..Default::default()
    };
    row(
        "grpc",
        "PublishEvent",
        count("grpc PublishEvent", n, || {
            let mut c = grpc.clone();
            let r = publish.clone();
            async move { Ok(c.publish_event(r).await.map(drop)?) }
        })
        .await?,
    );
    let invoke = pb::InvokeServiceRequest {
        id: APP_ID.into(),
        message: Some(InvokeRequest {
            method: "echo".into(),
            data: Some(Any {
                type_url: String::new(),
                value: value.clone(),
            }),
            content_type: "application/octet-stream".into(),
            http_extension: Some(HttpExtension {
                verb: Verb::Post.into(),
                querystring: String::new(),
            }),
        }),
    };
    row(
        "grpc",
        "InvokeService",
        count("grpc InvokeService", n, || {
            let mut c = grpc.clone();
            let r = invoke.clone();
            async move { Ok(c.invoke_service(r).await.map(drop)?) }
        })
        .await?,
    );

    let http_call = |method: &'static str, url: String, body: Bytes| {
        let http = http.clone();
        async move {
            let req = http::Request::builder()
                .method(method)
                .uri(url)
                .header("content-type", "application/json")
                .body(Full::new(body))?;
            let resp = http.request(req).await?;
            let status = resp.status();
            let _ = resp.into_body().collect().await?;
            anyhow::ensure!(status.is_success(), "{method} answered {status}");
            Ok(())
        }
    };
    let save_body = Bytes::from(format!(
        r#"[{{"key":"k","value":{}}}]"#,
        String::from_utf8_lossy(&json)
    ));
    row(
        "http",
        "SaveState",
        count("http SaveState", n, || {
            http_call(
                "POST",
                format!("{base}/v1.0/state/statestore"),
                save_body.clone(),
            )
        })
        .await?,
    );
    row(
        "http",
        "GetState",
        count("http GetState", n, || {
            http_call(
                "GET",
                format!("{base}/v1.0/state/statestore/k"),
                Bytes::new(),
            )
        })
        .await?,
    );
    row(
        "http",
        "PublishEvent",
        count("http PublishEvent", n, || {
            http_call(
                "POST",
                format!("{base}/v1.0/publish/pubsub/t"),
                json.clone(),
            )
        })
        .await?,
    );
    row(
        "http",
        "InvokeService",
        count("http InvokeService", n, || {
            http_call(
                "POST",
                format!("{base}/v1.0/invoke/{APP_ID}/method/echo"),
                value.clone(),
            )
        })
        .await?,
    );
    Ok(rows)
}

fn print_rows(rows: &[Row]) {
    println!("| door | rpc | allocations per call | bytes per call |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.0} |",
            r.door, r.rpc, r.allocs_per_call, r.bytes_per_call
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_budget_and_over_is_reported() {
        let row = |door, rpc, a| Row {
            door,
            rpc,
            allocs_per_call: a,
            bytes_per_call: 0.0,
        };
        let within: Vec<Row> = BUDGET.iter().map(|b| row(b.0, b.1, b.2)).collect();
        assert!(over_budget(&within).is_empty());
        let over = over_budget(&[row("grpc", "GetState", 12.5)]);
        assert_eq!(over.len(), 1, "{over:?}");
        assert!(over[0].contains("grpc GetState"), "{over:?}");
    }
}
