//! The `checkout` sample app, HTTP. It places `ORDERS` orders: each one is
//! reserved by calling the `inventory` app (gRPC) through the sidecars,
//! saved in and read back from `statestore`, and published to
//! `pubsub/orders`. `inventory` ships each order and publishes it to
//! `pubsub/shipments`, which this app subscribes to (`/dapr/subscribe`).
//! When every order has come back shipped it prints a summary with the
//! latencies it measured and exits (or keeps serving with `STAY=1`). It
//! also answers `price`, which `inventory` calls back.
//!
//! Environment (set by `skiff run`): `APP_PORT`, `DAPR_HTTP_PORT`;
//! `ORDERS` (default 5), `STAY`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// How long the app waits for inventory to come up, and for shipments.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Shipments {
    published: HashMap<i64, Instant>,
    arrived: HashMap<i64, Duration>,
}

type Shared = Arc<(Mutex<Shipments>, Notify)>;

fn env_port(name: &str) -> Result<u16> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (start me with `skiff run`)"))?
        .parse()
        .with_context(|| format!("{name} is not a port"))
}

struct Sidecar {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Sidecar {
    async fn call(&self, method: &str, path: &str, body: Value) -> Result<(u16, Bytes)> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            }))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .context("the sidecar did not answer")??;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    async fn ok(&self, method: &str, path: &str, body: Value) -> Result<Bytes> {
        let (status, b) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {}", String::from_utf8_lossy(&b));
        }
        Ok(b)
    }
}

async fn serve(port: u16, shared: Shared) -> Result<()> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    println!("checkout: serving HTTP on 127.0.0.1:{port}");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let (status, out) = route(&path, &body, &shared);
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from(out.to_string())));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status).unwrap_or_default();
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn route(path: &str, body: &[u8], shared: &Shared) -> (u16, Value) {
    match path {
        "/dapr/subscribe" => (
            200,
            json!([{"pubsubname": "pubsub", "topic": "shipments", "route": "/shipments"}]),
        ),
        "/shipments" => {
            let ev: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let n = ev["data"]["order"].as_i64().unwrap_or(-1);
            let (m, notify) = &**shared;
            let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = s.published.get(&n).copied() {
                s.arrived.entry(n).or_insert_with(|| t.elapsed());
            }
            println!("checkout: order {n} came back {}", ev["data"]["status"]);
            notify.notify_waiters();
            (200, json!({"status": "SUCCESS"}))
        }
        "/price" => {
            let item: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let price = match item.as_str() {
                Some("kayak") => 499.0,
                Some("paddle") => 39.5,
                _ => 9.99,
            };
            (200, json!({"price": price}))
        }
        _ => (404, json!({"error": "not found"})),
    }
}

fn p50(v: &mut [Duration]) -> String {
    v.sort();
    match (v.get(v.len() / 2), v.last()) {
        (Some(m), Some(x)) => format!(
            "p50 {:.2} ms, max {:.2} ms",
            m.as_secs_f64() * 1e3,
            x.as_secs_f64() * 1e3
        ),
        _ => "-".to_owned(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let port = env_port("APP_PORT")?;
    let dapr = env_port("DAPR_HTTP_PORT")?;
    let orders: i64 = std::env::var("ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let shared: Shared = Arc::default();
    serve(port, shared.clone()).await?;
    let sidecar = Sidecar {
        base: format!("http://127.0.0.1:{dapr}"),
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    };
    let items = ["kayak", "paddle", "life vest"];
    let (mut invoke, mut save, mut get, mut publish) = (vec![], vec![], vec![], vec![]);
    for n in 1..=orders {
        let item = items[usize::try_from(n).unwrap_or(0) % items.len()];
        let order = json!({"order": n, "item": item});
        // inventory may still be starting: retry the first call.
        let end = Instant::now() + WAIT;
        let reserved = loop {
            let t = Instant::now();
            match sidecar
                .ok(
                    "POST",
                    "/v1.0/invoke/inventory/method/reserve",
                    order.clone(),
                )
                .await
            {
                Ok(b) => {
                    invoke.push(t.elapsed());
                    break b;
                }
                Err(e) if Instant::now() < end => {
                    if n == 1 {
                        println!("checkout: waiting for inventory ({e})");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("inventory never answered")),
            }
        };
        let reserved: Value = serde_json::from_slice(&reserved).unwrap_or(Value::Null);
        let t = Instant::now();
        let key = format!("order-{n}");
        sidecar
            .ok("POST", "/v1.0/state/statestore", json!([{"key": key, "value": {"order": n, "item": item, "price": reserved["price"]}}]))
            .await?;
        save.push(t.elapsed());
        let t = Instant::now();
        let back: Value = serde_json::from_slice(
            &sidecar
                .ok("GET", &format!("/v1.0/state/statestore/{key}"), Value::Null)
                .await?,
        )
        .unwrap_or(Value::Null);
        get.push(t.elapsed());
        if back["order"] != json!(n) {
            bail!("state store gave back {back} for {key}");
        }
        shared
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .published
            .insert(n, Instant::now());
        let t = Instant::now();
        sidecar
            .ok("POST", "/v1.0/publish/pubsub/orders", order)
            .await?;
        publish.push(t.elapsed());
        println!(
            "checkout: order {n} ({item}, {}) reserved, saved, published",
            reserved["price"]
        );
    }
    let end = tokio::time::Instant::now() + WAIT;
    let mut e2e = loop {
        let (m, notify) = &*shared;
        let wait = notify.notified();
        {
            let s = m.lock().unwrap_or_else(|p| p.into_inner());
            if s.arrived.len() as i64 >= orders {
                break s.arrived.values().copied().collect::<Vec<_>>();
            }
        }
        if tokio::time::timeout_at(end, wait).await.is_err() {
            let got = m.lock().unwrap_or_else(|p| p.into_inner()).arrived.len();
            bail!("only {got} of {orders} orders came back shipped within {WAIT:?}");
        }
    };
    println!("checkout: summary: {orders} orders placed, reserved, stored and shipped");
    println!(
        "checkout:   invoke inventory (HTTP → gRPC app): {}",
        p50(&mut invoke)
    );
    println!(
        "checkout:   state save:                        {}",
        p50(&mut save)
    );
    println!(
        "checkout:   state get:                         {}",
        p50(&mut get)
    );
    println!(
        "checkout:   publish:                           {}",
        p50(&mut publish)
    );
    println!(
        "checkout:   order published → shipment back:   {}",
        p50(&mut e2e)
    );
    println!(
        "checkout: (a handful of calls from a debug build, first connections included: a check that \
         everything works, not Skiff's speed; `skiff-perf` measures that, perf/RESULTS.md has figures)"
    );
    if std::env::var("STAY").is_ok_and(|v| v == "1") {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}
