//! Dapr's HTTP API: service invocation (`/v1.0/invoke/{app}/method/{m}` and
//! the `dapr-app-id` header form), health, metadata and shutdown.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::SkiffBody;
use crate::errors::{code, http_error};
use crate::headers::{self, DAPR_APP_ID};
use crate::invoke::target::{self, TargetError};
use crate::runtime::Sidecar;
use crate::telemetry::metrics;
use crate::telemetry::trace::Kind;

const INVOKE_PREFIX: &str = "/v1.0/invoke/";

/// Serves one request on the HTTP API port, counted in Dapr's HTTP server
/// metrics (and logged with `--enable-api-logging`).
pub async fn handle(sc: Arc<Sidecar>, req: Request<SkiffBody>) -> Response<SkiffBody> {
    let start = Instant::now();
    let metrics = metrics::get();
    let path_label = metrics.map_or(0, |m| m.path_index(req.uri().path()));
    let method = req.method().clone();
    let logged = sc.settings.api_logging.then(|| req.uri().path().to_owned());
    let resp = route(&sc, req).await;
    let status = resp.status().as_u16();
    if let Some(m) = metrics {
        m.http_server(&method, status, path_label, start.elapsed());
    }
    if let Some(path) = logged {
        tracing::info!(target: API_LOG_TARGET, app_id = %sc.settings.app_id, method = %method, path = %path, code = status, duration_us = start.elapsed().as_micros() as u64, "HTTP API called");
    }
    resp
}

/// `--enable-api-logging` lines use this target, enabled at info level
/// whatever `--log-level` says.
pub const API_LOG_TARGET: &str = "skiff_api";

async fn route(sc: &Sidecar, req: Request<SkiffBody>) -> Response<SkiffBody> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix(INVOKE_PREFIX) {
        if !super::token_ok(sc.settings.api_token.as_deref(), req.headers()) {
            return unauthorized();
        }
        let Some((app, method)) = split_invoke(rest) else {
            return http_error(
                StatusCode::BAD_REQUEST,
                code::MALFORMED_REQUEST,
                "expected /v1.0/invoke/<app-id>/method/<method>",
            );
        };
        let (app, method) = (app.to_owned(), method.to_owned());
        return invoke(sc, &app, &method, req).await;
    }
    if !path.starts_with("/v1.0/")
        && let Some(app) = req.headers().get(&DAPR_APP_ID)
    {
        if !super::token_ok(sc.settings.api_token.as_deref(), req.headers()) {
            return unauthorized();
        }
        let Ok(app) = app.to_str().map(str::to_owned) else {
            return bad_target(TargetError::AppId("<non-ASCII>".into()));
        };
        let method = path.trim_start_matches('/').to_owned();
        return invoke(sc, &app, &method, req).await;
    }
    control(sc, req).await
}

/// `<app>/method/<method...>` → (app, method).
fn split_invoke(rest: &str) -> Option<(&str, &str)> {
    let (app, tail) = rest.split_once('/')?;
    let method = tail
        .strip_prefix("method")
        .filter(|m| m.is_empty() || m.starts_with('/'))?;
    Some((app, method.strip_prefix('/').unwrap_or(method)))
}

async fn invoke(
    sc: &Sidecar,
    app: &str,
    method: &str,
    req: Request<SkiffBody>,
) -> Response<SkiffBody> {
    let target = match target::parse_app_id(app, &sc.settings.namespace) {
        Ok(t) => t,
        Err(e) => return bad_target(e),
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = match target::app_path(method, parts.uri.query()) {
        Ok(pq) => pq.into(),
        Err(e) => return bad_target(e),
    };
    headers::prepare_outbound(&mut parts.headers);
    let start = Instant::now();
    let span = sc.tracer.as_ref().map(|t| {
        let s = t.start(&parts.headers, Kind::Client);
        s.inject(&mut parts.headers, false);
        s
    });
    let verb = parts.method.clone();
    let out = Request::from_parts(parts, body);
    let result = sc.outbound.send(&target, out).await;
    let resp = match result {
        Ok(mut resp) => {
            headers::strip_internal(resp.headers_mut());
            resp
        }
        Err(e) => {
            tracing::warn!(app_id = %sc.settings.app_id, target = %target.app_id, method = %method, error = %e, "invocation failed");
            http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::DIRECT_INVOKE,
                &format!("failed to invoke, id: {}, err: {e}", target.app_id),
            )
        }
    };
    let status = resp.status().as_u16();
    if let Some(m) = metrics::get() {
        m.invoke_answered(&target.app_id, status, false, start.elapsed());
    }
    if let (Some(t), Some(s)) = (&sc.tracer, &span) {
        t.finish(s, || {
            crate::api::describe_call(&target.app_id, method, "http", verb.as_str(), status)
        });
    }
    resp
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

/// Health, metadata and shutdown.
async fn control(sc: &Sidecar, req: Request<SkiffBody>) -> Response<SkiffBody> {
    // Control routes are off the hot path; owning these keeps the body free
    // to be read below.
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/v1.0/healthz") => healthz(sc, req.uri().query()),
        (&Method::GET, "/v1.0/healthz/outbound") => ready(sc),
        _ if !super::token_ok(sc.settings.api_token.as_deref(), req.headers()) => unauthorized(),
        (&Method::GET, "/v1.0/metadata") => json(sc.metadata()),
        (&Method::PUT, p) if p.starts_with("/v1.0/metadata/") => {
            let key = p["/v1.0/metadata/".len()..].to_owned();
            match crate::body::collect_limited(req.into_body(), sc.settings.max_body_size).await {
                Ok(v) => {
                    sc.put_metadata(key, String::from_utf8_lossy(&v).into_owned());
                    no_content()
                }
                Err(e) => http_error(
                    StatusCode::BAD_REQUEST,
                    code::MALFORMED_REQUEST,
                    &e.to_string(),
                ),
            }
        }
        (&Method::POST, "/v1.0/shutdown") => {
            sc.trigger_shutdown();
            no_content()
        }
        _ => http_error(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            &format!("{method} {path} is not a route this sidecar serves"),
        ),
    }
}

fn healthz(sc: &Sidecar, query: Option<&str>) -> Response<SkiffBody> {
    let appid = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("appid=")));
    if let Some(want) = appid
        && want != sc.settings.app_id
    {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::HEALTH_APPID_NOT_MATCH,
            &format!(
                "app id {want} does not match this sidecar's ({})",
                sc.settings.app_id
            ),
        );
    }
    // Asked about the app (`?appid=`, what registries' health checks call)
    // with app health checking on: an unhealthy app makes the instance
    // unhealthy, so a registry takes it out of rotation.
    if appid.is_some()
        && sc.settings.app_health.is_some()
        && sc.app.as_ref().is_some_and(|a| !a.is_healthy())
    {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::HEALTH_NOT_READY,
            &format!(
                "app {} is unhealthy (app health check failing)",
                sc.settings.app_id
            ),
        );
    }
    ready(sc)
}

/// 204 once the sidecar serves calls, Dapr's 500 before.
fn ready(sc: &Sidecar) -> Response<SkiffBody> {
    if sc.is_ready() {
        return no_content();
    }
    let why = sc
        .identity
        .as_ref()
        .and_then(|i| i.not_ready_reason())
        .map_or_else(
            || "dapr is not ready".to_owned(),
            |r| format!("dapr is not ready: {r}"),
        );
    http_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        code::HEALTH_NOT_READY,
        &why,
    )
}

fn no_content() -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn json(v: serde_json::Value) -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::full(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

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
}
