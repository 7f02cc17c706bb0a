//! Delivery: one loop per subscription that pulls from the component and
//! hands each message to the app (or to a streaming subscriber), with the
//! guarantees Dapr users ask for and Skiff tests:
//!
//! - **at-least-once**: a message is acked to the broker only after the
//!   app's SUCCESS, after a DROP or exhausted retries were written to the
//!   dead-letter topic, or when there is nothing to deliver it to (no
//!   route matched, expired, not a CloudEvent) — each of those logged;
//! - **never twice at the same time**: while a handler runs, its claim is
//!   renewed every third of the claim time ([`Subscription::keep_alive`]),
//!   so the broker never hands it to another consumer meanwhile;
//! - **backpressure**: at most `limit` messages are being delivered per
//!   subscription (the component's `concurrency`, or the subscription's
//!   `skiff.maxInFlight`), and the loop fetches only as many as there are
//!   free slots, so nothing waits in a buffer while its claim ages;
//! - **graceful shutdown**: [`Runner::shutdown`] stops fetching, lets the
//!   handlers that run finish within the grace period and acks what
//!   finished; what did not finish is released to the broker, never
//!   dead-lettered;
//! - **order** with a limit of 1: one message at a time, retried in place
//!   until it is done, so the next one waits.
//!
//! Retries: with a `targets.components.<pubsub>.inbound` policy its
//! retries run here (then dead letter, or release to the broker); without
//! one a message is retried in place with backoff (100 ms doubling to
//! 10 s), its claim kept, its slot freed while it waits (unless the limit
//! is 1).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use skiff_components::pubsub::{Outgoing, Received, SubscribeOptions, Subscription};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::Component;
use super::app::{self, Event, Outcome};
use super::envelope::{self, Head};
use super::subscriptions::{Route, Sub};
use crate::appchannel::AppChannel;
use crate::blocks::call;
use crate::telemetry::metrics::PubSubTopic;
use crate::telemetry::trace::{self, TRACEPARENT, Tracer};
use skiff_proto::runtime as pb;

/// How long one fetch waits for messages before the loop looks around.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);
/// In-place retry backoff without a policy.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// Pause after the broker failed a fetch.
pub const BROKER_BACKOFF: Duration = Duration::from_millis(500);
/// How often a subscription asks its broker for its backlog
/// (`skiff_pubsub_backlog`): one cheap broker call, never per message.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(2);

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

    async fn deliver(&self, ev: Event<'_>) -> Outcome {
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

/// Every subscription loop of the sidecar.
pub struct Runner {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `/v1.0/metadata`'s list, by loop number (a streaming loop's entry
    /// goes when its stream ends).
    described: Arc<Mutex<Vec<(u64, Value)>>>,
    next: std::sync::atomic::AtomicU64,
    tracer: Arc<Tracer>,
}

impl Runner {
    pub fn new(tracer: Arc<Tracer>) -> Arc<Self> {
        Arc::new(Self {
            stop: watch::channel(false).0,
            tasks: Mutex::default(),
            described: Arc::default(),
            next: std::sync::atomic::AtomicU64::new(0),
            tracer,
        })
    }

    /// `/v1.0/metadata`'s `subscriptions[]`.
    pub fn describe(&self) -> Vec<Value> {
        self.described
            .lock()
            .map(|d| d.iter().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }

    /// Starts delivering `sub` from `c` to `target`. Fails when the topic
    /// is outside the app's subscription scope.
    fn start(
        &self,
        c: Arc<Component>,
        sub: Sub,
        target: Target,
        grace: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        if !c.scopes.may_subscribe(&sub.topic) {
            return Err(format!(
                "topic {} is not allowed for app id {} (subscriptionScopes)",
                sub.topic, c.app_id
            ));
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut d) = self.described.lock() {
            d.push((id, sub.describe()));
        }
        let streaming = sub.kind == super::subscriptions::Kind::Streaming;
        let described = self.described.clone();
        tracing::info!(pubsub = %c.name, topic = %sub.topic, kind = sub.kind.as_str(),
            routes = ?sub.rules, dead_letter = ?sub.dead_letter, "subscribed");
        let stop = self.stop.subscribe();
        let tracer = self.tracer.clone();
        let h = tokio::spawn(async move {
            run(c, Arc::new(sub), target, stop, grace, tracer).await;
            if streaming && let Ok(mut d) = described.lock() {
                d.retain(|(i, _)| *i != id);
            }
        });
        Ok(h)
    }

    /// Starts and keeps the loop's handle, to wait for it at shutdown.
    pub fn spawn(
        &self,
        c: Arc<Component>,
        sub: Sub,
        target: Target,
        grace: Duration,
    ) -> Result<(), String> {
        let h = self.start(c, sub, target, grace)?;
        if let Ok(mut t) = self.tasks.lock() {
            t.push(h);
        }
        Ok(())
    }

    /// Stops fetching everywhere and waits for the loops to drain (each
    /// within its grace period).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }

    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// What one subscription's handlers share.
pub(super) struct Ctx {
    pub(super) c: Arc<Component>,
    pub(super) sub: Arc<Sub>,
    pub(super) target: Target,
    subscription: Arc<dyn Subscription>,
    /// Claimed by this loop: in flight or waiting to be retried.
    held: Mutex<HashSet<String>>,
    series: Arc<PubSubTopic>,
    stop: watch::Receiver<bool>,
    tracer: Arc<Tracer>,
    limit: usize,
    slots: Arc<Semaphore>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn run(
    c: Arc<Component>,
    sub: Arc<Sub>,
    target: Target,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    tracer: Arc<Tracer>,
) {
    let opts = SubscribeOptions {
        topic: c.broker_topic(&sub.topic).into_owned(),
        group: c.consumer_id.clone(),
        claim: c.claim,
    };
    let subscription: Arc<dyn Subscription> = loop {
        match c.driver.subscribe(opts.clone()).await {
            Ok(s) => break Arc::from(s),
            Err(e) => {
                tracing::warn!(pubsub = %c.name, topic = %sub.topic, error = %e, "subscribing failed; trying again");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let limit = sub.max_in_flight.unwrap_or(c.concurrency).max(1);
    let cx = Arc::new(Ctx {
        series: c.series.topic(&sub.topic),
        c,
        sub,
        target,
        subscription,
        held: Mutex::default(),
        stop: stop.clone(),
        tracer,
        limit,
        slots: Arc::new(Semaphore::new(limit)),
    });
    let keeper = tokio::spawn(keep_alive(cx.clone()));
    let sampler = tokio::spawn(sample_backlog(cx.clone()));
    let mut handlers = JoinSet::new();
    loop {
        while handlers.try_join_next().is_some() {}
        if let Target::Stream(s) = &cx.target
            && (s.tx.is_closed() || s.closed.load(std::sync::atomic::Ordering::Acquire))
        {
            break;
        }
        let first = tokio::select! {
            p = cx.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        if cx.stopping() {
            break;
        }
        if let Some(b) = cx.sub.bulk {
            match gather(&cx, b).await {
                Ok(batch) if batch.is_empty() => drop(first),
                Ok(batch) => {
                    for m in &batch {
                        cx.held().insert(m.id.clone());
                    }
                    let cx = cx.clone();
                    handlers.spawn(async move { handle_batch(&cx, batch, first).await });
                }
                Err(e) => {
                    tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, error = %e, "fetching from the broker failed");
                    drop(first);
                    tokio::time::sleep(BROKER_BACKOFF).await;
                }
            }
            continue;
        }
        let free = 1 + cx.slots.available_permits();
        let got = tokio::select! {
            r = cx.subscription.fetch(free, FETCH_WAIT) => r,
            // A fetch that is still waiting took nothing yet: safe to drop.
            _ = stop.changed() => break,
        };
        let got = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, error = %e, "fetching from the broker failed");
                drop(first);
                tokio::select! {
                    () = tokio::time::sleep(BROKER_BACKOFF) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
        };
        let mut permits = vec![first];
        while permits.len() < got.len() {
            match cx.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        for (msg, permit) in got.into_iter().zip(
            permits
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None)),
        ) {
            cx.held().insert(msg.id.clone());
            let cx = cx.clone();
            handlers.spawn(async move {
                let permit = match permit {
                    Some(p) => p,
                    // More came than asked for: wait for a slot.
                    None => match cx.slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                handle(&cx, msg, permit).await;
            });
        }
    }
    sampler.abort();
    cx.series.backlog.set(None);
    drain(&cx, handlers, grace).await;
    keeper.abort();
}

/// Keeps `skiff_pubsub_backlog` current for this subscription.
async fn sample_backlog(cx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(BACKLOG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match cx.subscription.backlog().await {
            Ok(n) => cx.series.backlog.set(n),
            Err(e) => {
                // Fetch failures are logged by the loop; this one only
                // stops claiming to know.
                tracing::debug!(pubsub = %cx.c.name, topic = %cx.sub.topic, error = %e, "reading the backlog failed");
                cx.series.backlog.set(None);
            }
        }
    }
}

/// Shutdown: the running handlers get `grace` to finish; the rest of
/// what this loop holds goes back to the broker.
async fn drain(cx: &Arc<Ctx>, mut handlers: JoinSet<()>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while !handlers.is_empty() {
        match tokio::time::timeout_at(deadline, handlers.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, left = handlers.len(),
                    "grace period over with deliveries running; releasing them to the broker");
                handlers.abort_all();
                break;
            }
        }
    }
    let left: Vec<String> = cx.held().drain().collect();
    if !left.is_empty() {
        match cx.subscription.release(&left).await {
            Ok(()) => {
                tracing::info!(pubsub = %cx.c.name, topic = %cx.sub.topic, released = left.len(), "released undelivered messages")
            }
            Err(e) => {
                tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, error = %e, "releasing messages failed; their claims will lapse")
            }
        }
    }
    cx.series.in_flight.set(0);
    cx.series.retry_wait.set(0);
}

/// Renews the claims of everything this loop holds.
async fn keep_alive(cx: Arc<Ctx>) {
    let every = (cx.c.claim / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let ids: Vec<String> = cx.held().iter().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = cx.subscription.keep_alive(&ids).await {
            tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, error = %e, "renewing claims failed");
        }
    }
}

/// What becomes of a message once delivery is over.
pub(super) enum Fate {
    Ack,
    DeadLetter(String),
    Release,
}

async fn handle(cx: &Arc<Ctx>, msg: Received, permit: OwnedSemaphorePermit) {
    let fate = decide(cx, &msg, permit).await;
    settle(cx, &msg, fate).await;
}

/// Acks, dead-letters or releases one message, and lets go of its claim.
async fn settle(cx: &Ctx, msg: &Received, fate: Fate) {
    let id = std::slice::from_ref(&msg.id);
    let done = match fate {
        Fate::Ack => cx.subscription.ack(id).await,
        Fate::DeadLetter(why) => match dead_letter(cx, msg, &why).await {
            true => cx.subscription.ack(id).await,
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

async fn decide(cx: &Arc<Ctx>, msg: &Received, permit: OwnedSemaphorePermit) -> Fate {
    match prepare(cx, msg) {
        Prepared::Deliver(body, head, path) => {
            deliver_with_retries(cx, msg, body, &head, &path, permit).await
        }
        Prepared::Settled(f) => f,
        Prepared::RetryLater(why) => {
            tracing::warn!(pubsub = %cx.c.name, topic = %cx.sub.topic, why, "routing failed; retrying");
            let _ = retry_later(cx, permit, msg.deliveries).await;
            Fate::Release
        }
    }
}

/// Waits before the next attempt, keeping the claim (it is in `held`).
/// The slot is given up meanwhile unless order must hold (limit 1).
/// `None` when shutdown came first.
async fn retry_later(
    cx: &Ctx,
    permit: OwnedSemaphorePermit,
    attempt: u32,
) -> Option<OwnedSemaphorePermit> {
    let wait = RETRY_FIRST
        .saturating_mul(1 << attempt.min(10).saturating_sub(1))
        .min(RETRY_MAX);
    let keep = (cx.limit == 1).then_some(permit);
    cx.series.retry_wait.add(1);
    let mut stop = cx.stop.clone();
    let stopped = tokio::select! {
        () = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    cx.series.retry_wait.add(-1);
    if stopped {
        return None;
    }
    match keep {
        Some(p) => Some(p),
        None => cx.slots.clone().acquire_owned().await.ok(),
    }
}

async fn deliver_with_retries(
    cx: &Arc<Ctx>,
    msg: &Received,
    body: Bytes,
    head: &Head,
    path: &str,
    mut permit: OwnedSemaphorePermit,
) -> Fate {
    let policy = cx.c.inbound.clone();
    let mut attempt: u32 = 0;
    loop {
        if cx.stopping() && attempt > 0 {
            return Fate::Release;
        }
        let outcome = once(cx, msg, body.clone(), head, path, policy.as_deref()).await;
        match outcome {
            Outcome::Success => return Fate::Ack,
            Outcome::Drop => {
                return if cx.sub.dead_letter.is_some() {
                    Fate::DeadLetter("the app answered DROP".into())
                } else {
                    tracing::info!(pubsub = %cx.c.name, topic = %cx.sub.topic, id = %msg.id, "the app dropped the message");
                    Fate::Ack
                };
            }
            Outcome::Retry(why) => {
                tracing::debug!(pubsub = %cx.c.name, topic = %cx.sub.topic, id = %msg.id, why, "delivery failed");
                match policy.as_ref().and_then(|p| p.retry.as_ref()) {
                    Some(r) if r.may_retry(attempt) => {
                        drop(permit);
                        tokio::time::sleep(r.delay(attempt)).await;
                        permit = match cx.slots.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return Fate::Release,
                        };
                    }
                    Some(_) => {
                        // Retries exhausted: the dead letter, or back to
                        // the broker for its own redelivery.
                        return if cx.sub.dead_letter.is_some() {
                            Fate::DeadLetter(format!("retries exhausted: {why}"))
                        } else {
                            Fate::Release
                        };
                    }
                    None => match retry_later(cx, permit, attempt + 1).await {
                        Some(p) => permit = p,
                        None => return Fate::Release,
                    },
                }
                attempt += 1;
            }
        }
    }
}

/// One attempt: the span, the inbound policy's timeout and breaker, the
/// app call, the metrics.
async fn once(
    cx: &Ctx,
    msg: &Received,
    body: Bytes,
    head: &Head,
    path: &str,
    policy: Option<&crate::policy::resiliency::ComponentPolicy>,
) -> Outcome {
    let mut incoming = HeaderMap::new();
    if let Some(tp) = head
        .traceparent
        .as_deref()
        .and_then(|t| http::HeaderValue::from_str(t).ok())
    {
        incoming.insert(TRACEPARENT, tp);
    }
    let span = cx.tracer.start(&incoming, trace::Kind::Client);
    let grpc = matches!(&cx.target, Target::App(a) if a.speaks_grpc());
    let mut trace_headers = HeaderMap::new();
    span.inject(&mut trace_headers, grpc);
    if let Some(ts) = head.tracestate.as_deref().filter(|t| !t.is_empty())
        && let Ok(v) = http::HeaderValue::from_str(ts)
    {
        trace_headers.insert(http::HeaderName::from_static("tracestate"), v);
    }
    let ev = Event {
        pubsub: &cx.c.name,
        topic: &cx.sub.topic,
        path,
        body,
        metadata: &msg.metadata,
        trace: trace_headers,
    };
    let start = Instant::now();
    cx.series.in_flight.add(1);
    let call = async {
        match &cx.target {
            Target::App(a) if a.speaks_grpc() => app::to_grpc(a, ev).await,
            Target::App(a) => app::to_http(a, ev).await,
            Target::Stream(s) => s.deliver(ev).await,
        }
    };
    let outcome = call::attempt(
        policy,
        call,
        |o| matches!(o, Outcome::Retry(_)),
        Outcome::Retry,
    )
    .await;
    cx.series.in_flight.add(-1);
    cx.series.ingress[outcome.index()].record(start.elapsed());
    if span.is_recorded() {
        let error = match &outcome {
            Outcome::Retry(why) => Some(why.clone()),
            _ => None,
        };
        cx.tracer.finish(&span, || trace::Described {
            name: format!("pubsub/{}", cx.sub.topic),
            attributes: vec![
                (
                    "messaging.system",
                    trace::Value::Str(cx.c.type_name.clone()),
                ),
                (
                    "messaging.destination.name",
                    trace::Value::Str(cx.sub.topic.clone()),
                ),
                ("messaging.message.id", trace::Value::Str(head.id.clone())),
            ],
            error,
        });
    }
    outcome
}

/// One bulk call under the inbound policy, in a span (`pubsub/<topic>`,
/// a child of the first message's trace); a call that failed as a whole
/// (refused, timed out, the app down) fails every entry.
async fn bulk_once(
    cx: &Ctx,
    path: &str,
    entries: &[super::bulk::Entry],
    policy: Option<&crate::policy::resiliency::ComponentPolicy>,
) -> std::collections::HashMap<String, Outcome> {
    let mut incoming = HeaderMap::new();
    if let Some(tp) = entries
        .first()
        .and_then(|e| e.traceparent.as_deref())
        .and_then(|t| http::HeaderValue::from_str(t).ok())
    {
        incoming.insert(TRACEPARENT, tp);
    }
    let span = cx.tracer.start(&incoming, trace::Kind::Client);
    let all = |o: Outcome| {
        entries
            .iter()
            .map(|e| (e.msg.id.clone(), o.clone()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let outcomes = call::attempt(
        policy,
        super::bulk::deliver(cx, path, entries),
        |m| !m.values().any(|o| !matches!(o, Outcome::Retry(_))),
        |why| all(Outcome::Retry(why)),
    )
    .await;
    if span.is_recorded() {
        let failed = outcomes
            .values()
            .filter(|o| matches!(o, Outcome::Retry(_)))
            .count();
        cx.tracer.finish(&span, || trace::Described {
            name: format!("pubsub/{}", cx.sub.topic),
            attributes: vec![
                (
                    "messaging.system",
                    trace::Value::Str(cx.c.type_name.clone()),
                ),
                (
                    "messaging.destination.name",
                    trace::Value::Str(cx.sub.topic.clone()),
                ),
                (
                    "messaging.batch.message_count",
                    trace::Value::Str(entries.len().to_string()),
                ),
            ],
            error: (failed > 0).then(|| format!("{failed} of {} entries failed", entries.len())),
        });
    }
    outcomes
}

/// Starts the app's subscriptions once its port answers: the declarative
/// ones and what the app lists itself. Runs in the background so the
/// sidecar's API is up before the app is (no start-up deadlock).
pub async fn subscribe_app(
    runner: Arc<Runner>,
    blocks: Arc<crate::blocks::Blocks>,
    app: Arc<AppChannel>,
    declared: Vec<Sub>,
    grace: Duration,
) {
    let mut stop = runner.stopping();
    let addr = app.addr();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return,
        }
    }
    let block = &blocks.pubsub;
    let (listed, errors) = app::list_subscriptions(&app, &block.app_id).await;
    for e in errors {
        tracing::error!(error = %e, "a subscription of the app was left out");
    }
    for sub in declared.into_iter().chain(listed) {
        let Ok(c) = block.get(&sub.pubsub) else {
            tracing::error!(pubsub = %sub.pubsub, topic = %sub.topic,
                "subscription left out: no pub/sub component of that name is loaded");
            continue;
        };
        let (pubsub, topic) = (sub.pubsub.clone(), sub.topic.clone());
        if let Err(e) = runner.spawn(c.clone(), sub, Target::App(app.clone()), grace) {
            tracing::error!(%pubsub, %topic, error = %e, "subscription left out");
        }
    }
}

/// A bulk subscription's batch: up to `max_count` messages, gathered for
/// at most `max_await_ms` after the first one.
async fn gather(
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
async fn handle_batch(cx: &Arc<Ctx>, msgs: Vec<Received>, permit: OwnedSemaphorePermit) {
    let (by_path, settled) = super::bulk::route(cx, msgs);
    for (m, f) in settled {
        settle(cx, &m, f).await;
    }
    let policy = cx.c.inbound.clone();
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
