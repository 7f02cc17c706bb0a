//! `skiff-perf lock`: TryLock and an output binding call through one
//! skiffd against the floor, side by side in one run.
//!
//! The floors are Skiff's own `lock.redis` and `bindings.redis` drivers
//! called in this process: the same commands on the same redis-rs
//! connection to the same Redis — everything but the sidecar. Each
//! TryLock takes a free lock (a new resource each time, so every call
//! succeeds and writes) and is then unlocked, untimed; each binding call
//! is a `create` (`SET`) of a small value. Serial latency, median of the
//! rounds, for the floor, the sidecar's gRPC API (`TryLockAlpha1`,
//! `InvokeBinding`: what the SDKs call) and its HTTP API; TryLock on
//! `lock.in-memory` through the sidecar too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use skiff_components::Properties;
use skiff_components::bindings::{OutputBinding, Request as BindingRequest};
use skiff_components::lock::LockStore;
use skiff_components::registry::{self, Component};
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_proto::runtime::{InvokeBindingRequest, TryLockRequest, UnlockRequest};
use tonic::transport::Channel;

use crate::bench::{Procs, free_port, wait_port};
use crate::hist::{Latency, Percentiles};

const APP_ID: &str = "perf";
/// Expiry of each lock taken (they are unlocked at once).
const EXPIRY_SECS: i32 = 30;

#[derive(Args)]
pub struct LockArgs {
    /// Short runs, for a result in under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Where skiffd is (default: next to skiff-perf).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone)]
enum Caller {
    Direct(Arc<dyn LockStore>),
    Grpc(DaprClient<Channel>, String),
    Http(Client<HttpConnector, Full<Bytes>>, String, String),
    /// Output binding `create` calls.
    BindingDirect(Arc<dyn OutputBinding>),
    BindingGrpc(DaprClient<Channel>, String),
    BindingHttp(Client<HttpConnector, Full<Bytes>>, String),
}

impl Caller {
    fn name(&self) -> &'static str {
        match self {
            Self::Direct(..) | Self::BindingDirect(..) => "direct",
            Self::Grpc(..) | Self::BindingGrpc(..) => "skiff-grpc",
            Self::Http(..) | Self::BindingHttp(..) => "skiff-http",
        }
    }

    /// TryLock of `id` (timed by the caller), then its unlock.
    async fn lock(&mut self, id: &str) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let took;
        match self {
            Self::Direct(s) => {
                // The sidecar's key for it, so both write the same shape.
                let key = format!("lock||{APP_ID}||{id}");
                let ok = s
                    .try_lock(&key, "perf", Duration::from_secs(EXPIRY_SECS as u64))
                    .await?;
                took = t0.elapsed();
                if !ok {
                    bail!("direct: {id} was held");
                }
                s.unlock(&key, "perf").await?;
            }
            Self::Grpc(c, store) => {
                let r = c
                    .try_lock_alpha1(TryLockRequest {
                        store_name: store.clone(),
                        resource_id: id.to_owned(),
                        lock_owner: "perf".into(),
                        expiry_in_seconds: EXPIRY_SECS,
                    })
                    .await?
                    .into_inner();
                took = t0.elapsed();
                if !r.success {
                    bail!("grpc: {id} was held");
                }
                c.unlock_alpha1(UnlockRequest {
                    store_name: store.clone(),
                    resource_id: id.to_owned(),
                    lock_owner: "perf".into(),
                })
                .await?;
            }
            Self::BindingDirect(b) => {
                let mut metadata = skiff_components::bindings::Metadata::new();
                metadata.insert("key".into(), id.to_owned());
                b.invoke(BindingRequest {
                    operation: "create".into(),
                    data: Bytes::from_static(b"\"v\""),
                    metadata,
                })
                .await?;
                took = t0.elapsed();
            }
            Self::BindingGrpc(c, name) => {
                c.invoke_binding(InvokeBindingRequest {
                    name: name.clone(),
                    data: Bytes::from_static(b"\"v\""),
                    metadata: [("key".to_owned(), id.to_owned())].into(),
                    operation: "create".into(),
                })
                .await?;
                took = t0.elapsed();
            }
            Self::BindingHttp(c, url) => {
                let body =
                    format!(r#"{{"operation":"create","data":"v","metadata":{{"key":"{id}"}}}}"#);
                let r = c
                    .request(
                        http::Request::post(url.as_str())
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))?,
                    )
                    .await?;
                let status = r.status();
                r.into_body().collect().await?;
                took = t0.elapsed();
                if !status.is_success() {
                    bail!("http binding: {status}");
                }
            }
            Self::Http(c, lock_url, unlock_url) => {
                let body = format!(
                    r#"{{"resourceId":"{id}","lockOwner":"perf","expiryInSeconds":{EXPIRY_SECS}}}"#
                );
                let r = c
                    .request(
                        http::Request::post(lock_url.as_str())
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))?,
                    )
                    .await?;
                let status = r.status();
                let b = r.into_body().collect().await?.to_bytes();
                took = t0.elapsed();
                if !status.is_success() || &b[..] != br#"{"success":true}"# {
                    bail!("http: {status} {}", String::from_utf8_lossy(&b));
                }
                let body = format!(r#"{{"resourceId":"{id}","lockOwner":"perf"}}"#);
                c.request(
                    http::Request::post(unlock_url.as_str())
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))?,
                )
                .await?
                .into_body()
                .collect()
                .await?;
            }
        }
        Ok(took)
    }
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    /// What was called: `redis` / `in-memory` TryLock, or `binding`.
    store: &'static str,
    caller: &'static str,
    try_lock: Percentiles,
}

async fn serial(c: &mut Caller, n: u64, round: usize) -> anyhow::Result<Percentiles> {
    let mut h = Latency::default();
    for i in 0..n + n / 10 {
        let took = c.lock(&format!("r{round}-{i}")).await?;
        if i >= n / 10 {
            h.record_us(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }
    Ok(h.percentiles())
}

fn median_p(mut v: Vec<Percentiles>) -> Percentiles {
    v.sort_by_key(|p| p.p50_us);
    v.get(v.len() / 2).cloned().unwrap_or_default()
}

pub async fn run(a: LockArgs) -> anyhow::Result<()> {
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
    let work = std::env::temp_dir().join(format!("skiff-perf-lock-{}", std::process::id()));
    std::fs::create_dir_all(work.join("components"))?;
    let mut procs = Procs::default();
    let redis_port = free_port()?;
    procs
        .spawn(
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(&work),
        )
        .context("redis-server (apt-get install redis-server)")?;
    let redis = format!("127.0.0.1:{redis_port}");
    std::fs::write(
        work.join("components/red.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: red\nspec:\n  type: lock.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"{redis}\"\n"
        ),
    )?;
    std::fs::write(
        work.join("components/bind.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: bindings.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"{redis}\"\n"
        ),
    )?;
    std::fs::write(
        work.join("components/mem.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: mem\nspec:\n  type: lock.in-memory\n  version: v1\n  metadata: []\n",
    )?;
    let (http, grpc) = (free_port()?, free_port()?);
    procs.spawn_logged(
        Command::new(bin.join("skiffd"))
            .args(["--app-id", APP_ID, "--log-level", "warn"])
            .args(["--dapr-http-port", &http.to_string()])
            .args(["--dapr-grpc-port", &grpc.to_string()])
            .args(["--metrics-port", &free_port()?.to_string()])
            .arg("--resources-path")
            .arg(work.join("components"))
            .env("SKIFF_HOME", &work)
            .env("SKIFF_WORKER_THREADS", "1")
            .env_remove("DAPR_API_TOKEN"),
        &work.join("skiffd.log"),
    )?;
    wait_port(redis_port).await?;
    wait_port(http).await?;
    wait_port(grpc).await?;
    procs.check_alive()?;

    let mut p = Properties::new();
    p.insert("redisHost", redis.as_str());
    let Component::Lock(direct) = registry::open("lock.redis", "v1", &p).await? else {
        bail!("lock.redis is not a lock store");
    };
    let Component::Binding {
        output: Some(bind), ..
    } = registry::open("bindings.redis", "v1", &p).await?
    else {
        bail!("bindings.redis is not an output binding");
    };
    let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
        .connect()
        .await?;
    let hc: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = |op: &str, s: &str| format!("http://127.0.0.1:{http}/v1.0-alpha1/{op}/{s}");
    let sets: [(&'static str, Vec<Caller>); 3] = [
        (
            "redis",
            vec![
                Caller::Direct(direct),
                Caller::Grpc(DaprClient::new(channel.clone()), "red".into()),
                Caller::Http(hc.clone(), url("lock", "red"), url("unlock", "red")),
            ],
        ),
        (
            "in-memory",
            vec![
                Caller::Grpc(DaprClient::new(channel.clone()), "mem".into()),
                Caller::Http(hc.clone(), url("lock", "mem"), url("unlock", "mem")),
            ],
        ),
        (
            "binding",
            vec![
                Caller::BindingDirect(bind),
                Caller::BindingGrpc(DaprClient::new(channel.clone()), "cache".into()),
                Caller::BindingHttp(
                    hc.clone(),
                    format!("http://127.0.0.1:{http}/v1.0/bindings/cache"),
                ),
            ],
        ),
    ];
    let n = if a.quick { 2_000 } else { 10_000 };
    let mut rows = Vec::new();
    for (store, callers) in &sets {
        let mut lat: Vec<Vec<Percentiles>> = vec![Vec::new(); callers.len()];
        for round in 0..a.rounds {
            for (i, c) in callers.iter().enumerate() {
                let mut c = c.clone();
                lat[i].push(serial(&mut c, n, round * 10 + i).await?);
            }
        }
        for (i, c) in callers.iter().enumerate() {
            rows.push(Row {
                store,
                caller: c.name(),
                try_lock: median_p(std::mem::take(&mut lat[i])),
            });
        }
        procs.check_alive()?;
    }
    let floor = |store: &str| {
        rows.iter()
            .find(|r| r.store == store && r.caller == "direct")
            .map(|r| r.try_lock.clone())
    };
    println!(
        "{:<10} {:<11} {:>8} {:>8} {:>8} {:>12}",
        "call", "caller", "p50 µs", "p90 µs", "p99 µs", "+p50 µs"
    );
    for r in &rows {
        let added = match floor(r.store) {
            Some(f) if r.caller != "direct" => {
                format!("{:+}", r.try_lock.p50_us as i64 - f.p50_us as i64)
            }
            _ => String::new(),
        };
        println!(
            "{:<10} {:<11} {:>8} {:>8} {:>8} {:>12}",
            r.store, r.caller, r.try_lock.p50_us, r.try_lock.p90_us, r.try_lock.p99_us, added
        );
    }
    if let Some(p) = &a.json {
        let doc = serde_json::json!({"rounds": a.rounds, "calls_per_round": n, "rows": rows});
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?)?;
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
