//! `skiff dashboard`: a page on localhost that shows, live, what runs: the
//! apps (ports, PIDs, age, certificate expiry, components, subscriptions),
//! calls per second and latency per caller → callee pair, pub/sub backlogs
//! and in-flight deliveries, and the sidecars' recent warnings and errors.
//!
//! A sampler reads the run records, each sidecar's `/v1.0/metadata` and
//! `/metrics` (Dapr's metric names) every [`SAMPLE_EVERY`], and keeps one
//! JSON snapshot; the page (plain HTML/JS/CSS compiled into the binary, no
//! build step, nothing fetched from the internet) polls `/api/overview`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::client::Http;
use crate::home::Home;
use crate::init::now_secs;
use crate::records::{self, age_text, date_text};

/// How often the sidecars are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Recent warning/error lines shown per sidecar.
pub const RECENT_ERRORS: usize = 5;
/// How much of the end of a sidecar's log is read for them.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

const PAGE: &str = include_str!("dashboard.html");

/// One scrape: counter and histogram samples by series.
#[derive(Default, Clone)]
struct Scrape {
    at: Option<Instant>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, v));
        }
        Self {
            at: Some(Instant::now()),
            samples,
        }
    }

    fn sum(&self, name: &str, f: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && f(l))
            .map(|(_, _, v)| v)
            // From +0.0: an empty f64 sum is -0.0, which JSON shows as such.
            .fold(0.0, |a, b| a + b)
    }
}

/// `a="x",b="y"` (with `\"` and `\\` escapes) into a map.
fn labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_owned(), v);
        rest = &after[end..];
    }
    out
}

/// The `q` quantile of a cumulative histogram in milliseconds, given as
/// (upper bound, count) pairs sorted by bound, in whole microseconds:
/// interpolated within its bucket as Prometheus' `histogram_quantile`
/// does (the bucket's upper bound alone would read 1 ms for a 180 µs
/// call); a quantile in the `+Inf` bucket is the highest finite bound.
fn quantile_us(buckets: &[(f64, f64)], q: f64) -> Option<u64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank)?;
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (upper, count) = buckets[i];
    let ms = if upper.is_infinite() {
        lower
    } else if count > below {
        lower + (upper - lower) * (rank - below) / (count - below)
    } else {
        upper
    };
    Some((ms * 1000.0).round() as u64)
}

struct Sampler {
    home: Home,
    http: Http,
    prev: HashMap<String, Scrape>,
}

impl Sampler {
    async fn snapshot(&mut self) -> Value {
        let mut apps = Vec::new();
        let mut calls = Vec::new();
        let mut backlogs = Vec::new();
        let mut errors = Vec::new();
        let now = now_secs();
        let mut seen = Vec::new();
        for r in records::live(&self.home) {
            seen.push(r.app_id.clone());
            let meta = self.http.metadata(r.http_port).await;
            let text = self
                .http
                .get(
                    &format!("http://127.0.0.1:{}/metrics", r.metrics_port),
                    Duration::from_secs(1),
                )
                .await
                .ok()
                .map(|a| String::from_utf8_lossy(&a.body).into_owned())
                .unwrap_or_default();
            let cur = Scrape::parse(&text);
            let prev = self.prev.remove(&r.app_id).unwrap_or_default();
            calls.extend(pairs(&r.app_id, &cur, &prev));
            backlogs.extend(pubsub(&r.app_id, &cur));
            for line in recent_errors(Path::new(&r.daprd_log_path)) {
                errors.push(json!({"app": r.app_id, "line": line}));
            }
            let expiry = meta
                .as_ref()
                .and_then(|m| m["skiff"]["mtls"]["certificateExpiry"].as_u64());
            let m = meta.clone().unwrap_or(Value::Null);
            apps.push(json!({
                "appId": r.app_id,
                "httpPort": r.http_port,
                "grpcPort": r.grpc_port,
                "appPort": r.app_port,
                "metricsPort": r.metrics_port,
                "sidecarPid": r.daprd_pid,
                "appPid": r.app_pid,
                "command": r.command,
                "age": age_text(now.saturating_sub(r.created)),
                "ready": meta.is_some(),
                "certExpiry": expiry.map(date_text),
                "certExpiresInSecs": expiry.map(|e| e.saturating_sub(now)),
                "components": m["components"].as_array().cloned().unwrap_or_default().iter()
                    .map(|c| json!({"name": c["name"], "type": c["type"]})).collect::<Vec<_>>(),
                "subscriptions": m["subscriptions"].as_array().cloned().unwrap_or_default().iter()
                    .map(|s| json!({"pubsubname": s["pubsubname"], "topic": s["topic"], "type": s["type"]})).collect::<Vec<_>>(),
            }));
            self.prev.insert(r.app_id.clone(), cur);
        }
        self.prev.retain(|k, _| seen.contains(k));
        json!({
            "generated": date_text(now),
            "home": self.home.path().display().to_string(),
            "apps": apps,
            "calls": calls,
            "backlogs": backlogs,
            "errors": errors,
        })
    }
}

const SENT: &str = "dapr_runtime_service_invocation_req_sent_total";
const RECV: &str = "dapr_runtime_service_invocation_res_recv_total";
const LATENCY: &str = "dapr_runtime_service_invocation_res_recv_latency_ms_bucket";

/// Calls from `app` per callee: rate over the last interval, latency
/// quantiles and failures since the sidecar started.
fn pairs(app: &str, cur: &Scrape, prev: &Scrape) -> Vec<Value> {
    let mut callees: Vec<String> = cur
        .samples
        .iter()
        .filter(|(n, _, _)| n == SENT)
        .filter_map(|(_, l, _)| l.get("dst_app_id").cloned())
        .collect();
    callees.sort();
    callees.dedup();
    let dt = match (cur.at, prev.at) {
        (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
        _ => 0.0,
    };
    callees
        .into_iter()
        .map(|to| {
            let sent = |s: &Scrape| s.sum(SENT, |l| l.get("dst_app_id") == Some(&to));
            let rate = if dt > 0.0 {
                ((sent(cur) - sent(prev)) / dt).max(0.0)
            } else {
                0.0
            };
            let failed = cur.sum(RECV, |l| {
                l.get("src_app_id") == Some(&to)
                    && !l.get("status").is_some_and(|s| s.starts_with('2'))
            });
            let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
            for (n, l, v) in &cur.samples {
                if n == LATENCY && l.get("src_app_id") == Some(&to) {
                    let le = l
                        .get("le")
                        .map_or(f64::INFINITY, |s| s.parse().unwrap_or(f64::INFINITY));
                    let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
                    e.1 += v;
                }
            }
            let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            json!({
                "from": app,
                "to": to,
                "callsPerSec": (rate * 10.0).round() / 10.0,
                "total": sent(cur),
                "p50Us": quantile_us(&buckets, 0.5),
                "p99Us": quantile_us(&buckets, 0.99),
                "failed": failed,
            })
        })
        .collect()
}

/// `skiff_pubsub_backlog` and `skiff_pubsub_in_flight` per subscription.
fn pubsub(app: &str, cur: &Scrape) -> Vec<Value> {
    cur.samples
        .iter()
        .filter(|(n, _, _)| n == "skiff_pubsub_backlog")
        .map(|(_, l, v)| {
            let (c, t) = (l.get("component"), l.get("topic"));
            let in_flight = cur.sum("skiff_pubsub_in_flight", |m| {
                m.get("component") == c && m.get("topic") == t
            });
            json!({"app": app, "component": c, "topic": t, "backlog": v, "inFlight": in_flight})
        })
        .collect()
}

/// The last WARN/ERROR lines of a sidecar's log file.
fn recent_errors(path: &Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut text = String::new();
    let _ = f.take(LOG_TAIL_BYTES).read_to_string(&mut text);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect();
    let keep = lines.len().saturating_sub(RECENT_ERRORS);
    lines.drain(..keep);
    lines
}

/// Serves the dashboard on 127.0.0.1:`port` until Ctrl-C / SIGTERM.
pub async fn serve(home: &Home, port: u16) -> Result<()> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| crate::ports::taken(port, "--port"))?;
    let snap = Arc::new(Mutex::new(Bytes::from_static(b"{}")));
    let mut sampler = Sampler {
        home: home.clone(),
        http: Http::new(),
        prev: HashMap::new(),
    };
    let first = sampler.snapshot().await;
    *snap.lock().unwrap_or_else(|p| p.into_inner()) = Bytes::from(first.to_string());
    let s2 = snap.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let v = sampler.snapshot().await;
            *s2.lock().unwrap_or_else(|p| p.into_inner()) = Bytes::from(v.to_string());
        }
    });
    println!("✅ Skiff dashboard on http://127.0.0.1:{port}/ (Ctrl-C stops it)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (s, _) = tokio::select! {
            r = l.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let snap = snap.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let snap = snap.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req.uri().path(), &snap)) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn answer(path: &str, snap: &Mutex<Bytes>) -> http::Response<Full<Bytes>> {
    let (status, ct, body) = match path {
        "/" | "/index.html" => (
            200,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        "/api/overview" => (
            200,
            "application/json",
            snap.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ),
        _ => (404, "text/plain", Bytes::from_static(b"not found")),
    };
    let mut r = http::Response::new(Full::new(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_parse_and_pairs_and_backlogs_come_out() {
        let text = r#"# HELP x
dapr_runtime_service_invocation_req_sent_total{app_id="a",dst_app_id="b",type="unary"} 10
dapr_runtime_service_invocation_res_recv_total{app_id="a",src_app_id="b",status="200",type="unary"} 9
dapr_runtime_service_invocation_res_recv_total{app_id="a",src_app_id="b",status="500",type="unary"} 1
dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id="a",src_app_id="b",status="200",le="1"} 4
dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id="a",src_app_id="b",status="200",le="2"} 9
dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id="a",src_app_id="b",status="200",le="+Inf"} 9
dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id="a",src_app_id="b",status="500",le="1"} 0
dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id="a",src_app_id="b",status="500",le="2"} 0
dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id="a",src_app_id="b",status="500",le="+Inf"} 1
skiff_pubsub_backlog{app_id="a",component="ps",namespace="default",topic="t \"q\""} 7
skiff_pubsub_in_flight{app_id="a",component="ps",namespace="default",topic="t \"q\""} 2
"#;
        let s = Scrape::parse(text);
        let p = pairs("a", &s, &Scrape::default());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["to"], "b");
        assert_eq!(p[0]["total"], 10.0);
        assert_eq!(p[0]["failed"], 1.0);
        // Rank 5 of 10 is the first of five calls in (1, 2] ms.
        assert_eq!(p[0]["p50Us"], 1200);
        // Rank 9.9 is in +Inf: the highest finite bound.
        assert_eq!(p[0]["p99Us"], 2000);
        assert_eq!(s.sum("absent", |_| true).to_string(), "0");
        let b = pubsub("a", &s);
        assert_eq!(b[0]["topic"], "t \"q\"");
        assert_eq!(
            (b[0]["backlog"].as_f64(), b[0]["inFlight"].as_f64()),
            (Some(7.0), Some(2.0))
        );
    }
}
