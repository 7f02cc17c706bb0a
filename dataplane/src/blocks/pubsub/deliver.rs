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
//! What becomes of each message (ack, dead letter, release) is
//! [`super::fate`]'s; batches of bulk subscriptions are [`super::bulk`]'s.
//!
//! Retries: with a `targets.components.<pubsub>.inbound` policy its
//! retries run here (then dead letter, or release to the broker); without
//! one a message is retried in place with backoff (100 ms doubling to
//! 10 s), its claim kept, its slot freed while it waits (unless the limit
//! is 1).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use skiff_components::pubsub::{Received, SubscribeOptions, Subscription};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::Component;
use super::app::{self, Event, Outcome};
use super::bulk;
use super::envelope::Head;
use super::fate::{Ctx, Fate, Prepared, prepare, settle};
pub use super::fate::{FETCH_WAIT, RETRY_FIRST, RETRY_MAX, StreamTarget, Target};
use super::subscriptions::Sub;
use crate::appchannel::AppChannel;
use crate::blocks::call;
use crate::telemetry::trace::Tracer;

/// Pause after the broker failed a fetch.
pub const BROKER_BACKOFF: Duration = Duration::from_millis(500);
/// How often a subscription asks its broker for its backlog
/// (`skiff_pubsub_backlog`): one cheap broker call, never per message.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(2);

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
            routes = %sub.routes_text(), dead_letter = sub.dead_letter.as_deref().unwrap_or("none"), "subscribed");
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
    let series = c.call.series().topic(&sub.topic);
    series.subscribed();
    let cx = Arc::new(Ctx {
        series,
        c,
        sub,
        target,
        subscription,
        held: Mutex::default(),
        stop: stop.clone(),
        tracer,
        limit,
        slots: Arc::new(Semaphore::new(limit)),
        acks: Default::default(),
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
            match bulk::gather(&cx, b).await {
                Ok(batch) if batch.is_empty() => drop(first),
                Ok(batch) => {
                    for m in &batch {
                        cx.held().insert(m.id.clone());
                    }
                    let cx = cx.clone();
                    handlers.spawn(async move { bulk::handle_batch(&cx, batch, first).await });
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

async fn handle(cx: &Arc<Ctx>, msg: Received, permit: OwnedSemaphorePermit) {
    let fate = decide(cx, &msg, permit).await;
    settle(cx, &msg, fate).await;
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
    let policy = cx.c.call.inbound();
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
    let span = cx.delivery_span(head.traceparent.as_deref());
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
        cx.finish_delivery(&span, ("messaging.message.id", head.id.clone()), error);
    }
    outcome
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
    if !crate::appchannel::health::wait_listening(&app, &mut stop).await {
        return;
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
