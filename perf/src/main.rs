//! `skiff-perf`: an honest latency benchmark for sidecars.
//!
//! - `load`: drive one URL (HTTP/1.1, h2c, gRPC unary) open or closed loop.
//! - `bench`: start the echo app, skiffd and the peers (Envoy, HAProxy,
//!   nginx) on loopback and compare them side by side.
//!
//! Errors are one line on stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderMap, Method, Uri};
use skiff_perf::load::{self, Mode, Proto, Spec};

#[derive(Parser)]
#[command(
    name = "skiff-perf",
    version,
    about = "Latency benchmarks for sidecars"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send load to one URL and report latency percentiles and throughput.
    Load(LoadArgs),
    /// Run the side-by-side benchmark (direct, skiff, envoy, haproxy, nginx).
    Bench(skiff_perf::bench::BenchArgs),
    /// The state API through one skiffd against Skiff's Redis driver called
    /// directly (the floor), plus the SQLite default.
    State(skiff_perf::state::StateArgs),
    /// Pub/sub through two skiffd (publish → delivery) against Skiff's
    /// Redis Streams driver doing the same loop in-process, plus the
    /// embedded SQLite broker.
    Pubsub(skiff_perf::pubsub::PubSubArgs),
    /// TryLock through one skiffd against Skiff's Redis lock driver called
    /// directly (the floor), plus the in-memory lock.
    Lock(skiff_perf::lock::LockArgs),
    /// Placement rounds: how long a host leaving or joining takes to reach
    /// every sidecar.
    Placement(skiff_perf::placement::PlacementArgs),
    /// Draw the percentile curves of a recorded `bench --json` file as SVG.
    Plot {
        json: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// Target, e.g. http://127.0.0.1:3500/v1.0/invoke/app/method/echo
    url: String,
    #[arg(long, value_enum, default_value = "http1")]
    proto: Proto,
    /// Open loop: requests per second, latency from each intended send time.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: requests in flight (default 1).
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured time, e.g. 10s, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before the measurement.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Stop after this many requests (warm-up included).
    #[arg(long)]
    requests: Option<u64>,
    /// Payload size in bytes (gRPC: a message with one bytes field this long).
    #[arg(long, default_value_t = 0, conflicts_with = "payload_file")]
    payload_size: usize,
    /// Payload from a file (gRPC: a serialized protobuf message).
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// HTTP method (default: POST with a payload or for gRPC, else GET).
    #[arg(long)]
    method: Option<Method>,
    /// Extra header, name:value; repeatable.
    #[arg(short = 'H', long = "header", value_parser = load::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Runs `f` as a spawned task rather than as `block_on`'s own future: on a
/// current-thread runtime, waking the `block_on` future writes the driver's
/// eventfd, a syscall per request in the open loop; waking a task does not.
fn on_task<F>(rt: &tokio::runtime::Runtime, f: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    rt.block_on(rt.spawn(f))
        .unwrap_or_else(|e| Err(format!("the run stopped: {e}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One core for the generator: its cost stays small and measurable, and
    // the rest of the machine is left to what is being measured.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    let r = match cli.cmd {
        Cmd::Load(a) => on_task(&rt, load_cmd(a)),
        Cmd::Bench(a) => on_task(&rt, async move {
            skiff_perf::bench::run(a)
                .await
                .map_err(|e| format!("{e:#}"))
        }),
        Cmd::State(a) => on_task(&rt, async move {
            skiff_perf::state::run(a)
                .await
                .map_err(|e| format!("{e:#}"))
        }),
        Cmd::Pubsub(a) => on_task(&rt, async move {
            skiff_perf::pubsub::run(a)
                .await
                .map_err(|e| format!("{e:#}"))
        }),
        Cmd::Lock(a) => on_task(&rt, async move {
            skiff_perf::lock::run(a).await.map_err(|e| format!("{e:#}"))
        }),
        Cmd::Placement(a) => on_task(&rt, async move {
            skiff_perf::placement::run(a)
                .await
                .map_err(|e| format!("{e:#}"))
        }),
        Cmd::Plot { json, out } => plot(&json, &out),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> ExitCode {
    eprintln!("skiff-perf: {e}");
    ExitCode::FAILURE
}

async fn load_cmd(a: LoadArgs) -> Result<(), String> {
    let url: Uri = a
        .url
        .parse()
        .map_err(|e| format!("bad URL {:?}: {e}", a.url))?;
    let payload = match &a.payload_file {
        Some(f) => Bytes::from(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?),
        None if a.proto == Proto::Grpc => load::bytes_field_message(a.payload_size),
        None => Bytes::from(vec![b'x'; a.payload_size]),
    };
    let method = a
        .method
        .unwrap_or(if !payload.is_empty() || a.proto == Proto::Grpc {
            Method::POST
        } else {
            Method::GET
        });
    let mut headers = HeaderMap::new();
    for (n, v) in a.headers {
        headers.append(n, v);
    }
    let spec = Spec {
        url,
        proto: a.proto,
        method,
        headers,
        payload,
        connections: a.connections,
        mode: match (a.rate, a.concurrency) {
            (Some(rate), _) if rate > 0.0 => Mode::Open { rate },
            (Some(rate), _) => return Err(format!("--rate must be positive, got {rate}")),
            (None, c) => Mode::Closed {
                concurrency: c.unwrap_or(1).max(1),
            },
        },
        duration: a.duration,
        warmup: a.warmup,
        max_requests: a.requests,
        timeout: a.timeout,
        progress: !a.quiet && !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = load::run(spec).await.map_err(|e| e.to_string())?;
    if report.ok == 0 {
        let errs = serde_json::to_string(&report.errors).unwrap_or_default();
        return Err(format!(
            "no request succeeded against {}: {errs}",
            report.url
        ));
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", skiff_perf::report::load_table(&report));
    }
    Ok(())
}

fn plot(json: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let rows: Vec<skiff_perf::bench::Row> = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a bench --json file: {e}", json.display()))?;
    std::fs::write(out, skiff_perf::plot::svg(&rows)).map_err(|e| format!("{}: {e}", out.display()))
}

/// "10s", "500ms", "2m", "1.5s".
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 10s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}
