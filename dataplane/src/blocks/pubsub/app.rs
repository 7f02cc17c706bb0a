//! One event delivered to the app, and its answer read by Dapr's rules:
//! HTTP apps get `POST /<path>` with the CloudEvent as
//! `application/cloudevents+json` and the message metadata as lowercased
//! headers; gRPC apps get `AppCallback/OnTopicEvent`. The reply table is
//! the contract's (§2.6): a 2xx with an empty or non-JSON body or
//! `status: ""` is SUCCESS, exact uppercase `SUCCESS`/`RETRY`/`DROP` are
//! honoured, an unknown status retries, 404 drops, any other status or a
//! network error retries; for gRPC an empty reply is SUCCESS and
//! `Unimplemented` acks.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use serde_json::Value;
use skiff_proto::runtime as pb;
use tonic::Code;

use super::envelope;
use super::subscriptions::{self, Sub};
use crate::appchannel::AppChannel;
use crate::appchannel::grpc::{UnaryError, unary};
use crate::skiff_body::SkiffBody;

/// Largest reply body read to find a status.
pub const MAX_REPLY: usize = 64 << 10;

/// What the app's answer means for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Retry(String),
    Drop,
}

impl Outcome {
    /// Index into [`super::metrics::OUTCOMES`].
    pub fn index(&self) -> usize {
        match self {
            Self::Success => 0,
            Self::Retry(_) => 1,
            Self::Drop => 2,
        }
    }
}

/// One event, ready to go.
pub struct Event<'a> {
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub path: &'a str,
    /// The CloudEvent's bytes.
    pub body: Bytes,
    pub metadata: &'a [(String, String)],
    /// Trace headers of the delivery's span.
    pub trace: HeaderMap,
}

/// Reads an HTTP app's 2xx body.
pub fn http_reply(body: &[u8]) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(default)]
        status: Option<Value>,
    }
    let Ok(r) = serde_json::from_slice::<Reply>(body) else {
        return Outcome::Success;
    };
    match r.status {
        None | Some(Value::Null) => Outcome::Success,
        Some(Value::String(s)) => match s.as_str() {
            "" | "SUCCESS" => Outcome::Success,
            "RETRY" => Outcome::Retry("the app answered RETRY".into()),
            "DROP" => Outcome::Drop,
            other => Outcome::Retry(format!("the app answered an unknown status {other:?}")),
        },
        Some(other) => Outcome::Retry(format!(
            "the app answered a status that is not a string: {other}"
        )),
    }
}

/// `POST /<path>` to an HTTP app.
pub async fn to_http(app: &AppChannel, ev: Event<'_>) -> Outcome {
    let path = if ev.path.starts_with('/') {
        ev.path.to_owned()
    } else {
        format!("/{}", ev.path)
    };
    let Ok(uri) = http::Uri::try_from(path.as_str()) else {
        return Outcome::Retry(format!("route {path:?} is not a valid path"));
    };
    let mut req = Request::new(SkiffBody::full(ev.body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    *h = ev.trace;
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(envelope::CE_JSON),
    );
    if let Ok(v) = HeaderValue::from_str(ev.pubsub) {
        h.insert(HeaderName::from_static("pubsubname"), v);
    }
    for (k, v) in ev.metadata {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    let resp = match app.forward(req).await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Outcome::Drop;
    }
    if !status.is_success() {
        return Outcome::Retry(format!("the app answered HTTP {}", status.as_u16()));
    }
    match crate::body::collect_limited(resp.into_body(), MAX_REPLY).await {
        Ok(b) => http_reply(&b),
        // Too long to be a status reply: a 2xx all the same.
        Err(_) => Outcome::Success,
    }
}

/// The `TopicEventRequest` daprd sends for a CloudEvent.
pub fn topic_event(ce: &serde_json::Map<String, Value>, ev: &Event<'_>) -> pb::TopicEventRequest {
    let s = |k: &str| {
        ce.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let extensions: serde_json::Map<String, Value> = ce
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "id" | "source"
                    | "datacontenttype"
                    | "type"
                    | "specversion"
                    | "data"
                    | "data_base64"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pb::TopicEventRequest {
        id: s("id"),
        source: s("source"),
        r#type: s("type"),
        spec_version: s("specversion"),
        data_content_type: s("datacontenttype"),
        data: envelope::grpc_data(ce),
        topic: ev.topic.to_owned(),
        pubsub_name: ev.pubsub.to_owned(),
        path: ev.path.to_owned(),
        extensions: Some(to_struct(extensions)),
    }
}

/// `OnTopicEvent` to a gRPC app.
pub async fn to_grpc(app: &AppChannel, ev: Event<'_>) -> Outcome {
    let ce: serde_json::Map<String, Value> = match serde_json::from_slice(&ev.body) {
        Ok(m) => m,
        Err(e) => return Outcome::Retry(format!("the event is not a JSON CloudEvent: {e}")),
    };
    let msg = topic_event(&ce, &ev);
    let mut md = ev.trace;
    for (k, v) in ev.metadata {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            md.insert(n, v);
        }
    }
    let answer: Result<pb::TopicEventResponse, UnaryError> =
        unary(app, skiff_proto::paths::ON_TOPIC_EVENT, &msg, md).await;
    grpc_reply(answer)
}

pub fn grpc_reply(answer: Result<pb::TopicEventResponse, UnaryError>) -> Outcome {
    use pb::topic_event_response::TopicEventResponseStatus as S;
    match answer {
        Ok(r) => match S::try_from(r.status) {
            Ok(S::Success) => Outcome::Success,
            Ok(S::Drop) => Outcome::Drop,
            Ok(S::Retry) => Outcome::Retry("the app answered RETRY".into()),
            Err(_) => Outcome::Retry(format!("the app answered an unknown status {}", r.status)),
        },
        // The app does not subscribe to this topic after all: acked.
        Err(UnaryError::Status(Code::Unimplemented, _)) => Outcome::Success,
        Err(UnaryError::Status(code, msg)) => {
            Outcome::Retry(format!("the app answered {code:?}: {msg}"))
        }
        Err(UnaryError::App(e)) => Outcome::Retry(e.to_string()),
        Err(UnaryError::Protocol(m)) => Outcome::Retry(m),
    }
}

/// The app's own subscriptions: `GET /dapr/subscribe` for HTTP apps
/// (any non-200 means none), `ListTopicSubscriptions` for gRPC apps
/// (`Unimplemented` means none). Items that fail are named in the errors.
pub async fn list_subscriptions(app: &AppChannel, app_id: &str) -> (Vec<Sub>, Vec<String>) {
    if app.speaks_grpc() {
        let answer: Result<pb::ListTopicSubscriptionsResponse, UnaryError> = unary(
            app,
            skiff_proto::paths::LIST_TOPIC_SUBSCRIPTIONS,
            &skiff_proto::google::protobuf::Empty {},
            HeaderMap::new(),
        )
        .await;
        return match answer {
            Ok(r) => subscriptions::from_grpc(r),
            Err(UnaryError::Status(Code::Unimplemented, _)) => (Vec::new(), Vec::new()),
            Err(UnaryError::Status(code, m)) => (
                Vec::new(),
                vec![format!("ListTopicSubscriptions answered {code:?}: {m}")],
            ),
            Err(UnaryError::App(e)) => (Vec::new(), vec![format!("ListTopicSubscriptions: {e}")]),
            Err(UnaryError::Protocol(m)) => {
                (Vec::new(), vec![format!("ListTopicSubscriptions: {m}")])
            }
        };
    }
    let mut req = Request::new(SkiffBody::Empty);
    *req.uri_mut() = http::Uri::from_static("/dapr/subscribe");
    if let Ok(v) = HeaderValue::from_str(app_id) {
        req.headers_mut().insert(crate::headers::DAPR_APP_ID, v);
    }
    let resp = match app.forward(req).await {
        Ok(r) => r,
        Err(e) => return (Vec::new(), vec![format!("GET /dapr/subscribe: {e}")]),
    };
    if resp.status() != StatusCode::OK {
        return (Vec::new(), Vec::new());
    }
    match crate::body::collect_limited(resp.into_body(), app.max_body_size).await {
        Ok(b) => subscriptions::programmatic(&b),
        Err(e) => (Vec::new(), vec![format!("GET /dapr/subscribe: {e}")]),
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn to_struct(m: serde_json::Map<String, Value>) -> skiff_proto::google::protobuf::Struct {
    skiff_proto::google::protobuf::Struct {
        fields: m.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> skiff_proto::google::protobuf::Value {
    use skiff_proto::google::protobuf::value::Kind;
    use skiff_proto::google::protobuf::{ListValue, NullValue};
    let kind = match v {
        Value::Null => Kind::NullValue(NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    skiff_proto::google::protobuf::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_replies_follow_the_contract() {
        assert_eq!(http_reply(b""), Outcome::Success);
        assert_eq!(http_reply(b"null"), Outcome::Success);
        assert_eq!(http_reply(b"ok"), Outcome::Success);
        assert_eq!(http_reply(br#"{"status":""}"#), Outcome::Success);
        assert_eq!(http_reply(br#"{"status":"SUCCESS"}"#), Outcome::Success);
        assert_eq!(http_reply(br#"{"status":"DROP"}"#), Outcome::Drop);
        assert!(matches!(
            http_reply(br#"{"status":"RETRY"}"#),
            Outcome::Retry(_)
        ));
        assert!(
            matches!(http_reply(br#"{"status":"success"}"#), Outcome::Retry(_)),
            "exact case"
        );
    }

    #[test]
    fn grpc_replies_follow_the_contract() {
        let ok = |s: i32| grpc_reply(Ok(pb::TopicEventResponse { status: s }));
        assert_eq!(ok(0), Outcome::Success);
        assert!(matches!(ok(1), Outcome::Retry(_)));
        assert_eq!(ok(2), Outcome::Drop);
        assert_eq!(
            grpc_reply(Err(UnaryError::Status(Code::Unimplemented, String::new()))),
            Outcome::Success
        );
        assert!(matches!(
            grpc_reply(Err(UnaryError::Status(Code::Internal, String::new()))),
            Outcome::Retry(_)
        ));
    }
}
