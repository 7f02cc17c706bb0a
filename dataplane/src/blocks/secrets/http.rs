//! `GET /v1.0/secrets/{store}/{name}` and `GET /v1.0/secrets/{store}/bulk`.

use ::http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::SecretsBlock;
use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;

pub async fn handle(
    block: &SecretsBlock,
    req: Request<SkiffBody>,
    tail: &str,
) -> Response<SkiffBody> {
    let (store, name) = tail.split_once('/').unwrap_or((tail, ""));
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (store, name) = (dec(store), dec(name));
    if req.method() != Method::GET || name.is_empty() {
        return ApiError::new(
            "ERR_NOT_FOUND",
            StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            format!(
                "{} {} is not a route of the secrets API",
                req.method(),
                req.uri().path()
            ),
        )
        .to_http();
    }
    let r = if name == "bulk" {
        block
            .bulk(&store)
            .await
            .map(|m| serde_json::to_value(m).unwrap_or_default())
    } else {
        block
            .get(&store, &name)
            .await
            .map(|m| serde_json::to_value(m).unwrap_or_default())
    };
    match r {
        Ok(v) => {
            let mut r = Response::new(SkiffBody::full(v.to_string()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => e.to_http(),
    }
}

/// The span's name for a call (`tail`: the path after the store).
pub fn span_name(tail: &str) -> &'static str {
    if tail == "bulk" {
        "GetBulkSecret"
    } else {
        "GetSecret"
    }
}
