//! An echo backend speaking HTTP/1.1 + h2c and gRPC.
//!
//! HTTP routes:
//! - `/status/<code>`: answers with that status;
//! - `/sink`: reads the body and answers `{"bytes": n}`;
//! - `/source?bytes=N`: streams N bytes;
//! - `/healthz`: 200;
//! - `/stats`: `{"cancelled": n}`, delayed gRPC calls cancelled mid-way;
//! - `/flaky/<key>?fail=N&status=S`: the first N calls per key answer S
//!   (default 503), later ones echo (resiliency tests);
//! - `/slow?ms=M`: echoes after M ms;
//! - `/hits`: `{"hits": n}`, every call so far except these counters;
//! - anything else: streams the body back, describing the request in
//!   `x-echo-method`, `x-echo-uri`, `x-echo-headers` (JSON) and naming the
//!   instance in `x-echo-server`.
//!
//! gRPC: `AppCallback/OnInvoke` (method `echo` returns the data as sent,
//! `fail` answers NotFound, others describe the call as JSON),
//! `AppCallbackHealthCheck`, and `skiff.echo.v1.Echo` in every call shape.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_proto::common::{InvokeRequest, InvokeResponse, http_extension::Verb};
use skiff_proto::echo::EchoMessage;
use skiff_proto::echo::echo_server::{Echo, EchoServer};
use skiff_proto::google::protobuf::{Any, Empty};
use skiff_proto::runtime::HealthCheckResponse;
use skiff_proto::runtime::app_callback_health_check_server::{
    AppCallbackHealthCheck, AppCallbackHealthCheckServer,
};
use skiff_proto::runtime::app_callback_server::{AppCallback, AppCallbackServer};
use tokio::net::TcpListener;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;
type EchoBody = Either<Incoming, Either<Full<Bytes>, StreamBody<FrameStream>>>;

const SOURCE_CHUNK: usize = 64 * 1024;

/// Delayed unary calls whose handler was dropped before answering: the
/// caller's cancellation reached the app. Served at `/stats`.
static CANCELLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a cancellation if dropped before `done`.
struct CancelWatch {
    done: bool,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if !self.done {
            CANCELLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Serves HTTP/1.1 and h2c on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, name: Arc<str>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle_http(name.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// What `/dapr/subscribe` lists (`--subscribe`).
static SUBSCRIPTIONS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
/// The last events delivered to `/events/...`.
static EVENTS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>,
> = std::sync::LazyLock::new(Default::default);
const EVENTS_KEPT: usize = 100;

/// Sets what the app subscribes to (pub/sub component, topic).
pub fn set_subscriptions(s: Vec<(String, String)>) {
    let _ = SUBSCRIPTIONS.set(s);
}

/// `/dapr/subscribe` (a 404 when the app subscribes to nothing, which
/// Dapr reads as no subscriptions), `POST /events/...` (an event, kept),
/// `GET /events` (the kept ones).
async fn pubsub(path: &str, req: Request<Incoming>) -> Option<Response<EchoBody>> {
    let subs = SUBSCRIPTIONS.get().filter(|s| !s.is_empty());
    if path == "/dapr/subscribe" {
        let Some(subs) = subs else {
            let mut r = full("no subscriptions");
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Some(r);
        };
        let list: Vec<serde_json::Value> = subs
            .iter()
            .map(|(p, t)| serde_json::json!({"pubsubname": p, "topic": t, "route": format!("/events/{p}/{t}")}))
            .collect();
        return Some(full(serde_json::Value::Array(list).to_string()));
    }
    if path == "/events" && req.method() == http::Method::GET {
        let events: Vec<serde_json::Value> = EVENTS
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default();
        return Some(full(serde_json::Value::Array(events).to_string()));
    }
    if path.starts_with("/events/") && subs.is_some() {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let ce: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Ok(mut e) = EVENTS.lock() {
            if e.len() == EVENTS_KEPT {
                e.pop_front();
            }
            e.push_back(serde_json::json!({"topic": ce["topic"], "source": ce["source"], "data": ce["data"]}));
        }
        return Some(full(r#"{"status":"SUCCESS"}"#));
    }
    None
}

/// Requests served, for tests that count what reached the app.
static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Calls per `/flaky/<key>`.
static FLAKY: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

async fn handle_http(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if !matches!(path.as_str(), "/hits" | "/stats" | "/healthz") {
        HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if SUBSCRIPTIONS.get().is_some_and(|s| !s.is_empty())
        && (path == "/dapr/subscribe" || path.starts_with("/events"))
    {
        if let Some(r) = pubsub(&path, req).await {
            return Ok(r);
        }
        return Ok(full("not found"));
    }
    let query = |key: &str| -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let mut resp = if let Some(key) = path.strip_prefix("/flaky/") {
        // Fails the first `fail` calls for this key with `status`, then echoes.
        let (fail, status) = (query("fail").unwrap_or(1), query("status").unwrap_or(503));
        let n = {
            let mut m = FLAKY.lock().unwrap_or_else(|p| p.into_inner());
            let c = m.entry(key.to_owned()).or_insert(0);
            *c += 1;
            *c
        };
        if n <= fail {
            let mut r = full(format!("flaky failure {n}/{fail}"));
            *r.status_mut() =
                StatusCode::from_u16(status as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            r
        } else {
            echo(req)
        }
    } else if path == "/mirror" {
        mirror(req)
    } else if path == "/slow" {
        tokio::time::sleep(std::time::Duration::from_millis(
            query("ms").unwrap_or(1000),
        ))
        .await;
        echo(req)
    } else if path == "/hits" {
        let n = HITS.load(std::sync::atomic::Ordering::Relaxed);
        full(format!("{{\"hits\":{n}}}"))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = full(format!("status {}", status.as_u16()));
        *r.status_mut() = status;
        r
    } else if path == "/sink" {
        let n = count_body(req.into_body()).await;
        full(format!("{{\"bytes\":{n}}}"))
    } else if path == "/source" {
        let n = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes=")))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        Response::new(Either::Right(Either::Right(source(n))))
    } else if path == "/healthz" {
        full("ok")
    } else if path == "/stats" {
        let n = CANCELLED.load(std::sync::atomic::Ordering::Relaxed);
        full(format!("{{\"cancelled\":{n}}}"))
    } else {
        echo(req)
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-echo-server", v);
    }
    Ok(resp)
}

fn echo(req: Request<Incoming>) -> Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let mut resp = Response::new(Either::Left(body));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(parts.method.as_str()) {
        h.insert("x-echo-method", v);
    }
    if let Ok(v) = HeaderValue::from_str(&parts.uri.to_string()) {
        h.insert("x-echo-uri", v);
    }
    if let Ok(v) = HeaderValue::from_str(&serde_json::Value::Object(headers).to_string()) {
        h.insert("x-echo-headers", v);
    }
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        h.insert(http::header::CONTENT_TYPE, ct.clone());
    }
    resp
}

/// The request's body back, with its content type and nothing else: what
/// the benchmark calls, so no path pays for headers the app reflects.
fn mirror(req: Request<Incoming>) -> Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let mut resp = Response::new(Either::Left(body));
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.clone());
    }
    resp
}

fn full(s: impl Into<Bytes>) -> Response<EchoBody> {
    Response::new(Either::Right(Either::Left(Full::new(s.into()))))
}

async fn count_body(mut b: Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(Ok(f)) = b.frame().await {
        if let Some(d) = f.data_ref() {
            n += d.len() as u64;
        }
    }
    n
}

fn source(total: usize) -> StreamBody<FrameStream> {
    let chunk = Bytes::from(vec![b'x'; SOURCE_CHUNK]);
    let s = futures_util::stream::iter((0..total).step_by(SOURCE_CHUNK).map(move |off| {
        let len = SOURCE_CHUNK.min(total - off);
        Ok(Frame::data(chunk.slice(..len)))
    }));
    StreamBody::new(Box::pin(s))
}

/// Serves the gRPC services on `listener` until the task is dropped.
pub async fn serve_grpc(
    listener: TcpListener,
    name: Arc<str>,
) -> Result<(), tonic::transport::Error> {
    // Server::tcp_nodelay only applies to sockets tonic binds itself; without
    // it here, Nagle holds each response's trailers for a delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AppCallbackServer::new(Callback { name: name.clone() }))
        .add_service(AppCallbackHealthCheckServer::new(Callback {
            name: name.clone(),
        }))
        .add_service(EchoServer::new(EchoSvc { name }))
        .serve_with_incoming(incoming)
        .await
}

struct Callback {
    name: Arc<str>,
}

#[tonic::async_trait]
impl AppCallback for Callback {
    // The echo app subscribes to nothing: Dapr reads Unimplemented as
    // "no subscriptions" and as an ack.
    async fn list_topic_subscriptions(
        &self,
        _: GrpcRequest<skiff_proto::google::protobuf::Empty>,
    ) -> Result<GrpcResponse<skiff_proto::runtime::ListTopicSubscriptionsResponse>, Status> {
        Err(Status::unimplemented("the echo app has no subscriptions"))
    }

    async fn on_topic_event(
        &self,
        _: GrpcRequest<skiff_proto::runtime::TopicEventRequest>,
    ) -> Result<GrpcResponse<skiff_proto::runtime::TopicEventResponse>, Status> {
        Err(Status::unimplemented("the echo app has no subscriptions"))
    }

    async fn on_bulk_topic_event(
        &self,
        _: GrpcRequest<skiff_proto::runtime::TopicEventBulkRequest>,
    ) -> Result<GrpcResponse<skiff_proto::runtime::TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("the echo app has no subscriptions"))
    }

    async fn on_invoke(
        &self,
        req: GrpcRequest<InvokeRequest>,
    ) -> Result<GrpcResponse<InvokeResponse>, Status> {
        let md: serde_json::Map<String, serde_json::Value> = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                )
            })
            .collect();
        let r = req.into_inner();
        match r.method.as_str() {
            "echo" => Ok(GrpcResponse::new(InvokeResponse {
                data: r.data,
                content_type: r.content_type,
            })),
            "fail" => Err(Status::not_found("no such thing")),
            _ => {
                let ext = r.http_extension.unwrap_or_default();
                let data = r.data.unwrap_or_default();
                let desc = serde_json::json!({
                    "server": &*self.name,
                    "method": r.method,
                    "verb": Verb::try_from(ext.verb).map(|v| v.as_str_name()).unwrap_or("?"),
                    "querystring": ext.querystring,
                    "contentType": r.content_type,
                    "typeUrl": data.type_url,
                    "data": String::from_utf8_lossy(&data.value),
                    "metadata": md,
                });
                Ok(GrpcResponse::new(InvokeResponse {
                    data: Some(Any {
                        type_url: String::new(),
                        value: Bytes::from(desc.to_string()),
                    }),
                    content_type: "application/json".into(),
                }))
            }
        }
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

#[tonic::async_trait]
impl AppCallbackHealthCheck for Callback {
    async fn health_check(
        &self,
        _: GrpcRequest<Empty>,
    ) -> Result<GrpcResponse<HealthCheckResponse>, Status> {
        Ok(GrpcResponse::new(HealthCheckResponse {}))
    }
}

struct EchoSvc {
    name: Arc<str>,
}

fn seen(md: &tonic::metadata::MetadataMap, name: &str) -> Vec<String> {
    let mut v: Vec<String> = md
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| format!("{}={}", k, String::from_utf8_lossy(v.as_bytes())))
        .collect();
    v.push(format!("x-echo-server={name}"));
    v
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<EchoMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoSvc {
    async fn unary(
        &self,
        req: GrpcRequest<EchoMessage>,
    ) -> Result<GrpcResponse<EchoMessage>, Status> {
        let seen_metadata = seen(req.metadata(), &self.name);
        let m = req.into_inner();
        if m.delay_ms > 0 {
            let mut watch = CancelWatch { done: false };
            tokio::time::sleep(Duration::from_millis(m.delay_ms.into())).await;
            watch.done = true;
        }
        Ok(GrpcResponse::new(EchoMessage { seen_metadata, ..m }))
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        req: GrpcRequest<EchoMessage>,
    ) -> Result<GrpcResponse<MsgStream>, Status> {
        let m = req.into_inner();
        let n = m.count;
        let s = futures_util::stream::iter((0..n).map(move |i| {
            Ok(EchoMessage {
                count: i,
                ..m.clone()
            })
        }));
        Ok(GrpcResponse::new(Box::pin(s)))
    }

    async fn client_stream(
        &self,
        req: GrpcRequest<Streaming<EchoMessage>>,
    ) -> Result<GrpcResponse<EchoMessage>, Status> {
        let mut s = req.into_inner();
        let mut payload = Vec::new();
        let mut count = 0;
        while let Some(m) = s.next().await {
            let m = m?;
            payload.extend_from_slice(&m.payload);
            count += 1;
        }
        Ok(GrpcResponse::new(EchoMessage {
            payload: payload.into(),
            count,
            ..Default::default()
        }))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        req: GrpcRequest<Streaming<EchoMessage>>,
    ) -> Result<GrpcResponse<MsgStream>, Status> {
        let s = req.into_inner();
        Ok(GrpcResponse::new(Box::pin(s)))
    }
}
