//! Pub/sub's families in the one registry: Dapr's
//! `dapr_component_pubsub_ingress_*` (deliveries to the app by outcome)
//! and `dapr_component_pubsub_egress_*` (publishes by success), per
//! component and topic, and Skiff's gauges of messages being delivered,
//! waiting for a retry, and not fetched yet (`skiff_pubsub_*`). A
//! component takes its series when it is loaded, a subscription its
//! topic's when it starts, so a message records without a lookup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use crate::blocks::call::Series;
use crate::telemetry::metrics::Section;
use crate::telemetry::registry::{Encoder, Family, Gauge, Timed, labels};

/// Delivery outcomes (Dapr's `process_status` label), in
/// [`super::app::Outcome::index`] order.
pub const OUTCOMES: [&str; 3] = ["success", "retry", "drop"];

/// One topic of one pub/sub component.
#[derive(Default)]
pub struct Topic {
    /// Deliveries to the app, by [`OUTCOMES`] index.
    pub ingress: [Timed; 3],
    /// Publishes; index 1 is success.
    pub egress: [Timed; 2],
    pub in_flight: Gauge,
    pub retry_wait: Gauge,
    pub backlog: Backlog,
    /// A subscription of this sidecar reads the topic: only then are the
    /// gauges rendered (a publisher has nothing in flight to report).
    subscribed: AtomicBool,
}

impl Topic {
    /// Marks the topic as read by a subscription of this sidecar.
    pub fn subscribed(&self) {
        self.subscribed.store(true, Relaxed);
    }
}

/// Messages the broker holds for a subscription that it has not fetched
/// yet, as last sampled; unknown (and not rendered) until a subscription
/// samples it, when it ends, and when the broker cannot tell.
pub struct Backlog(AtomicI64);

impl Default for Backlog {
    fn default() -> Self {
        Self(AtomicI64::new(-1))
    }
}

impl Backlog {
    pub fn set(&self, n: Option<u64>) {
        let v = n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> Option<u64> {
        u64::try_from(self.0.load(Relaxed)).ok()
    }
}

/// A pub/sub component's topics.
pub struct ComponentSeries {
    topics: Family<String, Arc<Topic>>,
}

impl Default for ComponentSeries {
    fn default() -> Self {
        Self {
            topics: Family::new("_other".to_owned()),
        }
    }
}

impl ComponentSeries {
    pub fn topic(&self, topic: &str) -> Arc<Topic> {
        self.topics.with(topic, Arc::clone)
    }
}

/// Publishes (`dapr_component_pubsub_egress_*`), by topic.
impl Series for ComponentSeries {
    type Op<'a> = &'a str;
    fn record(&self, topic: &str, ok: bool, took: Duration) {
        self.topic(topic).egress[usize::from(ok)].record(took);
    }
}

/// Every pub/sub component's series: the block's [`Section`].
pub struct Families {
    components: Family<String, Arc<ComponentSeries>>,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            components: Family::new("_other".to_owned()),
        }
    }
}

impl Families {
    /// Component `name`'s series.
    pub fn component(&self, name: &str) -> Arc<ComponentSeries> {
        self.components.with(name, Arc::clone)
    }

    fn each(&self, f: &mut dyn FnMut(&str, &str, &Topic)) {
        self.components.each(|c, comp| {
            comp.topics.each(|t, s| f(c, t, s));
        });
    }
}

/// A histogram when `hist`, else the count.
fn timed(e: &mut Encoder, name: &str, hist: bool, labels: &str, t: &Timed) {
    if t.count.get() == 0 {
        return;
    }
    if hist {
        e.histogram(name, labels, &t.latency);
    } else {
        e.sample(name, labels, t.count.get());
    }
}

impl Section for Families {
    fn render(&self, e: &mut Encoder, app: &str, ns: &str) {
        let base = |c: &str, t: &str| {
            labels(&[
                ("app_id", app),
                ("component", c),
                ("namespace", ns),
                ("topic", t),
            ])
        };
        for (name, kind, help, hist) in [
            (
                "dapr_component_pubsub_ingress_count",
                "counter",
                "Messages delivered to the app, by outcome.",
                false,
            ),
            (
                "dapr_component_pubsub_ingress_latencies",
                "histogram",
                "Time from delivery to the app's answer, in milliseconds.",
                true,
            ),
        ] {
            e.header(name, kind, help);
            self.each(&mut |c, t, s| {
                for (o, series) in s.ingress.iter().enumerate() {
                    let l = labels(&[
                        ("app_id", app),
                        ("component", c),
                        ("namespace", ns),
                        ("process_status", OUTCOMES[o]),
                        ("status", OUTCOMES[o]),
                        ("topic", t),
                    ]);
                    timed(e, name, hist, &l, series);
                }
            });
        }
        for (name, kind, help, hist) in [
            (
                "dapr_component_pubsub_egress_count",
                "counter",
                "Messages published to the broker.",
                false,
            ),
            (
                "dapr_component_pubsub_egress_latencies",
                "histogram",
                "Time the broker took to take a publish, in milliseconds.",
                true,
            ),
        ] {
            e.header(name, kind, help);
            self.each(&mut |c, t, s| {
                for (ok, series) in s.egress.iter().enumerate() {
                    let l = labels(&[
                        ("app_id", app),
                        ("component", c),
                        ("namespace", ns),
                        ("success", if ok == 1 { "true" } else { "false" }),
                        ("topic", t),
                    ]);
                    timed(e, name, hist, &l, series);
                }
            });
        }
        e.header(
            "skiff_pubsub_in_flight",
            "gauge",
            "Messages of a subscription being delivered to the app now.",
        );
        let subscribed = |s: &Topic| s.subscribed.load(Relaxed);
        self.each(&mut |c, t, s| {
            if subscribed(s) {
                e.sample("skiff_pubsub_in_flight", &base(c, t), s.in_flight.get());
            }
        });
        e.header(
            "skiff_pubsub_retry_waiting",
            "gauge",
            "Messages of a subscription held for a later retry (claimed, not in flight).",
        );
        self.each(&mut |c, t, s| {
            if subscribed(s) {
                e.sample(
                    "skiff_pubsub_retry_waiting",
                    &base(c, t),
                    s.retry_wait.get(),
                );
            }
        });
        e.header(
            "skiff_pubsub_backlog",
            "gauge",
            "Messages the broker holds for a subscription that it has not fetched yet (sampled).",
        );
        self.each(&mut |c, t, s| {
            if let Some(n) = s.backlog.get() {
                e.sample("skiff_pubsub_backlog", &base(c, t), n);
            }
        });
    }
}
