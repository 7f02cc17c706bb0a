//! The soak under faults: invocation, state and pub/sub traffic through
//! mTLS sidecars whose certificates rotate every few seconds, while the
//! callee app is killed and started again, Redis is restarted and the
//! subscriber's sidecar is SIGTERMed and started again, in cycles.
//!
//! It fails on a message acknowledged to the publisher and never delivered,
//! on a failed call outside the few seconds a fault explains, and on
//! descriptors, threads or memory of the sidecars that keep growing after
//! the warm-up. The report gives failed calls by cause and the samples.
//!
//! `.ci/run` runs one short cycle; `perf/scripts/soak.sh` runs ten minutes
//! at 1000 requests a second on release builds (`SOAK_SECS`, `SOAK_RATE`).

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_tests::servers::Redis;
use skiff_tests::subscriber::{HttpSubscriber, wait_subscribed};
use skiff_tests::*;

/// One fault cycle: the app killed at 1/4, Redis restarted at 2/4, the
/// subscriber's sidecar restarted at 3/4.
const CYCLE: Duration = Duration::from_secs(20);
/// How long the callee app stays dead.
const APP_DOWN: Duration = Duration::from_secs(1);
/// Failures this long after a fault ends are the fault's (reconnects,
/// backoff, the first request on a new connection).
const GRACE: Duration = Duration::from_secs(5);
/// A call without an answer this long counts as failed ("timeout").
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls in flight at most (the load is open-loop up to this).
const IN_FLIGHT: usize = 64;
/// Samples before this are warm-up.
const WARM_UP: Duration = Duration::from_secs(5);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `skiff-echo` on a fixed port, so a restart keeps the callee's address.
fn echo_on(port: u16) -> Proc {
    let child = Command::new(bin("skiff-echo"))
        .args(["--http-port", &port.to_string(), "--name", "callee"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn skiff-echo");
    let mut p = Proc {
        child,
        name: "callee app".into(),
    };
    wait_port_of(&mut p, port);
    p
}

fn redis_on(dir: &std::path::Path, port: u16) -> Redis {
    Redis::start_with(
        dir,
        port,
        &["--appendonly", "yes", "--appendfsync", "always"],
    )
}

/// What went wrong with one call.
struct Failure {
    at: Duration,
    cause: String,
}

/// A fault, from its start to its end (since the load began).
struct Fault {
    what: &'static str,
    from: Duration,
    to: Duration,
}

/// Runs one fault (its process work blocks, so off the load's workers)
/// and notes when it was.
fn fault<T>(
    faults: &mut Vec<Fault>,
    started: Instant,
    what: &'static str,
    f: impl FnOnce() -> T,
) -> T {
    let from = started.elapsed();
    let out = tokio::task::block_in_place(f);
    faults.push(Fault {
        what,
        from,
        to: started.elapsed(),
    });
    out
}

/// One per-second sample of a sidecar.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Sample {
        at,
        rss_kib: rss_kib_of(pid),
        fds,
        threads,
    }
}

/// The ops the load mixes: 6 invocations, 2 state saves, 1 read, 1 publish
/// in every 10.
#[derive(Clone, Copy)]
enum Op {
    Invoke,
    Save,
    Read,
    Publish,
}

const MIX: [Op; 10] = [
    Op::Invoke,
    Op::Save,
    Op::Invoke,
    Op::Publish,
    Op::Invoke,
    Op::Read,
    Op::Invoke,
    Op::Save,
    Op::Invoke,
    Op::Invoke,
];

struct Load {
    base: String,
    c: HttpClient,
    started: Instant,
    failures: Mutex<Vec<Failure>>,
    published: Mutex<Vec<u64>>,
    done: std::sync::atomic::AtomicU64,
}

impl Load {
    async fn one(&self, n: u64) {
        let (name, req) = match MIX[(n % 10) as usize] {
            Op::Invoke => (
                "invoke",
                request(
                    "POST",
                    &format!("{}/v1.0/invoke/callee/method/echo", self.base),
                    format!("call {n}"),
                ),
            ),
            Op::Save => (
                "state save",
                request(
                    "POST",
                    &format!("{}/v1.0/state/st", self.base),
                    format!(r#"[{{"key":"k{}","value":{n}}}]"#, n % 100),
                ),
            ),
            Op::Read => (
                "state get",
                request(
                    "GET",
                    &format!("{}/v1.0/state/st/k{}", self.base, n % 100),
                    "",
                ),
            ),
            Op::Publish => {
                let mut r = request(
                    "POST",
                    &format!("{}/v1.0/publish/ps/soak", self.base),
                    format!(r#"{{"n":{n}}}"#),
                );
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("ct"));
                ("publish", r)
            }
        };
        let publish = name == "publish";
        let cause = match tokio::time::timeout(CALL_TIMEOUT, self.c.request(req)).await {
            Err(_) => Some("timeout".to_owned()),
            Ok(Err(e)) => Some(format!("transport: {e}")),
            Ok(Ok(r)) => {
                let status = r.status();
                let body = http_body_util::BodyExt::collect(r.into_body()).await;
                match body {
                    Ok(_) if status.is_success() || status == 404 && name == "state get" => None,
                    Ok(b) => {
                        let text = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                        // The Dapr error code names the cause.
                        let code = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| v["errorCode"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        Some(format!("{} {code}", status.as_u16()))
                    }
                    Err(e) => Some(format!("body: {e}")),
                }
            }
        };
        match cause {
            None if publish => self.published.lock().expect("lock").push(n),
            None => {}
            Some(cause) => self.failures.lock().expect("lock").push(Failure {
                at: self.started.elapsed(),
                cause: format!("{name}: {cause}"),
            }),
        }
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_faults_loses_nothing_and_stays_flat() {
    let secs = env_u64("SOAK_SECS", CYCLE.as_secs());
    let rate = env_u64("SOAK_RATE", 150).max(1);
    let duration = Duration::from_secs(secs);
    let w = World::new();
    let home = w.home.path().to_owned();
    let redis_dir = home.join("redis");
    let redis_port = free_port();
    let mut redis = redis_on(&redis_dir, redis_port);
    let addr = format!("127.0.0.1:{redis_port}");
    w.component(
        "st.yaml",
        &component_yaml("st", "state.redis", &[("redisHost", addr.clone())]),
    );
    w.component(
        "ps.yaml",
        &component_yaml(
            "ps",
            "pubsub.redis",
            &[
                ("redisHost", addr),
                ("redeliverInterval", "500ms".into()),
                ("processingTimeout", "2s".into()),
            ],
        ),
    );
    // Certificates of four seconds: each sidecar rotates every few seconds.
    let sentry = w.sentry(&["--workload-cert-ttl", "4s"]);
    let app_port = free_port();
    let mut app = echo_on(app_port);
    let callee = w.sidecar("callee", SidecarOpts::app(app_port).sentry(&sentry));
    let caller = w.sidecar("caller", SidecarOpts::default().sentry(&sentry));
    let (subscriber, got) = HttpSubscriber::numbers(json!([
        {"pubsubname": "ps", "topic": "soak", "route": "/soak"}
    ]))
    .await;
    let sub_opts = SidecarOpts {
        args: vec!["--dapr-graceful-shutdown-seconds".into(), "3".into()],
        ..SidecarOpts::app(subscriber.port).sentry(&sentry)
    };
    let mut sub = w.sidecar("sub", sub_opts.clone());
    wait_outbound_ready(&caller, Duration::from_secs(20)).await;
    wait_subscribed(&sub, 1).await;

    let expiry = |s: &Sidecar| {
        let url = format!("{}/v1.0/metadata", s.http());
        async move { get_json(&url).await["skiff"]["mtls"]["certificateExpiry"].as_u64() }
    };
    let first_expiry = expiry(&caller).await.expect("mTLS on");
    let load = Arc::new(Load {
        base: caller.http(),
        c: http_client(),
        started: Instant::now(),
        failures: Mutex::new(Vec::new()),
        published: Mutex::new(Vec::new()),
        done: Default::default(),
    });
    let started = load.started;
    let driver = {
        let load = load.clone();
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            // Bounded in count and time.
            while started.elapsed() < duration && n < rate * secs {
                tick.tick().await;
                let Ok(permit) = gate.clone().acquire_owned().await else {
                    break;
                };
                let load = load.clone();
                tokio::spawn(async move {
                    load.one(n).await;
                    drop(permit);
                });
                n += 1;
            }
            let _ = gate.acquire_many(IN_FLIGHT as u32).await;
            n
        })
    };
    let sampler = {
        let pids = [("caller", caller.proc.pid()), ("callee", callee.proc.pid())];
        tokio::spawn(async move {
            let mut out: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
            while started.elapsed() < duration {
                for (name, pid) in pids {
                    out.entry(name)
                        .or_default()
                        .push(sample(pid, started.elapsed()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            out
        })
    };

    // The faults, cycle after cycle.
    let mut faults = Vec::new();
    let at = |k: u64, quarter: u32| started + CYCLE * k as u32 + CYCLE / 4 * quarter;
    for k in 0..secs.div_ceil(CYCLE.as_secs()) {
        tokio::time::sleep_until(at(k, 1).into()).await;
        app = fault(&mut faults, started, "callee app killed", || {
            app.kill();
            std::thread::sleep(APP_DOWN);
            echo_on(app_port)
        });
        tokio::time::sleep_until(at(k, 2).into()).await;
        redis = fault(&mut faults, started, "redis restarted", || {
            redis.proc.kill();
            redis_on(&redis_dir, redis_port)
        });
        tokio::time::sleep_until(at(k, 3).into()).await;
        sub = fault(&mut faults, started, "subscriber sidecar restarted", || {
            sub.proc.terminate();
            assert!(
                sub.proc.wait_exit(Duration::from_secs(10)).is_some(),
                "the subscriber's sidecar did not stop on SIGTERM"
            );
            w.sidecar("sub", sub_opts.clone())
        });
    }
    let sent = driver.await.expect("load");
    let samples = sampler.await.expect("samples");

    // Every acknowledged message arrives (at least once), given time.
    let published: HashSet<u64> = load
        .published
        .lock()
        .expect("lock")
        .iter()
        .copied()
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let lost: Vec<u64> = {
            let got = got.lock().expect("lock");
            published
                .iter()
                .filter(|n| !got.contains(n))
                .copied()
                .collect()
        };
        if lost.is_empty() || Instant::now() > end {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let failures = std::mem::take(&mut *load.failures.lock().expect("lock"));
    let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
    for f in &failures {
        *by_cause.entry(f.cause.clone()).or_default() += 1;
    }
    let unexplained: Vec<&Failure> = failures
        .iter()
        .filter(|f| {
            !faults
                .iter()
                .any(|x| f.at + Duration::from_millis(500) >= x.from && f.at <= x.to + GRACE)
        })
        .collect();
    println!(
        "soak: {secs} s at {rate} req/s: {sent} calls, {} failed, {} published, {} delivered, \
         {} lost; {} faults",
        failures.len(),
        published.len(),
        got.lock().expect("lock").len(),
        lost.len(),
        faults.len()
    );
    for (cause, n) in &by_cause {
        println!("soak: failed by cause: {n} × {cause}");
    }
    for f in &faults {
        println!("soak: fault {} from {:?} to {:?}", f.what, f.from, f.to);
    }
    for (name, s) in &samples {
        let line: Vec<String> = s
            .iter()
            .map(|x| {
                format!(
                    "{}s:{}K/{}fd/{}t",
                    x.at.as_secs(),
                    x.rss_kib,
                    x.fds,
                    x.threads
                )
            })
            .collect();
        println!("soak: {name} samples {}", line.join(" "));
    }

    let last_expiry = expiry(&caller).await.expect("mTLS on");
    assert!(
        last_expiry >= first_expiry + secs / 2,
        "the caller's certificate did not rotate: expiry {first_expiry} then {last_expiry}"
    );
    if !lost.is_empty() {
        let mut some = lost.clone();
        some.sort_unstable();
        some.truncate(40);
        panic!(
            "{} acknowledged but never delivered, first {some:?}; the group: {} pending: {}",
            lost.len(),
            redis.cli(&["XINFO", "GROUPS", "soak"]),
            redis.cli(&["XPENDING", "soak", "sub"]),
        );
    }
    assert!(
        unexplained.is_empty(),
        "calls failed with no fault to explain them: {:?}",
        unexplained
            .iter()
            .map(|f| format!("{:?} {}", f.at, f.cause))
            .collect::<Vec<_>>()
    );
    assert!(
        sent >= rate * secs * 8 / 10,
        "the load fell behind: {sent} of {} calls",
        rate * secs
    );
    for (name, s) in &samples {
        flat(name, s);
    }
    drop((caller, callee, sub, app, redis, subscriber, sentry));
}

/// Flat after warm-up: the last third's peak against the first third's,
/// with room for noise (allocator arenas, a connection being replaced).
fn flat(name: &str, s: &[Sample]) {
    let warm: Vec<&Sample> = s.iter().filter(|x| x.at >= WARM_UP).collect();
    if warm.len() < 6 {
        return;
    }
    let third = warm.len() / 3;
    let (early, late) = (&warm[..third], &warm[warm.len() - third..]);
    let peak = |v: &[&Sample], f: fn(&Sample) -> u64| v.iter().map(|x| f(x)).max().unwrap_or(0);
    let (fd0, fd1) = (peak(early, |x| x.fds as u64), peak(late, |x| x.fds as u64));
    assert!(fd1 <= fd0 + 32, "{name}: descriptors grew {fd0} → {fd1}");
    let (t0, t1) = (peak(early, |x| x.threads), peak(late, |x| x.threads));
    assert!(t1 <= t0 + 2, "{name}: threads grew {t0} → {t1}");
    let (r0, r1) = (peak(early, |x| x.rss_kib), peak(late, |x| x.rss_kib));
    assert!(
        r1 <= r0 + r0 / 2 + 16 * 1024,
        "{name}: memory grew {r0} KiB → {r1} KiB"
    );
}
