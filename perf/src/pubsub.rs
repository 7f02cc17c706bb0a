//! `skiff-perf pubsub`: publish → delivery through two sidecars against
//! the floor, side by side in one run.
//!
//! The floor is Skiff's own `pubsub.redis` driver in this process doing
//! the same produce → consume → ack loop on the same Redis: everything but
//! the sidecars. The sidecar path: gRPC `PublishEvent` to a publisher
//! sidecar, which writes the CloudEvent to Redis; a subscriber sidecar
//! fetches it and POSTs it to an HTTP app in this process, which takes the
//! send time out of the payload. Measured: end-to-end latency at a fixed
//! rate (1 KiB payloads), publish latency at that rate, sustained
//! throughput (single and bulk publish), the sidecars' CPU at the fixed
//! rate, and the embedded SQLite broker's end-to-end throughput.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use prost::Message as _;
use serde::Serialize;
use skiff_components::Properties;
use skiff_components::pubsub::{Outgoing, PubSub, SubscribeOptions};
use skiff_components::registry::{self, Component};
use skiff_proto::runtime::dapr_client::DaprClient;
use skiff_proto::runtime::{BulkPublishRequest, BulkPublishRequestEntry, PublishEventRequest};
use tonic::transport::Channel;

use crate::bench::{Procs, free_port};
use crate::hist::{Latency, Percentiles};
use crate::load::GrpcUnary;
use crate::procfs;

pub const PAYLOAD_BYTES: usize = 1024;
/// In flight for the throughput runs (publishers, and the subscription's
/// `concurrency`).
pub const IN_FLIGHT: usize = 64;
pub const BULK: usize = 100;

#[derive(Args)]
pub struct PubSubArgs {
    /// Short runs, for a result in about a minute.
    #[arg(long)]
    pub quick: bool,
    /// Messages per second of the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Where skiffd is (default: next to skiff-perf).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The clock both ends read: nanoseconds since the run began.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A 1 KiB JSON payload carrying its send time.
fn payload(seq: u64) -> Bytes {
    let head = format!(r#"{{"t":{},"seq":{seq},"pad":""#, now_ns());
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    let mut s = head;
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// The send time in a payload (or in the CloudEvent around it).
fn sent_at(b: &[u8]) -> Option<u64> {
    let i = b.windows(4).position(|w| w == b"\"t\":")?;
    let rest = &b[i + 4..];
    let start = rest.iter().position(u8::is_ascii_digit)?;
    let digits: String = rest[start..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .map(|c| char::from(*c))
        .collect();
    digits.parse().ok()
}

/// What the receiving end saw: a latency histogram and a count.
#[derive(Default)]
struct Sink {
    lat: Mutex<Latency>,
    got: AtomicU64,
}

impl Sink {
    fn take(&self, body: &[u8]) {
        if let Some(t) = sent_at(body) {
            let us = now_ns().saturating_sub(t) / 1000;
            if let Ok(mut l) = self.lat.lock() {
                l.record_us(us);
            }
        }
        self.got.fetch_add(1, Ordering::Relaxed);
    }

    fn reset(&self) -> (Percentiles, u64) {
        let p = self
            .lat
            .lock()
            .map(|mut l| std::mem::take(&mut *l).percentiles())
            .unwrap_or_default();
        (p, self.got.swap(0, Ordering::Relaxed))
    }
}

/// The subscriber app: `/dapr/subscribe`, and every POST goes to the sink.
async fn app(sink: Arc<Sink>) -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let body = if req.uri().path() == "/dapr/subscribe" {
                                Bytes::from_static(br#"[{"pubsubname":"red","topic":"e2e","route":"/red"},{"pubsubname":"lite","topic":"e2e","route":"/lite"}]"#)
                            } else {
                                let b = req.into_body().collect().await?.to_bytes();
                                sink.take(&b);
                                Bytes::new()
                            };
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

struct World {
    procs: Procs,
    pub_pid: u32,
    sub_pid: u32,
    pub_grpc: u16,
    redis_port: u16,
}

fn start(bin: &Path, work: &Path, app_port: u16) -> anyhow::Result<World> {
    let mut procs = Procs::default();
    let redis_port = free_port()?;
    procs
        .spawn(
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(work),
        )
        .context("redis-server (apt-get install redis-server)")?;
    let comps = work.join("components");
    std::fs::create_dir_all(&comps)?;
    let component = |name: &str, ty: &str, meta: &[(&str, String)]| {
        let mut y = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n"
        );
        for (k, v) in meta {
            y.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
        }
        y
    };
    let conc = ("concurrency", IN_FLIGHT.to_string());
    std::fs::write(
        comps.join("red.yaml"),
        component(
            "red",
            "pubsub.redis",
            &[
                ("redisHost", format!("127.0.0.1:{redis_port}")),
                conc.clone(),
            ],
        ),
    )?;
    std::fs::write(
        comps.join("lite.yaml"),
        component(
            "lite",
            "pubsub.skiff.sqlite",
            &[
                ("connectionString", work.join("ps.db").display().to_string()),
                conc,
            ],
        ),
    )?;
    let sidecar = |procs: &mut Procs, id: &str, app: Option<u16>| -> anyhow::Result<(u32, u16)> {
        let grpc = free_port()?;
        let mut cmd = Command::new(bin.join("skiffd"));
        cmd.args(["--app-id", id, "--log-level", "warn"])
            .args(["--dapr-http-port", &free_port()?.to_string()])
            .args(["--dapr-grpc-port", &grpc.to_string()])
            .args(["--metrics-port", &free_port()?.to_string()])
            .arg("--resources-path")
            .arg(&comps)
            .env("SKIFF_HOME", work)
            // One worker each: a sidecar gets one core, as daprd's figures.
            .env("SKIFF_WORKER_THREADS", "1")
            .env_remove("DAPR_API_TOKEN");
        if let Some(p) = app {
            cmd.args(["--app-port", &p.to_string()]);
        }
        let pid = procs.spawn_logged(&mut cmd, &work.join(format!("{id}.log")))?;
        Ok((pid, grpc))
    };
    let (pub_pid, pub_grpc) = sidecar(&mut procs, "pub", None)?;
    let (sub_pid, _) = sidecar(&mut procs, "sub", Some(app_port))?;
    Ok(World {
        procs,
        pub_pid,
        sub_pid,
        pub_grpc,
        redis_port,
    })
}

/// Who publishes.
#[derive(Clone)]
enum Publisher {
    Direct(Arc<dyn PubSub>),
    /// The lean caller for single publishes (tonic's client would add its
    /// own cost to what the sidecar adds); tonic for bulk, whose answer
    /// is read.
    Sidecar(GrpcUnary, Box<DaprClient<Channel>>, &'static str),
}

impl Publisher {
    async fn one(&mut self, topic: &str, data: Bytes) -> anyhow::Result<()> {
        match self {
            Self::Direct(d) => Ok(d
                .publish(
                    topic,
                    Outgoing {
                        data,
                        metadata: Vec::new(),
                    },
                )
                .await?),
            Self::Sidecar(lean, _, ps) => {
                let msg = PublishEventRequest {
                    pubsub_name: (*ps).to_owned(),
                    topic: topic.to_owned(),
                    data,
                    data_content_type: "application/json".into(),
                    metadata: Default::default(),
                }
                .encode_to_vec();
                lean.call("/dapr.proto.runtime.v1.Dapr/PublishEvent", &msg)
                    .await
                    .map_err(anyhow::Error::msg)
            }
        }
    }

    async fn bulk(&mut self, topic: &str, seq: u64) -> anyhow::Result<()> {
        match self {
            Self::Direct(d) => {
                let msgs = (0..BULK as u64)
                    .map(|i| Outgoing {
                        data: payload(seq + i),
                        metadata: Vec::new(),
                    })
                    .collect();
                for r in d.publish_many(topic, msgs).await {
                    r?;
                }
                Ok(())
            }
            Self::Sidecar(_, c, ps) => {
                let entries = (0..BULK as u64)
                    .map(|i| BulkPublishRequestEntry {
                        entry_id: i.to_string(),
                        event: payload(seq + i),
                        content_type: "application/json".into(),
                        metadata: Default::default(),
                    })
                    .collect();
                let r = c
                    .bulk_publish_event(BulkPublishRequest {
                        pubsub_name: (*ps).to_owned(),
                        topic: topic.to_owned(),
                        entries,
                        metadata: Default::default(),
                    })
                    .await?
                    .into_inner();
                if !r.failed_entries.is_empty() {
                    bail!("{} bulk entries failed", r.failed_entries.len());
                }
                Ok(())
            }
        }
    }
}

/// The floor's consumer: fetch, take, ack, as a subscriber sidecar does.
async fn direct_consumer(
    d: Arc<dyn PubSub>,
    topic: &str,
    sink: Arc<Sink>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let sub = d
        .subscribe(SubscribeOptions {
            topic: topic.to_owned(),
            group: "direct".into(),
            claim: Duration::from_secs(60),
        })
        .await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(got) = sub.fetch(IN_FLIGHT, Duration::from_millis(200)).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let ids: Vec<String> = got.iter().map(|r| r.id.clone()).collect();
            for r in &got {
                sink.take(&r.data);
            }
            let _ = sub.ack(&ids).await;
        }
    }))
}

/// Publishes at `rate` per second for `secs`; the publish latencies.
async fn paced(p: &Publisher, topic: &str, rate: u64, secs: f64) -> anyhow::Result<Percentiles> {
    let lat = Arc::new(Mutex::new(Latency::default()));
    let n = (rate as f64 * secs) as u64;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let t0 = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + gap * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let (mut p, lat, topic) = (p.clone(), lat.clone(), topic.to_owned());
        tasks.spawn(async move {
            let s = Instant::now();
            let r = p.one(&topic, payload(i)).await;
            if let Ok(mut l) = lat.lock() {
                l.record_us(u64::try_from(s.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            r
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(lat.lock().map(|l| l.percentiles()).unwrap_or_default())
}

/// Publishes as fast as [`IN_FLIGHT`] publishers can for `secs`; messages
/// published.
async fn flood(p: &Publisher, topic: &str, secs: f64, bulk: bool) -> anyhow::Result<u64> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let sent = Arc::new(AtomicU64::new(0));
    let workers = if bulk { IN_FLIGHT / 8 } else { IN_FLIGHT };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (mut p, sent, topic) = (p.clone(), sent.clone(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                let seq = (w as u64) << 40 | i;
                if bulk {
                    p.bulk(&topic, seq).await?;
                    sent.fetch_add(BULK as u64, Ordering::Relaxed);
                } else {
                    p.one(&topic, payload(seq)).await?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(sent.load(Ordering::Relaxed))
}

/// Waits until `sink` has `want` messages (or `limit` passes); the
/// delivered rate from `t0`.
async fn drained(sink: &Sink, want: u64, t0: Instant, limit: Duration) -> (u64, f64) {
    let end = Instant::now() + limit;
    while sink.got.load(Ordering::Relaxed) < want && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = sink.got.load(Ordering::Relaxed);
    (got, got as f64 / t0.elapsed().as_secs_f64())
}

#[derive(Serialize)]
struct Figures {
    rate: u64,
    e2e_direct: Percentiles,
    e2e_skiff: Percentiles,
    publish_direct: Percentiles,
    publish_skiff: Percentiles,
    throughput_direct: f64,
    throughput_skiff: f64,
    bulk_throughput_direct: f64,
    bulk_throughput_skiff: f64,
    sqlite_throughput: f64,
    sqlite_bulk_throughput: f64,
    mcpu_publisher_at_rate: f64,
    mcpu_subscriber_at_rate: f64,
}

/// One measured throughput run: publish for `secs`, wait for delivery.
async fn throughput(
    p: &Publisher,
    topic: &str,
    sink: &Sink,
    secs: f64,
    bulk: bool,
) -> anyhow::Result<f64> {
    sink.reset();
    let t0 = Instant::now();
    let sent = flood(p, topic, secs, bulk).await?;
    let (got, rate) = drained(sink, sent, t0, Duration::from_secs(60)).await;
    if got < sent {
        eprintln!("  {topic}: {got} of {sent} delivered within the drain limit");
    }
    Ok(rate)
}

pub async fn run(a: PubSubArgs) -> anyhow::Result<()> {
    LazyLock::force(&EPOCH);
    let bin = match &a.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("skiff-perf has no directory")?
            .to_path_buf(),
    };
    let work = std::env::temp_dir().join(format!("skiff-perf-pubsub-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (lat_secs, tp_secs) = if a.quick { (3.0, 2.0) } else { (10.0, 5.0) };

    let sidecar_sink = Arc::new(Sink::default());
    let app_port = app(sidecar_sink.clone()).await?;
    let mut world = start(&bin, &work, app_port)?;
    crate::bench::wait_port(world.pub_grpc).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.procs.check_alive()?;
    let ch = Channel::from_shared(format!("http://127.0.0.1:{}", world.pub_grpc))?
        .connect()
        .await?;
    let lean = GrpcUnary::connect(&format!("127.0.0.1:{}", world.pub_grpc)).await?;
    let via_red = Publisher::Sidecar(lean.clone(), Box::new(DaprClient::new(ch.clone())), "red");
    let via_lite = Publisher::Sidecar(lean, Box::new(DaprClient::new(ch)), "lite");

    let mut p = Properties::new();
    p.insert("redisHost", format!("127.0.0.1:{}", world.redis_port));
    let Component::PubSub(driver) = registry::open("pubsub.redis", "v1", &p).await? else {
        bail!("pubsub.redis is not a pub/sub driver");
    };
    let direct_sink = Arc::new(Sink::default());
    let consumer = direct_consumer(driver.clone(), "direct", direct_sink.clone()).await?;
    let direct = Publisher::Direct(driver);

    // Warm both paths, then wait for the subscriber sidecar to be in place.
    let t0 = Instant::now();
    while sidecar_sink.got.load(Ordering::Relaxed) == 0 {
        via_red.clone().one("e2e", payload(0)).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t0.elapsed() > Duration::from_secs(20) {
            bail!(
                "the subscriber sidecar got nothing within 20s (logs in {})",
                work.display()
            );
        }
    }
    paced(&direct, "direct", a.rate, 1.0).await?;
    paced(&via_red, "e2e", a.rate, 1.0).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    eprintln!("latency at {} msg/s, {lat_secs}s each", a.rate);
    direct_sink.reset();
    let publish_direct = paced(&direct, "direct", a.rate, lat_secs).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (e2e_direct, _) = direct_sink.reset();
    sidecar_sink.reset();
    let cpu0 = (
        procfs::cpu_seconds(world.pub_pid),
        procfs::cpu_seconds(world.sub_pid),
    );
    let t_cpu = Instant::now();
    let publish_skiff = paced(&via_red, "e2e", a.rate, lat_secs).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu1 = (
        procfs::cpu_seconds(world.pub_pid),
        procfs::cpu_seconds(world.sub_pid),
    );
    let elapsed = t_cpu.elapsed().as_secs_f64();
    let (e2e_skiff, _) = sidecar_sink.reset();
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => (y - x) / elapsed * 1000.0,
        _ => 0.0,
    };
    let mcpu_pub = per(cpu0.0, cpu1.0);
    let mcpu_sub = per(cpu0.1, cpu1.1);

    eprintln!("throughput, {tp_secs}s each");
    let throughput_direct = throughput(&direct, "direct", &direct_sink, tp_secs, false).await?;
    let throughput_skiff = throughput(&via_red, "e2e", &sidecar_sink, tp_secs, false).await?;
    let bulk_throughput_direct = throughput(&direct, "direct", &direct_sink, tp_secs, true).await?;
    let bulk_throughput_skiff = throughput(&via_red, "e2e", &sidecar_sink, tp_secs, true).await?;
    let sqlite_throughput = throughput(&via_lite, "e2e", &sidecar_sink, tp_secs, false).await?;
    let sqlite_bulk_throughput = throughput(&via_lite, "e2e", &sidecar_sink, tp_secs, true).await?;
    consumer.abort();
    world.procs.check_alive()?;

    let f = Figures {
        rate: a.rate,
        e2e_direct,
        e2e_skiff,
        publish_direct,
        publish_skiff,
        throughput_direct,
        throughput_skiff,
        bulk_throughput_direct,
        bulk_throughput_skiff,
        sqlite_throughput,
        sqlite_bulk_throughput,
        mcpu_publisher_at_rate: mcpu_pub,
        mcpu_subscriber_at_rate: mcpu_sub,
    };
    print(&f);
    if let Some(j) = &a.json {
        std::fs::write(j, serde_json::to_string_pretty(&f)?)?;
    }
    drop(world);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn print(f: &Figures) {
    let r = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    println!("pub/sub, 1 KiB payloads, Redis Streams; floor = Skiff's driver in-process\n");
    println!(
        "| at {} msg/s | direct p50 | skiff p50 | ratio | direct p99 | skiff p99 | ratio |",
        f.rate
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, d, s) in [
        ("end to end (µs)", &f.e2e_direct, &f.e2e_skiff),
        ("publish (µs)", &f.publish_direct, &f.publish_skiff),
    ] {
        println!(
            "| {name} | {} | {} | {:.2}× | {} | {} | {:.2}× |",
            d.p50_us,
            s.p50_us,
            r(s.p50_us, d.p50_us),
            d.p99_us,
            s.p99_us,
            r(s.p99_us, d.p99_us)
        );
    }
    println!(
        "\npublish added latency: p50 +{} µs, p90 +{} µs",
        f.publish_skiff
            .p50_us
            .saturating_sub(f.publish_direct.p50_us),
        f.publish_skiff
            .p90_us
            .saturating_sub(f.publish_direct.p90_us)
    );
    println!("\n| throughput (msg/s delivered) | direct | skiff | ratio |\n|---|---|---|---|");
    println!(
        "| single publish | {:.0} | {:.0} | {:.0}% |",
        f.throughput_direct,
        f.throughput_skiff,
        100.0 * f.throughput_skiff / f.throughput_direct.max(1.0)
    );
    println!(
        "| bulk publish ({BULK}) | {:.0} | {:.0} | {:.0}% |",
        f.bulk_throughput_direct,
        f.bulk_throughput_skiff,
        100.0 * f.bulk_throughput_skiff / f.bulk_throughput_direct.max(1.0)
    );
    println!(
        "\nembedded pubsub.skiff.sqlite end to end: {:.0} msg/s single publish, {:.0} msg/s bulk",
        f.sqlite_throughput, f.sqlite_bulk_throughput
    );
    println!(
        "sidecar CPU at {} msg/s: publisher {:.0} mCPU, subscriber {:.0} mCPU",
        f.rate, f.mcpu_publisher_at_rate, f.mcpu_subscriber_at_rate
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_send_time() {
        let p = payload(7);
        assert_eq!(p.len(), PAYLOAD_BYTES);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
        let t = sent_at(&p).expect("t");
        let ce = format!(
            r#"{{"data":{},"id":"x"}}"#,
            std::str::from_utf8(&p).expect("utf8")
        );
        assert_eq!(sent_at(ce.as_bytes()), Some(t));
    }
}
