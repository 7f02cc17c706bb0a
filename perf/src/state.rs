//! `skiff-perf state`: the state API through one skiffd against the floor,
//! side by side in one run.
//!
//! The floor is Skiff's own `state.redis` driver called in this process:
//! the same redis-rs client, the same script and pipelined reads on one
//! multiplexed connection, the same Redis — everything but the sidecar.
//! Each round measures GET and SET of a 1 KiB value serially (latency) and
//! with 40 in flight (throughput) for the floor, the sidecar's gRPC API and
//! its HTTP API, then the SQLite default the same way; figures are the
//! median of the rounds. Also: the sidecar's CPU at 1000 gRPC GETs per
//! second, and its resident memory before and after a soak.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use serde::Serialize;
use skiff_components::Properties;
use skiff_components::registry::{self, Component};
use skiff_components::state::{Concurrency, Consistency, SetRequest, StateStore, Ttl};
use skiff_proto::common::StateItem;
use skiff_proto::runtime::{GetStateRequest, SaveStateRequest};

use crate::bench::{Procs, free_port, wait_port};
use crate::hist::{Latency, Percentiles};
use crate::load::GrpcUnary;
use crate::procfs;

/// Value size, as the issue's targets are stated.
pub const VALUE_BYTES: usize = 1024;
/// In flight for the throughput runs.
pub const IN_FLIGHT: usize = 40;
const APP_ID: &str = "perf";

#[derive(Args)]
pub struct StateArgs {
    /// Short runs, for a result in about a minute.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Operations of the memory soak (gRPC, half GETs, half SETs).
    #[arg(long)]
    pub soak_ops: Option<u64>,
    /// Where skiffd is (default: next to skiff-perf).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Get,
    Set,
}

/// Who makes the call.
#[derive(Clone)]
enum Caller {
    /// The driver, in this process.
    Direct(Arc<dyn StateStore>, String),
    Grpc(GrpcUnary, String),
    Http(
        Box<Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>>,
        String,
    ),
}

impl Caller {
    fn name(&self) -> &'static str {
        match self {
            Self::Direct(..) => "direct",
            Self::Grpc(..) => "skiff-grpc",
            Self::Http(..) => "skiff-http",
        }
    }

    async fn call(&mut self, op: Op, key: &str, value: &Bytes, json: &Bytes) -> anyhow::Result<()> {
        match self {
            Self::Direct(store, prefix) => {
                let k = format!("{prefix}{key}");
                match op {
                    Op::Get => {
                        store.get(&k, Consistency::Eventual).await?;
                    }
                    Op::Set => {
                        store
                            .set(SetRequest {
                                key: k,
                                value: value.clone(),
                                etag: None,
                                concurrency: Concurrency::LastWrite,
                                consistency: Consistency::Eventual,
                                ttl: Ttl::Unset,
                                is_json: false,
                            })
                            .await?
                    }
                }
            }
            Self::Grpc(c, store) => {
                let (method, msg) = match op {
                    Op::Get => (
                        "/dapr.proto.runtime.v1.Dapr/GetState",
                        GetStateRequest {
                            store_name: store.clone(),
                            key: key.to_owned(),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    Op::Set => (
                        "/dapr.proto.runtime.v1.Dapr/SaveState",
                        SaveStateRequest {
                            store_name: store.clone(),
                            states: vec![StateItem {
                                key: key.to_owned(),
                                value: value.clone(),
                                ..Default::default()
                            }],
                        }
                        .encode_to_vec(),
                    ),
                };
                c.call(method, &msg).await.map_err(anyhow::Error::msg)?;
            }
            Self::Http(c, base) => {
                let req = match op {
                    Op::Get => {
                        http::Request::get(format!("{base}/{key}")).body(Full::new(Bytes::new()))
                    }
                    Op::Set => {
                        let mut b = Vec::with_capacity(json.len() + key.len() + 24);
                        b.extend_from_slice(br#"[{"key":""#);
                        b.extend_from_slice(key.as_bytes());
                        b.extend_from_slice(br#"","value":"#);
                        b.extend_from_slice(json);
                        b.extend_from_slice(b"}]");
                        http::Request::post(base.as_str())
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(b)))
                    }
                }?;
                let r = c.request(req).await?;
                let status = r.status();
                r.into_body().collect().await?;
                if !status.is_success() {
                    bail!("HTTP {status}");
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    store: &'static str,
    caller: &'static str,
    op: Op,
    serial: Percentiles,
    ops_per_s: f64,
}

/// Serial latency of `n` calls (after `n / 10` warm-up calls).
async fn serial(
    c: &mut Caller,
    op: Op,
    n: u64,
    v: &Bytes,
    j: &Bytes,
) -> anyhow::Result<Percentiles> {
    let mut h = Latency::default();
    for i in 0..n + n / 10 {
        let key = format!("k{}", i % 1000);
        let t0 = Instant::now();
        c.call(op, &key, v, j).await?;
        if i >= n / 10 {
            h.record_us(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
    Ok(h.percentiles())
}

/// Calls per second with [`IN_FLIGHT`] callers for `secs`.
async fn throughput(c: &Caller, op: Op, secs: f64, v: &Bytes, j: &Bytes) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..IN_FLIGHT {
        let (mut c, done, v, j) = (c.clone(), done.clone(), v.clone(), j.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                let key = format!("k{}", (w as u64 * 7919 + i) % 1000);
                c.call(op, &key, &v, &j).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_p(mut v: Vec<Percentiles>) -> Percentiles {
    v.sort_by_key(|p| p.p50_us);
    v.get(v.len() / 2).cloned().unwrap_or_default()
}

struct World {
    procs: Procs,
    skiffd_pid: u32,
    grpc: u16,
    http: u16,
    redis_port: u16,
    db: PathBuf,
}

fn start(bin: &Path, work: &Path) -> anyhow::Result<World> {
    let mut procs = Procs::default();
    let redis_port = free_port()?;
    procs
        .spawn(
            Command::new("redis-server")
                .args([
                    "--port",
                    &redis_port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .current_dir(work),
        )
        .context("redis-server (apt-get install redis-server)")?;
    let comps = work.join("components");
    std::fs::create_dir_all(&comps)?;
    let db = work.join("state.db");
    let component = |name: &str, ty: &str, k: &str, v: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n  - name: {k}\n    value: \"{v}\"\n"
        )
    };
    std::fs::write(
        comps.join("red.yaml"),
        component(
            "red",
            "state.redis",
            "redisHost",
            &format!("127.0.0.1:{redis_port}"),
        ),
    )?;
    std::fs::write(
        comps.join("lite.yaml"),
        component(
            "lite",
            "state.sqlite",
            "connectionString",
            &db.display().to_string(),
        ),
    )?;
    let (http, grpc) = (free_port()?, free_port()?);
    let skiffd_pid = procs.spawn_logged(
        Command::new(bin.join("skiffd"))
            .args(["--app-id", APP_ID, "--log-level", "warn"])
            .args(["--dapr-http-port", &http.to_string()])
            .args(["--dapr-grpc-port", &grpc.to_string()])
            .args(["--metrics-port", &free_port()?.to_string()])
            .arg("--resources-path")
            .arg(&comps)
            .env("SKIFF_HOME", work)
            // One worker: the sidecar gets one core, as daprd's figures.
            .env("SKIFF_WORKER_THREADS", "1")
            .env_remove("DAPR_API_TOKEN"),
        &work.join("skiffd.log"),
    )?;
    Ok(World {
        procs,
        skiffd_pid,
        grpc,
        http,
        redis_port,
        db,
    })
}

async fn direct(type_name: &str, k: &str, v: &str) -> anyhow::Result<Arc<dyn StateStore>> {
    let mut p = Properties::new();
    p.insert(k, v);
    match registry::open(type_name, "v1", &p).await? {
        Component::State(s) => Ok(s),
        _ => bail!("{type_name} is not a state store"),
    }
}

pub async fn run(a: StateArgs) -> anyhow::Result<()> {
    if a.rounds < 3 {
        bail!("--rounds must be at least 3");
    }
    let bin = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("locating skiff-perf's directory")?,
    };
    if !bin.join("skiffd").exists() {
        bail!(
            "skiffd not found in {}: cargo build --release --workspace, or --bin-dir",
            bin.display()
        );
    }
    let work = std::env::temp_dir().join(format!("skiff-perf-state-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut w = start(&bin, &work)?;
    wait_port(w.redis_port).await?;
    wait_port(w.http).await?;
    wait_port(w.grpc).await?;
    w.procs.check_alive()?;

    let (n, secs) = if a.quick { (2_000, 1.0) } else { (10_000, 4.0) };
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    // The same 1 KiB as a JSON string (HTTP saves carry JSON).
    let json = Bytes::from(format!("\"{}\"", "x".repeat(VALUE_BYTES - 2)));
    let grpc = GrpcUnary::connect(&format!("127.0.0.1:{}", w.grpc)).await?;
    let http_client = Client::builder(TokioExecutor::new()).build_http();
    let prefix = format!("{APP_ID}||");
    let red = direct(
        "state.redis",
        "redisHost",
        &format!("127.0.0.1:{}", w.redis_port),
    )
    .await?;
    let lite = direct(
        "state.sqlite",
        "connectionString",
        &w.db.display().to_string(),
    )
    .await?;
    let stores: [(&'static str, Vec<Caller>); 2] = [
        (
            "redis",
            vec![
                Caller::Direct(red, prefix.clone()),
                Caller::Grpc(grpc.clone(), "red".into()),
                Caller::Http(
                    Box::new(http_client.clone()),
                    format!("http://127.0.0.1:{}/v1.0/state/red", w.http),
                ),
            ],
        ),
        (
            "sqlite",
            vec![
                Caller::Direct(lite, prefix.clone()),
                Caller::Grpc(grpc.clone(), "lite".into()),
                Caller::Http(
                    Box::new(http_client.clone()),
                    format!("http://127.0.0.1:{}/v1.0/state/lite", w.http),
                ),
            ],
        ),
    ];

    let mut rows = Vec::new();
    for (store, callers) in &stores {
        for op in [Op::Set, Op::Get] {
            let mut lat: Vec<Vec<Percentiles>> = vec![Vec::new(); callers.len()];
            let mut tput: Vec<Vec<f64>> = vec![Vec::new(); callers.len()];
            // Rounds interleave the callers, so drift on a shared machine
            // hits them alike.
            for _ in 0..a.rounds {
                for (i, c) in callers.iter().enumerate() {
                    let mut c = c.clone();
                    lat[i].push(serial(&mut c, op, n, &value, &json).await?);
                    tput[i].push(throughput(&c, op, secs, &value, &json).await?);
                }
            }
            for (i, c) in callers.iter().enumerate() {
                rows.push(Row {
                    store,
                    caller: c.name(),
                    op,
                    serial: median_p(std::mem::take(&mut lat[i])),
                    ops_per_s: median(std::mem::take(&mut tput[i])),
                });
            }
            w.procs.check_alive()?;
        }
    }

    // The sidecar's CPU at 1000 gRPC GETs/s (daprd's published figure is
    // at 1000 QPS).
    let mut g = stores[0].1[1].clone();
    let paced = if a.quick { 2.0 } else { 5.0 };
    let cpu0 = procfs::cpu_seconds(w.skiffd_pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while t0.elapsed().as_secs_f64() < paced {
        tick.tick().await;
        g.call(Op::Get, "k1", &value, &json).await?;
        sent += 1;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(w.skiffd_pid).unwrap_or(0.0) - cpu0;
    let qps = sent as f64 / wall;
    let mcpu = cpu / wall * 1000.0;
    let cpu_ms_per_1000 = cpu * 1000.0 / (sent as f64 / 1000.0);

    // Memory: RSS after the runs above, then after the soak.
    let soak = a
        .soak_ops
        .unwrap_or(if a.quick { 100_000 } else { 1_000_000 });
    let rss0 = procfs::memory_kib(w.skiffd_pid).map_or(0, |m| m.0);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..IN_FLIGHT as u64 {
        let (mut c, done, v, j) = (g.clone(), done.clone(), value.clone(), json.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while done.fetch_add(1, Ordering::Relaxed) < soak {
                let op = if i % 2 == 0 { Op::Get } else { Op::Set };
                c.call(op, &format!("soak{}", i % 10_000), &v, &j).await?;
                i += IN_FLIGHT as u64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rss1 = procfs::memory_kib(w.skiffd_pid).map_or(0, |m| m.0);
    w.procs.check_alive()?;

    print(&rows, qps, mcpu, cpu_ms_per_1000, soak, rss0, rss1);
    if let Some(p) = &a.json {
        let doc = serde_json::json!({
            "value_bytes": VALUE_BYTES,
            "in_flight": IN_FLIGHT,
            "rounds": a.rounds,
            "rows": rows,
            "cpu": {"qps": qps, "mcpu": mcpu, "cpu_ms_per_1000_gets": cpu_ms_per_1000},
            "soak": {"ops": soak, "rss_before_kib": rss0, "rss_after_kib": rss1},
        });
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?)?;
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn print(rows: &[Row], qps: f64, mcpu: f64, per_1000: f64, soak: u64, rss0: u64, rss1: u64) {
    println!(
        "{:<7} {:<4} {:<11} {:>8} {:>8} {:>10} {:>10} {:>9} {:>8}",
        "store", "op", "caller", "p50 µs", "p99 µs", "+p50 µs", "+p99 µs", "ops/s", "× floor"
    );
    for r in rows {
        let floor = rows
            .iter()
            .find(|f| f.store == r.store && f.op == r.op && f.caller == "direct");
        let (d50, d99, ratio) = match floor {
            Some(f) if r.caller != "direct" => (
                format!("{:+}", r.serial.p50_us as i64 - f.serial.p50_us as i64),
                format!("{:+}", r.serial.p99_us as i64 - f.serial.p99_us as i64),
                format!("{:.2}", r.ops_per_s / f.ops_per_s.max(1.0)),
            ),
            _ => ("".into(), "".into(), "".into()),
        };
        println!(
            "{:<7} {:<4} {:<11} {:>8} {:>8} {:>10} {:>10} {:>9.0} {:>8}",
            r.store,
            format!("{:?}", r.op).to_lowercase(),
            r.caller,
            r.serial.p50_us,
            r.serial.p99_us,
            d50,
            d99,
            r.ops_per_s,
            ratio
        );
    }
    println!(
        "sidecar CPU at {qps:.0} gRPC GETs/s: {mcpu:.1} mCPU ({per_1000:.1} CPU-ms per 1000 GETs)"
    );
    println!(
        "sidecar RSS: {rss0} KiB before, {rss1} KiB after {soak} more gRPC ops ({:+} KiB)",
        rss1 as i64 - rss0 as i64
    );
}
