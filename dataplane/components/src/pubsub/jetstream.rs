//! `pubsub.jetstream` on NATS JetStream, with Dapr's metadata names:
//! `natsURL` (a comma list of servers), `name` (the connection's),
//! `streamName`, `durableName` (the consumer; the consumer group otherwise),
//! `ackWait`, `maxDeliver`, `replicas`, `memoryStorage`, `jwt`/`seedKey`.
//!
//! A topic is a subject. Without `streamName` the driver binds (creating
//! when missing) a stream of its own per topic, `skiff-<topic>`, with
//! `replicas` copies (a cluster keeps it through the loss of a node). Each
//! consumer group is a durable pull consumer with explicit acks: a fetch
//! pulls at most what the delivery loop can start; the claim is JetStream's
//! `ack_wait`, renewed with `+WPI` (work in progress) while a handler
//! runs; a release is `-NAK` (redelivered now); an ack is the empty ack.
//! A message's id for the block is its reply (ack) subject, which names
//! exactly that delivery.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Features, Outgoing, PubSub, PubSubError, Received, SubscribeOptions, Subscription};
use crate::{BoxFuture, MetadataError, Properties};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes tried while a topic's stream is being made.
pub const PUBLISH_TRIES: u32 = 4;
/// How long past its own expiry a pull may go unanswered.
pub const PULL_GRACE: Duration = Duration::from_secs(2);
/// How long a subscription waits for its stream's leader.
pub const STREAM_LEADER_WAIT: Duration = Duration::from_secs(10);
/// The stream a topic gets when `streamName` is not set.
pub const STREAM_PREFIX: &str = "skiff-";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("nats {url}: {why}")]
    Connect { url: String, why: String },
}

pub struct JetStreamPubSub {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    stream_name: Option<String>,
    durable: Option<String>,
    replicas: usize,
    memory: bool,
    max_deliver: i64,
}

impl JetStreamPubSub {
    pub async fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let url = meta.required("natsURL")?.to_owned();
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(meta.duration_or("connectTimeout", DEFAULT_CONNECT_TIMEOUT)?)
            // Keep trying while a node of the cluster is down.
            .max_reconnects(None)
            .retry_on_initial_connect();
        if let Some(n) = meta.get("name") {
            opts = opts.name(n);
        }
        if let (Some(jwt), Some(seed)) = (meta.get("jwt"), meta.get("seedKey")) {
            // The decorated credentials format the NATS tools write.
            let creds = format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            );
            opts = opts.credentials(&creds).map_err(|_| MetadataError {
                field: "seedKey".into(),
                why: "jwt and seedKey are not valid NATS credentials".into(),
            })?;
        }
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, std::io::Error>>()
            .map_err(|e| MetadataError {
                field: "natsURL".into(),
                why: format!("{e}"),
            })?;
        let client = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, opts.connect(servers))
            .await
            .map_err(|_| OpenError::Connect {
                url: url.clone(),
                why: "no server answered".into(),
            })?
            .map_err(|e| OpenError::Connect {
                url: url.clone(),
                why: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        Ok(Arc::new(Self {
            client,
            js,
            url,
            stream_name: meta
                .get("streamName")
                .map(str::to_owned)
                .filter(|s| !s.is_empty()),
            durable: meta
                .get("durableName")
                .map(str::to_owned)
                .filter(|s| !s.is_empty()),
            replicas: meta.int_or("replicas", 1)?,
            memory: meta.bool_or("memoryStorage", false)?,
            max_deliver: meta.int_or("maxDeliver", -1)?,
        }))
    }

    fn broker(&self, e: impl std::fmt::Display) -> PubSubError {
        PubSubError::Broker(format!("nats {}: {e}", self.url))
    }

    fn stream_for(&self, topic: &str) -> String {
        self.stream_name.clone().unwrap_or_else(|| {
            let safe: String = topic
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{STREAM_PREFIX}{safe}")
        })
    }

    async fn ensure_stream(&self, topic: &str) -> Result<stream::Stream, PubSubError> {
        let name = self.stream_for(topic);
        if self.stream_name.is_some() {
            return self.js.get_stream(&name).await.map_err(|e| self.broker(e));
        }
        self.js
            .get_or_create_stream(stream::Config {
                name,
                subjects: vec![topic.to_owned()],
                num_replicas: self.replicas,
                storage: if self.memory {
                    stream::StorageType::Memory
                } else {
                    stream::StorageType::File
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.broker(e))
    }

    fn headers(msg: &Outgoing) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in &msg.metadata {
            h.insert(k.as_str(), v.as_str());
        }
        h
    }
}

impl PubSub for JetStreamPubSub {
    fn features(&self) -> Features {
        Features::BULK_PUBSUB
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: Outgoing,
    ) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(async move {
            // A topic's own stream is made on the first publish that finds
            // none; one just made (here or by a subscriber) may still be
            // electing its leader, so a few tries, bounded.
            let mut tries = 0;
            loop {
                let sent = self
                    .js
                    .publish_with_headers(topic.to_owned(), Self::headers(&msg), msg.data.clone())
                    .await
                    .map_err(|e| self.broker(e))?
                    .await;
                match sent {
                    Ok(_) => return Ok(()),
                    Err(e) if tries >= PUBLISH_TRIES => return Err(self.broker(e)),
                    Err(e) if self.stream_name.is_some() && tries > 0 => return Err(self.broker(e)),
                    Err(_) => {
                        tries += 1;
                        if let Ok(stream) = self.ensure_stream(topic).await {
                            wait_for_leader(&stream).await;
                        }
                        tokio::time::sleep(Duration::from_millis(100) * tries).await;
                    }
                }
            }
        })
    }

    fn subscribe(
        &self,
        opts: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Subscription>, PubSubError>> {
        Box::pin(async move {
            let stream = self.ensure_stream(&opts.topic).await?;
            wait_for_leader(&stream).await;
            let durable = self.durable.clone().unwrap_or_else(|| {
                opts.group
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect()
            });
            let consumer: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &durable,
                    consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: opts.topic.clone(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: opts.claim,
                        max_deliver: self.max_deliver,
                        deliver_policy: consumer::DeliverPolicy::All,
                        max_ack_pending: -1,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| self.broker(e))?;
            let sub: Box<dyn Subscription> = Box::new(JetStreamSubscription {
                consumer,
                client: self.client.clone(),
                url: self.url.clone(),
            });
            Ok(sub)
        })
    }
}

/// A replicated stream just made has no leader for a moment; publishes
/// and consumers made meanwhile time out. Waits (bounded) for one.
async fn wait_for_leader(stream: &stream::Stream) {
    let end = tokio::time::Instant::now() + STREAM_LEADER_WAIT;
    while tokio::time::Instant::now() < end {
        match stream.get_info().await {
            Ok(i) if i.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

struct JetStreamSubscription {
    consumer: consumer::PullConsumer,
    client: async_nats::Client,
    url: String,
}

impl JetStreamSubscription {
    async fn reply(&self, ids: &[String], body: &'static [u8]) -> Result<(), PubSubError> {
        for id in ids {
            self.client
                .publish(id.clone(), Bytes::from_static(body))
                .await
                .map_err(|e| PubSubError::Broker(format!("nats {}: {e}", self.url)))?;
        }
        self.client
            .flush()
            .await
            .map_err(|e| PubSubError::Broker(format!("nats {}: {e}", self.url)))
    }
}

impl JetStreamSubscription {
    async fn pull(&self, max: usize, wait: Option<Duration>) -> Result<Vec<Received>, PubSubError> {
        let broker =
            |e: &dyn std::fmt::Display| PubSubError::Broker(format!("nats {}: {e}", self.url));
        let batch = match wait {
            None => self.consumer.fetch().max_messages(max).messages().await,
            Some(w) => {
                self.consumer
                    .batch()
                    .max_messages(max)
                    .expires(w.max(Duration::from_millis(10)))
                    .messages()
                    .await
            }
        };
        let mut batch = batch.map_err(|e| broker(&e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => out.extend(received(&m)),
                // A batch that ends early (timeout, leader change) keeps
                // what it got.
                Err(e) if out.is_empty() => return Err(broker(&e)),
                Err(_) => break,
            }
        }
        Ok(out)
    }
}

fn received(m: &jetstream::Message) -> Option<Received> {
    let reply = m.reply.clone()?;
    let deliveries = m
        .info()
        .map(|i| u32::try_from(i.delivered).unwrap_or(1))
        .unwrap_or(1);
    let metadata = m
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(Received {
        id: reply.to_string(),
        data: m.payload.clone(),
        metadata,
        deliveries,
    })
}

impl Subscription for JetStreamSubscription {
    fn fetch(
        &self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, PubSubError>> {
        Box::pin(async move {
            // What is there now, without waiting; else wait for the first
            // one (a pull batch waits until it is full or expires).
            // A pull whose consumer lost its leader (a node died) may never
            // be answered: bounded here, the loop asks again.
            let bound = |w: Duration| w + PULL_GRACE;
            let now = match tokio::time::timeout(bound(Duration::ZERO), self.pull(max.max(1), None))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(PubSubError::Broker(format!(
                        "nats {}: pull request unanswered",
                        self.url
                    )));
                }
            };
            if !now.is_empty() || wait.is_zero() {
                return Ok(now);
            }
            match tokio::time::timeout(bound(wait), self.pull(1, Some(wait))).await {
                Ok(r) => r,
                Err(_) => Err(PubSubError::Broker(format!(
                    "nats {}: pull request unanswered",
                    self.url
                ))),
            }
        })
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(self.reply(ids, b""))
    }

    fn release<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(self.reply(ids, b"-NAK"))
    }

    fn keep_alive<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(self.reply(ids, b"+WPI"))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, PubSubError>> {
        Box::pin(async move {
            // `num_pending`: matching messages the consumer has not
            // delivered yet.
            let info = self
                .consumer
                .get_info()
                .await
                .map_err(|e| PubSubError::Broker(format!("nats {}: {e}", self.url)))?;
            Ok(Some(info.num_pending))
        })
    }
}
