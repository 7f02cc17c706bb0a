//! `POST|PUT /v1.0/bindings/{name}` with `{"data", "metadata",
//! "operation"}`. `data` is passed on JSON-encoded, as daprd does (the
//! string "x" reaches the binding as the 3 bytes `"x"`); `traceparent`,
//! `tracestate` and `baggage` join the metadata. Answers 200 with the
//! binding's bytes (204 with none) and its metadata as `metadata.K`
//! headers.

use ::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use serde_json::Value;
use skiff_components::bindings::{Metadata, Request as BindingRequest};

use super::BindingsBlock;
use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;

fn malformed(why: String) -> Response<SkiffBody> {
    ApiError::new(
        "ERR_MALFORMED_REQUEST",
        StatusCode::BAD_REQUEST,
        tonic::Code::InvalidArgument,
        why,
    )
    .to_http()
}

pub async fn handle(
    block: &BindingsBlock,
    req: Request<SkiffBody>,
    name: &str,
    max_body: usize,
) -> Response<SkiffBody> {
    if !matches!(*req.method(), Method::POST | Method::PUT) || name.is_empty() || name.contains('/')
    {
        return ApiError::new(
            "ERR_NOT_FOUND",
            StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            format!(
                "{} {} is not a route of the bindings API",
                req.method(),
                req.uri().path()
            ),
        )
        .to_http();
    }
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .into_owned();
    let mut metadata = Metadata::new();
    for h in ["traceparent", "tracestate", "baggage"] {
        if let Some(v) = req.headers().get(h).and_then(|v| v.to_str().ok()) {
            metadata.insert(h.to_owned(), v.to_owned());
        }
    }
    let body = match crate::body::collect_limited(req.into_body(), max_body).await {
        Ok(b) => b,
        Err(e) => return malformed(e.to_string()),
    };
    let v: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return malformed("the request body is not a JSON object".into()),
        Err(e) => return malformed(format!("the request body is not JSON: {e}")),
    };
    let data =
        Bytes::from(serde_json::to_vec(v.get("data").unwrap_or(&Value::Null)).unwrap_or_default());
    if let Some(m) = v.get("metadata") {
        let Value::Object(m) = m else {
            return malformed("metadata must be an object of strings".into());
        };
        for (k, val) in m {
            match val {
                Value::String(s) => {
                    metadata.insert(k.clone(), s.clone());
                }
                other => return malformed(format!("metadata {k} must be a string, not {other}")),
            }
        }
    }
    let operation = v
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match block
        .invoke(
            &name,
            BindingRequest {
                operation,
                data,
                metadata,
            },
        )
        .await
    {
        Ok(r) => {
            let mut resp = match r.data {
                Some(d) => {
                    let mut resp = Response::new(SkiffBody::full(d));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                None => {
                    let mut resp = Response::new(SkiffBody::Empty);
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    resp
                }
            };
            for (k, v) in &r.metadata {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(format!("metadata.{k}").as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    resp.headers_mut().insert(n, v);
                }
            }
            resp
        }
        Err(e) => e.to_http(),
    }
}
