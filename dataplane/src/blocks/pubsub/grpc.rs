//! The gRPC adapter of pub/sub: `PublishEvent`, `BulkPublishEvent` (and
//! its Alpha1 name), and the streaming subscription
//! `SubscribeTopicEventsAlpha1` for apps without a port: the client's
//! first message names the topic, the sidecar answers `initial_response`
//! and streams events, the client acks each by id.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderMap;
use skiff_proto::runtime as pb;
use tokio::sync::mpsc;

use super::deliver::{Runner, StreamTarget, Target};
use super::http::trace_context;
use super::{BulkEntry, PubSubBlock, Publish, subscriptions};
use crate::telemetry::trace::{self, Tracer};

/// Events queued to one streaming subscriber.
pub const STREAM_QUEUE: usize = 64;

pub async fn publish(
    block: &PubSubBlock,
    tracer: &Tracer,
    headers: &HeaderMap,
    r: pb::PublishEventRequest,
) -> Result<(), tonic::Status> {
    let event = Event {
        pubsub: &r.pubsub_name,
        topic: &r.topic,
        data: r.data,
        content_type: &r.data_content_type,
        metadata: r.metadata.into_iter().collect(),
    };
    publish_event(block, tracer, headers, event)
        .await
        .map_err(|e| e.to_status())
}

/// A `PublishEventRequest` as either reader decoded it.
#[derive(Debug)]
pub struct Event<'a> {
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub data: bytes::Bytes,
    pub content_type: &'a str,
    pub metadata: Vec<(String, String)>,
}

async fn publish_event(
    block: &PubSubBlock,
    tracer: &Tracer,
    headers: &HeaderMap,
    e: Event<'_>,
) -> Result<(), crate::errors::ApiError> {
    let span = tracer.start(headers, trace::Kind::Server);
    let (traceparent, tracestate) = trace_context(&span, headers);
    let out = block
        .publish(Publish {
            pubsub: e.pubsub,
            topic: e.topic,
            data: e.data,
            content_type: e.content_type,
            metadata: e.metadata,
            traceparent,
            tracestate,
        })
        .await;
    if span.is_recorded() {
        let err = out.as_ref().err().map(|e| e.to_status());
        finish(tracer, &span, "PublishEvent", e.topic, err.as_ref());
    }
    out
}

/// `PublishEventRequest { pubsub_name = 1, topic = 2, data = 3,
/// data_content_type = 4, metadata = 5 }`, read in place: the data is a
/// slice of the frame.
pub fn decode_event(msg: &bytes::Bytes) -> Result<Event<'_>, crate::protowire::WireError> {
    use crate::protowire::Reader;
    let mut r = Reader::new(msg);
    let mut e = Event {
        pubsub: "",
        topic: "",
        data: bytes::Bytes::new(),
        content_type: "",
        metadata: Vec::new(),
    };
    while let Some((f, v)) = r.next_field()? {
        match f {
            1 => e.pubsub = r.string(v, "pubsub_name")?,
            2 => e.topic = r.string(v, "topic")?,
            3 => e.data = r.bytes(crate::protowire::len(v, "data")?),
            4 => e.content_type = r.string(v, "data_content_type")?,
            5 => {
                let (k, v) = r.map_entry(crate::protowire::len(v, "metadata")?)?;
                // Later entries of a key win, as in a decoded map.
                e.metadata.retain(|(key, _)| key != k);
                e.metadata.push((k.to_owned(), v.to_owned()));
            }
            _ => {}
        }
    }
    Ok(e)
}

/// `PublishEvent` served by the door itself ([`crate::api::unary`]).
pub async fn publish_wire(
    block: &PubSubBlock,
    tracer: &Tracer,
    headers: &HeaderMap,
    msg: &bytes::Bytes,
) -> Result<crate::protowire::Answer, crate::errors::ApiError> {
    let e = decode_event(msg).map_err(crate::protowire::malformed)?;
    publish_event(block, tracer, headers, e).await?;
    Ok(crate::protowire::Answer::empty())
}

fn finish(
    tracer: &Tracer,
    span: &trace::Span,
    name: &str,
    topic: &str,
    err: Option<&tonic::Status>,
) {
    if span.is_recorded() {
        tracer.finish(span, || trace::Described {
            name: name.to_owned(),
            attributes: vec![
                ("messaging.system", trace::Value::Str("pubsub".into())),
                (
                    "messaging.destination.name",
                    trace::Value::Str(topic.to_owned()),
                ),
            ],
            error: err.map(|e| e.message().to_owned()),
        });
    }
}

pub async fn publish_bulk(
    block: &PubSubBlock,
    tracer: &Tracer,
    headers: &HeaderMap,
    r: pb::BulkPublishRequest,
) -> Result<pb::BulkPublishResponse, tonic::Status> {
    let span = tracer.start(headers, trace::Kind::Server);
    let (traceparent, tracestate) = trace_context(&span, headers);
    let entries: Vec<BulkEntry> = r
        .entries
        .into_iter()
        .map(|e| BulkEntry {
            entry_id: e.entry_id,
            event: e.event,
            content_type: e.content_type,
            metadata: e.metadata.into_iter().collect(),
        })
        .collect();
    let n = entries.len();
    let out = block
        .publish_bulk(
            Publish {
                pubsub: &r.pubsub_name,
                topic: &r.topic,
                data: bytes::Bytes::new(),
                content_type: "",
                metadata: r.metadata.into_iter().collect(),
                traceparent,
                tracestate,
            },
            entries,
        )
        .await
        .map_err(|e| e.to_status());
    let out = match out {
        // Every entry failed: an RPC error, as daprd answers.
        Ok(failed) if n > 0 && failed.len() == n => Err(tonic::Status::internal(format!(
            "error when publishing to topic {} in pubsub {}: {}",
            r.topic, r.pubsub_name, failed[0].1
        ))),
        Ok(failed) => Ok(pb::BulkPublishResponse {
            failed_entries: failed
                .into_iter()
                .map(|(entry_id, error)| pb::BulkPublishResponseFailedEntry { entry_id, error })
                .collect(),
        }),
        Err(e) => Err(e),
    };
    finish(
        tracer,
        &span,
        "BulkPublishEvent",
        &r.topic,
        out.as_ref().err(),
    );
    out
}

pub type EventStream = tokio_stream::wrappers::ReceiverStream<
    Result<pb::SubscribeTopicEventsResponseAlpha1, tonic::Status>,
>;

/// `SubscribeTopicEventsAlpha1`.
pub async fn subscribe_stream(
    block: &PubSubBlock,
    runner: &Arc<Runner>,
    grace: Duration,
    mut inbound: tonic::Streaming<pb::SubscribeTopicEventsRequestAlpha1>,
) -> Result<EventStream, tonic::Status> {
    use pb::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
    use pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
    if block.components().is_empty() {
        // daprd's answer with no pub/sub at all, before reading anything.
        return Err(crate::blocks::Block::PubSub
            .not_configured("", &block.app_id)
            .to_status());
    }
    let first = inbound.message().await?.ok_or_else(|| {
        tonic::Status::invalid_argument("the stream ended before its initial request")
    })?;
    let Some(In::InitialRequest(init)) = first.subscribe_topic_events_request_type else {
        return Err(tonic::Status::invalid_argument(
            "the first message of SubscribeTopicEventsAlpha1 must be initial_request",
        ));
    };
    if init.topic.is_empty() {
        return Err(super::errors::topic_empty(&init.pubsub_name).to_status());
    }
    let c = block
        .get(&init.pubsub_name)
        .map_err(|e| e.to_status())?
        .clone();
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let target = Arc::new(StreamTarget {
        tx: tx.clone(),
        pending: Default::default(),
        closed: Default::default(),
    });
    let sub = subscriptions::streaming(
        init.pubsub_name,
        init.topic,
        init.metadata.into_iter().collect(),
        init.dead_letter_topic,
    );
    let initial = pb::SubscribeTopicEventsResponseAlpha1 {
        subscribe_topic_events_response_type: Some(Out::InitialResponse(
            pb::SubscribeTopicEventsResponseInitialAlpha1 {},
        )),
    };
    tx.send(Ok(initial))
        .await
        .map_err(|_| tonic::Status::cancelled("the subscriber went away"))?;
    runner
        .spawn(c, sub, Target::Stream(target.clone()), grace)
        .map_err(tonic::Status::permission_denied)?;
    tokio::spawn(async move {
        while let Some(Ok(m)) = inbound.next().await {
            if let Some(In::EventProcessed(p)) = m.subscribe_topic_events_request_type {
                target.answer(&p.id, p.status.map_or(0, |s| s.status));
            }
        }
        // The client is done: its loop drains and stops.
        target.closed.store(true, Ordering::Release);
        if let Ok(mut p) = target.pending.lock() {
            p.clear();
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
