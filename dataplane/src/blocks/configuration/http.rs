//! `GET /v1.0/configuration/{store}?key=a&key=b` → a bare map
//! `{"a": {"value", "version", "metadata"}}` (204 when nothing matched),
//! `GET .../{store}/subscribe?key=...` → `{"id"}`, and
//! `GET .../{store}/{id}/unsubscribe` → `{"ok": true}` or 500
//! `{"ok": false, "message"}`; also under `/v1.0-alpha1`.

use ::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use skiff_components::configuration::Metadata;

use super::{ConfigurationBlock, items_json};
use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;

/// `key=` values, and `metadata.K=V` (the first value of each).
fn query(q: Option<&str>) -> (Vec<String>, Metadata) {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut keys = Vec::new();
    let mut md = Metadata::new();
    for (k, v) in q
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        if k == "key" {
            let v = dec(v);
            if !v.is_empty() {
                keys.push(v);
            }
        } else if let Some(m) = k.strip_prefix("metadata.") {
            md.entry(dec(m)).or_insert_with(|| dec(v));
        }
    }
    (keys, md)
}

fn json_response(status: StatusCode, v: &Value) -> Response<SkiffBody> {
    let mut r = Response::new(SkiffBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves one configuration call; `tail` is the path after `configuration/`.
pub async fn handle(
    block: &ConfigurationBlock,
    req: Request<SkiffBody>,
    tail: &str,
) -> Response<SkiffBody> {
    let parts: Vec<&str> = tail.split('/').collect();
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (keys, md) = query(req.uri().query());
    let r = match (req.method(), parts.as_slice()) {
        (&Method::GET, [store]) if !store.is_empty() => {
            match block.get(&dec(store), &keys, &md).await {
                Ok(items) if items.is_empty() => {
                    let mut r = Response::new(SkiffBody::Empty);
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    return r;
                }
                Ok(items) => Ok(json_response(StatusCode::OK, &items_json(&items))),
                Err(e) => Err(e),
            }
        }
        (&Method::GET, [store, "subscribe"]) => block
            .subscribe_app(&dec(store), &keys, &md)
            .await
            .map(|id| json_response(StatusCode::OK, &json!({"id": id}))),
        (&Method::GET, [store, id, "unsubscribe"]) => {
            if let Err(e) = block.check(&dec(store)) {
                return e.to_http();
            }
            return match block.unsubscribe(&dec(store), &dec(id)) {
                Ok(()) => json_response(StatusCode::OK, &json!({"ok": true})),
                Err(m) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"ok": false, "message": m}),
                ),
            };
        }
        _ => Err(ApiError::new(
            "ERR_NOT_FOUND",
            StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            format!(
                "{} {} is not a route of the configuration API",
                req.method(),
                req.uri().path()
            ),
        )),
    };
    r.unwrap_or_else(|e| e.to_http())
}

/// The span's name for a call (`tail`: the path after the store), as the
/// gRPC API names it.
pub fn span_name(tail: &str) -> &'static str {
    if tail == "subscribe" {
        "SubscribeConfiguration"
    } else if tail.ends_with("/unsubscribe") {
        "UnsubscribeConfiguration"
    } else {
        "GetConfiguration"
    }
}
