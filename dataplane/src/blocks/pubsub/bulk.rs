//! Bulk subscribe (`bulkSubscribe.enabled`): the delivery loop hands a
//! batch of up to `maxMessagesCount` messages, gathered for at most
//! `maxAwaitDurationMs`, to the app in one call — HTTP `POST /<path>`
//! with Dapr's bulk envelope, or gRPC `OnBulkTopicEvent` (then
//! `AppCallbackAlpha/OnBulkTopicEventAlpha1`) — and reads one status per
//! entry: SUCCESS acks, DROP dead-letters, RETRY (or a missing status)
//! retries that entry. The claims and guarantees are the single path's:
//! every message of a batch stays claimed until its own fate is settled.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde_json::Value;
use skiff_components::pubsub::Received;
use skiff_proto::runtime as pb;
use tonic::Code;

use super::app::{self, Outcome};
use super::envelope;
use super::fate::{
    Ctx, FETCH_WAIT, Fate, Prepared, RETRY_FIRST, RETRY_MAX, Target, prepare, settle,
};
use crate::appchannel::AppChannel;
use crate::appchannel::grpc::{UnaryError, unary};
use crate::blocks::call;
use crate::skiff_body::SkiffBody;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// One message of a batch, ready to go.
pub(super) struct Entry {
    pub msg: Received,
    /// The CloudEvent (or, raw, the synthetic one).
    pub body: Bytes,
    /// The message's trace, for the batch's span.
    pub traceparent: Option<String>,
}

/// A batch sorted: entries by route, and messages already settled.
pub(super) type Routed = (HashMap<String, Vec<Entry>>, Vec<(Received, Fate)>);

/// Sorts a batch by route; messages with nowhere to go get their fate now
/// (one whose routing rule failed goes back to the broker).
pub(super) fn route(cx: &Ctx, msgs: Vec<Received>) -> Routed {
    let mut by_path: HashMap<String, Vec<Entry>> = HashMap::new();
    let mut settled = Vec::new();
    for msg in msgs {
        match prepare(cx, &msg) {
            Prepared::Deliver(body, head, path) => by_path.entry(path).or_default().push(Entry {
                msg,
                body,
                traceparent: head.traceparent,
            }),
            Prepared::Settled(f) => settled.push((msg, f)),
            Prepared::RetryLater(why) => {
                tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, why, "routing failed; the broker redelivers it");
                settled.push((msg, Fate::Release));
            }
        }
    }
    (by_path, settled)
}

/// One bulk call; the outcome per entry id.
pub(super) async fn deliver(cx: &Ctx, path: &str, entries: &[Entry]) -> HashMap<String, Outcome> {
    let all = |o: Outcome| {
        entries
            .iter()
            .map(|e| (e.msg.id.clone(), o.clone()))
            .collect()
    };
    match &cx.target {
        Target::App(a) if a.speaks_grpc() => match to_grpc(a, cx, path, entries).await {
            Ok(m) => m,
            Err(o) => all(o),
        },
        Target::App(a) => match to_http(a, cx, path, entries).await {
            Ok(m) => m,
            Err(o) => all(o),
        },
        Target::Stream(_) => all(Outcome::Retry("bulk delivery to a stream".into())),
    }
}

async fn to_http(
    app: &AppChannel,
    cx: &Ctx,
    path: &str,
    entries: &[Entry],
) -> Result<HashMap<String, Outcome>, Outcome> {
    let mut body =
        String::with_capacity(entries.iter().map(|e| e.body.len() + 96).sum::<usize>() + 160);
    body.push_str("{\"entries\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"contentType\":\"application/cloudevents+json\",\"entryId\":");
        crate::blocks::gojson::string(&e.msg.id, &mut body);
        body.push_str(",\"event\":");
        body.push_str(std::str::from_utf8(&e.body).unwrap_or("null"));
        body.push_str(",\"metadata\":{}}");
    }
    body.push_str("],\"id\":");
    crate::blocks::gojson::string(&skiff_components::util::uuid_v4(), &mut body);
    body.push_str(",\"metadata\":{},\"pubsubname\":");
    crate::blocks::gojson::string(&cx.c.name, &mut body);
    body.push_str(",\"topic\":");
    crate::blocks::gojson::string(&cx.sub.topic, &mut body);
    body.push_str(",\"type\":\"com.dapr.event.sent.bulk\"}");
    let p = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let uri = http::Uri::try_from(p.as_str())
        .map_err(|_| Outcome::Retry(format!("route {p:?} is not a valid path")))?;
    let mut req = Request::new(SkiffBody::full(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let resp = app
        .forward(req)
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Err(Outcome::Drop);
    }
    if !status.is_success() {
        return Err(Outcome::Retry(format!(
            "the app answered HTTP {}",
            status.as_u16()
        )));
    }
    let b = crate::body::collect_limited(resp.into_body(), app.max_body_size)
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct St {
        #[serde(default)]
        entry_id: String,
        #[serde(default)]
        status: String,
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(default)]
        statuses: Vec<St>,
    }
    let r: Reply = serde_json::from_slice(&b)
        .map_err(|e| Outcome::Retry(format!("the app's bulk reply is not JSON: {e}")))?;
    let mut out = HashMap::with_capacity(entries.len());
    for s in r.statuses {
        let o = match s.status.as_str() {
            "SUCCESS" => Outcome::Success,
            "DROP" => Outcome::Drop,
            other => Outcome::Retry(format!("the app answered {other:?} for the entry")),
        };
        out.insert(s.entry_id, o);
    }
    // An entry without a status is retried.
    for e in entries {
        out.entry(e.msg.id.clone())
            .or_insert_with(|| Outcome::Retry("the app gave the entry no status".into()));
    }
    Ok(out)
}

async fn to_grpc(
    app: &AppChannel,
    cx: &Ctx,
    path: &str,
    entries: &[Entry],
) -> Result<HashMap<String, Outcome>, Outcome> {
    use pb::topic_event_bulk_request_entry::Event;
    let mut list = Vec::with_capacity(entries.len());
    for e in entries {
        let event = if cx.sub.raw {
            Event::Bytes(e.msg.data.clone())
        } else {
            let ce: serde_json::Map<String, Value> =
                serde_json::from_slice(&e.body).map_err(|err| {
                    Outcome::Retry(format!("the event is not a JSON CloudEvent: {err}"))
                })?;
            let ev = app::Event {
                pubsub: &cx.c.name,
                topic: &cx.sub.topic,
                path,
                body: Bytes::new(),
                metadata: &[],
                trace: HeaderMap::new(),
            };
            let t = app::topic_event(&ce, &ev);
            Event::CloudEvent(pb::TopicEventCeRequest {
                id: t.id,
                source: t.source,
                r#type: t.r#type,
                spec_version: t.spec_version,
                data_content_type: t.data_content_type,
                data: t.data,
                extensions: t.extensions,
            })
        };
        list.push(pb::TopicEventBulkRequestEntry {
            entry_id: e.msg.id.clone(),
            event: Some(event),
            content_type: if cx.sub.raw {
                "application/octet-stream"
            } else {
                envelope::CE_JSON
            }
            .into(),
            metadata: e.msg.metadata.iter().cloned().collect(),
        });
    }
    let req = pb::TopicEventBulkRequest {
        id: skiff_components::util::uuid_v4(),
        entries: list,
        metadata: Default::default(),
        topic: cx.sub.topic.clone(),
        pubsub_name: cx.c.name.clone(),
        r#type: "com.dapr.event.sent.bulk".into(),
        path: path.to_owned(),
    };
    let mut answer: Result<pb::TopicEventBulkResponse, UnaryError> = unary(
        app,
        skiff_proto::paths::ON_BULK_TOPIC_EVENT,
        &req,
        HeaderMap::new(),
    )
    .await;
    if matches!(answer, Err(UnaryError::Status(Code::Unimplemented, _))) {
        answer = unary(
            app,
            skiff_proto::paths::ON_BULK_TOPIC_EVENT_ALPHA1,
            &req,
            HeaderMap::new(),
        )
        .await;
    }
    use pb::topic_event_response::TopicEventResponseStatus as S;
    match answer {
        Ok(r) => {
            let mut out: HashMap<String, Outcome> = r
                .statuses
                .into_iter()
                .map(|s| {
                    let o = match S::try_from(s.status) {
                        Ok(S::Success) => Outcome::Success,
                        Ok(S::Drop) => Outcome::Drop,
                        _ => Outcome::Retry("the app answered RETRY for the entry".into()),
                    };
                    (s.entry_id, o)
                })
                .collect();
            for e in entries {
                out.entry(e.msg.id.clone())
                    .or_insert_with(|| Outcome::Retry("the app gave the entry no status".into()));
            }
            Ok(out)
        }
        Err(UnaryError::Status(Code::Unimplemented, _)) => Err(Outcome::Success),
        Err(UnaryError::Status(code, m)) => {
            Err(Outcome::Retry(format!("the app answered {code:?}: {m}")))
        }
        Err(UnaryError::App(e)) => Err(Outcome::Retry(e.to_string())),
        Err(UnaryError::Protocol(m)) => Err(Outcome::Retry(m)),
    }
}

/// A bulk subscription's batch: up to `max_count` messages, gathered for
/// at most `max_await_ms` after the first one.
pub(super) async fn gather(
    cx: &Ctx,
    b: super::subscriptions::Bulk,
) -> Result<Vec<Received>, skiff_components::pubsub::PubSubError> {
    let mut batch = cx.subscription.fetch(b.max_count, FETCH_WAIT).await?;
    if batch.is_empty() {
        return Ok(batch);
    }
    let end = tokio::time::Instant::now() + Duration::from_millis(b.max_await_ms);
    while batch.len() < b.max_count && !cx.stopping() {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        batch.extend(
            cx.subscription
                .fetch(b.max_count - batch.len(), left)
                .await?,
        );
    }
    Ok(batch)
}

/// Delivers a batch in bulk calls (one per route), settling each message
/// by its own status. Each call runs under the component's inbound
/// policy (timeout, breaker) in a span of its own; failed entries are
/// retried with the policy's retries (then dead-lettered or released to
/// the broker), or without one in place with backoff.
pub(super) async fn handle_batch(cx: &Arc<Ctx>, msgs: Vec<Received>, permit: OwnedSemaphorePermit) {
    let (by_path, settled) = route(cx, msgs);
    for (m, f) in settled {
        settle(cx, &m, f).await;
    }
    let policy = cx.c.call.inbound();
    for (path, mut entries) in by_path {
        let mut attempt: u32 = 0;
        loop {
            let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
            cx.series.in_flight.add(n);
            let start = Instant::now();
            let mut outcomes = bulk_once(cx, &path, &entries, policy.as_deref()).await;
            cx.series.in_flight.add(-n);
            let mut retry = Vec::new();
            for e in entries {
                let o = outcomes
                    .remove(&e.msg.id)
                    .unwrap_or_else(|| Outcome::Retry("no status".into()));
                cx.series.ingress[o.index()].record(start.elapsed());
                match o {
                    Outcome::Success => settle(cx, &e.msg, Fate::Ack).await,
                    Outcome::Drop => {
                        let f = if cx.sub.dead_letter.is_some() {
                            Fate::DeadLetter("the app answered DROP".into())
                        } else {
                            Fate::Ack
                        };
                        settle(cx, &e.msg, f).await;
                    }
                    Outcome::Retry(_) => retry.push(e),
                }
            }
            if retry.is_empty() {
                break;
            }
            entries = retry;
            let wait = match policy.as_ref().and_then(|p| p.retry.as_ref()) {
                Some(r) if r.may_retry(attempt) => r.delay(attempt),
                Some(_) => {
                    // Retries exhausted, as on the single path.
                    for e in &entries {
                        let f = if cx.sub.dead_letter.is_some() {
                            Fate::DeadLetter("retries exhausted".into())
                        } else {
                            Fate::Release
                        };
                        settle(cx, &e.msg, f).await;
                    }
                    break;
                }
                None => RETRY_FIRST
                    .saturating_mul(1 << (attempt + 1).min(10).saturating_sub(1))
                    .min(RETRY_MAX),
            };
            attempt += 1;
            let mut stop = cx.stop.clone();
            let stopped = tokio::select! {
                () = tokio::time::sleep(wait) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                for e in &entries {
                    settle(cx, &e.msg, Fate::Release).await;
                }
                break;
            }
        }
    }
    drop(permit);
}

/// One bulk call under the inbound policy, in a span (`pubsub/<topic>`,
/// a child of the first message's trace); a call that failed as a whole
/// (refused, timed out, the app down) fails every entry.
async fn bulk_once(
    cx: &Ctx,
    path: &str,
    entries: &[Entry],
    policy: Option<&crate::policy::resiliency::ComponentPolicy>,
) -> std::collections::HashMap<String, Outcome> {
    let span = cx.delivery_span(entries.first().and_then(|e| e.traceparent.as_deref()));
    let all = |o: Outcome| {
        entries
            .iter()
            .map(|e| (e.msg.id.clone(), o.clone()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let outcomes = call::attempt(
        policy,
        deliver(cx, path, entries),
        |m| !m.values().any(|o| !matches!(o, Outcome::Retry(_))),
        |why| all(Outcome::Retry(why)),
    )
    .await;
    if span.is_recorded() {
        let failed = outcomes
            .values()
            .filter(|o| matches!(o, Outcome::Retry(_)))
            .count();
        cx.finish_delivery(
            &span,
            ("messaging.batch.message_count", entries.len().to_string()),
            (failed > 0).then(|| format!("{failed} of {} entries failed", entries.len())),
        );
    }
    outcomes
}
