//! `skiff-perf bench`: the side-by-side benchmark.
//!
//! Starts the echo app and, for each path, what sits between the client and
//! the app — nothing (`direct`), two skiffd sidecars (`skiff`), or two
//! instances of a peer proxy with mTLS between them (`envoy`, `haproxy`,
//! `nginx`, see [`crate::peers`]) — then runs every scenario on every path.
//! Rounds are interleaved (path A, B, C, A, B, C, ...) and the median of the
//! rounds is reported, because shared machines drift. Everything listens on
//! 127.0.0.1 and is killed by PID at the end.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use crate::hist::Percentiles;
use crate::load::{self, Mode, Proto, Report, Spec};
use crate::peers;
use crate::procfs;
pub use crate::topology::{
    APP_PATH, BenchProto, Echo, Entry, PathKind, Procs, Row, Running, SAMPLING_RATE, Scenario,
    free_port, wait_port,
};

/// Dapr's published test payload.
pub const PAYLOAD_BYTES: usize = 1024;
/// Dapr's published test rate.
pub const FIXED_RATE: f64 = 1000.0;
pub const MAX_IN_FLIGHT: usize = 40;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Short runs (about a second each) for a result in under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Rounds per path and scenario; the median is reported (at least 3).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Paths to compare (default: all; --quick leaves out skiff-plain to
    /// stay under two minutes).
    #[arg(long, value_delimiter = ',')]
    pub paths: Option<Vec<PathKind>>,
    /// Protocols to compare.
    #[arg(long, value_delimiter = ',', default_value = "http,grpc")]
    pub protos: Vec<BenchProto>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile curves as SVG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Install missing peers first (apt-get for HAProxy and nginx, pip for Envoy).
    #[arg(long)]
    pub install_peers: bool,
    /// Where skiffd and skiff-echo are (default: next to skiff-perf).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds per measured run (overrides --quick's and the default).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// The skiff paths' trace sampling rate (Dapr's published test: 0.1;
    /// 0 keeps tracing configured but samples nothing).
    #[arg(long, default_value = SAMPLING_RATE)]
    pub sampling_rate: String,
}

/// Every path, or for `--quick` all but `skiff-plain` (the mTLS cost is a
/// full-run question).
pub fn default_paths(quick: bool) -> Vec<PathKind> {
    use PathKind::*;
    let mut v = vec![Direct, Skiff, SkiffPlain, Envoy, Haproxy, Nginx];
    if quick {
        v.retain(|k| *k != SkiffPlain);
    }
    v
}

/// One measured run.
struct Run {
    report: Report,
    proxy_cpu_s: f64,
    /// The kernel's part of `proxy_cpu_s`.
    proxy_sys_s: f64,
    proxy_rss_kib: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.rounds < 3 {
        bail!("--rounds must be at least 3 (the median of fewer is not robust)");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(FsPath::to_path_buf)
            .context("locating skiff-perf's directory")?,
    };
    for b in ["skiffd", "skiff-echo"] {
        if !bin_dir.join(b).exists() {
            bail!(
                "{} not found in {}: build with `cargo build --release --workspace` or pass --bin-dir",
                b,
                bin_dir.display()
            );
        }
    }
    if args.install_peers {
        peers::install()?;
    }
    let work = tempdir()?;
    let mut procs = Procs::default();
    let echo = start_echo(&bin_dir, &mut procs)?;

    let mut running: Vec<(PathKind, Running)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut kinds = args
        .paths
        .clone()
        .unwrap_or_else(|| default_paths(args.quick));
    kinds.sort();
    kinds.dedup();
    if !kinds.contains(&PathKind::Direct) {
        kinds.insert(0, PathKind::Direct);
    }
    for k in kinds {
        match start_path(k, &bin_dir, &work, &echo, &args.sampling_rate).await {
            Ok(Some(r)) => running.push((k, r)),
            Ok(None) => skipped.push(format!(
                "{}: not installed (skiff-perf bench --install-peers installs it)",
                k.name()
            )),
            Err(e) => skipped.push(format!("{}: failed to start: {e:#}", k.name())),
        }
    }
    for s in &skipped {
        eprintln!("skipped {s}");
    }

    let (secs, warmup) = match (args.seconds, args.quick) {
        (Some(s), _) => (s, (s / 4.0).min(1.0)),
        (None, true) => (0.8, 0.2),
        (None, false) => (5.0, 1.0),
    };
    let mut runs: BTreeMap<(BenchProto, Scenario, PathKind), Vec<Run>> = BTreeMap::new();
    for round in 0..args.rounds {
        for scenario in Scenario::ALL {
            for &proto in &args.protos {
                for (kind, r) in &mut running {
                    r.procs
                        .check_alive()
                        .with_context(|| format!("{} died", kind.name()))?;
                    eprint!(
                        "\rround {}/{} {:>9} {:>4} {:<8}   ",
                        round + 1,
                        args.rounds,
                        scenario.name(),
                        proto_name(proto),
                        kind.name()
                    );
                    let run = measure(&r.entry, proto, scenario, secs, warmup)
                        .await
                        .with_context(|| {
                            format!("{} {} {}", kind.name(), proto_name(proto), scenario.name())
                        })?;
                    runs.entry((proto, scenario, *kind)).or_default().push(run);
                }
            }
        }
    }
    eprint!("\r{:60}\r", "");
    let notes: BTreeMap<PathKind, String> = running
        .iter()
        .map(|(k, r)| (*k, r.entry.note.clone()))
        .collect();
    let rows = summarize(&runs, &notes);
    print!("{}", markdown(&rows, &skipped));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        std::fs::write(p, crate::plot::svg(&rows))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    drop(running);
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn proto_name(p: BenchProto) -> &'static str {
    match p {
        BenchProto::Http => "http",
        BenchProto::Grpc => "grpc",
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("skiff-perf-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn start_echo(bin: &FsPath, procs: &mut Procs) -> anyhow::Result<Echo> {
    let (http_port, grpc_port) = (free_port()?, free_port()?);
    let (trace_sink_port, sink_grpc) = (free_port()?, free_port()?);
    for (h, g) in [(http_port, grpc_port), (trace_sink_port, sink_grpc)] {
        procs.spawn(Command::new(bin.join("skiff-echo")).args([
            "--http-port",
            &h.to_string(),
            "--grpc-port",
            &g.to_string(),
        ]))?;
    }
    Ok(Echo {
        http_port,
        grpc_port,
        trace_sink_port,
    })
}

async fn start_path(
    k: PathKind,
    bin: &FsPath,
    work: &FsPath,
    echo: &Echo,
    sampling: &str,
) -> anyhow::Result<Option<Running>> {
    let r = match k {
        PathKind::Direct => Some(Running {
            entry: Entry {
                http_url: format!("http://127.0.0.1:{}{APP_PATH}", echo.http_port).parse()?,
                grpc_url: format!(
                    "http://127.0.0.1:{}/skiff.echo.v1.Echo/Unary",
                    echo.grpc_port
                )
                .parse()?,
                grpc_headers: HeaderMap::new(),
                http_pids: vec![],
                grpc_pids: vec![],
                note: "client → app".into(),
            },
            procs: Procs::default(),
        }),
        PathKind::Skiff => Some(start_skiff(bin, work, echo, true, sampling)?),
        PathKind::SkiffPlain => Some(start_skiff(bin, work, echo, false, sampling)?),
        peer => peers::start(peer, work, echo)?,
    };
    let Some(mut r) = r else { return Ok(None) };
    for u in [&r.entry.http_url, &r.entry.grpc_url] {
        if let Err(e) = wait_port(u.port_u16().unwrap_or(80)).await {
            r.procs.check_alive()?;
            return Err(e);
        }
    }
    // Let sidecars register and proxies settle before the first run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Some(r))
}

fn start_skiff(
    bin: &FsPath,
    work: &FsPath,
    echo: &Echo,
    mtls: bool,
    sampling: &str,
) -> anyhow::Result<Running> {
    let home = work.join(if mtls {
        "skiff-home"
    } else {
        "skiff-home-plain"
    });
    let mut procs = Procs::default();
    let policy = write_policy(&home, mtls, echo.trace_sink_port, sampling)?;
    let mut sidecar = |id: &str, app: Option<(u16, &str)>| -> anyhow::Result<(u32, u16, u16)> {
        let (h, g) = (free_port()?, free_port()?);
        let mut cmd = Command::new(bin.join("skiffd"));
        cmd.args([
            "--app-id",
            id,
            "--dapr-http-port",
            &h.to_string(),
            "--dapr-grpc-port",
            &g.to_string(),
            "--metrics-port",
            &free_port()?.to_string(),
            "--log-level",
            "warn",
        ])
        .env("SKIFF_HOME", &home)
        // One worker, like every peer.
        .env("SKIFF_WORKER_THREADS", "1")
        .env_remove("DAPR_API_TOKEN");
        if let Some((port, proto)) = app {
            cmd.args(["--app-port", &port.to_string(), "--app-protocol", proto]);
            cmd.arg("--config").arg(&policy.callee_config);
        } else {
            cmd.arg("--config").arg(&policy.caller_config);
            cmd.arg("--resources-path").arg(&policy.caller_resources);
        }
        if mtls {
            cmd.arg("--enable-mtls");
        }
        // Extra skiffd flags for A/B runs of one feature (see
        // perf/scripts/observability-overhead.sh).
        if let Ok(extra) = std::env::var("SKIFFD_EXTRA_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        Ok((procs.spawn(&mut cmd)?, h, g))
    };
    let (web, _, _) = sidecar("web", Some((echo.http_port, "http")))?;
    let (rpc, _, _) = sidecar("rpc", Some((echo.grpc_port, "grpc")))?;
    let (caller, ch, cg) = sidecar("caller", None)?;
    let mut grpc_headers = HeaderMap::new();
    grpc_headers.insert("dapr-app-id", HeaderValue::from_static("rpc"));
    Ok(Running {
        entry: Entry {
            http_url: format!("http://127.0.0.1:{ch}/v1.0/invoke/web/method{APP_PATH}")
                .parse()?,
            grpc_url: format!("http://127.0.0.1:{cg}/skiff.echo.v1.Echo/Unary").parse()?,
            grpc_headers,
            http_pids: vec![caller, web],
            grpc_pids: vec![caller, rpc],
            note: if mtls {
                "client → skiffd → mTLS h2 (TLS 1.3, ECDSA P-256, embedded CA) → skiffd → app; 1 worker each; \
                 callee ACL (caller's SPIFFE ID), caller resiliency (timeout, retry, breaker), metrics, \
                 tracing 0.1 exported over OTLP/HTTP"
            } else {
                "client → skiffd → plaintext h2 → skiffd → app; 1 worker each; resiliency, metrics, \
                 tracing 0.1 (no ACL: it keys on the mTLS identity)"
            }
            .into(),
        },
        procs,
    })
}

/// The configuration files of the real path.
struct Policy {
    callee_config: PathBuf,
    caller_config: PathBuf,
    caller_resources: PathBuf,
}

/// What Dapr's published test runs with, and what a production sidecar
/// carries: metrics (on by default), tracing sampled at 0.1 and exported,
/// the callee's access control list keyed on the caller's SPIFFE ID (with
/// mTLS), and a resiliency policy on the caller (timeout, retry with its
/// replay buffer, circuit breaker) for both target apps.
fn write_policy(
    home: &FsPath,
    mtls: bool,
    sink_port: u16,
    sampling: &str,
) -> anyhow::Result<Policy> {
    if sampling
        .parse::<f64>()
        .map_or(true, |r| !(0.0..=1.0).contains(&r))
    {
        bail!("--sampling-rate {sampling:?}: want a number from 0 to 1");
    }
    let resources = home.join("resources");
    std::fs::create_dir_all(&resources)
        .with_context(|| format!("creating {}", resources.display()))?;
    let tracing = format!(
        "  tracing:\n    samplingRate: \"{sampling}\"\n    otel:\n      \
         endpointAddress: \"127.0.0.1:{sink_port}\"\n      isSecure: false\n      protocol: http\n"
    );
    let acl = if mtls {
        "  accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n      \
         - appId: caller\n        namespace: default\n        trustDomain: public\n        \
         defaultAction: allow\n"
    } else {
        ""
    };
    let config = |name: &str, body: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: {name}\nspec:\n{body}"
        )
    };
    let p = Policy {
        callee_config: home.join("callee.yaml"),
        caller_config: home.join("caller.yaml"),
        caller_resources: resources.clone(),
    };
    let resiliency = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: bench\nspec:\n  \
        policies:\n    timeouts:\n      general: 5s\n    retries:\n      transient:\n        \
        policy: constant\n        duration: 10ms\n        maxRetries: 3\n    circuitBreakers:\n      \
        app-cb:\n        maxRequests: 1\n        timeout: 10s\n        trip: consecutiveFailures >= 50\n  \
        targets:\n    apps:\n      web: {timeout: general, retry: transient, circuitBreaker: app-cb}\n      \
        rpc: {timeout: general, retry: transient, circuitBreaker: app-cb}\n";
    for (path, text) in [
        (
            &p.callee_config,
            config("bench-callee", &format!("{tracing}{acl}")),
        ),
        (&p.caller_config, config("bench-caller", &tracing)),
        (&resources.join("resiliency.yaml"), resiliency.to_owned()),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(p)
}

fn spec_for(e: &Entry, proto: BenchProto, scenario: Scenario, secs: f64, warmup: f64) -> Spec {
    let (p, url, headers, payload) = match proto {
        BenchProto::Http => (
            Proto::Http1,
            e.http_url.clone(),
            HeaderMap::new(),
            Bytes::from(vec![b'x'; PAYLOAD_BYTES]),
        ),
        BenchProto::Grpc => (
            Proto::Grpc,
            e.grpc_url.clone(),
            e.grpc_headers.clone(),
            load::bytes_field_message(PAYLOAD_BYTES),
        ),
    };
    // HTTP/1.1 needs a connection per call in flight; HTTP/2 multiplexes.
    let (mode, connections) = match (scenario, proto) {
        (Scenario::Serial, _) => (Mode::Closed { concurrency: 1 }, 1),
        (Scenario::Rate1000, BenchProto::Http) => (Mode::Open { rate: FIXED_RATE }, 16),
        (Scenario::Rate1000, BenchProto::Grpc) => (Mode::Open { rate: FIXED_RATE }, 4),
        (Scenario::Max40, BenchProto::Http) => (
            Mode::Closed {
                concurrency: MAX_IN_FLIGHT,
            },
            MAX_IN_FLIGHT,
        ),
        (Scenario::Max40, BenchProto::Grpc) => (
            Mode::Closed {
                concurrency: MAX_IN_FLIGHT,
            },
            4,
        ),
    };
    Spec {
        url,
        proto: p,
        method: Method::POST,
        headers,
        payload,
        connections,
        mode,
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_secs_f64(warmup),
        max_requests: None,
        timeout: Duration::from_secs(5),
        progress: false,
    }
}

async fn measure(
    e: &Entry,
    proto: BenchProto,
    scenario: Scenario,
    secs: f64,
    warmup: f64,
) -> anyhow::Result<Run> {
    let pids = match proto {
        BenchProto::Http => e.http_pids.clone(),
        BenchProto::Grpc => e.grpc_pids.clone(),
    };
    // Count workers too (nginx serves from a child of the process we started).
    let pids: Vec<u32> = pids.iter().flat_map(|&p| procfs::tree(p)).collect();
    let cpu = |pids: &[u32]| {
        pids.iter()
            .filter_map(|&p| procfs::cpu_split(p))
            .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
    };
    let (user_before, sys_before) = cpu(&pids);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, pids) = (stop.clone(), peak.clone(), pids.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for &p in &pids {
                    if let Some((rss, _)) = procfs::memory_kib(p) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let report = load::run(spec_for(e, proto, scenario, secs, warmup)).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let (user_after, sys_after) = cpu(&pids);
    Ok(Run {
        proxy_cpu_s: (user_after + sys_after) - (user_before + sys_before),
        proxy_sys_s: sys_after - sys_before,
        proxy_rss_kib: peak.load(Ordering::Relaxed),
        report,
    })
}

/// The lowest and highest of the rounds' figures.
fn range<T: Copy + PartialOrd + Default>(v: impl Iterator<Item = T>) -> (T, T) {
    v.fold(None, |acc: Option<(T, T)>, x| match acc {
        None => Some((x, x)),
        Some((lo, hi)) => Some((if x < lo { x } else { lo }, if x > hi { x } else { hi })),
    })
    .unwrap_or_default()
}

fn median_by<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn summarize(
    runs: &BTreeMap<(BenchProto, Scenario, PathKind), Vec<Run>>,
    notes: &BTreeMap<PathKind, String>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for ((proto, scenario, path), rs) in runs {
        let lat = |f: fn(&Percentiles) -> u64| {
            median_by(rs.iter().map(|r| f(&r.report.latency)).collect())
        };
        let latency = Percentiles {
            count: rs.iter().map(|r| r.report.latency.count).sum(),
            mean_us: median_by(rs.iter().map(|r| r.report.latency.mean_us).collect()),
            p50_us: lat(|p| p.p50_us),
            p90_us: lat(|p| p.p90_us),
            p99_us: lat(|p| p.p99_us),
            p999_us: lat(|p| p.p999_us),
            max_us: lat(|p| p.max_us),
        };
        let requests: u64 = rs.iter().map(|r| r.report.requests).sum();
        let cpu: f64 = rs.iter().map(|r| r.proxy_cpu_s).sum();
        let sys: f64 = rs.iter().map(|r| r.proxy_sys_s).sum();
        let per_1000 = |s: f64| {
            if requests == 0 {
                0.0
            } else {
                s / requests as f64 * 1000.0
            }
        };
        // The round whose p50 is the median supplies the plotted curve.
        let curve = rs
            .iter()
            .find(|r| r.report.latency.p50_us == latency.p50_us)
            .and_then(|r| r.report.histogram.as_ref())
            .map(|h| h.curve())
            .unwrap_or_default();
        rows.push(Row {
            path: *path,
            proto: *proto,
            scenario: *scenario,
            note: notes.get(path).cloned().unwrap_or_default(),
            rounds: rs.len(),
            throughput_rps: median_by(rs.iter().map(|r| r.report.achieved_rps).collect()),
            p50_range_us: range(rs.iter().map(|r| r.report.latency.p50_us)),
            throughput_range_rps: range(rs.iter().map(|r| r.report.achieved_rps)),
            proxy_cpu_s_per_1000: per_1000(cpu),
            proxy_sys_s_per_1000: per_1000(sys),
            proxy_peak_rss_kib: rs.iter().map(|r| r.proxy_rss_kib).max().unwrap_or(0),
            errors: rs.iter().map(|r| r.report.requests - r.report.ok).sum(),
            generator_cpu_cores: median_by(
                rs.iter().map(|r| r.report.generator_cpu_cores).collect(),
            ),
            latency,
            curve,
            added_p50_us: 0,
            added_p90_us: 0,
            added_p99_us: 0,
            throughput_vs_direct: 1.0,
        });
    }
    // Added latency and throughput ratio against direct in the same run.
    let direct: BTreeMap<(BenchProto, Scenario), (Percentiles, f64)> = rows
        .iter()
        .filter(|r| r.path == PathKind::Direct)
        .map(|r| ((r.proto, r.scenario), (r.latency.clone(), r.throughput_rps)))
        .collect();
    for r in &mut rows {
        if let Some((d, tput)) = direct.get(&(r.proto, r.scenario)) {
            r.added_p50_us = r.latency.p50_us as i64 - d.p50_us as i64;
            r.added_p90_us = r.latency.p90_us as i64 - d.p90_us as i64;
            r.added_p99_us = r.latency.p99_us as i64 - d.p99_us as i64;
            r.throughput_vs_direct = if *tput > 0.0 {
                r.throughput_rps / tput
            } else {
                0.0
            };
        }
    }
    rows
}

fn markdown(rows: &[Row], skipped: &[String]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut last = None;
    for r in rows {
        if last != Some((r.proto, r.scenario)) {
            last = Some((r.proto, r.scenario));
            let _ = writeln!(s, "\n### {} {}\n", proto_name(r.proto), r.scenario.name());
            let _ = writeln!(
                s,
                "| path | p50 µs (rounds) | p90 µs | p99 µs | p99.9 µs | added p50 / p99 µs | req/s (rounds) | vs direct | proxy CPU s/1k req (kernel) | proxy peak RSS | errors |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        }
        let _ = writeln!(
            s,
            "| {} | {} ({}–{}) | {} | {} | {} | {:+} / {:+} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.4} ({:.0}%) | {:.1} MiB | {} |",
            r.path.name(),
            r.latency.p50_us,
            r.p50_range_us.0,
            r.p50_range_us.1,
            r.latency.p90_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.added_p50_us,
            r.added_p99_us,
            r.throughput_rps,
            r.throughput_range_rps.0,
            r.throughput_range_rps.1,
            r.throughput_vs_direct,
            r.proxy_cpu_s_per_1000,
            if r.proxy_cpu_s_per_1000 > 0.0 {
                100.0 * r.proxy_sys_s_per_1000 / r.proxy_cpu_s_per_1000
            } else {
                0.0
            },
            r.proxy_peak_rss_kib as f64 / 1024.0,
            r.errors
        );
    }
    let notes: BTreeMap<PathKind, &str> = rows.iter().map(|r| (r.path, r.note.as_str())).collect();
    let _ = writeln!(s);
    for (p, n) in notes {
        let _ = writeln!(s, "- {}: {n}", p.name());
    }
    for sk in skipped {
        let _ = writeln!(s, "- skipped {sk}");
    }
    if let Some(g) = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Rate1000)
        .map(|r| r.generator_cpu_cores)
        .reduce(f64::max)
    {
        let _ = writeln!(
            s,
            "- load generator at 1000 req/s: at most {:.1}% of a core",
            g * 100.0
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median_by(vec![5, 1, 3]), 3);
        assert_eq!(median_by(vec![2.0, 9.0, 4.0, 1.0, 7.0]), 4.0);
        assert_eq!(range([5, 1, 3].into_iter()), (1, 5));
        assert_eq!(range([2.5].into_iter()), (2.5, 2.5));
    }
}
