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
//! Usage: `skiff-allocs [--calls N] [--json FILE]`; with
//! `SKIFF_ALLOCS_TRACE=N`, the first N allocations of one call of each RPC
//! are printed with their backtraces.

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
async fn count<F, Fut>(n: usize, mut call: F) -> anyhow::Result<(f64, f64)>
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
        count(n, || {
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
        count(n, || {
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
        count(n, || {
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
        count(n, || {
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
        count(n, || {
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
        count(n, || {
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
        count(n, || {
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
        count(n, || {
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
