//! Subscriber apps for the pub/sub tests, run in the test process on
//! loopback: an HTTP app (serves `/dapr/subscribe`, takes `POST`s) and a
//! gRPC app (`AppCallback`), both recording every delivery and answering
//! by a behaviour the test gives. Each delivery is checked against the
//! ones still running: the same message twice at the same time is
//! counted as an overlap (what Skiff promises never happens).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use skiff_proto::runtime as pb;
use tokio::sync::Notify;

/// What the app answers for one delivery.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    /// Held (after `delay`) until this reads `true`.
    pub gate: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            status: 200,
            body: String::new(),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn status(s: &str) -> Self {
        Self {
            status: 200,
            body: format!(r#"{{"status":"{s}"}}"#),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn http(code: u16) -> Self {
        Self {
            status: code,
            body: String::new(),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn after(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Answers only once `gate` reads `true` (or its sender is gone).
    pub fn when_open(mut self, gate: tokio::sync::watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }
}

/// One delivery as the app saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub headers: http::HeaderMap,
    /// The CloudEvent (HTTP) or a JSON view of `TopicEventRequest` (gRPC).
    pub event: Value,
    /// The raw body (HTTP) or `data` (gRPC).
    pub raw: Bytes,
}

/// How the app answers: from the path and the event.
pub type Behave = Arc<dyn Fn(&str, &Value) -> Reply + Send + Sync>;

#[derive(Default)]
struct Log {
    got: Vec<Delivery>,
    /// Message id → deliveries of it running now.
    running: HashMap<String, usize>,
    max_running: usize,
    now_running: usize,
    overlaps: usize,
}

/// One delivery running in the app; it ends when dropped.
struct Running {
    log: Arc<Mutex<Log>>,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = l.running.get_mut(&self.key) {
            *n -= 1;
        }
        l.now_running -= 1;
    }
}

/// What both apps share.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
    notify: Arc<Notify>,
    behave: Arc<Mutex<Behave>>,
    /// Picks the message id to check for overlaps (default: `event.id`).
    key: Arc<dyn Fn(&Value) -> String + Send + Sync>,
}

impl Recorder {
    fn new(behave: Behave) -> Self {
        Self {
            log: Arc::default(),
            notify: Arc::default(),
            behave: Arc::new(Mutex::new(behave)),
            key: Arc::new(|e: &Value| e["id"].as_str().unwrap_or_default().to_owned()),
        }
    }

    /// Changes how the app answers from now on.
    pub fn set_behaviour(&self, b: Behave) {
        *self.behave.lock().expect("lock") = b;
    }

    /// Identifies messages by something else than the CloudEvent id.
    pub fn key_by(&mut self, f: impl Fn(&Value) -> String + Send + Sync + 'static) {
        self.key = Arc::new(f);
    }

    async fn record(&self, d: Delivery) -> Reply {
        let key = (self.key)(&d.event);
        let reply = (self.behave.lock().expect("lock"))(&d.path, &d.event);
        {
            let mut l = self.log.lock().expect("lock");
            let n = l.running.entry(key.clone()).or_default();
            *n += 1;
            if *n > 1 {
                l.overlaps += 1;
            }
            l.now_running += 1;
            l.max_running = l.max_running.max(l.now_running);
        }
        // A delivery whose sidecar went away is cancelled (hyper drops the
        // handler with its connection): it stops running then.
        let guard = Running {
            log: self.log.clone(),
            key,
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if let Some(mut g) = reply.gate.clone() {
            let _ = g.wait_for(|open| *open).await;
        }
        drop(guard);
        self.log.lock().expect("lock").got.push(d);
        self.notify.notify_waiters();
        reply
    }

    /// Every delivery so far (finished ones).
    pub fn got(&self) -> Vec<Delivery> {
        self.log.lock().expect("lock").got.clone()
    }

    /// Deliveries of one message that overlapped in time.
    pub fn overlaps(&self) -> usize {
        self.log.lock().expect("lock").overlaps
    }

    /// The most deliveries running at once.
    pub fn max_concurrent(&self) -> usize {
        self.log.lock().expect("lock").max_running
    }

    /// Waits until `f` holds for the deliveries, or panics after `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let end = Instant::now() + within;
        loop {
            let n = self.notify.notified();
            {
                let l = self.log.lock().expect("lock");
                if f(&l.got) {
                    return l.got.clone();
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: not within {within:?}; got {} deliveries: {:?}",
                self.got().len(),
                self.got()
                    .iter()
                    .rev()
                    .take(3)
                    .map(|d| (&d.path, &d.event))
                    .collect::<Vec<_>>()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), n).await;
        }
    }

    /// Waits for at least `n` deliveries to `path` (any path when empty).
    pub async fn wait_for(&self, n: usize, path: &str, within: Duration) -> Vec<Delivery> {
        self.wait_until(within, &format!("{n} deliveries to {path:?}"), |g| {
            g.iter()
                .filter(|d| path.is_empty() || d.path == path)
                .count()
                >= n
        })
        .await
        .into_iter()
        .filter(|d| path.is_empty() || d.path == path)
        .collect()
    }
}

/// An HTTP subscriber app.
pub struct HttpSubscriber {
    pub port: u16,
    pub rec: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `data.n` numbers a [`HttpSubscriber::numbers`] app has seen.
pub type Numbers = Arc<Mutex<BTreeSet<u64>>>;

impl HttpSubscriber {
    /// An app subscribed to `subscribe` that answers every event with
    /// success and keeps the `data.n` number of each.
    pub async fn numbers(subscribe: Value) -> (Self, Numbers) {
        let got = Numbers::default();
        let seen = got.clone();
        let app = Self::start(
            Some(subscribe),
            Arc::new(move |_, ev| {
                if let Some(n) = ev["data"]["n"].as_u64() {
                    seen.lock().expect("lock").insert(n);
                }
                Reply::ok()
            }),
        )
        .await;
        (app, got)
    }

    /// Serves `subscribe` as `GET /dapr/subscribe` (a 404 when `None`).
    pub async fn start(subscribe: Option<Value>, behave: Behave) -> Self {
        Self::start_with(subscribe, Recorder::new(behave)).await
    }

    pub async fn start_with(subscribe: Option<Value>, rec: Recorder) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let r = rec.clone();
        let sub = Arc::new(subscribe);
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let (r, sub) = (r.clone(), sub.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (r, sub) = (r.clone(), sub.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                if path == "/dapr/subscribe" {
                                    let (status, body) = match &*sub {
                                        Some(v) => (200, v.to_string()),
                                        None => (404, String::new()),
                                    };
                                    let mut resp =
                                        http::Response::new(Full::new(Bytes::from(body)));
                                    *resp.status_mut() =
                                        http::StatusCode::from_u16(status).expect("status");
                                    return Ok::<_, hyper::Error>(resp);
                                }
                                let headers = req.headers().clone();
                                let raw = req.into_body().collect().await?.to_bytes();
                                let event = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                                let reply = r
                                    .record(Delivery {
                                        path,
                                        headers,
                                        event,
                                        raw,
                                    })
                                    .await;
                                let mut resp =
                                    http::Response::new(Full::new(Bytes::from(reply.body)));
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(reply.status).expect("status");
                                Ok(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self { port, rec, task }
    }
}

/// A gRPC subscriber app (`AppCallback`).
pub struct GrpcSubscriber {
    pub port: u16,
    pub rec: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Callback {
    rec: Recorder,
    subs: Vec<pb::TopicSubscription>,
}

#[tonic::async_trait]
impl pb::app_callback_server::AppCallback for Callback {
    async fn on_invoke(
        &self,
        _: tonic::Request<skiff_proto::common::InvokeRequest>,
    ) -> Result<tonic::Response<skiff_proto::common::InvokeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no methods"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: tonic::Request<skiff_proto::google::protobuf::Empty>,
    ) -> Result<tonic::Response<pb::ListTopicSubscriptionsResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ListTopicSubscriptionsResponse {
            subscriptions: self.subs.clone(),
        }))
    }

    async fn on_topic_event(
        &self,
        r: tonic::Request<pb::TopicEventRequest>,
    ) -> Result<tonic::Response<pb::TopicEventResponse>, tonic::Status> {
        let headers = r.metadata().clone().into_headers();
        let e = r.into_inner();
        let event = serde_json::json!({
            "id": e.id, "source": e.source, "type": e.r#type, "specversion": e.spec_version,
            "datacontenttype": e.data_content_type, "topic": e.topic, "pubsubname": e.pubsub_name,
            "path": e.path, "data": String::from_utf8_lossy(&e.data),
            "extensions": e.extensions.map(|s| s.fields.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
        });
        let reply = self
            .rec
            .record(Delivery {
                path: e.path.clone(),
                headers,
                event,
                raw: e.data,
            })
            .await;
        use pb::topic_event_response::TopicEventResponseStatus as S;
        let status = match (reply.status, reply.body.as_str()) {
            (200, b) if b.contains("RETRY") => S::Retry,
            (200, b) if b.contains("DROP") => S::Drop,
            (200, _) => S::Success,
            (404, _) => return Err(tonic::Status::unimplemented("no such topic")),
            _ => return Err(tonic::Status::internal("failed")),
        };
        Ok(tonic::Response::new(pb::TopicEventResponse {
            status: status as i32,
        }))
    }

    async fn on_bulk_topic_event(
        &self,
        _: tonic::Request<pb::TopicEventBulkRequest>,
    ) -> Result<tonic::Response<pb::TopicEventBulkResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no bulk"))
    }

    async fn list_input_bindings(
        &self,
        _: tonic::Request<skiff_proto::google::protobuf::Empty>,
    ) -> Result<tonic::Response<skiff_proto::runtime::ListInputBindingsResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("no input bindings"))
    }

    async fn on_binding_event(
        &self,
        _: tonic::Request<skiff_proto::runtime::BindingEventRequest>,
    ) -> Result<tonic::Response<skiff_proto::runtime::BindingEventResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no input bindings"))
    }
}

impl GrpcSubscriber {
    pub async fn start(subs: Vec<pb::TopicSubscription>, behave: Behave) -> Self {
        let rec = Recorder::new(behave);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = l.local_addr().expect("addr");
        let svc = pb::app_callback_server::AppCallbackServer::new(Callback {
            rec: rec.clone(),
            subs,
        });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        Self {
            port: addr.port(),
            rec,
            task,
        }
    }
}

/// Always SUCCESS.
pub fn succeed() -> Behave {
    Arc::new(|_, _| Reply::ok())
}

/// Waits until the sidecar `s` reports at least `n` subscriptions in its
/// metadata (20 s at most).
pub async fn wait_subscribed(s: &crate::Sidecar, n: usize) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let m = crate::get_json(&format!("{}/v1.0/metadata", s.http())).await;
        let k = m["subscriptions"].as_array().map_or(0, Vec::len);
        if k >= n {
            return;
        }
        assert!(Instant::now() < end, "{k} subscriptions, wanted {n}: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
