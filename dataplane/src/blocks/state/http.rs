//! The state API over HTTP: `/v1.0/state/{store}[/{key}|/bulk|/transaction]`
//! and `/v1.0-alpha1/state/{store}/query`. Decodes Dapr's JSON shapes,
//! query-string options and `metadata.*`, and encodes the answers (raw
//! bytes with `ETag` and `metadata.*` headers, 204 for nothing). Every
//! failure is an [`ApiError`] the block or this file worded.

use std::collections::BTreeMap;

use ::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use skiff_components::state::{Concurrency, Consistency, Item};

use super::{
    Action, DeleteItem, SaveItem, StateBlock, TxOp, bad_request, gojson, parse_concurrency,
    parse_consistency, read_metadata, save_options, store_error,
};
pub use crate::blocks::adapter::query_args;
use crate::blocks::adapter::{QueryArgs, body, json, no_content};
use crate::errors::ApiError;
use crate::skiff_body::SkiffBody;

const MALFORMED: &str = "ERR_MALFORMED_REQUEST";

/// Serves one state request; `tail` is the path after `state/`.
pub async fn handle(
    block: &StateBlock,
    req: Request<SkiffBody>,
    tail: &str,
    max_body: usize,
) -> Response<SkiffBody> {
    match serve(block, req, tail, max_body).await {
        Ok(r) => r,
        Err(e) => e.to_http(),
    }
}

async fn serve(
    block: &StateBlock,
    req: Request<SkiffBody>,
    tail: &str,
    max_body: usize,
) -> Result<Response<SkiffBody>, ApiError> {
    let (store, rest) = tail.split_once('/').unwrap_or((tail, ""));
    let store = decode(store);
    let alpha = req.uri().path().starts_with("/v1.0-alpha1/");
    let args = query_args(req.uri().query());
    let method = req.method().clone();
    let write = method == Method::POST || method == Method::PUT;
    match (rest, write) {
        ("", true) => {
            let body = body(req, max_body).await?;
            save(block, &store, &body, &args).await
        }
        ("bulk", true) => {
            let body = body(req, max_body).await?;
            bulk(block, &store, &body).await
        }
        ("transaction", true) => {
            let body = body(req, max_body).await?;
            transaction(block, &store, &body, &args).await
        }
        ("query", true) if alpha => {
            let body = body(req, max_body).await?;
            query(block, &store, &body).await
        }
        (key, false) if !key.is_empty() && method == Method::GET => {
            get(block, &store, &decode(key), &args).await
        }
        (key, false) if !key.is_empty() && method == Method::DELETE => {
            let etag = req
                .headers()
                .get(header::IF_MATCH)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            delete(block, &store, &decode(key), etag, &args).await
        }
        _ => {
            // daprd checks the store before it says the route is wrong.
            block.store(&store)?;
            Err(ApiError::new(
                "ERR_NOT_FOUND",
                StatusCode::NOT_FOUND,
                tonic::Code::NotFound,
                format!(
                    "{method} {} is not a route of the state API",
                    req.uri().path()
                ),
            ))
        }
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    bad_request(MALFORMED, format!("failed to parse the request body: {e}"))
}

/// A field Go decodes `null` into as its zero value (SDKs send
/// `"metadata": null`): absent and null both give the default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

#[derive(Deserialize)]
struct Options {
    #[serde(default, deserialize_with = "nullable")]
    concurrency: String,
    #[serde(default, deserialize_with = "nullable")]
    consistency: String,
}

#[derive(Deserialize)]
struct SaveEntry<'a> {
    #[serde(default, deserialize_with = "nullable")]
    key: String,
    /// The value's text in the request body, re-encoded from there (no
    /// tree of it is built); absent and `null` store `null`.
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    options: Option<Options>,
}

/// A save entry as the block takes it: the value re-encoded as daprd
/// stores an HTTP save; query metadata merged in (and winning).
fn save_item(store: &str, e: SaveEntry<'_>, args: &QueryArgs) -> Result<SaveItem, ApiError> {
    let mut meta = e.metadata;
    for (k, v) in &args.metadata {
        meta.insert(k.clone(), v.clone());
    }
    let (conc, cons) = e
        .options
        .map(|o| (o.concurrency, o.consistency))
        .unwrap_or_default();
    let (concurrency, consistency, ttl) = save_options(
        store,
        &conc,
        &cons,
        meta.get("ttlInSeconds").map(String::as_str),
    )?;
    Ok(SaveItem {
        key: e.key,
        value: Bytes::from(
            e.value
                .map_or_else(|| Ok(b"null".to_vec()), |v| gojson::reencode(v.get()))
                .map_err(malformed)?,
        ),
        is_json: true,
        etag: e.etag,
        concurrency,
        consistency,
        ttl,
    })
}

/// A save request's body as the block takes it: keys, values re-encoded,
/// ETags, options and metadata (the query's winning).
pub fn save_items(store: &str, body: &[u8], args: &QueryArgs) -> Result<Vec<SaveItem>, ApiError> {
    let entries: Vec<SaveEntry> = serde_json::from_slice(body).map_err(malformed)?;
    let mut items = Vec::with_capacity(entries.len());
    for e in entries {
        if e.key.is_empty() {
            return Err(bad_request(MALFORMED, "state key is required".into()));
        }
        items.push(save_item(store, e, args)?);
    }
    Ok(items)
}

async fn save(
    block: &StateBlock,
    store: &str,
    body: &[u8],
    args: &QueryArgs,
) -> Result<Response<SkiffBody>, ApiError> {
    block.store(store)?;
    let items = save_items(store, body, args)?;
    if !items.is_empty() {
        block.save(store, items).await?;
    }
    Ok(no_content())
}

async fn get(
    block: &StateBlock,
    store: &str,
    key: &str,
    args: &QueryArgs,
) -> Result<Response<SkiffBody>, ApiError> {
    let consistency = parse_consistency(&args.consistency).map_err(|e| {
        store_error(
            Action::Get,
            store,
            key,
            &skiff_components::state::StateError::Invalid(e),
        )
    })?;
    let Some(item) = block.get(store, key, consistency).await? else {
        return Ok(no_content());
    };
    let mut r = Response::new(SkiffBody::full(item.data.clone()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(etag) = item
        .etag
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        h.insert(header::ETAG, etag);
    }
    if let Some((k, v)) = read_metadata(&item)
        && let (Ok(name), Ok(value)) = (
            ::http::HeaderName::try_from(format!("metadata.{k}")),
            HeaderValue::from_str(&v),
        )
    {
        h.insert(name, value);
    }
    Ok(r)
}

async fn delete(
    block: &StateBlock,
    store: &str,
    key: &str,
    etag: Option<String>,
    args: &QueryArgs,
) -> Result<Response<SkiffBody>, ApiError> {
    let bad = |e: String| {
        store_error(
            Action::Delete,
            store,
            key,
            &skiff_components::state::StateError::Invalid(e),
        )
    };
    let item = DeleteItem {
        key: key.to_owned(),
        etag,
        concurrency: parse_concurrency(&args.concurrency).map_err(bad)?,
        consistency: parse_consistency(&args.consistency).map_err(bad)?,
    };
    block.delete(store, item, Action::Delete).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
struct BulkBody {
    #[serde(default, deserialize_with = "nullable")]
    keys: Vec<String>,
}

/// A value as an answer's `data`: its bytes embedded as they are when they
/// are JSON (as daprd embeds them); otherwise, where daprd would emit
/// invalid JSON, as a JSON string of their text.
fn embedded(data: &[u8]) -> Box<RawValue> {
    std::str::from_utf8(data)
        .ok()
        .and_then(|t| RawValue::from_string(t.to_owned()).ok())
        .or_else(|| {
            let text = serde_json::to_string(&String::from_utf8_lossy(data)).ok()?;
            RawValue::from_string(text).ok()
        })
        .unwrap_or_else(|| RawValue::NULL.to_owned())
}

/// One entry of a bulk or query answer.
#[derive(Serialize)]
struct Entry {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<&'static str, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Entry {
    fn of(key: String, item: Option<&Item>) -> Self {
        Self {
            key,
            data: item.map(|i| embedded(&i.data)),
            etag: item.and_then(|i| i.etag.clone()),
            metadata: item
                .and_then(read_metadata)
                .map(|(k, v)| BTreeMap::from([(k, v)])),
            error: None,
        }
    }
}

fn bulk_entry(key: String, r: Result<Option<Item>, String>) -> Entry {
    match r {
        Ok(item) => Entry::of(key, item.as_ref()),
        Err(e) => Entry {
            error: Some(e),
            ..Entry::of(key, None)
        },
    }
}

async fn bulk(
    block: &StateBlock,
    store: &str,
    body: &[u8],
) -> Result<Response<SkiffBody>, ApiError> {
    block.store(store)?;
    let req: BulkBody = serde_json::from_slice(body).map_err(malformed)?;
    let got = block.bulk_get(store, &req.keys).await?;
    let out: Vec<Entry> = req
        .keys
        .into_iter()
        .zip(got)
        .map(|(k, r)| bulk_entry(k, r))
        .collect();
    Ok(json(&out))
}

#[derive(Deserialize)]
struct TxBody<'a> {
    #[serde(default, deserialize_with = "nullable", borrow)]
    operations: Vec<TxEntry<'a>>,
    #[serde(default, deserialize_with = "nullable")]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TxEntry<'a> {
    #[serde(default, deserialize_with = "nullable")]
    operation: String,
    #[serde(borrow)]
    request: Option<SaveEntry<'a>>,
}

async fn transaction(
    block: &StateBlock,
    store: &str,
    body: &[u8],
    args: &QueryArgs,
) -> Result<Response<SkiffBody>, ApiError> {
    block.store(store)?;
    let tx: TxBody = serde_json::from_slice(body).map_err(malformed)?;
    let mut merged = QueryArgs {
        metadata: tx.metadata,
        ..QueryArgs::default()
    };
    merged.metadata.extend(args.metadata.clone());
    let mut ops = Vec::with_capacity(tx.operations.len());
    for op in tx.operations {
        let Some(r) = op.request else {
            return Err(malformed("an operation has no request"));
        };
        if r.key.is_empty() {
            return Err(bad_request(MALFORMED, "state key is required".into()));
        }
        ops.push(match op.operation.as_str() {
            "upsert" => TxOp::Upsert(save_item(store, r, &merged)?),
            "delete" => {
                let (conc, cons) = r
                    .options
                    .map(|o| (o.concurrency, o.consistency))
                    .unwrap_or_default();
                TxOp::Delete(DeleteItem {
                    key: r.key,
                    etag: r.etag,
                    concurrency: parse_concurrency(&conc).unwrap_or(Concurrency::LastWrite),
                    consistency: parse_consistency(&cons).unwrap_or(Consistency::Eventual),
                })
            }
            other => {
                return Err(bad_request(
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                    format!("operation type {other} not supported"),
                ));
            }
        });
    }
    block.transaction(store, ops).await?;
    Ok(no_content())
}

async fn query(
    block: &StateBlock,
    store: &str,
    body: &[u8],
) -> Result<Response<SkiffBody>, ApiError> {
    let a = block.query(store, body).await?;
    if a.results.is_empty() {
        return Ok(no_content());
    }
    #[derive(Serialize)]
    struct Out {
        results: Vec<Entry>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    }
    let results = a
        .results
        .into_iter()
        .map(|(key, item)| Entry {
            metadata: None,
            ..Entry::of(key, Some(&item))
        })
        .collect();
    Ok(json(&Out {
        results,
        token: a.token,
    }))
}

/// The span's name for a call (`tail`: the path after the store), as
/// daprd names the API.
pub fn span_name(method: &Method, tail: &str) -> &'static str {
    match (tail, method.as_str()) {
        ("bulk", _) => "GetBulkState",
        ("transaction", _) => "ExecuteStateTransaction",
        ("query", _) => "QueryState",
        ("", _) => "SaveState",
        (_, "DELETE") => "DeleteState",
        _ => "GetState",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_data_is_embedded_json() {
        assert_eq!(
            embedded(br#"{"b":1.50, "a":1}"#).get(),
            r#"{"b":1.50, "a":1}"#
        );
        assert_eq!(embedded(b"hi").get(), r#""hi""#);
    }
}
