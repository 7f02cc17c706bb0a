//! What becomes of one fetched message, the rules the single and the
//! bulk delivery paths share: where it goes ([`Target`]), what a
//! subscription's handlers share ([`Ctx`]), how it is read for delivery
//! (envelope, expiry, routing: [`prepare`]) and how it is settled with
//! the broker once delivery is over (ack, dead letter or release:
//! [`settle`]). A message's claim is let go only here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use skiff_components::pubsub::{Outgoing, Received, Subscription};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

/// How long one fetch waits for messages before the loop looks around.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);
/// In-place retry backoff without a policy.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(10);

use super::Component;
use super::app::{self, Event, Outcome};
use super::envelope::{self, Head};
use super::metrics::Topic;
use super::subscriptions::{Route, Sub};
use crate::appchannel::AppChannel;
use crate::telemetry::trace::{self, Tracer};
use skiff_proto::runtime as pb;

/// Where a subscription's messages go.
#[derive(Clone)]
pub enum Target {
    App(Arc<AppChannel>),
    Stream(Arc<StreamTarget>),
}

/// A `SubscribeTopicEventsAlpha1` stream: events go out on `tx`, the
/// client's answers come back by event id.
pub struct StreamTarget {
    pub tx: mpsc::Sender<Result<pb::SubscribeTopicEventsResponseAlpha1, tonic::Status>>,
    pub pending: Mutex<std::collections::HashMap<String, oneshot::Sender<Outcome>>>,
    /// The client ended its side of the stream.
    pub closed: std::sync::atomic::AtomicBool,
}

impl StreamTarget {
    /// The client's answer for event `id`.
    pub fn answer(&self, id: &str, status: i32) {
        use pb::topic_event_response::TopicEventResponseStatus as S;
        let tx = self.pending.lock().ok().and_then(|mut p| p.remove(id));
        if let Some(tx) = tx {
            let o = match S::try_from(status) {
                Ok(S::Success) => Outcome::Success,
                Ok(S::Drop) => Outcome::Drop,
                _ => Outcome::Retry("the subscriber answered RETRY".into()),
            };
            let _ = tx.send(o);
        }
    }

    pub(super) async fn deliver(&self, ev: Event<'_>) -> Outcome {
        let ce: serde_json::Map<String, Value> = match serde_json::from_slice(&ev.body) {
            Ok(m) => m,
            Err(e) => return Outcome::Retry(format!("the event is not a JSON CloudEvent: {e}")),
        };
        let msg = app::topic_event(&ce, &ev);
        let (tx, rx) = oneshot::channel();
        let id = msg.id.clone();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.clone(), tx);
        }
        let out = pb::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(
                pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType::EventMessage(msg),
            ),
        };
        if self.tx.send(Ok(out)).await.is_err() {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Outcome::Retry("the streaming subscriber went away".into());
        }
        rx.await
            .unwrap_or_else(|_| Outcome::Retry("the streaming subscriber went away".into()))
    }
}

/// What one subscription's handlers share.
pub(super) struct Ctx {
    pub(super) c: Arc<Component>,
    pub(super) sub: Arc<Sub>,
    pub(super) target: Target,
    pub(super) subscription: Arc<dyn Subscription>,
    /// Claimed by this loop: in flight or waiting to be retried.
    pub(super) held: Mutex<HashSet<String>>,
    pub(super) series: Arc<Topic>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) tracer: Arc<Tracer>,
    pub(super) limit: usize,
    pub(super) slots: Arc<Semaphore>,
    /// Acks of deliveries that end together leave together.
    pub(super) acks: super::acks::Acks,
}

impl Ctx {
    /// A delivery's span, a child of the message's trace.
    pub(super) fn delivery_span(&self, traceparent: Option<&str>) -> trace::Span {
        let mut incoming = http::HeaderMap::new();
        if let Some(tp) = traceparent.and_then(|t| http::HeaderValue::from_str(t).ok()) {
            incoming.insert(trace::TRACEPARENT, tp);
        }
        self.tracer.start(&incoming, trace::Kind::Client)
    }

    /// Closes a delivery span as `pubsub/<topic>` with the messaging
    /// attributes, `extra` (the message id, or a batch's size) and why it
    /// failed.
    pub(super) fn finish_delivery(
        &self,
        span: &trace::Span,
        extra: (&'static str, String),
        error: Option<String>,
    ) {
        self.tracer.finish(span, || trace::Described {
            name: format!("pubsub/{}", self.sub.topic),
            attributes: vec![
                (
                    "messaging.system",
                    trace::Value::Str(self.c.type_name.clone()),
                ),
                (
                    "messaging.destination.name",
                    trace::Value::Str(self.sub.topic.clone()),
                ),
                (extra.0, trace::Value::Str(extra.1)),
            ],
            error,
        });
    }

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What becomes of a message once delivery is over.
pub(super) enum Fate {
    Ack,
    DeadLetter(String),
    Release,
}

/// Acks, dead-letters or releases one message, and lets go of its claim.
pub(super) async fn settle(cx: &Ctx, msg: &Received, fate: Fate) {
    let id = std::slice::from_ref(&msg.id);
    let ack = |ids: Vec<String>| async move { cx.subscription.ack(&ids).await };
    let done = match fate {
        Fate::Ack => cx.acks.ack(&msg.id, ack).await,
        Fate::DeadLetter(why) => match dead_letter(cx, msg, &why).await {
            true => cx.acks.ack(&msg.id, ack).await,
            false => cx.subscription.release(id).await,
        },
        Fate::Release => cx.subscription.release(id).await,
    };
    if let Err(e) = done {
        // The claim lapses and the broker redelivers: at-least-once holds.
        tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, id = %msg.id, error = %e, "settling a message with the broker failed");
    }
    cx.held().remove(&msg.id);
}

/// Writes the message to the dead-letter topic; false when that failed
/// (the message is then released, never lost).
async fn dead_letter(cx: &Ctx, msg: &Received, why: &str) -> bool {
    let Some(dlq) = &cx.sub.dead_letter else {
        return true;
    };
    let out = Outgoing {
        data: msg.data.clone(),
        metadata: msg.metadata.clone(),
    };
    match cx.c.send(dlq, out).await {
        Ok(()) => {
            tracing::info!(pubsub = %cx.c.name, topic = %cx.sub.topic, dead_letter = %dlq, id = %msg.id, why, "message dead-lettered");
            true
        }
        Err(e) => {
            tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, dead_letter = %dlq, error = %e, "writing to the dead-letter topic failed; the message goes back to the broker");
            false
        }
    }
}

/// Ack, or dead letter when one is set (for messages with nowhere to go).
fn nowhere(cx: &Ctx, why: String) -> Fate {
    if cx.sub.dead_letter.is_some() {
        Fate::DeadLetter(why)
    } else {
        tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, why, "message dropped");
        Fate::Ack
    }
}

/// One message read for delivery, by the rules the single and the bulk
/// paths share.
pub(super) enum Prepared {
    /// The CloudEvent to deliver (for raw subscriptions, the synthetic
    /// one), its head, and the route's path.
    Deliver(Bytes, Head, String),
    /// Nothing to deliver: this is its fate.
    Settled(Fate),
    /// A routing rule failed and there is no dead letter: retry later.
    RetryLater(String),
}

/// Envelope, expiry and routing of one message.
pub(super) fn prepare(cx: &Ctx, msg: &Received) -> Prepared {
    let (body, head) = if cx.sub.raw {
        (
            envelope::wrap_raw(&msg.data, &cx.sub.topic, &cx.c.name),
            Head::default(),
        )
    } else {
        match Head::read(&msg.data) {
            Some(h) => (msg.data.clone(), h),
            None => {
                return Prepared::Settled(nowhere(
                    cx,
                    "the message is not a JSON CloudEvent".into(),
                ));
            }
        }
    };
    if head.expired() {
        return Prepared::Settled(nowhere(cx, "the message expired (ttlInSeconds)".into()));
    }
    let event: Option<Value> = if cx.sub.needs_event() {
        serde_json::from_slice(&body).ok()
    } else {
        None
    };
    match cx.sub.route(event.as_ref()) {
        Route::Path(p) => {
            let p = p.to_owned();
            Prepared::Deliver(body, head, p)
        }
        Route::NoMatch => Prepared::Settled(if cx.sub.dead_letter.is_some() {
            Fate::DeadLetter("no routing rule matched".into())
        } else {
            Fate::Ack
        }),
        Route::Failed(why) if cx.sub.dead_letter.is_some() => {
            Prepared::Settled(Fate::DeadLetter(why))
        }
        Route::Failed(why) => Prepared::RetryLater(why),
    }
}
