//! The HTTP adapter of pub/sub: `POST|PUT /v1.0/publish/{pubsub}/{topic…}`
//! (the topic may hold `/`) and bulk `/v1.0-alpha1/publish/bulk/{pubsub}/
//! {topic}` (also under `/v1.0`). Decodes, calls the block, answers:
//! 204, or Dapr's error, or for bulk the failed entries.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::{self, media_type};
use super::{BulkEntry, PubSubBlock, Publish, errors};
use crate::blocks::adapter::{body, json, no_content, query_args};
use crate::skiff_body::SkiffBody;
use crate::telemetry::trace::{self, Tracer};

/// Serves one publish; `rest` is the path after `publish/`.
pub async fn handle(
    block: &PubSubBlock,
    tracer: &Tracer,
    req: Request<SkiffBody>,
    rest: &str,
    max_body: usize,
) -> Response<SkiffBody> {
    if !matches!(*req.method(), Method::POST | Method::PUT) {
        // As for any route called with a method it does not take.
        return crate::errors::no_route(req.method(), req.uri().path());
    }
    let (bulk, rest) = match rest.strip_prefix("bulk/") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (pubsub, topic) = rest.split_once('/').unwrap_or((rest, ""));
    let pubsub = decode(pubsub);
    let topic = decode(topic);
    let metadata: Vec<(String, String)> =
        query_args(req.uri().query()).metadata.into_iter().collect();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracer.start(req.headers(), trace::Kind::Server);
    let (traceparent, tracestate) = trace_context(&span, req.headers());
    let data = match body(req, max_body).await {
        Ok(b) => b,
        Err(e) => return e.to_http(),
    };
    let p = Publish {
        pubsub: &pubsub,
        topic: &topic,
        data,
        content_type: &content_type,
        metadata,
        traceparent,
        tracestate,
    };
    let resp = if bulk {
        publish_bulk(block, p).await
    } else {
        match block.publish(p).await {
            Ok(()) => no_content(),
            Err(e) => e.to_http(),
        }
    };
    if span.is_recorded() {
        let status = resp.status();
        tracer.finish(&span, || trace::Described {
            name: if bulk {
                "BulkPublishEvent"
            } else {
                "PublishEvent"
            }
            .into(),
            attributes: vec![
                ("messaging.system", trace::Value::Str("pubsub".into())),
                (
                    "messaging.destination.name",
                    trace::Value::Str(topic.clone()),
                ),
                ("db.name", trace::Value::Str(pubsub.clone())),
            ],
            error: (status.as_u16() >= 400).then(|| status.to_string()),
        });
    }
    resp
}

/// The CloudEvent's trace fields: this publish's span, and the caller's
/// `tracestate`.
pub fn trace_context(span: &trace::Span, h: &HeaderMap) -> (String, String) {
    let tp = trace::traceparent_text(&span.trace_id, &span.span_id, u8::from(span.sampled));
    let ts = h
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    (String::from_utf8_lossy(&tp).into_owned(), ts.to_owned())
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    #[serde(default)]
    entry_id: String,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(default)]
    content_type: String,
    #[serde(default)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// An entry's `event` as bytes, by its content type (daprd's rules).
fn event_bytes(raw: Option<&RawValue>, content_type: &str) -> Result<Bytes, String> {
    let Some(raw) = raw else {
        return Ok(Bytes::new());
    };
    let media = media_type(content_type);
    let as_string = || serde_json::from_str::<String>(raw.get()).map_err(|e| e.to_string());
    match &*media {
        "application/octet-stream" => base64::engine::general_purpose::STANDARD
            .decode(as_string()?)
            .map(Bytes::from)
            .map_err(|e| format!("event is not base64: {e}")),
        "application/json" | envelope::CE_JSON => Ok(Bytes::copy_from_slice(raw.get().as_bytes())),
        m if m.starts_with("text/") || m == "application/xml" => Ok(Bytes::from(as_string()?)),
        "" => Ok(Bytes::copy_from_slice(raw.get().as_bytes())),
        other => Err(format!(
            "content type {other} is not supported in a bulk publish"
        )),
    }
}

async fn publish_bulk(block: &PubSubBlock, p: Publish<'_>) -> Response<SkiffBody> {
    let raw = p.data.clone();
    let entries: Vec<Entry<'_>> = match serde_json::from_slice(&raw) {
        Ok(e) => e,
        Err(e) => return errors::bad_events(p.pubsub, p.topic, &e.to_string()).to_http(),
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let ct = if e.content_type.is_empty() {
            "application/json".to_owned()
        } else {
            e.content_type
        };
        let event = match event_bytes(e.event, &ct) {
            Ok(b) => b,
            Err(why) => return errors::bad_events(p.pubsub, p.topic, &why).to_http(),
        };
        out.push(BulkEntry {
            entry_id: e.entry_id,
            event,
            content_type: ct,
            metadata: e.metadata.unwrap_or_default().into_iter().collect(),
        });
    }
    let (pubsub, topic) = (p.pubsub.to_owned(), p.topic.to_owned());
    match block.publish_bulk(p, out).await {
        Ok(failed) if failed.is_empty() => no_content(),
        Ok(failed) => {
            let e = errors::publish_failed(
                &pubsub,
                &topic,
                &skiff_components::pubsub::PubSubError::Broker(format!(
                    "{} entries failed",
                    failed.len()
                )),
            );
            let body = serde_json::json!({
                "failedEntries": failed.iter().map(|(id, err)| serde_json::json!({"entryId": id, "error": err})).collect::<Vec<_>>(),
                "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
            });
            let mut r = json(&body);
            *r.status_mut() = e.http;
            r
        }
        Err(e) => e.to_http(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("raw")
    }

    #[test]
    fn bulk_events_by_content_type() {
        let j = raw(r#"{"a":1}"#);
        assert_eq!(
            &event_bytes(Some(&j), "application/json").expect("ok")[..],
            br#"{"a":1}"#
        );
        let t = raw(r#""hello""#);
        assert_eq!(
            &event_bytes(Some(&t), "text/plain").expect("ok")[..],
            b"hello"
        );
        let b = raw(r#""AP8=""#);
        assert_eq!(
            &event_bytes(Some(&b), "application/octet-stream").expect("ok")[..],
            &[0, 255]
        );
        assert!(event_bytes(Some(&j), "image/png").is_err());
    }
}
