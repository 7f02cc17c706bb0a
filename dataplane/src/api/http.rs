//! Dapr's HTTP API (port 3500): a route table on the segment after
//! `/v1.0/` (or `/v1.0-alpha1/`), the API token checked once, Dapr's HTTP
//! server metrics and `--enable-api-logging` lines once, then the handler:
//! service invocation (also the `dapr-app-id` header form on any other
//! path), the building blocks, health, metadata and shutdown.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::health::{Health, no_content};
use super::metadata::Metadata;
use crate::blocks::{Block, Blocks, bindings, configuration, lock, pubsub, secrets, state};
use crate::errors::{code, http_error, no_route as not_found};
use crate::headers::DAPR_APP_ID;
use crate::invoke::envelope::{Door, Invoker};
use crate::invoke::target::{self, TargetError};
use crate::invoke::wire;
use crate::lifecycle::Lifecycle;
use crate::middleware::{Cx, Pipeline};
use crate::skiff_body::SkiffBody;
use crate::telemetry::metrics;
use skiff_components::BoxFuture;
use skiff_resolvers::AppRef;

/// Where the route table sends a request.
enum Routed<'a> {
    /// An invocation, ready to go.
    Invoke(AppRef, String, Request<SkiffBody>),
    /// A cold route's answer, to await.
    Cold(std::pin::Pin<Box<dyn Future<Output = Response<SkiffBody>> + Send + 'a>>),
    Answered(Response<SkiffBody>),
}

/// `--enable-api-logging` lines use this target, enabled at info level
/// whatever `--log-level` says.
pub const API_LOG_TARGET: &str = "skiff_api";

/// What the HTTP API's handlers need.
pub struct HttpApi {
    pub invoker: Arc<Invoker>,
    pub health: Health,
    pub metadata: Arc<Metadata>,
    pub lifecycle: Arc<Lifecycle>,
    pub blocks: Arc<Blocks>,
    pub door: super::Door,
    /// `spec.httpPipeline`; `None` costs the request path nothing.
    pub pipeline: Option<Arc<Pipeline>>,
}

/// The API a request is for.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `invoke/<app>/method/<method...>` (the part after `invoke/`).
    Invoke(&'a str),
    /// The `dapr-app-id` header on a path outside the API.
    InvokeByHeader,
    /// A building block, and the path after its segment.
    Block(Block, &'a str),
    Healthz(&'a str),
    Metadata(&'a str),
    Shutdown,
    NotFound,
}

/// The route table: the API version, then the segment after it.
fn route<'a>(path: &'a str, headers: &http::HeaderMap) -> Route<'a> {
    let (alpha, rest) = if let Some(r) = path.strip_prefix("/v1.0/") {
        (false, r)
    } else if let Some(r) = path.strip_prefix("/v1.0-alpha1/") {
        (true, r)
    } else if headers.contains_key(&DAPR_APP_ID) {
        return Route::InvokeByHeader;
    } else {
        return Route::NotFound;
    };
    let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
    match (alpha, segment) {
        (false, "invoke") => Route::Invoke(tail),
        (_, "state") => Route::Block(Block::State, tail),
        (_, "publish") => Route::Block(Block::PubSub, tail),
        (false, "secrets") => Route::Block(Block::Secrets, tail),
        (false, "bindings") => Route::Block(Block::Bindings, tail),
        (_, "configuration") => Route::Block(Block::Configuration, tail),
        (true, "lock" | "unlock") => Route::Block(Block::Lock, tail),
        (false, "actors") => Route::Block(Block::Actors, tail),
        (false, "healthz") => Route::Healthz(tail),
        (false, "metadata") => Route::Metadata(tail),
        (false, "shutdown") if tail.is_empty() => Route::Shutdown,
        _ => Route::NotFound,
    }
}

impl HttpApi {
    /// Serves one request on the HTTP API port, counted in Dapr's HTTP
    /// server metrics (and logged with `--enable-api-logging`).
    pub fn handle(
        self: Arc<Self>,
        remote: IpAddr,
        req: Request<SkiffBody>,
    ) -> impl Future<Output = Response<SkiffBody>> {
        async move {
            let start = Instant::now();
            let metrics = metrics::get();
            let path_label = metrics.map_or(0, |m| m.path_index(req.uri().path()));
            let method = req.method().clone();
            let logged = self.door.api_logging.then(|| req.uri().path().to_owned());
            let cx = Cx {
                remote: Some(remote),
                max_body_size: self.door.max_body_size,
                scheme: "",
            };
            let piped = self.pipeline.as_ref().filter(|_| piped(req.uri().path()));
            let passed = match piped {
                None => Ok(req),
                Some(p) => self.through(p, req, &cx).await,
            };
            // The invocation's future is made where it is awaited: handed
            // back from another function it would be copied whole, more
            // than once (measured: perf/RESULTS.md, issue 16).
            let resp = match passed.map(|req| self.dispatch(req, piped.is_some())) {
                Ok(Routed::Invoke(target, method, req)) => {
                    self.invoker
                        .invoke(Door::HttpApi, target, Some(method), req)
                        .await
                }
                Ok(Routed::Cold(answer)) => answer.await,
                Ok(Routed::Answered(resp)) | Err(resp) => resp,
            };
            let resp = match piped.filter(|p| p.changes_answers()) {
                Some(p) => p.respond(resp, &cx).await,
                None => resp,
            };
            let status = resp.status().as_u16();
            if let Some(m) = metrics {
                m.http_server(&method, status, path_label, start.elapsed());
            }
            if let Some(path) = logged {
                tracing::info!(target: API_LOG_TARGET, app_id = %self.door.app_id, method = %method, path = %path, code = status, duration_us = start.elapsed().as_micros() as u64, "HTTP API called");
            }
            resp
        }
    }

    /// The API token first (a caller without it never reaches a handler),
    /// then the pipeline's handlers; `Err` is the answer of one of them.
    fn through<'a>(
        &'a self,
        p: &'a Pipeline,
        req: Request<SkiffBody>,
        cx: &'a Cx,
    ) -> BoxFuture<'a, Result<Request<SkiffBody>, Response<SkiffBody>>> {
        if !super::token_ok(self.door.token.as_deref(), req.headers()) {
            return Box::pin(std::future::ready(Err(unauthorized())));
        }
        p.run(req, cx)
    }

    /// The route table's choice: an invocation ready to go (the hot
    /// route), a cold route's future (boxed), or an answer.
    /// `token_checked`: the API token was checked before the pipeline.
    fn dispatch(&self, req: Request<SkiffBody>, token_checked: bool) -> Routed<'_> {
        let path = req.uri().path();
        let r = route(path, req.headers());
        // Health answers everyone: probes carry no token.
        if !token_checked
            && !matches!(r, Route::Healthz(_))
            && !super::token_ok(self.door.token.as_deref(), req.headers())
        {
            return Routed::Answered(unauthorized());
        }
        match r {
            Route::Invoke(rest) => match split_invoke(rest) {
                Some((app, method)) => {
                    // Parsed where it lies: the target owns what it keeps.
                    let target = target::parse_app_id(app, &self.door.namespace);
                    let method = method.to_owned();
                    self.invocation(target, method, req)
                }
                None => Routed::Answered(http_error(
                    StatusCode::BAD_REQUEST,
                    code::MALFORMED_REQUEST,
                    "expected /v1.0/invoke/<app-id>/method/<method>",
                )),
            },
            Route::InvokeByHeader => {
                let app = req.headers().get(&DAPR_APP_ID).map(HeaderValue::to_str);
                let Some(Ok(app)) = app else {
                    return Routed::Answered(bad_target(TargetError::AppId("<non-ASCII>".into())));
                };
                let target = target::parse_app_id(app, &self.door.namespace);
                let method = path.trim_start_matches('/').to_owned();
                self.invocation(target, method, req)
            }
            Route::Block(block, rest) => {
                let rest = rest.to_owned();
                Routed::Cold(Box::pin(async move { self.block(block, &rest, req).await }))
            }
            Route::Healthz(rest) => Routed::Answered(match (req.method(), rest) {
                (&Method::GET, "") => self.health.healthz(req.uri().query()),
                (&Method::GET, "outbound") => self.health.ready(),
                _ => not_found(req.method(), path),
            }),
            Route::Metadata(key) => {
                let key = key.to_owned();
                Routed::Cold(Box::pin(async move { self.metadata(&key, req).await }))
            }
            Route::Shutdown if req.method() == Method::POST => {
                self.lifecycle.trigger_shutdown();
                Routed::Answered(no_content())
            }
            Route::Shutdown | Route::NotFound => {
                Routed::Answered(not_found(req.method(), req.uri().path()))
            }
        }
    }

    /// A service invocation made ready: the target parsed once, the
    /// app-side path, the app's headers made fit to travel.
    fn invocation(
        &self,
        target: Result<AppRef, TargetError>,
        method: String,
        req: Request<SkiffBody>,
    ) -> Routed<'_> {
        let target = match target {
            Ok(t) => t,
            Err(e) => return Routed::Answered(bad_target(e)),
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = match target::app_path(&method, parts.uri.query()) {
            Ok(pq) => pq.into(),
            Err(e) => return Routed::Answered(bad_target(e)),
        };
        wire::from_app(&mut parts.headers);
        Routed::Invoke(target, method, Request::from_parts(parts, body))
    }

    /// A building block's API (`rest`: the path after its segment, as the
    /// route table parsed it). Every call to a block with components is
    /// one span named as daprd names it, with the component as `db.name`;
    /// pub/sub makes its own (the CloudEvent carries it).
    async fn block(
        &self,
        block: Block,
        rest: &str,
        req: Request<SkiffBody>,
    ) -> Response<SkiffBody> {
        let (component, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let name = match block {
            Block::PubSub | Block::Actors => return self.serve(block, rest, req).await,
            Block::State => state::http::span_name(req.method(), tail),
            Block::Secrets => secrets::http::span_name(tail),
            Block::Bindings => "InvokeBinding",
            Block::Configuration => configuration::http::span_name(tail),
            Block::Lock => lock::http::span_name(req.uri().path()),
        };
        let tracer = &self.invoker.tracer;
        let headers = tracer.exporting().then(|| req.headers().clone());
        let call = self.serve(block, rest, req);
        let failed =
            |r: &Response<SkiffBody>| (r.status().as_u16() >= 400).then(|| r.status().to_string());
        crate::blocks::traced(
            tracer,
            headers.as_ref(),
            block,
            name,
            component,
            call,
            failed,
        )
        .await
    }

    /// The blocks' HTTP adapters, in one table. Actors answer daprd's
    /// error for a block with nothing configured.
    async fn serve(
        &self,
        block: Block,
        rest: &str,
        req: Request<SkiffBody>,
    ) -> Response<SkiffBody> {
        let (b, max) = (&self.blocks, self.door.max_body_size);
        match block {
            Block::State => state::http::handle(&b.state, req, rest, max).await,
            Block::Secrets => secrets::http::handle(&b.secrets, req, rest).await,
            Block::Bindings => bindings::http::handle(&b.bindings, req, rest, max).await,
            Block::Configuration => configuration::http::handle(&b.configuration, req, rest).await,
            Block::Lock => lock::http::handle(&b.lock, req, rest, max).await,
            Block::PubSub => {
                pubsub::http::handle(&b.pubsub, &self.invoker.tracer, req, rest, max).await
            }
            Block::Actors => {
                let name = rest.split('/').next().unwrap_or_default();
                block.not_configured(name, &self.door.app_id).to_http()
            }
        }
    }

    /// `GET /v1.0/metadata`, `PUT /v1.0/metadata/{key}`.
    async fn metadata(&self, key: &str, req: Request<SkiffBody>) -> Response<SkiffBody> {
        match (req.method(), key) {
            (&Method::GET, "") => json(&self.metadata.report()),
            (&Method::PUT, k) if !k.is_empty() => {
                let key = k.to_owned();
                match crate::body::collect_limited(req.into_body(), self.door.max_body_size).await {
                    Ok(v) => {
                        self.metadata
                            .put(key, String::from_utf8_lossy(&v).into_owned());
                        no_content()
                    }
                    Err(e) => http_error(
                        StatusCode::BAD_REQUEST,
                        code::MALFORMED_REQUEST,
                        &e.to_string(),
                    ),
                }
            }
            _ => not_found(req.method(), req.uri().path()),
        }
    }
}

/// Whether `spec.httpPipeline` runs on a path: every route but health.
/// daprd runs it on health too, but probes there go to a separate public
/// health port that skiffd does not have: Kubernetes and `skiff run`
/// probe this one, carry no token, and must not be refused by `bearer`.
fn piped(path: &str) -> bool {
    let health = path
        .strip_prefix("/v1.0/healthz")
        .is_some_and(|rest| rest.is_empty() || rest == "/outbound");
    !health
}

/// `<app>/method/<method...>` → (app, method).
fn split_invoke(rest: &str) -> Option<(&str, &str)> {
    let (app, tail) = rest.split_once('/')?;
    let method = tail
        .strip_prefix("method")
        .filter(|m| m.is_empty() || m.starts_with('/'))?;
    Some((app, method.strip_prefix('/').unwrap_or(method)))
}

fn bad_target(e: TargetError) -> Response<SkiffBody> {
    http_error(
        StatusCode::BAD_REQUEST,
        code::MALFORMED_REQUEST,
        &e.to_string(),
    )
}

fn unauthorized() -> Response<SkiffBody> {
    http_error(
        StatusCode::UNAUTHORIZED,
        code::API_TOKEN,
        "invalid api token",
    )
}

fn json(v: &serde_json::Value) -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::full(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The span of a state or secrets call: daprd's operation name and the
/// component (the first path segment after the block's).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_paths() {
        assert_eq!(split_invoke("app/method/a/b"), Some(("app", "a/b")));
        assert_eq!(split_invoke("app/method/"), Some(("app", "")));
        assert_eq!(split_invoke("app/method"), Some(("app", "")));
        assert_eq!(split_invoke("app/methods/x"), None);
        assert_eq!(split_invoke("app"), None);
    }

    #[test]
    fn the_route_table_reads_the_segment_after_the_version() {
        let none = http::HeaderMap::new();
        let r = |p| route(p, &none);
        assert_eq!(r("/v1.0/invoke/a/method/m"), Route::Invoke("a/method/m"));
        assert_eq!(r("/v1.0/state/s/k"), Route::Block(Block::State, "s/k"));
        assert_eq!(
            r("/v1.0-alpha1/state/s/query"),
            Route::Block(Block::State, "s/query")
        );
        assert_eq!(
            r("/v1.0/publish/p/t/x"),
            Route::Block(Block::PubSub, "p/t/x")
        );
        assert_eq!(r("/v1.0-alpha1/lock/l"), Route::Block(Block::Lock, "l"));
        assert_eq!(r("/v1.0-alpha1/unlock/l"), Route::Block(Block::Lock, "l"));
        assert_eq!(r("/v1.0/lock/l"), Route::NotFound, "lock is alpha only");
        assert_eq!(
            r("/v1.0/actors/t/i/method/m"),
            Route::Block(Block::Actors, "t/i/method/m")
        );
        assert_eq!(r("/v1.0/healthz/outbound"), Route::Healthz("outbound"));
        assert_eq!(r("/v1.0/metadata"), Route::Metadata(""));
        assert_eq!(r("/v1.0/shutdown"), Route::Shutdown);
        assert_eq!(r("/v1.0/nope"), Route::NotFound);
        assert_eq!(r("/orders"), Route::NotFound);
        let mut h = http::HeaderMap::new();
        h.insert(DAPR_APP_ID, HeaderValue::from_static("b"));
        assert_eq!(route("/orders", &h), Route::InvokeByHeader);
        assert_eq!(route("/v1.0/state/s", &h), Route::Block(Block::State, "s"));
    }
}
