//! The bindings block: output bindings the app invokes (HTTP
//! `/v1.0/bindings/{name}`, gRPC `InvokeBinding`), under the component's
//! `targets.components.<name>.outbound` policy; and input bindings read
//! into the app once its port answers — HTTP apps get `POST /<route>`
//! (after daprd's `OPTIONS /<route>` probe: 2xx or 405 means "read it",
//! unless `direction` says input), gRPC apps `OnBindingEvent` for the
//! bindings `ListInputBindings` names, whose reply's `to` bindings get a
//! `create` with the reply's `data`. An event waits for the app's answer
//! before the binding reads on; a delivery the app fails is retried under
//! `targets.components.<name>.inbound`. Both directions are counted in
//! Dapr's `dapr_component_{output,input}_binding_*`.

pub mod errors;
pub mod grpc;
pub mod http;
pub mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use bytes::Bytes;
use skiff_components::bindings::{
    Event, InputBinding, Metadata, OutputBinding, Request as BindingRequest,
    Response as BindingResponse,
};
use skiff_proto::runtime as pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Code;

use crate::appchannel::AppChannel;
use crate::appchannel::grpc::{UnaryError, unary};
use crate::blocks::call::{Envelope, Undelivered};
use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;
use metrics::BindingSeries;

/// Events buffered between an input binding and its delivery loop.
const EVENT_BUFFER: usize = 1;

pub struct Output {
    pub driver: Arc<dyn OutputBinding>,
    /// Its outbound policy and `dapr_component_output_binding_*`.
    pub call: Envelope<BindingSeries>,
}

pub struct Input {
    pub name: String,
    pub driver: Arc<dyn InputBinding>,
    /// The app's path (`route` metadata, else the name).
    pub route: String,
    /// `direction` names input: no OPTIONS probe.
    pub declared_input: bool,
    /// `targets.components.<name>.inbound` (retries of a delivery the app
    /// failed, before the driver hears of the failure) and
    /// `dapr_component_input_binding_*`.
    pub call: Envelope<BindingSeries>,
}

#[derive(Default)]
pub struct BindingsBlock {
    outputs: HashMap<String, Output>,
    inputs: Vec<Arc<Input>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl BindingsBlock {
    pub fn add_output(&mut self, name: String, o: Output) {
        self.outputs.insert(name, o);
    }

    pub fn add_input(&mut self, i: Input) {
        self.inputs.push(Arc::new(i));
    }

    pub fn has_inputs(&self) -> bool {
        !self.inputs.is_empty()
    }

    /// Calls output binding `name`.
    pub async fn invoke(
        &self,
        name: &str,
        req: BindingRequest,
    ) -> Result<BindingResponse, ApiError> {
        let Some(o) = self.outputs.get(name) else {
            return Err(errors::not_found(name));
        };
        let ops = o.driver.operations();
        if !ops.contains(&req.operation.as_str()) {
            return Err(errors::output_failed(
                name,
                &format!(
                    "binding {name} does not support operation {}. supported operations:{}",
                    req.operation,
                    ops.join(" ")
                ),
            ));
        }
        let op = req.operation.clone();
        let r = o.call.call_with(&op, req, |r| o.driver.invoke(r)).await;
        r.map_err(|e| errors::output_failed(name, &e.to_string()))
    }

    /// Starts reading the input bindings into `app`, in the background,
    /// once its port answers; they stop when `stop` turns true.
    pub fn start(self: &Arc<Self>, app: Arc<AppChannel>, stop: watch::Receiver<bool>) {
        if self.inputs.is_empty() {
            return;
        }
        let me = self.clone();
        let h = tokio::spawn(async move {
            let mut stop2 = stop.clone();
            if !crate::appchannel::health::wait_listening(&app, &mut stop2).await {
                return;
            }
            let grpc_names = if app.speaks_grpc() {
                Some(list_input_bindings(&app).await)
            } else {
                None
            };
            for input in &me.inputs {
                let wanted = match &grpc_names {
                    Some(names) => names.contains(&input.name),
                    None => input.declared_input || probe(&app, &input.route).await,
                };
                if !wanted {
                    tracing::info!(binding = %input.name, "input binding not read: the app does not serve it");
                    continue;
                }
                let r = tokio::spawn(read(me.clone(), input.clone(), app.clone(), stop.clone()));
                me.readers.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                tracing::info!(binding = %input.name, "reading input binding");
            }
        });
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(h);
    }
}

impl Drop for BindingsBlock {
    fn drop(&mut self) {
        for h in self
            .readers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

/// daprd's probe: `OPTIONS /<route>` answered 2xx or 405.
async fn probe(app: &AppChannel, route: &str) -> bool {
    let Ok(uri) = format!("/{}", route.trim_start_matches('/')).parse::<::http::Uri>() else {
        return false;
    };
    let mut req = Request::new(SkiffBody::Empty);
    *req.method_mut() = Method::OPTIONS;
    *req.uri_mut() = uri;
    match app.forward(req).await {
        Ok(r) => r.status().is_success() || r.status() == StatusCode::METHOD_NOT_ALLOWED,
        Err(e) => {
            tracing::warn!(route, error = %e, "probing the app for an input binding failed");
            false
        }
    }
}

async fn list_input_bindings(app: &AppChannel) -> Vec<String> {
    let r: Result<pb::ListInputBindingsResponse, UnaryError> = unary(
        app,
        skiff_proto::paths::LIST_INPUT_BINDINGS,
        &skiff_proto::google::protobuf::Empty {},
        ::http::HeaderMap::new(),
    )
    .await;
    match r {
        Ok(r) => r.bindings,
        Err(UnaryError::Status(Code::Unimplemented, _)) => Vec::new(),
        Err(UnaryError::Status(c, m)) => {
            tracing::warn!(code = ?c, message = %m, "ListInputBindings failed");
            Vec::new()
        }
        Err(UnaryError::App(e)) => {
            tracing::warn!(error = %e, "ListInputBindings failed");
            Vec::new()
        }
        Err(UnaryError::Protocol(m)) => {
            tracing::warn!(error = %m, "ListInputBindings failed");
            Vec::new()
        }
    }
}

/// One input binding's loop: the driver reads, each event goes to the
/// app, and its answer goes back to the driver.
async fn read(
    block: Arc<BindingsBlock>,
    input: Arc<Input>,
    app: Arc<AppChannel>,
    mut stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    let driver = input.driver.clone();
    let name = input.name.clone();
    let reader = tokio::spawn(async move {
        if let Err(e) = driver.read(tx).await {
            tracing::error!(binding = %name, error = %e, "input binding stopped");
        }
    });
    loop {
        let ev = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            _ = stop.changed() => break,
        };
        let t0 = std::time::Instant::now();
        let once = || async {
            let r = if app.speaks_grpc() {
                deliver_grpc(
                    &block,
                    &app,
                    &input.name,
                    ev.data.clone(),
                    ev.metadata.clone(),
                )
                .await
            } else {
                deliver_http(&app, &input.route, ev.data.clone(), &ev.metadata).await
            };
            r.map_err(Undelivered)
        };
        let r = input
            .call
            .deliver_retrying(once)
            .await
            .map_err(|Undelivered(e)| e);
        if crate::telemetry::metrics::get().is_some() {
            input.call.series().input[usize::from(r.is_ok())].record(t0.elapsed());
        }
        if let Err(e) = &r {
            tracing::warn!(binding = %input.name, error = %e, "the app did not take an input binding event");
        }
        let _ = ev.done.send(r);
    }
    // Dropping the receiver ends the driver's read.
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
}

async fn deliver_http(
    app: &AppChannel,
    route: &str,
    data: Bytes,
    md: &Metadata,
) -> Result<(), String> {
    let uri = format!("/{}", route.trim_start_matches('/'))
        .parse::<::http::Uri>()
        .map_err(|e| e.to_string())?;
    let mut req = Request::new(SkiffBody::full(data));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in md {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            req.headers_mut().insert(n, v);
        }
    }
    let r = app.forward(req).await.map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("the app answered HTTP {}", r.status().as_u16()))
    }
}

async fn deliver_grpc(
    block: &BindingsBlock,
    app: &AppChannel,
    name: &str,
    data: Bytes,
    metadata: Metadata,
) -> Result<(), String> {
    let msg = pb::BindingEventRequest {
        name: name.to_owned(),
        data,
        metadata: metadata.into_iter().collect(),
    };
    let r: Result<pb::BindingEventResponse, UnaryError> = unary(
        app,
        skiff_proto::paths::ON_BINDING_EVENT,
        &msg,
        ::http::HeaderMap::new(),
    )
    .await;
    let reply = match r {
        Ok(r) => r,
        Err(UnaryError::Status(c, m)) => return Err(format!("OnBindingEvent answered {c:?}: {m}")),
        Err(UnaryError::App(e)) => return Err(e.to_string()),
        Err(UnaryError::Protocol(m)) => return Err(m),
    };
    // The reply's `to`: a `create` on each, with its data.
    let calls = reply.to.iter().map(|to| {
        let req = BindingRequest {
            operation: "create".into(),
            data: reply.data.clone(),
            metadata: Metadata::new(),
        };
        async move { (to, block.invoke(to, req).await) }
    });
    let results = if reply.concurrency
        == pb::binding_event_response::BindingEventConcurrency::Parallel as i32
    {
        futures_util::future::join_all(calls).await
    } else {
        let mut v = Vec::new();
        for c in calls {
            v.push(c.await);
        }
        v
    };
    for (to, r) in results {
        if let Err(e) = r {
            tracing::warn!(binding = %to, error = %e.message, "the app's reply binding failed");
        }
    }
    Ok(())
}
