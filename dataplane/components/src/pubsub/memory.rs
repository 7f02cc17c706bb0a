//! `pubsub.in-memory` (Dapr's type): topics in this sidecar's memory, for
//! tests and single-process apps. As in Dapr a message published while no
//! group subscribes to its topic is dropped, and nothing survives a
//! restart. Unlike Dapr's driver it keeps the claim guarantees of
//! [`super`]: a message is held until its handler answers, a failed one is
//! redelivered, and a group's members share its messages.
//!
//! One mutex guards all topics; it is held only to move sequence numbers
//! and `Bytes` handles, never across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Features, Outgoing, PubSub, PubSubError, Received, SubscribeOptions, Subscription};
use crate::{BoxFuture, Properties};

#[derive(Default)]
struct Topic {
    /// Sequence number of `log[0]`.
    base: u64,
    log: VecDeque<(Bytes, Vec<(String, String)>)>,
    groups: HashMap<String, Group>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Group {
    /// The next message no member has fetched.
    cursor: u64,
    /// Fetched and not acked: seq → claim.
    claims: BTreeMap<u64, Claim>,
}

struct Claim {
    until: Instant,
    deliveries: u32,
}

impl Topic {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Drops what every group has fetched and acked.
    fn trim(&mut self) {
        let keep_from = self
            .groups
            .values()
            .map(|g| {
                g.claims
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or(g.cursor)
                    .min(g.cursor)
            })
            .min()
            .unwrap_or_else(|| self.end());
        while self.base < keep_from && self.log.pop_front().is_some() {
            self.base += 1;
        }
    }
}

#[derive(Default)]
struct Inner {
    topics: Mutex<HashMap<String, Topic>>,
}

impl Inner {
    fn topics(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        // A panic while holding it leaves plain data; keep serving.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct MemoryPubSub {
    inner: Arc<Inner>,
}

impl MemoryPubSub {
    pub fn open(_meta: &Properties) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::default(),
        })
    }
}

impl PubSub for MemoryPubSub {
    fn features(&self) -> Features {
        Features::BULK_PUBSUB
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: Outgoing,
    ) -> BoxFuture<'a, Result<(), PubSubError>> {
        let mut topics = self.inner.topics();
        let t = topics.entry(topic.to_owned()).or_default();
        if !t.groups.is_empty() {
            t.log.push_back((msg.data, msg.metadata));
            t.notify.notify_waiters();
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(
        &self,
        opts: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Subscription>, PubSubError>> {
        {
            let mut topics = self.inner.topics();
            let t = topics.entry(opts.topic.clone()).or_default();
            let end = t.end();
            t.groups.entry(opts.group.clone()).or_insert_with(|| Group {
                cursor: end,
                claims: BTreeMap::new(),
            });
        }
        let sub: Box<dyn Subscription> = Box::new(MemorySubscription {
            inner: self.inner.clone(),
            opts,
        });
        Box::pin(std::future::ready(Ok(sub)))
    }
}

struct MemorySubscription {
    inner: Arc<Inner>,
    opts: SubscribeOptions,
}

impl MemorySubscription {
    /// Takes what is due now; or the notify to wait on and when the next
    /// claim lapses.
    fn take(&self, max: usize) -> Result<Vec<Received>, (Arc<Notify>, Option<Instant>)> {
        let now = Instant::now();
        let mut topics = self.inner.topics();
        let t = topics.entry(self.opts.topic.clone()).or_default();
        let (base, end) = (t.base, t.end());
        let g = t.groups.entry(self.opts.group.clone()).or_default();
        let mut out = Vec::new();
        let mut next_lapse: Option<Instant> = None;
        let until = now + self.opts.claim;
        for (seq, c) in &mut g.claims {
            if out.len() >= max {
                break;
            }
            if c.until <= now {
                c.until = until;
                c.deliveries += 1;
                out.push((*seq, c.deliveries));
            } else {
                next_lapse = Some(next_lapse.map_or(c.until, |n: Instant| n.min(c.until)));
            }
        }
        while out.len() < max && g.cursor < end {
            let seq = g.cursor.max(base);
            g.cursor = seq + 1;
            g.claims.insert(
                seq,
                Claim {
                    until,
                    deliveries: 1,
                },
            );
            out.push((seq, 1));
        }
        if out.is_empty() {
            return Err((t.notify.clone(), next_lapse));
        }
        Ok(out
            .into_iter()
            .filter_map(|(seq, deliveries)| {
                let (data, metadata) = t.log.get(usize::try_from(seq - base).ok()?)?.clone();
                Some(Received {
                    id: seq.to_string(),
                    data,
                    metadata,
                    deliveries,
                })
            })
            .collect())
    }

    fn claims(&self, ids: &[String], f: impl Fn(&mut BTreeMap<u64, Claim>, u64)) {
        let mut topics = self.inner.topics();
        let Some(t) = topics.get_mut(&self.opts.topic) else {
            return;
        };
        if let Some(g) = t.groups.get_mut(&self.opts.group) {
            for id in ids {
                if let Ok(seq) = id.parse() {
                    f(&mut g.claims, seq);
                }
            }
        }
        t.trim();
        t.notify.notify_waiters();
    }
}

impl Subscription for MemorySubscription {
    fn fetch(
        &self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Received>, PubSubError>> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            loop {
                let (notify, lapse) = match self.take(max.max(1)) {
                    Ok(v) => return Ok(v),
                    Err(w) => w,
                };
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // Look again now that a wake-up cannot be missed.
                if let Ok(v) = self.take(max.max(1)) {
                    return Ok(v);
                }
                let until = lapse.map_or(deadline, |l| l.min(deadline));
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(until) => {}
                }
                if Instant::now() >= deadline {
                    return self.take(max.max(1)).or(Ok(Vec::new()));
                }
            }
        })
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        self.claims(ids, |c, seq| {
            c.remove(&seq);
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        let now = Instant::now();
        self.claims(ids, |c, seq| {
            if let Some(c) = c.get_mut(&seq) {
                c.until = now;
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn keep_alive<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<(), PubSubError>> {
        let until = Instant::now() + self.opts.claim;
        self.claims(ids, |c, seq| {
            if let Some(c) = c.get_mut(&seq) {
                c.until = until;
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, PubSubError>> {
        let topics = self.inner.topics();
        let n = topics.get(&self.opts.topic).map_or(0, |t| {
            let cursor = t.groups.get(&self.opts.group).map_or(t.end(), |g| g.cursor);
            t.end() - cursor.max(t.base).min(t.end())
        });
        Box::pin(std::future::ready(Ok(Some(n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(group: &str, claim_ms: u64) -> SubscribeOptions {
        SubscribeOptions {
            topic: "t".into(),
            group: group.into(),
            claim: Duration::from_millis(claim_ms),
        }
    }

    fn msg(s: &'static str) -> Outgoing {
        Outgoing {
            data: Bytes::from_static(s.as_bytes()),
            metadata: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn claims_lapse_unless_kept_alive_and_acks_remove() {
        let ps = MemoryPubSub::open(&Properties::new());
        let a = ps.subscribe(opts("g", 1000)).await.expect("sub");
        let b = ps.subscribe(opts("g", 1000)).await.expect("sub");
        ps.publish("t", msg("one")).await.expect("pub");
        let got = a.fetch(10, Duration::from_millis(10)).await.expect("fetch");
        assert_eq!(got.len(), 1);
        // Claimed by a: b sees nothing while a keeps it alive.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            a.keep_alive(&[got[0].id.clone()]).await.expect("keep");
            let none = b.fetch(10, Duration::from_millis(1)).await.expect("fetch");
            assert!(none.is_empty(), "redelivered while claimed");
        }
        // a stops renewing: the claim lapses and b gets it, second time.
        let again = b.fetch(10, Duration::from_secs(2)).await.expect("fetch");
        assert_eq!((again.len(), again[0].deliveries), (1, 2));
        b.ack(&[again[0].id.clone()]).await.expect("ack");
        let none = a.fetch(10, Duration::from_secs(3)).await.expect("fetch");
        assert!(none.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_counts_what_the_group_has_not_fetched() {
        let ps = MemoryPubSub::open(&Properties::new());
        let a = ps.subscribe(opts("a", 5000)).await.expect("sub");
        let b = ps.subscribe(opts("b", 5000)).await.expect("sub");
        for m in ["1", "2", "3", "4"] {
            ps.publish("t", msg(m)).await.expect("pub");
        }
        let got = a.fetch(3, Duration::ZERO).await.expect("fetch");
        assert_eq!(a.backlog().await.expect("backlog"), Some(1));
        assert_eq!(b.backlog().await.expect("backlog"), Some(4));
        // Released ones are claimed, not backlog; acking trims the log.
        a.release(&[got[0].id.clone()]).await.expect("release");
        assert_eq!(a.backlog().await.expect("backlog"), Some(1));
        let rest = b.fetch(10, Duration::ZERO).await.expect("fetch");
        let ids: Vec<String> = rest.iter().map(|r| r.id.clone()).collect();
        b.ack(&ids).await.expect("ack");
        assert_eq!(b.backlog().await.expect("backlog"), Some(0));
        assert_eq!(a.backlog().await.expect("backlog"), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn groups_each_get_every_message_in_order_and_release_redelivers() {
        let ps = MemoryPubSub::open(&Properties::new());
        let a = ps.subscribe(opts("a", 5000)).await.expect("sub");
        let b = ps.subscribe(opts("b", 5000)).await.expect("sub");
        for m in ["1", "2", "3"] {
            ps.publish("t", msg(m)).await.expect("pub");
        }
        let fa = a.fetch(2, Duration::ZERO).await.expect("fetch");
        let fb = b.fetch(10, Duration::ZERO).await.expect("fetch");
        assert_eq!(
            fa.iter().map(|r| &r.data[..]).collect::<Vec<_>>(),
            [b"1", b"2"]
        );
        assert_eq!(fb.len(), 3);
        a.release(&[fa[0].id.clone()]).await.expect("release");
        let again = a.fetch(10, Duration::ZERO).await.expect("fetch");
        // The released one first, then the next new one.
        assert_eq!(
            again.iter().map(|r| &r.data[..]).collect::<Vec<_>>(),
            [b"1", b"3"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_fetch_wakes_on_publish() {
        let ps = MemoryPubSub::open(&Properties::new());
        let a = ps.subscribe(opts("a", 5000)).await.expect("sub");
        let ps2 = ps.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ps2.publish("t", msg("x")).await.expect("pub");
        });
        let got = a.fetch(1, Duration::from_secs(10)).await.expect("fetch");
        assert_eq!(got.len(), 1);
    }
}
