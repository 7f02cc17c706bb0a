//! The callee side: calls arriving from other sidecars on the internal port.
//!
//! Checks that the call is for this app and namespace, records who sent it,
//! and hands it to the app channel with the internal headers removed. gRPC
//! proxy calls go to the app's own gRPC server untouched; HTTP-style calls go
//! to an HTTP/h2c app as they are, or become `OnInvoke` for a gRPC app.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode};
use tonic::Code;

use crate::appchannel::{AppChannel, grpc as app_grpc};
use crate::body::SkiffBody;
use crate::config::AppProtocol;
use crate::errors::{self, code};
use crate::headers::{
    self, DAPR_CALLEE_APP_ID, FORWARDED, MODE_GRPC_PROXY, SKIFF_MODE, SKIFF_VERB_NONE,
    X_FORWARDED_FOR,
};
use crate::policy::acl::{Action, Operation};
use crate::runtime::Sidecar;
use crate::telemetry::metrics;
use crate::telemetry::trace::{Kind, Value};
use crate::transport::PeerInfo;

/// What the callee checks and adds on every call, built once at start.
#[derive(Debug)]
pub struct Prepared {
    /// `{app}.{namespace}`: the authority a call for this sidecar carries.
    authority: String,
    /// This app's id, delivered to it as `dapr-callee-app-id`.
    app_id: HeaderValue,
    /// `;by=<our address>` of the `Forwarded` header.
    forwarded_by: Bytes,
}

impl Prepared {
    pub fn new(s: &crate::config::Settings) -> Self {
        Self {
            authority: format!("{}.{}", s.app_id, s.namespace),
            app_id: HeaderValue::from_str(&s.app_id)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            forwarded_by: Bytes::from(format!(";by={}", s.advertise_ip)),
        }
    }
}

/// Serves one call from another sidecar: Dapr's `req_recv`/`res_sent`
/// counts, and this hop's span when tracing is on.
pub async fn handle(
    sc: Arc<Sidecar>,
    peer: PeerInfo,
    mut req: Request<SkiffBody>,
) -> Response<SkiffBody> {
    let grpc_proxy = req
        .headers()
        .get(&SKIFF_MODE)
        .is_some_and(|v| v == MODE_GRPC_PROXY);
    let metrics = metrics::get();
    let span = sc.tracer.as_ref().map(|t| {
        let s = t.start(req.headers(), Kind::Server);
        let to_grpc_app = sc
            .app
            .as_ref()
            .is_some_and(|a| matches!(a.protocol, AppProtocol::Grpc | AppProtocol::Grpcs));
        s.inject(req.headers_mut(), to_grpc_app);
        s
    });
    let sampled = span.as_ref().is_some_and(|s| s.sampled);
    // Kept for the metric and span after the request has moved on: a
    // header value, so keeping it is a reference count, not a copy.
    let caller = (metrics.is_some() || sampled).then(|| caller_app(&peer, req.headers()));
    let caller_str = || caller.as_ref().and_then(|c| c.to_str().ok()).unwrap_or("");
    if let Some(m) = metrics {
        m.invoke_received(caller_str());
    }
    let method = sampled.then(|| (req.method().clone(), req.uri().path().to_owned()));
    let resp = serve(&sc, &peer, req, grpc_proxy).await;
    let status = response_status(&resp, grpc_proxy);
    if let Some(m) = metrics {
        m.invoke_responded(caller_str(), status);
    }
    if let (Some(t), Some(s), Some((verb, path))) = (&sc.tracer, &span, method) {
        t.finish(s, || {
            let mut d = crate::api::describe_call(
                &sc.settings.app_id,
                path.trim_start_matches('/'),
                if grpc_proxy { "grpc" } else { "http" },
                verb.as_str(),
                status,
            );
            d.attributes
                .push(("dapr.caller_app_id", Value::Str(caller_str().to_owned())));
            d
        });
    }
    resp
}

/// The calling app: its certificate's app id with mTLS, else what the
/// calling sidecar said (empty when it said nothing).
fn caller_app(peer: &PeerInfo, h: &http::HeaderMap) -> HeaderValue {
    match &peer.id {
        Some(p) => p.app_id.clone(),
        None => h
            .get(headers::DAPR_CALLER_APP_ID)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("")),
    }
}

/// HTTP status, or for proxied gRPC the status in the head (0 when it
/// comes later, in trailers).
fn response_status(resp: &Response<SkiffBody>, grpc: bool) -> u16 {
    if !grpc {
        return resp.status().as_u16();
    }
    resp.headers()
        .get(headers::GRPC_STATUS)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

async fn serve(
    sc: &Sidecar,
    peer: &PeerInfo,
    req: Request<SkiffBody>,
    grpc_proxy: bool,
) -> Response<SkiffBody> {
    let fail = |status: StatusCode, grpc: Code, msg: &str| {
        if grpc_proxy {
            errors::grpc_error(grpc, msg)
        } else {
            errors::http_error(status, code::DIRECT_INVOKE, msg)
        }
    };
    if let Err(msg) = check_addressed_to_us(sc, req.uri()) {
        return fail(StatusCode::NOT_FOUND, Code::NotFound, &msg);
    }
    if let Some(denied) = access_denied(sc, peer, &req, grpc_proxy) {
        return denied;
    }
    let Some(app) = sc.app.as_deref() else {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable,
            &format!(
                "app {} has no app channel: its sidecar runs without --app-port",
                sc.settings.app_id
            ),
        );
    };
    if !app.is_healthy() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            &format!(
                "app {} is unhealthy (app health check failing)",
                sc.settings.app_id
            ),
        );
    }
    let (mut parts, body) = req.into_parts();
    // The authority named this sidecar; the app channel addresses the app.
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(pq);
    }
    parts
        .headers
        .insert(DAPR_CALLEE_APP_ID, sc.inbound.app_id.clone());
    if let Some(p) = &peer.id {
        // With mTLS the caller is who its certificate says, whatever the
        // headers claim.
        parts
            .headers
            .insert(headers::DAPR_CALLER_APP_ID, p.app_id.clone());
        parts
            .headers
            .insert(headers::DAPR_CALLER_NAMESPACE, p.namespace.clone());
    }
    let verb_none = parts.headers.contains_key(&SKIFF_VERB_NONE);
    add_forwarded(&mut parts.headers, &peer.ip, &sc.inbound.forwarded_by);

    let is_grpc_app = matches!(app.protocol, AppProtocol::Grpc | AppProtocol::Grpcs);
    if grpc_proxy && !is_grpc_app {
        return errors::grpc_error(
            Code::Unimplemented,
            &format!(
                "app {} speaks {}, not gRPC: gRPC proxying needs --app-protocol grpc",
                sc.settings.app_id,
                app.protocol.as_str()
            ),
        );
    }
    if is_grpc_app && !grpc_proxy {
        // OnInvoke reads these internal headers; it strips them itself.
        // Boxed: its state (a buffered body, protobuf, a unary call) is
        // the largest of any branch, and every call's future would carry it.
        return Box::pin(app_grpc::on_invoke(app, parts, body)).await;
    }
    if verb_none {
        return errors::http_error(
            StatusCode::BAD_REQUEST,
            code::MALFORMED_REQUEST,
            "InvokeService to an HTTP app needs http_extension with an HTTP verb",
        );
    }
    headers::strip_internal(&mut parts.headers);
    deliver(app, Request::from_parts(parts, body), grpc_proxy).await
}

/// Hands the call to the app, counted in Dapr's HTTP or gRPC client
/// metrics (sidecar → app).
async fn deliver(
    app: &AppChannel,
    req: Request<SkiffBody>,
    grpc_proxy: bool,
) -> Response<SkiffBody> {
    let start = Instant::now();
    let m = metrics::get();
    let grpc_series = m
        .filter(|_| grpc_proxy)
        .map(|m| m.app_grpc_series(req.uri().path()));
    let verb = (m.is_some() && !grpc_proxy).then(|| req.method().clone());
    match app.forward(req).await {
        Ok(resp) => match (grpc_series, verb, m) {
            (Some(codes), _, _) => crate::body::observe_grpc(resp, codes, start),
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

/// A stale endpoint (another app now on a reused port) must not receive
/// calls meant for someone else: the caller names the callee's app and
/// namespace in the request's authority (`{app}.{namespace}`).
fn check_addressed_to_us(sc: &Sidecar, uri: &http::Uri) -> Result<(), String> {
    let to = uri.authority().map_or("", |a| a.as_str());
    if to != sc.inbound.authority {
        return Err(format!(
            "this sidecar serves {}, not {to}",
            sc.inbound.authority
        ));
    }
    Ok(())
}

/// The access control decision, on the verified caller only; `Some` is the
/// refusal to send back.
fn access_denied(
    sc: &Sidecar,
    peer: &PeerInfo,
    req: &Request<SkiffBody>,
    grpc_proxy: bool,
) -> Option<Response<SkiffBody>> {
    let policies = sc.policies.load();
    let acl = policies.acl.as_ref()?;
    // gRPC calls (proxied, or InvokeService without an HTTP verb) are
    // matched by name only.
    let verb = (!grpc_proxy && !req.headers().contains_key(&SKIFF_VERB_NONE)).then(|| req.method());
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
    let who = peer.id.as_deref().map(|p| &p.id).map_or_else(
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

/// X-Forwarded-For and Forwarded name the calling sidecar's host. Built
/// from bytes prepared per connection and at start, without formatting.
fn add_forwarded(h: &mut http::HeaderMap, from: &HeaderValue, by: &Bytes) {
    h.append(X_FORWARDED_FOR, from.clone());
    let host = h.get(headers::X_FORWARDED_HOST).map(HeaderValue::as_bytes);
    let mut v =
        BytesMut::with_capacity(4 + from.len() + by.len() + host.map_or(0, |h| 6 + h.len()));
    v.put_slice(b"for=");
    v.put_slice(from.as_bytes());
    v.put_slice(by);
    if let Some(host) = host {
        v.put_slice(b";host=");
        v.put_slice(host);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
        h.append(FORWARDED, v);
    }
}
