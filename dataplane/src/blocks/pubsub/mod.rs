//! Pub/sub: Dapr's publish API (single and bulk, CloudEvents envelope,
//! scopes, raw payloads, TTL) over the components' [`PubSub`] drivers, and
//! the subscriptions whose messages [`deliver`] hands to the app.
//!
//! The contract is `../shared/dapr-blocks-contract.md` §2; what Skiff
//! guarantees beyond it (claims kept alive, bounded in-flight, drain on
//! shutdown) is in [`deliver`]'s module doc. Errors map to Dapr's codes
//! in one place ([`errors`]); the HTTP and gRPC adapters only decode and
//! answer.

mod acks;
pub mod app;
mod bulk;
pub mod deliver;
pub mod envelope;
pub mod errors;
pub mod fate;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod scopes;
pub mod subscriptions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_components::pubsub::{Features, Outgoing, PubSub, PubSubError};

use crate::blocks::call::{Envelope, OutboundError, outbound_error};
use crate::errors::ApiError;
use scopes::Scopes;

/// Messages in flight per subscription when the component sets no
/// `concurrency` (Dapr's Redis default).
pub const DEFAULT_CONCURRENCY: usize = 10;
/// How long a fetched message stays claimed without renewal
/// (`processingTimeout`, Dapr's Redis default).
pub const DEFAULT_CLAIM: Duration = Duration::from_secs(60);

outbound_error!(PubSubError, Broker, Self::Invalid(_));

/// One loaded pub/sub component.
pub struct Component {
    pub name: String,
    /// The app this sidecar serves (scope checks name it).
    pub app_id: String,
    pub type_name: String,
    pub driver: Arc<dyn PubSub>,
    pub features: Features,
    pub scopes: Scopes,
    /// The consumer group (`consumerID`, templates expanded).
    pub consumer_id: String,
    /// Topics on the broker are prefixed with this (`{namespace}` in
    /// `consumerID` makes the component namespace-scoped).
    pub topic_prefix: String,
    pub concurrency: usize,
    pub claim: Duration,
    /// `targets.components.<name>` (read at each call) and the
    /// component's `dapr_component_pubsub_*` series by topic.
    pub call: Envelope<metrics::ComponentSeries>,
}

impl Component {
    /// The topic's name on the broker (no copy unless prefixed).
    pub fn broker_topic<'a>(&self, topic: &'a str) -> std::borrow::Cow<'a, str> {
        if self.topic_prefix.is_empty() {
            topic.into()
        } else {
            format!("{}{topic}", self.topic_prefix).into()
        }
    }

    /// Publishes bytes already enveloped, under the outbound policy.
    pub async fn send(&self, topic: &str, msg: Outgoing) -> Result<(), PubSubError> {
        let broker_topic = self.broker_topic(topic);
        (self.call)
            .call_with(topic, msg, |m| self.driver.publish(&broker_topic, m))
            .await
    }

    /// Publishes a batch in one driver call, under the outbound policy:
    /// a retry sends again only the entries that failed (the others are
    /// on the broker already), an open breaker or a timeout fails the
    /// entries still unsent. One result per message, in order.
    pub async fn send_many(
        &self,
        topic: &str,
        msgs: Vec<Outgoing>,
    ) -> Vec<Result<(), PubSubError>> {
        let broker_topic = self.broker_topic(topic);
        if !self.call.has_outbound() {
            return self.driver.publish_many(&broker_topic, msgs).await;
        }
        let n = msgs.len();
        let state = std::sync::Mutex::new(Batch {
            pending: (0..n).collect(),
            results: vec![None; n],
        });
        let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
        let run = self.call.policed(|| {
            let todo = lock().pending.clone();
            let batch: Vec<Outgoing> = todo.iter().map(|&i| msgs[i].clone()).collect();
            let (driver, broker_topic, lock) = (&self.driver, &broker_topic, &lock);
            async move {
                let got = driver.publish_many(broker_topic, batch).await;
                let mut st = lock();
                let mut retry = Vec::new();
                let mut first: Option<PubSubError> = None;
                for (i, r) in todo.into_iter().zip(got) {
                    if let Err(e) = &r
                        && !e.permanent()
                    {
                        retry.push(i);
                        first.get_or_insert_with(|| e.clone());
                    }
                    st.results[i] = Some(r);
                }
                st.pending = retry;
                first.map_or(Ok(()), Err)
            }
        });
        let last = run.await.err();
        let st = state.into_inner().unwrap_or_else(|e| e.into_inner());
        st.results
            .into_iter()
            .map(|r| match (r, &last) {
                (Some(r), _) => r,
                // Never sent: the breaker was open, or the attempt timed out.
                (None, Some(e)) => Err(e.clone()),
                (None, None) => Err(PubSubError::Broker("not sent".into())),
            })
            .collect()
    }
}

/// What a bulk publish still has to send, and what it got.
struct Batch {
    pending: Vec<usize>,
    results: Vec<Option<Result<(), PubSubError>>>,
}

/// The pub/sub components of this app.
#[derive(Default)]
pub struct PubSubBlock {
    pub app_id: String,
    components: Vec<Arc<Component>>,
}

/// One publish, decoded by a front door.
pub struct Publish<'a> {
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub data: Bytes,
    pub content_type: &'a str,
    pub metadata: Vec<(String, String)>,
    pub traceparent: String,
    pub tracestate: String,
}

/// One entry of a bulk publish.
pub struct BulkEntry {
    pub entry_id: String,
    pub event: Bytes,
    pub content_type: String,
    pub metadata: Vec<(String, String)>,
}

impl PubSubBlock {
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_owned(),
            components: Vec::new(),
        }
    }

    pub fn add(&mut self, c: Component) {
        self.components.push(Arc::new(c));
    }

    pub fn components(&self) -> &[Arc<Component>] {
        &self.components
    }

    /// The component `name`, or daprd's error for it.
    pub fn get(&self, name: &str) -> Result<&Arc<Component>, ApiError> {
        if self.components.is_empty() {
            return Err(crate::blocks::Block::PubSub.not_configured(name, &self.app_id));
        }
        if name.is_empty() {
            return Err(errors::name_empty());
        }
        self.components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| errors::not_found(name))
    }

    /// The checks every publish makes: component, topic, scope.
    fn target(&self, name: &str, topic: &str) -> Result<&Arc<Component>, ApiError> {
        let c = self.get(name)?;
        if topic.is_empty() {
            return Err(errors::topic_empty(name));
        }
        if !c.scopes.may_publish(topic) {
            return Err(errors::forbidden(name, topic, &self.app_id));
        }
        Ok(c)
    }

    /// A single publish: enveloped unless `rawPayload`, sent under the
    /// component's outbound policy.
    pub async fn publish(&self, p: Publish<'_>) -> Result<(), ApiError> {
        let c = self.target(p.pubsub, p.topic)?;
        let data = self.prepare(c, &p, &p.data, p.content_type, &p.metadata)?;
        c.send(
            p.topic,
            Outgoing {
                data,
                metadata: p.metadata,
            },
        )
        .await
        .map_err(|e| errors::publish_failed(p.pubsub, p.topic, &e))
    }

    /// The bytes the broker gets for one message.
    fn prepare(
        &self,
        c: &Component,
        p: &Publish<'_>,
        data: &Bytes,
        content_type: &str,
        metadata: &[(String, String)],
    ) -> Result<Bytes, ApiError> {
        let meta = |k: &str| {
            metadata
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let raw = match meta("rawPayload") {
            None | Some("") => false,
            Some(v) => skiff_components::metadata::truthy(v).ok_or_else(|| {
                errors::bad_metadata(
                    p.pubsub,
                    &format!("rawPayload value {v:?} is not a boolean"),
                )
            })?,
        };
        if raw {
            return Ok(data.clone());
        }
        let ttl = match meta("ttlInSeconds").or(meta("ttl")) {
            None | Some("") => None,
            Some(v) => Some(Duration::from_secs(v.trim().parse::<u64>().map_err(
                |_| {
                    errors::bad_metadata(
                        p.pubsub,
                        &format!("ttlInSeconds value {v:?} is not a number of seconds"),
                    )
                },
            )?)),
        }
        .filter(|_| !c.features.contains(Features::MESSAGE_TTL));
        let overrides: Vec<(&str, &str)> = metadata
            .iter()
            .filter_map(|(k, v)| {
                let (prefix, field) = (k.get(..11)?, k.get(11..)?);
                prefix
                    .eq_ignore_ascii_case("cloudevent.")
                    .then_some((field, v.as_str()))
            })
            .collect();
        envelope::build(&envelope::Input {
            data,
            content_type,
            topic: p.topic,
            pubsub: p.pubsub,
            source: &self.app_id,
            traceparent: &p.traceparent,
            tracestate: &p.tracestate,
            ttl,
            overrides: &overrides,
        })
        .map_err(|_| errors::cloud_event(p.pubsub))
    }

    /// A bulk publish: each entry enveloped, all sent in one driver call.
    /// Answers the entries that failed (with their error).
    pub async fn publish_bulk(
        &self,
        p: Publish<'_>,
        entries: Vec<BulkEntry>,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let c = self.target(p.pubsub, p.topic)?;
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for e in &entries {
            if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
                return Err(errors::bulk_entry_ids(p.pubsub, p.topic));
            }
        }
        let mut msgs = Vec::with_capacity(entries.len());
        for e in &entries {
            // Entry metadata overrides the request's.
            let mut meta = p.metadata.clone();
            for (k, v) in &e.metadata {
                meta.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
                meta.push((k.clone(), v.clone()));
            }
            let data = self.prepare(c, &p, &e.event, &e.content_type, &meta)?;
            msgs.push(Outgoing {
                data,
                metadata: meta,
            });
        }
        let start = Instant::now();
        let results = c.send_many(p.topic, msgs).await;
        let mut failed = Vec::new();
        for (e, r) in entries.into_iter().zip(results) {
            c.call.record(p.topic, start, r.is_ok());
            if let Err(err) = r {
                failed.push((e.entry_id, err.to_string()));
            }
        }
        Ok(failed)
    }
}
