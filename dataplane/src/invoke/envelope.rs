//! The envelope of one invocation, written once for every door it enters
//! by: a span continued from the request's trace headers (and passed on to
//! the next hop), the call, Dapr's invocation metrics, the span finished
//! with Dapr's `CallLocal/<app>/<method>` name, and a failure turned into
//! the answer the door speaks.
//!
//! The caller's doors are the HTTP API, `InvokeService` and gRPC proxy mode
//! ([`Door`], through [`Invoker::invoke`]); the callee's is the internal
//! port ([`Side::Callee`]). Each opens an [`Envelope`] before its call and
//! closes it with the result.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use skiff_resolvers::AppRef;
use tonic::Code;

use super::outbound::{InvokeError, Outbound};
use super::wire;
use crate::errors::{self, code};
use crate::headers::{self, SKIFF_GRPC_MESSAGE, SKIFF_GRPC_STATUS};
use crate::skiff_body::SkiffBody;
use crate::telemetry::metrics;
use crate::telemetry::trace::{Described, Kind, Span, Tracer, Value};

/// Where an app's call came in, which decides how its status is read and
/// what a failure becomes.
#[derive(Clone, Copy, Debug)]
pub enum Door {
    /// `/v1.0/invoke/...` or the `dapr-app-id` header on the HTTP API:
    /// a failure is HTTP 500 `ERR_DIRECT_INVOKE`.
    HttpApi,
    /// `Dapr/InvokeService`: an HTTP-shaped call whose failure becomes
    /// gRPC `Unavailable` (carried to the tonic service in the response).
    InvokeService,
    /// A gRPC call with `dapr-app-id`, forwarded frame for frame; its
    /// status is the gRPC code, and `grpc-timeout` also bounds the wait for
    /// the response head.
    GrpcProxy { deadline: Option<Duration> },
}

impl Door {
    fn grpc_status(self) -> bool {
        matches!(self, Self::GrpcProxy { .. })
    }

    /// The answer to a call that got no response.
    fn failure(self, target: &str, e: &InvokeError) -> Response<SkiffBody> {
        match self {
            Self::HttpApi => errors::http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::DIRECT_INVOKE,
                &format!("failed to invoke, id: {target}, err: {e}"),
            ),
            Self::InvokeService => {
                // The tonic service turns the carried status into its
                // error (see `api::grpc`), as for a gRPC app's own error.
                let msg = format!("failed to invoke, id: {target}, err: {e}");
                let mut r = Response::new(SkiffBody::Empty);
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r.headers_mut().insert(
                    SKIFF_GRPC_STATUS,
                    HeaderValue::from(Code::Unavailable as i32),
                );
                if let Ok(v) = HeaderValue::from_str(&errors::percent_encode_grpc_message(&msg)) {
                    r.headers_mut().insert(SKIFF_GRPC_MESSAGE, v);
                }
                r
            }
            Self::GrpcProxy { .. } if matches!(e, InvokeError::Deadline) => errors::grpc_error(
                Code::DeadlineExceeded,
                "deadline exceeded waiting for the target",
            ),
            Self::GrpcProxy { .. } => errors::grpc_error(
                Code::Unavailable,
                &format!("failed to proxy to {target}: {e}"),
            ),
        }
    }
}

/// Which end of the hop the envelope is at.
pub enum Side<'a> {
    /// This sidecar's app (`app_id`, named in log lines) calls `target`.
    Caller {
        app_id: &'a str,
        target: &'a AppRef,
        door: Door,
    },
    /// Another sidecar's call for this app (`app_id`): `grpc` when it is a
    /// proxied gRPC call, `grpc_app` when this app speaks gRPC (it is then
    /// handed `grpc-trace-bin` too).
    Callee {
        app_id: &'a str,
        caller: HeaderValue,
        grpc: bool,
        grpc_app: bool,
    },
}

impl Side<'_> {
    /// Whether the answer's status is a gRPC code.
    fn grpc(&self) -> bool {
        match self {
            Self::Caller { door, .. } => door.grpc_status(),
            Self::Callee { grpc, .. } => *grpc,
        }
    }

    /// The call's result as the door answers it.
    fn answer(&self, result: Result<Response<SkiffBody>, InvokeError>) -> Response<SkiffBody> {
        let Self::Caller {
            app_id,
            target,
            door,
        } = self
        else {
            // The callee's handler answers every failure itself.
            return result.unwrap_or_else(|e| {
                errors::http_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code::DIRECT_INVOKE,
                    &e.to_string(),
                )
            });
        };
        match result {
            // `InvokeService` reads the hop's headers itself (a gRPC app's
            // status, the payload's type) and answers anew.
            Ok(resp) if matches!(door, Door::InvokeService) => resp,
            Ok(mut resp) => {
                wire::answer_to_app(resp.headers_mut());
                resp
            }
            Err(e) => {
                tracing::warn!(app_id = %app_id, target = %target.app_id, error = %e, "invocation failed");
                door.failure(&target.app_id, &e)
            }
        }
    }
}

/// What the caller's doors share: the path to other sidecars, and the
/// tracer.
pub struct Invoker {
    pub outbound: Outbound,
    pub tracer: Arc<Tracer>,
    /// This sidecar's app, named in log lines.
    pub app_id: String,
}

impl Invoker {
    /// One call from this sidecar's app to `target` through `door`, in its
    /// envelope. `method` names it in the span (the request's path when
    /// `None`).
    ///
    /// Not an `async fn`, and it owns what it is given: the doors hand
    /// their call over without a future of their own around it.
    pub fn invoke(
        &self,
        door: Door,
        target: AppRef,
        method: Option<String>,
        mut req: Request<SkiffBody>,
    ) -> impl Future<Output = Response<SkiffBody>> + Send + '_ {
        async move {
            let side = Side::Caller {
                app_id: &self.app_id,
                target: &target,
                door,
            };
            let envelope = Envelope::open(&self.tracer, side, method.as_deref(), &mut req);
            let result = self.send(door, &target, req).await;
            envelope.close(result)
        }
    }

    /// The call itself, within the caller's deadline when the door has
    /// one (one future either way, awaited once).
    fn send<'a>(
        &'a self,
        door: Door,
        target: &'a AppRef,
        req: Request<SkiffBody>,
    ) -> impl Future<Output = Result<Response<SkiffBody>, InvokeError>> + 'a {
        let send = self.outbound.send(target, req);
        match door {
            Door::GrpcProxy { deadline: Some(d) } => Either::Left(
                tokio::time::timeout(d, send).map(|r| r.unwrap_or(Err(InvokeError::Deadline))),
            ),
            _ => Either::Right(send),
        }
    }
}

/// One call's envelope, opened before the call and closed with its
/// result. A guard rather than a function around the call: the call's
/// future stays in the door's own state (a function that awaits a future
/// it is given holds it twice over), and every door says the same thing.
pub struct Envelope<'a> {
    tracer: &'a Tracer,
    side: Side<'a>,
    span: Span,
    /// What the span is named after, kept only when it will be exported.
    named: Option<(Method, Cow<'a, str>)>,
    start: Instant,
}

impl<'a> Envelope<'a> {
    /// Starts the span (continuing the request's trace headers, and passing
    /// it on in them) and, on the callee, counts the call as received.
    pub fn open(
        tracer: &'a Tracer,
        side: Side<'a>,
        method: Option<&'a str>,
        req: &mut Request<SkiffBody>,
    ) -> Self {
        let start = Instant::now();
        let (kind, grpc_bin) = match &side {
            Side::Caller { .. } => (Kind::Client, false),
            // The next hop is the app: gRPC apps read `grpc-trace-bin`.
            Side::Callee { grpc_app, .. } => (Kind::Server, *grpc_app),
        };
        let span = tracer.start(req.headers(), kind);
        // `traceparent` alone to the next sidecar: it says everything
        // `grpc-trace-bin` would, and every header value is HPACK-encoded
        // anew per call.
        span.inject(req.headers_mut(), grpc_bin);
        if let (Some(m), Side::Callee { caller, .. }) = (metrics::get(), &side) {
            m.invoke_received(caller.to_str().unwrap_or(""));
        }
        let named = span.is_recorded().then(|| {
            let path = method.map_or_else(
                || Cow::Owned(req.uri().path().trim_start_matches('/').to_owned()),
                Cow::Borrowed,
            );
            (req.method().clone(), path)
        });
        Self {
            tracer,
            side,
            span,
            named,
            start,
        }
    }

    /// The call's result as the door answers it, counted in Dapr's
    /// invocation metrics, and the span finished.
    pub fn close(self, result: Result<Response<SkiffBody>, InvokeError>) -> Response<SkiffBody> {
        let Self {
            tracer,
            side,
            span,
            named,
            start,
        } = self;
        let resp = side.answer(result);
        let grpc = side.grpc();
        let status = answer_status(&resp, grpc);
        if let Some(m) = metrics::get() {
            match &side {
                Side::Caller { target, door, .. } => {
                    m.invoke_answered(&target.app_id, status, door.grpc_status(), start.elapsed());
                }
                Side::Callee { caller, .. } => {
                    m.invoke_responded(caller.to_str().unwrap_or(""), status)
                }
            }
        }
        if let Some((verb, path)) = named {
            tracer.finish(&span, || {
                let (app, caller) = match &side {
                    Side::Caller { target, .. } => (target.app_id.as_str(), None),
                    Side::Callee { app_id, caller, .. } => (*app_id, Some(caller)),
                };
                let mut d = describe_call(app, &path, grpc, verb.as_str(), status);
                if let Some(c) = caller {
                    d.attributes.push((
                        "dapr.caller_app_id",
                        Value::Str(c.to_str().unwrap_or("").to_owned()),
                    ));
                }
                d
            });
        }
        resp
    }
}

/// HTTP status, or for gRPC the status in the head (0 when it comes later,
/// in trailers).
fn answer_status(resp: &Response<SkiffBody>, grpc: bool) -> u16 {
    if grpc {
        headers::grpc_status(resp.headers()).unwrap_or(0)
    } else {
        resp.status().as_u16()
    }
}

/// A span's name and attributes: Dapr's `CallLocal/<app>/<method>`.
/// `status` is HTTP's, or the gRPC code for gRPC.
fn describe_call(app: &str, method: &str, grpc: bool, verb: &str, status: u16) -> Described {
    let failed = if grpc { status != 0 } else { status >= 500 };
    Described {
        name: format!("CallLocal/{app}/{method}"),
        attributes: vec![
            (
                "dapr.protocol",
                Value::Str(if grpc { "grpc" } else { "http" }.to_owned()),
            ),
            ("rpc.service", Value::Str("ServiceInvocation".to_owned())),
            ("net.peer.name", Value::Str(app.to_owned())),
            (
                "dapr.api",
                Value::Str(format!("{verb} /v1.0/invoke/{app}/method/{method}")),
            ),
            (
                if grpc {
                    "rpc.grpc.status_code"
                } else {
                    "http.status_code"
                },
                Value::Int(i64::from(status)),
            ),
        ],
        error: failed.then(|| {
            if grpc {
                format!("gRPC status {status}")
            } else {
                format!("HTTP {status}")
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_fail_by_their_protocol() {
        assert!(describe_call("a", "m", false, "GET", 500).error.is_some());
        assert!(describe_call("a", "m", false, "GET", 404).error.is_none());
        assert!(describe_call("a", "m", true, "POST", 14).error.is_some());
        assert!(describe_call("a", "m", true, "POST", 0).error.is_none());
        assert_eq!(
            describe_call("a", "m/x", false, "GET", 200).name,
            "CallLocal/a/m/x"
        );
    }

    #[test]
    fn statuses_come_from_the_head() {
        let mut r = Response::new(SkiffBody::Empty);
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        assert_eq!(answer_status(&r, false), 502);
        assert_eq!(answer_status(&r, true), 0, "no grpc-status yet: OK so far");
        r.headers_mut()
            .insert(headers::GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(answer_status(&r, true), 14);
    }
}
