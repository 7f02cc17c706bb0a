//! `POST /v1.0-alpha1/lock/{store}` → `{"success": bool}` and
//! `POST /v1.0-alpha1/unlock/{store}` → `{"status": N}` (a number). Bodies
//! are read as protojson reads them: camelCase or snake_case names, numbers
//! or numeric strings.

use ::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::LockBlock;
use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;

fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn text(v: &Value, camel: &str, snake: &str) -> Result<String, String> {
    match field(v, camel, snake) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{camel} must be a string, not {other}")),
    }
}

fn int(v: &Value, camel: &str, snake: &str) -> Result<i64, String> {
    match field(v, camel, snake) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{camel} is not an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("{camel} is not an integer")),
        Some(other) => Err(format!("{camel} must be a number, not {other}")),
    }
}

fn json_response(v: &Value) -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::full(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn malformed(why: &str) -> Response<SkiffBody> {
    ApiError::new(
        "ERR_MALFORMED_REQUEST",
        StatusCode::BAD_REQUEST,
        tonic::Code::InvalidArgument,
        why.to_owned(),
    )
    .to_http()
}

/// Serves one lock call; `store` is the path after `lock/` or `unlock/`.
pub async fn handle(
    block: &LockBlock,
    req: Request<SkiffBody>,
    store: &str,
    max_body: usize,
) -> Response<SkiffBody> {
    let unlock = is_unlock(req.uri().path());
    if req.method() != Method::POST || store.is_empty() || store.contains('/') {
        return ApiError::new(
            "ERR_NOT_FOUND",
            StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            format!(
                "{} {} is not a route of the lock API",
                req.method(),
                req.uri().path()
            ),
        )
        .to_http();
    }
    let store = percent_encoding::percent_decode_str(store)
        .decode_utf8_lossy()
        .into_owned();
    let body = match crate::body::collect_limited(req.into_body(), max_body).await {
        Ok(b) => b,
        Err(e) => return malformed(&e.to_string()),
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return malformed("the request body is not a JSON object"),
        Err(e) => return malformed(&format!("the request body is not JSON: {e}")),
    };
    let (resource, owner) = match (
        text(&v, "resourceId", "resource_id"),
        text(&v, "lockOwner", "lock_owner"),
    ) {
        (Ok(r), Ok(o)) => (r, o),
        (Err(e), _) | (_, Err(e)) => return malformed(&e),
    };
    if unlock {
        match block.unlock(&store, &resource, &owner).await {
            Ok(status) => json_response(&json!({"status": status})),
            Err(e) => e.to_http(),
        }
    } else {
        let expiry = match int(&v, "expiryInSeconds", "expiry_in_seconds") {
            Ok(e) => e,
            Err(e) => return malformed(&e),
        };
        match block.try_lock(&store, &resource, &owner, expiry).await {
            Ok(success) => json_response(&json!({"success": success})),
            Err(e) => e.to_http(),
        }
    }
}

fn is_unlock(path: &str) -> bool {
    path.starts_with("/v1.0-alpha1/unlock/")
}

/// The span's name for a call, as the gRPC API names it.
pub fn span_name(path: &str) -> &'static str {
    if is_unlock(path) {
        "UnlockAlpha1"
    } else {
        "TryLockAlpha1"
    }
}
