//! The callee side: calls arriving from other sidecars on the internal port.
//!
//! Checks that the call is for this app and namespace, records who sent it,
//! and hands it to the app channel with the internal headers removed. gRPC
//! proxy calls go to the app's own gRPC server untouched; HTTP-style calls go
//! to an HTTP/h2c app as they are, or become `OnInvoke` for a gRPC app.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use tonic::Code;

use super::envelope::{Envelope, Side};
use super::wire::{self, Callee};
use crate::appchannel::{AppChannel, grpc as app_grpc};
use crate::errors::{self, code};
use crate::headers::SKIFF_VERB_NONE;
use crate::policy::Policies;
use crate::policy::acl::{Action, Operation};
use crate::skiff_body::SkiffBody;
use crate::telemetry::metrics;
use crate::telemetry::trace::Tracer;
use crate::transport::PeerInfo;

/// What the internal port's handler needs, built once at start.
pub struct Inbound {
    pub callee: Callee,
    pub app_id: String,
    pub app: Option<Arc<AppChannel>>,
    /// Access control, swapped when the files change.
    pub policies: Arc<ArcSwap<Policies>>,
    pub tracer: Arc<Tracer>,
}

impl Inbound {
    /// Serves one call from another sidecar: Dapr's `req_recv`/`res_sent`
    /// counts, and this hop's span.
    pub fn handle(
        self: Arc<Self>,
        peer: PeerInfo,
        mut req: Request<SkiffBody>,
    ) -> impl Future<Output = Response<SkiffBody>> {
        async move {
            let grpc = wire::is_grpc_proxy(req.headers());
            let side = Side::Callee {
                app_id: &self.app_id,
                caller: Callee::caller(&peer, req.headers()),
                grpc,
                grpc_app: self.app.as_ref().is_some_and(|a| a.speaks_grpc()),
            };
            let envelope = Envelope::open(&self.tracer, side, None, &mut req);
            let resp = self.serve(&peer, req, grpc).await;
            envelope.close(Ok(resp))
        }
    }

    fn serve(
        &self,
        peer: &PeerInfo,
        req: Request<SkiffBody>,
        grpc_proxy: bool,
    ) -> impl Future<Output = Response<SkiffBody>> {
        async move {
            let fail = |status: StatusCode, grpc: Code, msg: &str| {
                if grpc_proxy {
                    errors::grpc_error(grpc, msg)
                } else {
                    errors::http_error(status, code::DIRECT_INVOKE, msg)
                }
            };
            if let Err(msg) = self.callee.check_addressed_to_us(req.uri()) {
                return fail(StatusCode::NOT_FOUND, Code::NotFound, &msg);
            }
            if let Some(denied) = self.access_denied(peer, &req, grpc_proxy) {
                return denied;
            }
            let Some(app) = self.app.as_deref() else {
                return fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Code::Unavailable,
                    &format!(
                        "app {} has no app channel: its sidecar runs without --app-port",
                        self.app_id
                    ),
                );
            };
            if !app.is_healthy() {
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::Unavailable,
                    &format!(
                        "app {} is unhealthy (app health check failing)",
                        self.app_id
                    ),
                );
            }
            let (mut parts, body) = req.into_parts();
            let hop = self.callee.take_in(&mut parts, peer);
            let is_grpc_app = app.speaks_grpc();
            if grpc_proxy && !is_grpc_app {
                return errors::grpc_error(
                    Code::Unimplemented,
                    &format!(
                        "app {} speaks {}, not gRPC: gRPC proxying needs --app-protocol grpc",
                        self.app_id,
                        app.protocol.as_str()
                    ),
                );
            }
            if is_grpc_app && !grpc_proxy {
                // OnInvoke reads these internal headers; it strips them itself.
                // Boxed: its state (a buffered body, protobuf, a unary call) is
                // the largest of any branch, and every call's future would carry it.
                return match super::target::method_from_path(parts.uri.path()) {
                    Ok(method) => Box::pin(app_grpc::on_invoke(app, method, parts, body)).await,
                    Err(e) => app_grpc::status_response(Code::InvalidArgument, &e.to_string()),
                };
            }
            if hop.verb_none {
                return errors::http_error(
                    StatusCode::BAD_REQUEST,
                    code::MALFORMED_REQUEST,
                    "InvokeService to an HTTP app needs http_extension with an HTTP verb",
                );
            }
            Callee::to_app(&mut parts.headers);
            deliver(app, Request::from_parts(parts, body), grpc_proxy).await
        }
    }

    /// The access control decision, on the verified caller only; `Some` is
    /// the refusal to send back.
    fn access_denied(
        &self,
        peer: &PeerInfo,
        req: &Request<SkiffBody>,
        grpc_proxy: bool,
    ) -> Option<Response<SkiffBody>> {
        let policies = self.policies.load();
        let acl = policies.acl.as_ref()?;
        // gRPC calls (proxied, or InvokeService without an HTTP verb) are
        // matched by name only.
        let verb =
            (!grpc_proxy && !req.headers().contains_key(&SKIFF_VERB_NONE)).then(|| req.method());
        let op = Operation {
            path: req.uri().path(),
            verb,
        };
        let caller = peer.id.as_deref().map(|p| &p.id);
        let (action, global) = acl.decide_why(caller, op);
        if let (Some(m), Some(id)) = (metrics::get(), caller) {
            m.acl(id, action == Action::Allow, global);
        }
        if action == Action::Allow {
            return None;
        }
        let who = caller.map_or_else(
            || "an unauthenticated caller".to_owned(),
            |id| id.to_string(),
        );
        let msg = format!(
            "access control policy has denied access to id: {who} operation: {} verb: {}",
            req.uri().path(),
            verb.map_or("none", |m| m.as_str())
        );
        tracing::debug!(%msg, "denied");
        Some(if grpc_proxy {
            errors::grpc_error(Code::PermissionDenied, &msg)
        } else {
            errors::http_error(StatusCode::FORBIDDEN, code::PERMISSION_DENIED, &msg)
        })
    }
}

/// Hands the call to the app, counted in Dapr's HTTP or gRPC client
/// metrics (sidecar → app).
fn deliver(
    app: &AppChannel,
    req: Request<SkiffBody>,
    grpc_proxy: bool,
) -> impl Future<Output = Response<SkiffBody>> {
    async move {
        let start = Instant::now();
        let m = metrics::get();
        let grpc_series = m
            .filter(|_| grpc_proxy)
            .map(|m| m.app_grpc_series(req.uri().path()));
        let verb = (m.is_some() && !grpc_proxy).then(|| req.method().clone());
        match app.forward(req).await {
            Ok(resp) => match (grpc_series, verb, m) {
                (Some(codes), _, _) => crate::skiff_body::observe_grpc(resp, codes, start),
                (None, Some(verb), Some(m)) => {
                    m.app_http(&verb, resp.status().as_u16(), start.elapsed());
                    resp
                }
                _ => resp,
            },
            Err(e) if grpc_proxy => errors::grpc_error(Code::Unavailable, &e.to_string()),
            Err(e) => errors::http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::DIRECT_INVOKE,
                &e.to_string(),
            ),
        }
    }
}
