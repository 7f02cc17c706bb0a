//! Dapr's gRPC API: `dapr.proto.runtime.v1.Dapr` (served by tonic) and proxy
//! mode, where any other gRPC call carrying `dapr-app-id` metadata is
//! forwarded frame for frame to the target app, without decoding protobuf.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use skiff_proto::common::{InvokeResponse, http_extension::Verb};
use skiff_proto::google::protobuf::Any;
use skiff_proto::runtime::InvokeServiceRequest;
use skiff_proto::runtime::dapr_server::{Dapr, DaprServer};
use tonic::Code;
use tonic::codegen::Service;

use crate::blocks::{
    self, Block, Blocks, Rpc, bindings, configuration, lock, pubsub, secrets, state,
};
use crate::errors::{self, grpc_code_from_http};
use crate::headers::{
    self, DAPR_APP_ID, SKIFF_GRPC_MESSAGE, SKIFF_GRPC_STATUS, SKIFF_TYPE_URL, SKIFF_VERB_NONE,
};
use crate::invoke::envelope::{Door, Invoker};
use crate::invoke::{target, wire};
use bytes::Bytes;

use super::unary;
use crate::protowire::{Reader, WireError, int, len};
use crate::skiff_body::SkiffBody;
use crate::telemetry::metrics;
use skiff_proto::google::protobuf::Empty;
use skiff_proto::runtime as pb;

/// What the gRPC API's handlers need.
pub struct GrpcContext {
    pub invoker: Arc<Invoker>,
    pub blocks: Arc<Blocks>,
    /// Streaming subscriptions run on the sidecar's subscription loops.
    pub runner: Arc<crate::blocks::pubsub::deliver::Runner>,
    /// `--dapr-graceful-shutdown-seconds`, for streaming subscriptions.
    pub grace: Duration,
    pub door: super::Door,
    /// `GetMetadata` reports what `/v1.0/metadata` does.
    pub metadata: Arc<super::metadata::Metadata>,
}

/// The gRPC front door of one sidecar.
#[derive(Clone)]
pub struct GrpcApi {
    cx: Arc<GrpcContext>,
    dapr: DaprServer<DaprApi>,
}

impl GrpcApi {
    pub fn new(cx: Arc<GrpcContext>) -> Self {
        let dapr = DaprServer::new(DaprApi { cx: cx.clone() })
            .max_decoding_message_size(cx.door.max_body_size)
            .max_encoding_message_size(usize::MAX);
        Self { cx, dapr }
    }

    /// Serves one request on the gRPC API port, counted in Dapr's gRPC
    /// server metrics once its status is known.
    pub fn handle(self, req: Request<SkiffBody>) -> impl Future<Output = Response<SkiffBody>> {
        async move {
            let start = Instant::now();
            let series = metrics::get().map(|m| m.grpc_server(req.uri().path()));
            let logged = self
                .cx
                .door
                .api_logging
                .then(|| (self.cx.clone(), req.uri().path().to_owned()));
            let resp = self.route(req).await;
            if let Some((cx, path)) = logged {
                let code = resp
                    .headers()
                    .get(headers::GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("pending");
                tracing::info!(target: super::http::API_LOG_TARGET, app_id = %cx.door.app_id, method = %path, code, duration_us = start.elapsed().as_micros() as u64, "gRPC API called");
            }
            match series {
                Some(codes) => crate::skiff_body::observe_grpc(resp, codes, start),
                None => resp,
            }
        }
    }

    async fn call_tonic(&mut self, req: Request<SkiffBody>) -> Response<SkiffBody> {
        match self.dapr.call(req).await {
            Ok(resp) => resp.map(SkiffBody::Grpc),
            Err(never) => match never {},
        }
    }

    /// The API token once, then: proxy mode for any call with
    /// `dapr-app-id` outside Dapr's service, else Dapr's service by RPC.
    fn route(mut self, req: Request<SkiffBody>) -> impl Future<Output = Response<SkiffBody>> {
        async move {
            if !super::token_ok(self.cx.door.token.as_deref(), req.headers()) {
                return errors::grpc_error(Code::Unauthenticated, "invalid api token");
            }
            let rpc = req
                .uri()
                .path()
                .strip_prefix(skiff_proto::paths::DAPR_SERVICE_PREFIX);
            let Some(rpc) = rpc else {
                if req.headers().contains_key(&DAPR_APP_ID) {
                    return proxy(&self.cx, req).await;
                }
                return errors::grpc_error(
                    Code::Unimplemented,
                    &format!(
                        "{} is not a service of this sidecar; a call for an app needs dapr-app-id metadata",
                        req.uri().path()
                    ),
                );
            };
            match blocks::rpc(rpc) {
                Rpc::Unary(u) => {
                    let cx = &self.cx;
                    unary::serve(req, cx.door.max_body_size, |h, msg| {
                        serve_unary(cx, u, h, msg)
                    })
                    .await
                }
                Rpc::Served => {
                    let deadline = unary::deadline_of(req.headers());
                    let (parts, body) = req.into_parts();
                    let limit = self.cx.door.max_body_size;
                    let call = async {
                        match unary::read_frame(&parts.headers, body, limit).await {
                            Ok(frame) => {
                                let req = Request::from_parts(parts, SkiffBody::full(frame));
                                self.call_tonic(req).await
                            }
                            Err(e) => e.to_grpc(),
                        }
                    };
                    // Bounds the wait for the answer's head (a stream,
                    // once begun, runs on). Boxed: the RPCs tonic serves
                    // are not the hot ones (tonic boxes its own future
                    // too), and every stream's future is as large as its
                    // largest branch.
                    Box::pin(unary::within(deadline, call, unary::past_deadline)).await
                }
                Rpc::ClientStream => self.call_tonic(req).await,
                Rpc::Block(block) => block.not_configured("", &self.cx.door.app_id).to_grpc(),
                Rpc::NotYet => blocks::not_served(rpc, true).to_grpc(),
                Rpc::Unknown => blocks::not_served(rpc, false).to_grpc(),
            }
        }
    }
}

/// The blocks' readers of the RPCs the door serves itself.
async fn serve_unary(
    cx: &GrpcContext,
    rpc: blocks::Unary,
    h: HeaderMap,
    msg: Bytes,
) -> Result<unary::Answer, unary::Failed> {
    let (b, tracer) = (&cx.blocks, &cx.invoker.tracer);
    let answer = match rpc {
        blocks::Unary::GetState => state::grpc::get_state_wire(&b.state, tracer, &h, &msg).await,
        blocks::Unary::SaveState => state::grpc::save_state_wire(&b.state, tracer, &h, &msg).await,
        blocks::Unary::DeleteState => {
            state::grpc::delete_state_wire(&b.state, tracer, &h, &msg).await
        }
        blocks::Unary::PublishEvent => {
            pubsub::grpc::publish_wire(&b.pubsub, tracer, &h, &msg).await
        }
        blocks::Unary::InvokeService => {
            // Boxed, as tonic boxed it: the invocation's future is several
            // times the others', and every stream's future is as large as
            // its largest branch.
            return Box::pin(invoke_service_wire(cx, h, &msg)).await;
        }
    };
    answer.map_err(unary::Failed::Api)
}

/// Forwards a gRPC call to the app named by `dapr-app-id`. Bodies and
/// trailers stream both ways, so every call shape works; the deadline
/// travels in `grpc-timeout` and also bounds the wait for the response head.
fn proxy(cx: &GrpcContext, req: Request<SkiffBody>) -> impl Future<Output = Response<SkiffBody>> {
    async move {
        let raw = req
            .headers()
            .get(&DAPR_APP_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let target = match target::parse_app_id(raw, &cx.door.namespace) {
            Ok(t) => t,
            Err(e) => return errors::grpc_error(Code::InvalidArgument, &e.to_string()),
        };
        let deadline = unary::deadline_of(req.headers());
        let (mut parts, body) = req.into_parts();
        wire::from_app(&mut parts.headers);
        wire::mark_grpc_proxy(&mut parts.headers);
        let req = Request::from_parts(parts, body);
        cx.invoker
            .invoke(Door::GrpcProxy { deadline }, target, None, req)
            .await
    }
}

/// The tonic implementation of `dapr.proto.runtime.v1.Dapr`.
pub struct DaprApi {
    cx: Arc<GrpcContext>,
}

/// The requests of component calls, for their spans' `db.name`.
trait StoreNamed {
    fn store(&self) -> &str;
}

macro_rules! store_named {
    ($($t:ty),*) => {$(
        impl StoreNamed for $t {
            fn store(&self) -> &str {
                &self.store_name
            }
        }
    )*};
}

impl StoreNamed for pb::InvokeBindingRequest {
    fn store(&self) -> &str {
        &self.name
    }
}

store_named!(
    pb::GetStateRequest,
    pb::GetBulkStateRequest,
    pb::SaveStateRequest,
    pb::QueryStateRequest,
    pb::DeleteStateRequest,
    pb::DeleteBulkStateRequest,
    pb::ExecuteStateTransactionRequest,
    pb::GetSecretRequest,
    pb::GetBulkSecretRequest,
    pb::TryLockRequest,
    pb::UnlockRequest,
    pb::GetConfigurationRequest,
    pb::SubscribeConfigurationRequest,
    pb::UnsubscribeConfigurationRequest
);

impl DaprApi {
    /// Runs a component call in its span (see [`crate::blocks::traced`]);
    /// the caller's metadata is copied only when spans are exported.
    async fn traced<Q: StoreNamed, T, Fut>(
        &self,
        block: Block,
        name: &'static str,
        r: tonic::Request<Q>,
        call: impl FnOnce(Q) -> Fut,
    ) -> Result<T, tonic::Status>
    where
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let tracer = &self.cx.invoker.tracer;
        let headers = tracer
            .exporting()
            .then(|| r.metadata().clone().into_headers());
        let q = r.into_inner();
        let store = if headers.is_some() {
            q.store().to_owned()
        } else {
            String::new()
        };
        let failed =
            |o: &Result<T, tonic::Status>| o.as_ref().err().map(|s| s.message().to_owned());
        crate::blocks::traced(
            tracer,
            headers.as_ref(),
            block,
            name,
            &store,
            call(q),
            failed,
        )
        .await
    }
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    type SubscribeTopicEventsAlpha1Stream = pubsub::grpc::EventStream;
    type SubscribeConfigurationAlpha1Stream = configuration::grpc::ConfigStream;
    type SubscribeConfigurationStream = configuration::grpc::ConfigStream;

    async fn publish_event(
        &self,
        r: tonic::Request<pb::PublishEventRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        let (md, _, msg) = r.into_parts();
        let h = md.into_headers();
        pubsub::grpc::publish(&self.cx.blocks.pubsub, &self.cx.invoker.tracer, &h, msg)
            .await
            .map(|()| tonic::Response::new(Empty {}))
    }

    async fn bulk_publish_event(
        &self,
        r: tonic::Request<pb::BulkPublishRequest>,
    ) -> Result<tonic::Response<pb::BulkPublishResponse>, tonic::Status> {
        let (md, _, msg) = r.into_parts();
        let h = md.into_headers();
        pubsub::grpc::publish_bulk(&self.cx.blocks.pubsub, &self.cx.invoker.tracer, &h, msg)
            .await
            .map(tonic::Response::new)
    }

    async fn bulk_publish_event_alpha1(
        &self,
        r: tonic::Request<pb::BulkPublishRequest>,
    ) -> Result<tonic::Response<pb::BulkPublishResponse>, tonic::Status> {
        self.bulk_publish_event(r).await
    }

    async fn subscribe_topic_events_alpha1(
        &self,
        r: tonic::Request<tonic::Streaming<pb::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<tonic::Response<Self::SubscribeTopicEventsAlpha1Stream>, tonic::Status> {
        pubsub::grpc::subscribe_stream(
            &self.cx.blocks.pubsub,
            &self.cx.runner,
            self.cx.grace,
            r.into_inner(),
        )
        .await
        .map(tonic::Response::new)
    }

    async fn invoke_service(
        &self,
        request: tonic::Request<InvokeServiceRequest>,
    ) -> Result<tonic::Response<InvokeResponse>, tonic::Status> {
        let (metadata, _, msg) = request.into_parts();
        let inv = msg.message.ok_or_else(|| {
            tonic::Status::invalid_argument("InvokeServiceRequest.message is required")
        })?;
        let ext = inv.http_extension.unwrap_or_default();
        let (type_url, data) = inv.data.map(|a| (a.type_url, a.value)).unwrap_or_default();
        let call = InvokeCall {
            id: &msg.id,
            method: &inv.method,
            type_url: &type_url,
            data,
            content_type: &inv.content_type,
            verb: Verb::try_from(ext.verb).unwrap_or(Verb::None),
            querystring: &ext.querystring,
        };
        let resp = invoke(&self.cx, metadata.into_headers(), call)
            .await
            .map_err(tonic::Status::invalid_argument)?;
        match relay(resp, self.cx.door.max_body_size).await {
            Ok(r) => {
                let mut md = tonic::metadata::MetadataMap::new();
                md.insert(
                    "dapr-http-status",
                    tonic::metadata::MetadataValue::from(r.status.as_u16()),
                );
                let mut out = tonic::Response::new(InvokeResponse {
                    data: Some(Any {
                        type_url: text(r.type_url.as_ref()).to_owned(),
                        value: r.data,
                    }),
                    content_type: text(r.content_type.as_ref()).to_owned(),
                });
                *out.metadata_mut() = md;
                Ok(out)
            }
            Err(f) => Err(f.to_status()),
        }
    }

    async fn get_state(
        &self,
        r: tonic::Request<pb::GetStateRequest>,
    ) -> Result<tonic::Response<pb::GetStateResponse>, tonic::Status> {
        self.traced(Block::State, "GetState", r, |r| {
            state::grpc::get_state(&self.cx.blocks.state, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn get_bulk_state(
        &self,
        r: tonic::Request<pb::GetBulkStateRequest>,
    ) -> Result<tonic::Response<pb::GetBulkStateResponse>, tonic::Status> {
        self.traced(Block::State, "GetBulkState", r, |r| {
            state::grpc::get_bulk_state(&self.cx.blocks.state, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn save_state(
        &self,
        r: tonic::Request<pb::SaveStateRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        self.traced(Block::State, "SaveState", r, |r| {
            state::grpc::save_state(&self.cx.blocks.state, r)
        })
        .await
        .map(|()| tonic::Response::new(Empty {}))
    }

    async fn query_state_alpha1(
        &self,
        r: tonic::Request<pb::QueryStateRequest>,
    ) -> Result<tonic::Response<pb::QueryStateResponse>, tonic::Status> {
        self.traced(Block::State, "QueryState", r, |r| {
            state::grpc::query_state(&self.cx.blocks.state, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn delete_state(
        &self,
        r: tonic::Request<pb::DeleteStateRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        self.traced(Block::State, "DeleteState", r, |r| {
            state::grpc::delete_state(&self.cx.blocks.state, r)
        })
        .await
        .map(|()| tonic::Response::new(Empty {}))
    }

    async fn delete_bulk_state(
        &self,
        r: tonic::Request<pb::DeleteBulkStateRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        self.traced(Block::State, "DeleteBulkState", r, |r| {
            state::grpc::delete_bulk_state(&self.cx.blocks.state, r)
        })
        .await
        .map(|()| tonic::Response::new(Empty {}))
    }

    async fn execute_state_transaction(
        &self,
        r: tonic::Request<pb::ExecuteStateTransactionRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        self.traced(Block::State, "ExecuteStateTransaction", r, |r| {
            state::grpc::execute_state_transaction(&self.cx.blocks.state, r)
        })
        .await
        .map(|()| tonic::Response::new(Empty {}))
    }

    async fn get_secret(
        &self,
        r: tonic::Request<pb::GetSecretRequest>,
    ) -> Result<tonic::Response<pb::GetSecretResponse>, tonic::Status> {
        self.traced(Block::Secrets, "GetSecret", r, |r| {
            secrets::grpc::get_secret(&self.cx.blocks.secrets, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn get_bulk_secret(
        &self,
        r: tonic::Request<pb::GetBulkSecretRequest>,
    ) -> Result<tonic::Response<pb::GetBulkSecretResponse>, tonic::Status> {
        self.traced(Block::Secrets, "GetBulkSecret", r, |r| {
            secrets::grpc::get_bulk_secret(&self.cx.blocks.secrets, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn get_metadata(
        &self,
        _: tonic::Request<pb::GetMetadataRequest>,
    ) -> Result<tonic::Response<pb::GetMetadataResponse>, tonic::Status> {
        Ok(tonic::Response::new(super::metadata::to_grpc(
            &self.cx.metadata.report(),
        )))
    }

    async fn set_metadata(
        &self,
        r: tonic::Request<pb::SetMetadataRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        let r = r.into_inner();
        self.cx.metadata.put(r.key, r.value);
        Ok(tonic::Response::new(Empty {}))
    }

    async fn invoke_binding(
        &self,
        r: tonic::Request<pb::InvokeBindingRequest>,
    ) -> Result<tonic::Response<pb::InvokeBindingResponse>, tonic::Status> {
        let headers = r.metadata().clone().into_headers();
        self.traced(Block::Bindings, "InvokeBinding", r, |r| {
            bindings::grpc::invoke(&self.cx.blocks.bindings, &headers, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn get_configuration(
        &self,
        r: tonic::Request<pb::GetConfigurationRequest>,
    ) -> Result<tonic::Response<pb::GetConfigurationResponse>, tonic::Status> {
        self.traced(Block::Configuration, "GetConfiguration", r, |r| {
            configuration::grpc::get(&self.cx.blocks.configuration, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn get_configuration_alpha1(
        &self,
        r: tonic::Request<pb::GetConfigurationRequest>,
    ) -> Result<tonic::Response<pb::GetConfigurationResponse>, tonic::Status> {
        self.get_configuration(r).await
    }

    async fn subscribe_configuration(
        &self,
        r: tonic::Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<tonic::Response<Self::SubscribeConfigurationStream>, tonic::Status> {
        configuration::grpc::subscribe(&self.cx.blocks.configuration, r.into_inner())
            .await
            .map(tonic::Response::new)
    }

    async fn subscribe_configuration_alpha1(
        &self,
        r: tonic::Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<tonic::Response<Self::SubscribeConfigurationAlpha1Stream>, tonic::Status> {
        self.subscribe_configuration(r).await
    }

    async fn unsubscribe_configuration(
        &self,
        r: tonic::Request<pb::UnsubscribeConfigurationRequest>,
    ) -> Result<tonic::Response<pb::UnsubscribeConfigurationResponse>, tonic::Status> {
        configuration::grpc::unsubscribe(&self.cx.blocks.configuration, r.into_inner())
            .map(tonic::Response::new)
    }

    async fn unsubscribe_configuration_alpha1(
        &self,
        r: tonic::Request<pb::UnsubscribeConfigurationRequest>,
    ) -> Result<tonic::Response<pb::UnsubscribeConfigurationResponse>, tonic::Status> {
        self.unsubscribe_configuration(r).await
    }

    async fn try_lock_alpha1(
        &self,
        r: tonic::Request<pb::TryLockRequest>,
    ) -> Result<tonic::Response<pb::TryLockResponse>, tonic::Status> {
        self.traced(Block::Lock, "TryLockAlpha1", r, |r| {
            lock::grpc::try_lock(&self.cx.blocks.lock, r)
        })
        .await
        .map(tonic::Response::new)
    }

    async fn unlock_alpha1(
        &self,
        r: tonic::Request<pb::UnlockRequest>,
    ) -> Result<tonic::Response<pb::UnlockResponse>, tonic::Status> {
        self.traced(Block::Lock, "UnlockAlpha1", r, |r| {
            lock::grpc::unlock(&self.cx.blocks.lock, r)
        })
        .await
        .map(tonic::Response::new)
    }
}

/// The caller's gRPC metadata travels to the callee as headers, minus what
/// belongs to the gRPC call to this sidecar.
fn forwarded_metadata(mut h: HeaderMap) -> HeaderMap {
    for n in [
        "content-type",
        "te",
        "content-length",
        "grpc-accept-encoding",
        "grpc-encoding",
        "grpc-timeout",
        "user-agent",
    ] {
        h.remove(n);
    }
    h
}

fn method_of(v: Verb) -> Method {
    match v {
        Verb::Get => Method::GET,
        Verb::Head => Method::HEAD,
        Verb::Put => Method::PUT,
        Verb::Delete => Method::DELETE,
        Verb::Connect => Method::CONNECT,
        Verb::Options => Method::OPTIONS,
        Verb::Trace => Method::TRACE,
        Verb::Patch => Method::PATCH,
        Verb::Post | Verb::None => Method::POST,
    }
}

/// One `InvokeService` call, decoded by either reader.
#[derive(Debug)]
pub struct InvokeCall<'a> {
    pub id: &'a str,
    pub method: &'a str,
    pub type_url: &'a str,
    pub data: Bytes,
    pub content_type: &'a str,
    pub verb: Verb,
    pub querystring: &'a str,
}

/// Sends `call` to its target as an HTTP-shaped request carrying the
/// caller's metadata; `Err` is an invalid argument.
async fn invoke(
    cx: &GrpcContext,
    metadata: HeaderMap,
    call: InvokeCall<'_>,
) -> Result<Response<SkiffBody>, String> {
    let target = target::parse_app_id(call.id, &cx.door.namespace).map_err(|e| e.to_string())?;
    let query = (!call.querystring.is_empty()).then_some(call.querystring);
    let pq = target::app_path(call.method, query).map_err(|e| e.to_string())?;
    let mut req = Request::new(SkiffBody::full(call.data));
    *req.uri_mut() = pq.into();
    *req.method_mut() = method_of(call.verb);
    *req.headers_mut() = forwarded_metadata(metadata);
    let h = req.headers_mut();
    wire::from_app(h);
    if call.verb == Verb::None {
        h.insert(SKIFF_VERB_NONE, HeaderValue::from_static("1"));
    }
    if let Ok(ct) = HeaderValue::from_str(call.content_type)
        && !call.content_type.is_empty()
    {
        h.insert(CONTENT_TYPE, ct);
    }
    if let Ok(t) = HeaderValue::from_str(call.type_url)
        && !call.type_url.is_empty()
    {
        h.insert(SKIFF_TYPE_URL, t);
    }
    Ok(cx
        .invoker
        .invoke(
            Door::InvokeService,
            target,
            Some(call.method.to_owned()),
            req,
        )
        .await)
}

/// A callee's answer that succeeded, as `InvokeResponse` carries it.
struct Relayed {
    status: http::StatusCode,
    data: Bytes,
    content_type: Option<HeaderValue>,
    type_url: Option<HeaderValue>,
}

/// A callee's answer that becomes a gRPC error.
enum RelayFailed {
    /// A gRPC app's error, or the answer could not be read.
    Status(Code, String),
    /// A non-2xx HTTP answer: its body is the message, its status travels
    /// in `dapr-http-status`.
    Http(http::StatusCode, Bytes),
}

impl RelayFailed {
    fn to_status(&self) -> tonic::Status {
        match self {
            Self::Status(c, m) => tonic::Status::new(*c, m.clone()),
            Self::Http(status, data) => {
                let mut s = tonic::Status::new(
                    grpc_code_from_http(*status),
                    String::from_utf8_lossy(data).into_owned(),
                );
                s.metadata_mut().insert(
                    "dapr-http-status",
                    tonic::metadata::MetadataValue::from(status.as_u16()),
                );
                s
            }
        }
    }

    fn to_grpc(&self) -> Response<SkiffBody> {
        match self {
            Self::Status(c, m) => errors::grpc_error(*c, m),
            Self::Http(status, data) => {
                let mut r = errors::grpc_error(
                    grpc_code_from_http(*status),
                    &String::from_utf8_lossy(data),
                );
                r.headers_mut()
                    .insert(DAPR_HTTP_STATUS, HeaderValue::from(status.as_u16()));
                r
            }
        }
    }
}

const DAPR_HTTP_STATUS: http::HeaderName = http::HeaderName::from_static("dapr-http-status");

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// The callee's HTTP-shaped answer: the body becomes `data`, the HTTP
/// status travels in `dapr-http-status`, a non-2xx status or a gRPC app's
/// error becomes a gRPC error.
async fn relay(resp: Response<SkiffBody>, limit: usize) -> Result<Relayed, RelayFailed> {
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    if let Some(code) = headers::grpc_code(parts.headers.get(&SKIFF_GRPC_STATUS)) {
        let msg = parts
            .headers
            .get(&SKIFF_GRPC_MESSAGE)
            .and_then(|v| v.to_str().ok())
            .map(|m| {
                percent_encoding::percent_decode_str(m)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        return Err(RelayFailed::Status(Code::from_i32(i32::from(code)), msg));
    }
    let data = crate::body::collect_limited(body, limit)
        .await
        .map_err(|e| {
            RelayFailed::Status(
                Code::ResourceExhausted,
                format!("response from the app: {e}"),
            )
        })?;
    if !status.is_success() {
        return Err(RelayFailed::Http(status, data));
    }
    Ok(Relayed {
        status,
        data,
        content_type: parts.headers.remove(CONTENT_TYPE),
        type_url: parts.headers.remove(&SKIFF_TYPE_URL),
    })
}

/// `InvokeServiceRequest { id = 1, message = 3: InvokeRequest { method = 1,
/// data = 2: Any { type_url = 1, value = 2 }, content_type = 3,
/// http_extension = 4: { verb = 1, querystring = 2 } } }`, read in place;
/// `None` without a `message`. Embedded messages that come twice are
/// merged, as protobuf does, by reading each over the last.
pub fn decode_invoke(msg: &Bytes) -> Result<Option<InvokeCall<'_>>, WireError> {
    let mut r = Reader::new(msg);
    let mut call = InvokeCall {
        id: "",
        method: "",
        type_url: "",
        data: Bytes::new(),
        content_type: "",
        verb: Verb::None,
        querystring: "",
    };
    let mut has_message = false;
    while let Some((f, v)) = r.next_field()? {
        match f {
            1 => call.id = r.string(v, "id")?,
            3 => {
                has_message = true;
                invoke_request(r.nested(len(v, "message")?), &mut call)?;
            }
            _ => {}
        }
    }
    Ok(has_message.then_some(call))
}

/// `InvokeRequest`'s fields, over `call`.
fn invoke_request<'a>(mut m: Reader<'a>, call: &mut InvokeCall<'a>) -> Result<(), WireError> {
    while let Some((f, v)) = m.next_field()? {
        match f {
            1 => call.method = m.string(v, "method")?,
            2 => {
                let mut any = m.nested(len(v, "data")?);
                while let Some((f, v)) = any.next_field()? {
                    match f {
                        1 => call.type_url = any.string(v, "type_url")?,
                        2 => call.data = any.bytes(len(v, "value")?),
                        _ => {}
                    }
                }
            }
            3 => call.content_type = m.string(v, "content_type")?,
            4 => {
                let mut ext = m.nested(len(v, "http_extension")?);
                while let Some((f, v)) = ext.next_field()? {
                    match f {
                        1 => call.verb = Verb::try_from(int(&v)).unwrap_or(Verb::None),
                        2 => call.querystring = ext.string(v, "querystring")?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `InvokeService` read and answered by the door itself
/// ([`super::unary`]): `InvokeServiceRequest` is decoded in place, the
/// payload travels as a slice of the received frame, and the answer's
/// `InvokeResponse` is written by hand with the payload last (uncopied when
/// large).
pub async fn invoke_service_wire(
    cx: &GrpcContext,
    metadata: HeaderMap,
    msg: &Bytes,
) -> Result<unary::Answer, unary::Failed> {
    let call =
        decode_invoke(msg).map_err(|e| unary::Failed::Api(crate::protowire::malformed(e)))?;
    let invalid =
        |m: String| unary::Failed::Ready(Box::new(errors::grpc_error(Code::InvalidArgument, &m)));
    let Some(call) = call else {
        return Err(invalid("InvokeServiceRequest.message is required".into()));
    };
    let resp = invoke(cx, metadata, call).await.map_err(invalid)?;
    let r = relay(resp, cx.door.max_body_size)
        .await
        .map_err(|f| unary::Failed::Ready(Box::new(f.to_grpc())))?;
    Ok(encode_invoke_response(r))
}

/// `InvokeResponse { data: Any { type_url, value }, content_type }`, with
/// `content_type` first and the value last, so a large value is sent as it
/// came.
fn encode_invoke_response(r: Relayed) -> unary::Answer {
    use crate::protowire::{Message, len_field_size, put_len_field, put_len_prefix};
    let ct = text(r.content_type.as_ref());
    let type_url = text(r.type_url.as_ref());
    let any_len = len_field_size(type_url.len()) + len_field_size(r.data.len());
    let mut m = Message::with_capacity(
        len_field_size(ct.len())
            + 1
            + crate::protowire::varint_len(any_len as u64)
            + len_field_size(type_url.len())
            + Message::bytes_field_last_size(r.data.len()),
    );
    let b = m.buf();
    put_len_field(b, 2, ct.as_bytes());
    // `data` is always present, as daprd sends it.
    put_len_prefix(b, 1, any_len);
    put_len_field(b, 1, type_url.as_bytes());
    let tail = m.bytes_field_last(2, r.data);
    let mut headers = HeaderMap::new();
    // The usual status without formatting a number into a new buffer.
    let status = match r.status.as_u16() {
        200 => HeaderValue::from_static("200"),
        s => HeaderValue::from(s),
    };
    headers.insert(DAPR_HTTP_STATUS, status);
    unary::Answer {
        message: m.finish(tail),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        let p = |s: &'static str| unary::parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("5S"), Some(Duration::from_secs(5)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("S"), None);
        assert_eq!(p("5x"), None);
        assert_eq!(p("123456789S"), None);
    }
}
