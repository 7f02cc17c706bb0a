//! The CloudEvents 1.0 envelope as daprd builds it around a publish, and
//! what delivery reads back from one.
//!
//! Building: fields in the order Go marshals a map (sorted keys), so an
//! app reading the broker sees daprd's bytes; `datacontenttype` is
//! `text/plain` when the publisher gave none; exactly `application/json`
//! (parameters allowed, `+json` types not) is embedded as JSON after a
//! validity check that builds no tree, octet-stream goes to
//! `data_base64`, anything else becomes a string. A body that already is a
//! CloudEvent (`application/cloudevents+json`) passes through with
//! `topic` and `pubsubname` set and the missing fields filled in (a
//! missing `id` is not made up, as in daprd).
//!
//! Reading: [`Head`] takes the few fields delivery needs (id,
//! expiration, trace context) without decoding `data`.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use skiff_components::util::{rfc3339, uuid_v4};

use crate::blocks::gojson;

pub const CE_JSON: &str = "application/cloudevents+json";
pub const DEFAULT_TYPE: &str = "com.dapr.event.sent";
pub const SPEC_VERSION: &str = "1.0";

/// What a publish says about its envelope.
pub struct Input<'a> {
    pub data: &'a [u8],
    /// The publisher's content type; empty when none was given.
    pub content_type: &'a str,
    pub topic: &'a str,
    pub pubsub: &'a str,
    /// The publishing app (`Dapr` when empty).
    pub source: &'a str,
    pub traceparent: &'a str,
    pub tracestate: &'a str,
    pub ttl: Option<Duration>,
    /// `cloudevent.<field>` request metadata.
    pub overrides: &'a [(&'a str, &'a str)],
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is not a JSON CloudEvent: {0}")]
    NotCloudEvent(String),
}

/// The base media type, lowercased, without parameters.
pub fn media_type(ct: &str) -> std::borrow::Cow<'_, str> {
    let m = ct.split(';').next().unwrap_or_default().trim();
    // Content types nearly always arrive in lower case: borrowed then.
    if m.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(m.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(m)
    }
}

/// `now` as an envelope's `time` (RFC 3339, seconds precision), kept per
/// thread and formatted again only when the second changes: publishes
/// within a second share one formatting and allocate nothing for it.
fn with_now_text<R>(now: SystemTime, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        }
        f(text)
    })
}

/// The envelope's bytes.
pub fn build(i: &Input<'_>) -> Result<Bytes, EnvelopeError> {
    let media = media_type(i.content_type);
    if media == CE_JSON {
        return passthrough(i);
    }
    let content_type = if i.content_type.is_empty() {
        "text/plain"
    } else {
        i.content_type
    };
    let over = |k: &str| {
        i.overrides
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| *v)
    };
    // Sized once: base64 grows binary data by a third, and the fields
    // around it (ids, trace context, names) take a few hundred bytes.
    let mut out = String::with_capacity(i.data.len() / 3 * 4 + 4 + 320 + i.topic.len());
    out.push('{');
    let field = |out: &mut String, k: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
    };
    // Keys in sorted order (how Go marshals daprd's map).
    if media == "application/json"
        && serde_json::from_slice::<&serde_json::value::RawValue>(i.data).is_ok()
    {
        field(&mut out, "data");
        // Valid JSON, embedded as sent (trimmed of surrounding space).
        out.push_str(std::str::from_utf8(i.data).unwrap_or("null").trim());
    } else if media == "application/octet-stream" || media == "application/cloudevents+protobuf" {
        field(&mut out, "data_base64");
        // Base64's alphabet needs no JSON escaping: encoded in place.
        out.push('"');
        base64::engine::general_purpose::STANDARD.encode_string(i.data, &mut out);
        out.push('"');
    } else {
        field(&mut out, "data");
        gojson::string(&String::from_utf8_lossy(i.data), &mut out);
    }
    let now = SystemTime::now();
    let id = over("id").map_or_else(uuid_v4, str::to_owned);
    let source = over("source").unwrap_or(if i.source.is_empty() {
        "Dapr"
    } else {
        i.source
    });
    let traceparent = over("traceparent")
        .or(over("traceid"))
        .unwrap_or(i.traceparent);
    let tracestate = over("tracestate").unwrap_or(i.tracestate);
    let expiration = i.ttl.map(|t| rfc3339(now + t));
    let s = |out: &mut String, k: &str, v: &str| {
        field(out, k);
        gojson::string(v, out);
    };
    s(&mut out, "datacontenttype", content_type);
    if let Some(e) = &expiration {
        s(&mut out, "expiration", e);
    }
    s(&mut out, "id", &id);
    s(&mut out, "pubsubname", i.pubsub);
    s(&mut out, "source", source);
    s(&mut out, "specversion", SPEC_VERSION);
    if let Some(sub) = over("subject") {
        s(&mut out, "subject", sub);
    }
    with_now_text(now, |t| s(&mut out, "time", t));
    s(&mut out, "topic", i.topic);
    s(&mut out, "traceid", traceparent);
    s(&mut out, "traceparent", traceparent);
    s(&mut out, "tracestate", tracestate);
    s(&mut out, "type", over("type").unwrap_or(DEFAULT_TYPE));
    out.push('}');
    Ok(Bytes::from(out))
}

/// A CloudEvent the publisher made: kept, `topic`/`pubsubname` set, the
/// rest defaulted where missing.
fn passthrough(i: &Input<'_>) -> Result<Bytes, EnvelopeError> {
    let mut m: serde_json::Map<String, Value> =
        serde_json::from_slice(i.data).map_err(|e| EnvelopeError::NotCloudEvent(e.to_string()))?;
    let str_v = |s: &str| Value::String(s.to_owned());
    m.insert("topic".into(), str_v(i.topic));
    m.insert("pubsubname".into(), str_v(i.pubsub));
    let now = SystemTime::now();
    let mut default = |k: &str, v: Value| {
        m.entry(k.to_owned()).or_insert(v);
    };
    default("time", str_v(&rfc3339(now)));
    default("traceid", str_v(i.traceparent));
    default("traceparent", str_v(i.traceparent));
    default("tracestate", str_v(i.tracestate));
    // daprd fills a publisher's own event with "Dapr", not the app id.
    default("source", str_v("Dapr"));
    default("type", str_v(DEFAULT_TYPE));
    default("specversion", str_v(SPEC_VERSION));
    if let Some(t) = i.ttl {
        m.insert("expiration".into(), str_v(&rfc3339(now + t)));
    }
    for (k, v) in i.overrides {
        m.insert(k.to_ascii_lowercase(), str_v(v));
    }
    Ok(Bytes::from(gojson::encode(&Value::Object(m))))
}

/// The fields delivery needs, read without decoding `data`. A publisher's
/// own CloudEvent passes through as it was sent, so these are read
/// leniently: a field of another JSON type is taken as absent (an `id`
/// number as its text) rather than failing the whole event, which would
/// drop a message its publish had accepted (found by the `cloudevent`
/// fuzz target).
#[derive(Debug, Default, Deserialize)]
pub struct Head {
    #[serde(default, deserialize_with = "id_text")]
    pub id: String,
    #[serde(default, deserialize_with = "string_or_none")]
    pub expiration: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub traceparent: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub tracestate: Option<String>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    })
}

impl Head {
    pub fn read(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }

    /// Past its `expiration` (RFC 3339).
    pub fn expired(&self) -> bool {
        let Some(e) = &self.expiration else {
            return false;
        };
        time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t < time::OffsetDateTime::now_utc())
    }
}

/// The synthetic CloudEvent an app on a `rawPayload` subscription gets:
/// the broker's bytes in `data_base64`.
pub fn wrap_raw(data: &[u8], topic: &str, pubsub: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() * 4 / 3 + 200);
    out.push_str("{\"data_base64\":");
    gojson::string(
        &base64::engine::general_purpose::STANDARD.encode(data),
        &mut out,
    );
    out.push_str(",\"datacontenttype\":\"application/octet-stream\",\"id\":");
    gojson::string(&uuid_v4(), &mut out);
    out.push_str(",\"pubsubname\":");
    gojson::string(pubsub, &mut out);
    out.push_str(",\"source\":\"Dapr\",\"specversion\":\"1.0\",\"time\":");
    with_now_text(SystemTime::now(), |t| gojson::string(t, &mut out));
    out.push_str(",\"topic\":");
    gojson::string(topic, &mut out);
    out.push_str(",\"type\":\"com.dapr.event.sent\"}");
    Bytes::from(out)
}

/// The data of a CloudEvent as `OnTopicEvent` carries it: `data_base64`
/// decoded; a string as its bytes; JSON re-marshalled; else nothing.
pub fn grpc_data(ce: &serde_json::Map<String, Value>) -> Bytes {
    if let Some(Value::String(b)) = ce.get("data_base64") {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .unwrap_or_default();
    }
    let media = ce
        .get("datacontenttype")
        .and_then(Value::as_str)
        .map(media_type)
        .unwrap_or_default();
    match ce.get("data") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if !is_json(&media) => Bytes::from(s.clone()),
        Some(v) if is_json(&media) || media.is_empty() => Bytes::from(v.to_string()),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(_) => Bytes::new(),
    }
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(data: &'a [u8], ct: &'a str) -> Input<'a> {
        Input {
            data,
            content_type: ct,
            topic: "orders",
            pubsub: "ps",
            source: "app",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            tracestate: "",
            ttl: None,
            overrides: &[],
        }
    }

    fn parsed(b: &Bytes) -> serde_json::Map<String, Value> {
        serde_json::from_slice(b).expect("json")
    }

    #[test]
    fn text_is_the_default_and_keys_are_sorted() {
        let b = build(&input(b"hello", "")).expect("env");
        let m = parsed(&b);
        assert_eq!(m["data"], "hello");
        assert_eq!(m["datacontenttype"], "text/plain");
        assert_eq!(m["type"], DEFAULT_TYPE);
        assert_eq!(m["specversion"], "1.0");
        assert_eq!(m["traceid"], m["traceparent"]);
        assert_eq!(m["id"].as_str().map(str::len), Some(36));
        let s = std::str::from_utf8(&b).expect("utf8");
        let keys: Vec<usize> = [
            "\"data\"",
            "\"datacontenttype\"",
            "\"id\"",
            "\"pubsubname\"",
            "\"source\"",
            "\"time\"",
            "\"type\"",
        ]
        .iter()
        .map(|k| s.find(k).expect("key"))
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{s}");
    }

    #[test]
    fn json_is_embedded_and_bad_json_is_a_string() {
        let m = parsed(
            &build(&input(br#" {"a": 1} "#, "application/json; charset=utf-8")).expect("env"),
        );
        assert_eq!(m["data"]["a"], 1);
        let m = parsed(&build(&input(b"{nope", "application/json")).expect("env"));
        assert_eq!(m["data"], "{nope");
        // +json types are not parsed.
        let m = parsed(&build(&input(br#"{"a":1}"#, "application/vnd+json")).expect("env"));
        assert_eq!(m["data"], r#"{"a":1}"#);
        let m = parsed(&build(&input(&[0, 255], "application/octet-stream")).expect("env"));
        assert_eq!(m["data_base64"], "AP8=");
        assert!(!m.contains_key("data"));
    }

    #[test]
    fn the_time_text_is_formatted_once_a_second() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let a = with_now_text(t, str::to_owned);
        assert_eq!(a, rfc3339(t));
        let same = t + Duration::from_millis(500);
        assert_eq!(with_now_text(same, str::to_owned), a);
        let next = t + Duration::from_secs(1);
        assert_eq!(with_now_text(next, str::to_owned), rfc3339(next));
        assert_ne!(rfc3339(next), a);
    }

    #[test]
    fn cloudevents_pass_through_with_topic_set_and_no_id_made() {
        let ce = br#"{"specversion":"1.0","type":"my.type","source":"me","data":{"x":1},"topic":"other"}"#;
        let m = parsed(&build(&input(ce, CE_JSON)).expect("env"));
        assert_eq!(
            (m["topic"].as_str(), m["type"].as_str()),
            (Some("orders"), Some("my.type"))
        );
        assert_eq!(m["pubsubname"], "ps");
        assert!(!m.contains_key("id"));
        assert!(m.contains_key("time"));
        assert_eq!(m["source"], "me");
        // Missing fields as daprd fills them: source "Dapr", not the app id.
        let bare = parsed(&build(&input(br#"{"data":1}"#, CE_JSON)).expect("env"));
        assert_eq!(
            (bare["source"].as_str(), bare["specversion"].as_str()),
            (Some("Dapr"), Some("1.0"))
        );
        assert!(!bare.contains_key("id"));
        assert!(build(&input(b"not json", CE_JSON)).is_err());
    }

    #[test]
    fn ttl_sets_expiration_and_overrides_win() {
        let mut i = input(b"x", "text/plain");
        i.ttl = Some(Duration::from_secs(60));
        let o = [("cloudevent.id", "fixed"), ("cloudevent.type", "t2")];
        let o2: Vec<(&str, &str)> = o
            .iter()
            .map(|(k, v)| (k.trim_start_matches("cloudevent."), *v))
            .collect();
        i.overrides = &o2;
        let b = build(&i).expect("env");
        let m = parsed(&b);
        assert_eq!(
            (m["id"].as_str(), m["type"].as_str()),
            (Some("fixed"), Some("t2"))
        );
        let h = Head::read(&b).expect("head");
        assert!(!h.expired());
        let old = br#"{"id":"1","expiration":"2001-01-01T00:00:00Z"}"#;
        assert!(Head::read(old).expect("head").expired());
    }

    /// A passed-through CloudEvent whose fields have other JSON types is
    /// still delivered (it was dropped as "not a JSON CloudEvent").
    #[test]
    fn head_reads_fields_of_other_types() {
        let b = build(&input(
            br#"{"id":7,"expiration":5,"traceparent":3,"tracestate":null,"data":1}"#,
            CE_JSON,
        ))
        .expect("env");
        let h = Head::read(&b).expect("head");
        assert_eq!(h.id, "7");
        assert!(!h.expired());
        let h = Head::read(br#"{"id":{"a":1},"traceparent":"t"}"#).expect("head");
        assert_eq!((h.id.as_str(), h.traceparent.as_deref()), ("", Some("t")));
    }

    #[test]
    fn grpc_data_follows_daprd() {
        let m = parsed(&build(&input(br#"{"a":1}"#, "application/json")).expect("env"));
        assert_eq!(&grpc_data(&m)[..], br#"{"a":1}"#);
        let m = parsed(&build(&input(b"hi", "")).expect("env"));
        assert_eq!(&grpc_data(&m)[..], b"hi");
        let m = parsed(&wrap_raw(b"\x01\x02", "t", "p"));
        assert_eq!(&grpc_data(&m)[..], b"\x01\x02");
    }
}
