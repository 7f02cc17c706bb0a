//! The pub/sub contract: [`PubSub`] (publish, subscribe) and
//! [`Subscription`], the pull-based consumer the sidecar's delivery loop
//! drives. Messages arrive as opaque bytes (the CloudEvent the block
//! built, or a raw payload): envelopes, scopes and routing are Dapr's API
//! semantics and belong to the block, not to a driver.
//!
//! Every driver gives the same guarantees, which the block's delivery
//! loop builds on:
//! - **claims**: a fetched message is claimed by this consumer and is not
//!   handed to another member of its group until it is acked, released, or
//!   its claim lapses; [`Subscription::keep_alive`] renews the claims of
//!   messages whose handlers still run, so a slow handler never sees its
//!   message delivered a second time at the same time;
//! - **pull, bounded**: [`Subscription::fetch`] takes at most `max`
//!   messages, so a consumer holds no more than it can work on (the
//!   backpressure Dapr's push model lacks);
//! - **ack only on an answer**: nothing is removed until
//!   [`Subscription::ack`]; [`Subscription::release`] hands a message back
//!   for redelivery now (shutdown, retry later) without counting it lost.

#[cfg(feature = "pubsub-jetstream")]
pub mod jetstream;
#[cfg(feature = "pubsub-memory")]
pub mod memory;
#[cfg(feature = "pubsub-redis")]
pub mod redis;
#[cfg(feature = "pubsub-sqlite")]
pub mod sqlite;

use std::time::Duration;

use bytes::Bytes;

use crate::BoxFuture;

/// What a pub/sub component can do, as `/v1.0/metadata` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features(u8);

impl Features {
    pub const MESSAGE_TTL: Self = Self(1);
    pub const SUBSCRIBE_WILDCARDS: Self = Self(2);
    pub const BULK_PUBSUB: Self = Self(4);

    pub const fn union(self, o: Self) -> Self {
        Self(self.0 | o.0)
    }

    pub const fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }

    /// Dapr's names, in Dapr's order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::MESSAGE_TTL, "MESSAGE_TTL"),
            (Self::SUBSCRIBE_WILDCARDS, "SUBSCRIBE_WILDCARDS"),
            (Self::BULK_PUBSUB, "BULK_PUBSUB"),
        ]
        .into_iter()
        .filter(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PubSubError {
    /// The broker failed or is unreachable (retriable).
    #[error("{0}")]
    Broker(String),
    /// The request cannot be served by this driver (not retriable).
    #[error("{0}")]
    Invalid(String),
    /// The driver was closed.
    #[error("the pub/sub component is closed")]
    Closed,
}

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub data: Bytes,
    /// Request metadata the broker keeps beside the message (Dapr's Redis
    /// driver stores it as a `metadata` field).
    pub metadata: Vec<(String, String)>,
}

/// What to consume.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    pub topic: String,
    /// The consumer group (Dapr's `consumerID`, the app id by default):
    /// each group gets every message once; its members share them.
    pub group: String,
    /// How long a fetched message stays claimed without a
    /// [`Subscription::keep_alive`] before another member may take it.
    pub claim: Duration,
}

/// A message fetched from a subscription.
#[derive(Clone, Debug)]
pub struct Received {
    /// The broker's id for it (Redis stream id, sequence number): what
    /// `ack`, `release` and `keep_alive` take.
    pub id: String,
    pub data: Bytes,
    pub metadata: Vec<(String, String)>,
    /// 1 on the first delivery, more when it came back.
    pub deliveries: u32,
}

/// One consumer of a topic in a group; see the module doc for its
/// guarantees.
pub trait Subscription: Send + Sync {
    /// Up to `max` messages: claimed ones whose claim lapsed or that were
    /// released first, then new ones. Waits up to `wait` for the first;
    /// answers empty when none came.
    fn fetch(
        &self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, PubSubError>>;

    /// Done with these: the group will not see them again.
    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>>;

    /// Hands these back for redelivery (to any member) now.
    fn release<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>>;

    /// Renews the claim on messages still being handled.
    fn keep_alive<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>>;

    /// How many messages of the topic no member of the group has fetched
    /// yet (the broker's lag for the group; claimed and released ones are
    /// not counted). `None` when the broker cannot tell just now.
    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, PubSubError>>;
}

/// A pub/sub component.
pub trait PubSub: Send + Sync {
    fn features(&self) -> Features;

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: Outgoing,
    ) -> BoxFuture<'a, Result<(), PubSubError>>;

    /// Publishes several; one answer per message, in order. Drivers that
    /// can batch do (one round trip, one commit).
    fn publish_many<'a>(
        &'a self,
        topic: &'a str,
        msgs: Vec<Outgoing>,
    ) -> BoxFuture<'a, Vec<Result<(), PubSubError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(msgs.len());
            for m in msgs {
                out.push(self.publish(topic, m).await);
            }
            out
        })
    }

    fn subscribe(
        &self,
        opts: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Subscription>, PubSubError>>;
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names() {
        let f = Features::MESSAGE_TTL.union(Features::BULK_PUBSUB);
        assert_eq!(f.names(), ["MESSAGE_TTL", "BULK_PUBSUB"]);
        assert!(Features::default().names().is_empty());
    }
}
