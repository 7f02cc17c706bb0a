//! HTTP middleware pipelines, Dapr's two: `spec.httpPipeline` runs on every
//! request that arrives on the sidecar's HTTP API, `spec.appHttpPipeline`
//! on every request the sidecar sends to its HTTP app (invocations, pub/sub
//! and binding deliveries, configuration updates). A handler names a
//! `kind: Component` of type `middleware.http.<name>`; handlers run in the
//! order they are listed, each seeing the request the one before it passed
//! on, and any of them may answer in its place.
//!
//! Fail closed, never open: the pipelines are built once at start, and the
//! sidecar refuses to start when a handler names a component it does not
//! have, a type Skiff does not implement, or one whose metadata does not
//! validate (`ignoreErrors` does not apply here). daprd skips a handler
//! whose component is missing and serves the pipeline without it; a user
//! who wrote `bearer` into a pipeline believes the app is protected, so a
//! pipeline Skiff did not build exactly as written is never served.
//!
//! A handler works on the request only (every type Dapr ships does), so
//! a pipeline is a loop, not a stack of wrapped services, and an empty one
//! is not there at all: the front doors hold `Option<Arc<Pipeline>>`.
//! Handlers never read a body they do not need; the ones that do (`opa`
//! with `readBody`, `uppercase`) read it within `--max-body-size`.

mod bearer;
mod jose;
mod oauth2;
mod opa;
mod ratelimit;
mod router;
mod uppercase;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Deserialize;
use skiff_components::{BoxFuture, Properties};

use crate::config::Document;
use crate::skiff_body::SkiffBody;

/// What a handler does with a request: passes it on (changed or not), or
/// answers it.
pub type Outcome = Result<Request<SkiffBody>, Response<SkiffBody>>;

/// One middleware type's behaviour on a request, and, for the few that
/// change answers (`uppercase` with `direction: response`), on its answer.
pub trait Handler: Send + Sync {
    fn handle<'a>(&'a self, req: Request<SkiffBody>, cx: &'a Cx) -> BoxFuture<'a, Outcome>;

    /// Whether [`Handler::respond`] does anything: the front doors skip
    /// the answer phase of a pipeline where no handler has one.
    fn changes_answers(&self) -> bool {
        false
    }

    /// Runs on the answer to a request this handler passed on.
    fn respond<'a>(
        &'a self,
        resp: Response<SkiffBody>,
        _cx: &'a Cx,
    ) -> BoxFuture<'a, Response<SkiffBody>> {
        Box::pin(std::future::ready(resp))
    }
}

/// What a handler knows of the request beyond the request itself.
#[derive(Clone, Copy, Debug)]
pub struct Cx {
    /// The connection's peer, on the HTTP API; `None` towards the app
    /// (the sidecar is the sender there).
    pub remote: Option<IpAddr>,
    /// `--max-body-size`: the most a handler that reads a body reads.
    pub max_body_size: usize,
    /// The request's scheme as the policy engines see it: empty on the
    /// HTTP API (daprd's server leaves it unset), the app's towards it.
    pub scheme: &'static str,
}

/// The handlers of one pipeline, in order.
pub struct Pipeline {
    handlers: Vec<Box<dyn Handler>>,
    /// Handler names, in the order they run (what was built, as written).
    pub names: Vec<String>,
    changes_answers: bool,
}

impl Pipeline {
    fn new(handlers: Vec<Box<dyn Handler>>, names: Vec<String>) -> Self {
        let changes_answers = handlers.iter().any(|h| h.changes_answers());
        Self {
            handlers,
            names,
            changes_answers,
        }
    }

    /// Runs every handler in order; the first answer ends the run (and
    /// passes back through the answer phase of the handlers before it).
    pub fn run<'a>(&'a self, req: Request<SkiffBody>, cx: &'a Cx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let mut req = req;
            for (i, h) in self.handlers.iter().enumerate() {
                req = match h.handle(req, cx).await {
                    Ok(r) => r,
                    Err(answer) => {
                        return Err(self.answer_phase(&self.handlers[..i], answer, cx).await);
                    }
                };
            }
            Ok(req)
        })
    }

    /// Whether answers must pass back through [`Pipeline::respond`].
    pub fn changes_answers(&self) -> bool {
        self.changes_answers
    }

    /// The answer to a request the whole pipeline passed on, back through
    /// every handler, last first.
    pub fn respond<'a>(
        &'a self,
        resp: Response<SkiffBody>,
        cx: &'a Cx,
    ) -> BoxFuture<'a, Response<SkiffBody>> {
        Box::pin(self.answer_phase(&self.handlers, resp, cx))
    }

    async fn answer_phase(
        &self,
        passed: &[Box<dyn Handler>],
        mut resp: Response<SkiffBody>,
        cx: &Cx,
    ) -> Response<SkiffBody> {
        if !self.changes_answers {
            return resp;
        }
        for h in passed.iter().rev().filter(|h| h.changes_answers()) {
            resp = h.respond(resp, cx).await;
        }
        resp
    }

    #[cfg(test)]
    fn of(handlers: Vec<Box<dyn Handler>>) -> Self {
        let names = (0..handlers.len()).map(|i| format!("h{i}")).collect();
        Self::new(handlers, names)
    }
}

/// Both pipelines; `None` where the Configuration lists no handler.
#[derive(Default, Clone)]
pub struct Pipelines {
    pub http: Option<Arc<Pipeline>>,
    pub app_http: Option<Arc<Pipeline>>,
}

/// A `middleware.http.*` component, its metadata resolved (secrets and
/// environment references read), as the components step hands it over.
#[derive(Clone, Debug)]
pub struct MiddlewareComponent {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub init_timeout: Duration,
    pub meta: Properties,
}

/// Why a pipeline could not be built: the sidecar does not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{file}: spec.{pipeline}: {why}")]
    Spec {
        file: String,
        pipeline: &'static str,
        why: String,
    },
    #[error(
        "{file}: spec.{pipeline}.handlers[{index}] ({handler}): component {component} ({type_name}): {why}; the sidecar does not serve a pipeline it could not build"
    )]
    Handler {
        file: String,
        pipeline: &'static str,
        index: usize,
        handler: String,
        component: String,
        type_name: String,
        why: String,
    },
}

/// A handler as the Configuration lists it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HandlerSpec {
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    type_name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    selector: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct PipelineSpec {
    #[serde(default)]
    handlers: Vec<HandlerSpec>,
}

/// The types this sidecar implements, as `middleware.http.<name>`.
pub const TYPES: &[&str] = &[
    "middleware.http.bearer",
    "middleware.http.oauth2clientcredentials",
    "middleware.http.ratelimit",
    "middleware.http.routerchecker",
    "middleware.http.routeralias",
    "middleware.http.uppercase",
    "middleware.http.opa",
];

/// Builds both pipelines from the Configuration and the middleware
/// components this app loaded. `all_names` are the names of every
/// component document, including those whose scopes leave this app out,
/// so a refusal can say why a name is missing.
pub async fn build(
    config: Option<&Document>,
    loaded: &[MiddlewareComponent],
    all_names: &[String],
    app_id: &str,
) -> Result<Pipelines, PipelineError> {
    let Some(config) = config else {
        return Ok(Pipelines::default());
    };
    let mut out = Pipelines::default();
    for (key, slot) in [
        ("httpPipeline", &mut out.http),
        ("appHttpPipeline", &mut out.app_http),
    ] {
        *slot = build_one(config, key, loaded, all_names, app_id)
            .await?
            .map(Arc::new);
    }
    Ok(out)
}

/// An `appHttpPipeline` in front of a gRPC app would never run (Dapr's
/// HTTP middleware does not touch gRPC calls; daprd ignores it without a
/// word): refused, so nobody believes a gRPC app sits behind a `bearer`.
pub fn check_app(
    p: &Pipelines,
    config: Option<&Document>,
    grpc_app: bool,
) -> Result<(), Box<PipelineError>> {
    match (config, &p.app_http) {
        (Some(c), Some(_)) if grpc_app => Err(Box::new(PipelineError::Spec {
            file: c.source.display().to_string(),
            pipeline: "appHttpPipeline",
            why: "the app speaks gRPC (--app-protocol), and HTTP middleware never runs on calls \
                  to a gRPC app; give this app a Configuration without appHttpPipeline"
                .into(),
        })),
        _ => Ok(()),
    }
}

async fn build_one(
    config: &Document,
    key: &'static str,
    loaded: &[MiddlewareComponent],
    all_names: &[String],
    app_id: &str,
) -> Result<Option<Pipeline>, PipelineError> {
    let file = config.source.display().to_string();
    let spec: PipelineSpec = match config.spec.get(key) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| PipelineError::Spec {
            file: file.clone(),
            pipeline: key,
            why: e.to_string(),
        })?,
    };
    if spec.handlers.is_empty() {
        return Ok(None);
    }
    let mut handlers = Vec::with_capacity(spec.handlers.len());
    let mut names = Vec::with_capacity(spec.handlers.len());
    for (index, h) in spec.handlers.iter().enumerate() {
        let found = loaded.iter().find(|c| c.name == h.name);
        let fail = |why: String| PipelineError::Handler {
            file: file.clone(),
            pipeline: key,
            index,
            handler: h.name.clone(),
            component: h.name.clone(),
            type_name: found.map_or_else(|| h.type_name.clone(), |c| c.type_name.clone()),
            why,
        };
        let c = found.ok_or_else(|| fail(missing(&h.name, all_names, app_id)))?;
        check_handler(h, c).map_err(&fail)?;
        let handler = tokio::time::timeout(c.init_timeout, open(c))
            .await
            .map_err(|_| {
                fail(format!(
                    "did not start within initTimeout {:?}",
                    c.init_timeout
                ))
            })?
            .map_err(fail)?;
        tracing::info!(pipeline = key, handler = %h.name, r#type = %c.type_name, "middleware loaded");
        handlers.push(handler);
        names.push(h.name.clone());
    }
    Ok(Some(Pipeline::new(handlers, names)))
}

/// Why a handler's component is not there.
fn missing(name: &str, all_names: &[String], app_id: &str) -> String {
    if name.is_empty() {
        "the handler has no name".into()
    } else if all_names.iter().any(|n| n == name) {
        format!("the component's scopes leave app {app_id} out")
    } else {
        "no component of that name is loaded".into()
    }
}

/// The handler's own `type` and `version`, when given, must be the
/// component's; a `selector` (conditional handlers) is not implemented.
fn check_handler(h: &HandlerSpec, c: &MiddlewareComponent) -> Result<(), String> {
    if !h.type_name.is_empty() && h.type_name != c.type_name {
        return Err(format!(
            "the handler says type {} but the component is {}",
            h.type_name, c.type_name
        ));
    }
    let v = |s: &str| if s.is_empty() { "v1" } else { s }.to_owned();
    if !h.version.is_empty() && v(&h.version) != v(&c.version) {
        return Err(format!(
            "the handler says version {} but the component is {}",
            h.version,
            v(&c.version)
        ));
    }
    if h.selector.as_ref().is_some_and(|s| !s.is_null()) {
        return Err("handler selectors are not supported by skiffd".into());
    }
    Ok(())
}

/// Opens one handler from its component.
async fn open(c: &MiddlewareComponent) -> Result<Box<dyn Handler>, String> {
    let version = if c.version.is_empty() {
        "v1"
    } else {
        &c.version
    };
    if version != "v1" {
        return Err(format!("version {version} is not supported (v1)"));
    }
    let m = &c.meta;
    let h: Box<dyn Handler> = match c.type_name.as_str() {
        "middleware.http.bearer" => Box::new(bearer::Bearer::open(m).await?),
        "middleware.http.oauth2clientcredentials" => Box::new(oauth2::ClientCredentials::open(m)?),
        "middleware.http.ratelimit" => Box::new(ratelimit::RateLimit::open(m)?),
        "middleware.http.routerchecker" => Box::new(router::Checker::open(m)?),
        "middleware.http.routeralias" => Box::new(router::Alias::open(m)?),
        "middleware.http.uppercase" => Box::new(uppercase::Uppercase::open(m)?),
        "middleware.http.opa" => Box::new(opa::Opa::open(m)?),
        other => {
            return Err(format!(
                "middleware type {other} is not implemented by skiffd (it has: {})",
                TYPES.join(", ")
            ));
        }
    };
    Ok(h)
}

/// Dapr's refusal (`httputils.RespondWithError`): the status and its
/// reason phrase as plain text.
pub(crate) fn refuse(status: StatusCode) -> Response<SkiffBody> {
    text_body(status, status.canonical_reason().unwrap_or("Error").into())
}

/// A plain-text answer, as Go's `http.Error` writes one.
pub(crate) fn text(status: StatusCode, msg: &str) -> Response<SkiffBody> {
    text_body(status, format!("{msg}\n"))
}

fn text_body(status: StatusCode, msg: String) -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::full(Bytes::from(msg)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Reads a request's body whole, within `limit`; an answer (413 or 400)
/// when it cannot be read.
pub(crate) async fn read_body(
    req: Request<SkiffBody>,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), Response<SkiffBody>> {
    let (parts, body) = req.into_parts();
    match crate::body::collect_limited(body, limit).await {
        Ok(b) => Ok((parts, b)),
        Err(e @ crate::body::CollectError::TooLarge(_)) => Err(crate::errors::http_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            crate::errors::code::MALFORMED_REQUEST,
            &e.to_string(),
        )),
        Err(e) => Err(crate::errors::http_error(
            StatusCode::BAD_REQUEST,
            crate::errors::code::MALFORMED_REQUEST,
            &e.to_string(),
        )),
    }
}

/// A request rebuilt around a body that was read (and maybe changed): its
/// length stated anew.
pub(crate) fn with_body(mut parts: http::request::Parts, body: Bytes) -> Request<SkiffBody> {
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Request::from_parts(parts, SkiffBody::full(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cx() -> Cx {
        Cx {
            remote: Some([127, 0, 0, 1].into()),
            max_body_size: 1 << 20,
            scheme: "",
        }
    }

    struct Tag(&'static str);
    impl Handler for Tag {
        fn handle<'a>(&'a self, mut req: Request<SkiffBody>, _: &'a Cx) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                let seen = req
                    .headers()
                    .get("x-seen")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let v = format!("{seen}{}", self.0);
                if v.ends_with("stop") {
                    return Err(refuse(StatusCode::IM_A_TEAPOT));
                }
                req.headers_mut()
                    .insert("x-seen", HeaderValue::from_str(&v).expect("ascii"));
                Ok(req)
            })
        }
    }

    #[tokio::test]
    async fn handlers_run_in_order_and_the_first_answer_ends_the_run() {
        let p = Pipeline::of(vec![Box::new(Tag("a")), Box::new(Tag("b"))]);
        let out = p.run(Request::new(SkiffBody::Empty), &cx()).await;
        let req = out.expect("passed");
        assert_eq!(req.headers()["x-seen"], "ab");
        let p = Pipeline::of(vec![
            Box::new(Tag("a")),
            Box::new(Tag("stop")),
            Box::new(Tag("never")),
        ]);
        let out = p.run(Request::new(SkiffBody::Empty), &cx()).await;
        assert_eq!(out.expect_err("answered").status(), 418);
    }

    fn config(yaml: &str) -> Document {
        let mut docs = crate::config::parse_documents(yaml, std::path::Path::new("config.yaml"))
            .expect("yaml");
        docs.remove(0)
    }

    fn component(name: &str, ty: &str, meta: &[(&str, &str)]) -> MiddlewareComponent {
        let mut m = Properties::new();
        for (k, v) in meta {
            m.insert(*k, *v);
        }
        MiddlewareComponent {
            name: name.into(),
            type_name: ty.into(),
            version: "v1".into(),
            init_timeout: Duration::from_secs(5),
            meta: m,
        }
    }

    const CONFIG: &str = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  httpPipeline:\n    handlers:\n      - name: up\n        type: middleware.http.uppercase\n";

    #[tokio::test]
    async fn a_pipeline_is_built_from_the_configuration() {
        let c = config(CONFIG);
        let up = component("up", "middleware.http.uppercase", &[]);
        let p = build(Some(&c), &[up], &[], "a").await.expect("built");
        assert_eq!(p.http.expect("http pipeline").names, ["up"]);
        assert!(p.app_http.is_none());
        let none = build(None, &[], &[], "a").await.expect("built");
        assert!(none.http.is_none() && none.app_http.is_none());
    }

    #[tokio::test]
    async fn a_pipeline_that_cannot_be_built_as_written_stops_the_start() {
        let c = config(CONFIG);
        let err = build(Some(&c), &[], &[], "a").await.err().expect("refused");
        let s = err.to_string();
        assert!(
            s.contains("config.yaml: spec.httpPipeline.handlers[0] (up)")
                && s.contains("middleware.http.uppercase")
                && s.contains("no component of that name"),
            "{s}"
        );
        let err = build(Some(&c), &[], &["up".into()], "a")
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("scopes leave app a out"), "{err}");
        let wrong = component("up", "middleware.http.ratelimit", &[]);
        let err = build(Some(&c), &[wrong], &[], "a")
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("the handler says type"), "{err}");
        let wasm = config(&CONFIG.replace("uppercase", "wasm"));
        let w = component("up", "middleware.http.wasm", &[]);
        let err = build(Some(&wasm), &[w], &[], "a")
            .await
            .err()
            .expect("refused");
        let s = err.to_string();
        assert!(
            s.contains("middleware.http.wasm is not implemented") && s.contains("component up"),
            "{s}"
        );
        let sel = config(&format!(
            "{CONFIG}        selector:\n          fields: []\n"
        ));
        let up = component("up", "middleware.http.uppercase", &[]);
        let err = build(Some(&sel), &[up], &[], "a")
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("selectors"), "{err}");
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_limit() {
        let req = Request::new(SkiffBody::full("hello"));
        let (_, b) = read_body(req, 5).await.expect("fits");
        assert_eq!(&b[..], b"hello");
        let req = Request::new(SkiffBody::full("hello!"));
        let r = read_body(req, 5).await.expect_err("too large");
        assert_eq!(r.status(), 413);
    }
}
