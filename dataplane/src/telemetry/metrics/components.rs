//! The building blocks' component series, Dapr's `dapr_component_*`
//! families: state, secret, lock and configuration store operations,
//! pub/sub ingress and egress per topic (with Skiff's in-flight, retry
//! and backlog gauges), binding input and output. Each component's series
//! are made when it is loaded, so a call records without a lookup.

use super::*;

/// Dapr's state operations (the `operation` label), in
/// [`ComponentOps`] index order.
pub const STATE_OPS: [&str; 7] = [
    "get",
    "set",
    "delete",
    "bulk_get",
    "bulk_delete",
    "transaction",
    "query",
];
/// Dapr's secret store operations.
pub const SECRET_OPS: [&str; 2] = ["get", "bulk_get"];
/// Lock store operations (`dapr_component_lock_*`).
pub const LOCK_OPS: [&str; 2] = ["try_lock", "unlock"];
/// Configuration store operations (`dapr_component_configuration_*`).
pub const CONFIGURATION_OPS: [&str; 2] = ["get", "subscribe"];

/// One component's calls: count and latency per operation and outcome
/// (`success` true/false). Made when the component is loaded, so a call
/// records without a lookup.
#[derive(Default)]
pub struct ComponentOps([[Timed; 2]; 7]);

impl ComponentOps {
    /// `op` indexes the block's operation list ([`STATE_OPS`], ...).
    pub fn record(&self, op: usize, ok: bool, d: Duration) {
        if let Some(o) = self.0.get(op) {
            o[usize::from(ok)].record(d);
        }
    }
}

/// Delivery outcomes (Dapr's `process_status` label), in
/// [`PubSubTopic::ingress`] index order.
pub const PUBSUB_OUTCOMES: [&str; 3] = ["success", "retry", "drop"];

/// One topic of one pub/sub component: deliveries to the app by outcome
/// (`dapr_component_pubsub_ingress_*`), publishes by success
/// (`dapr_component_pubsub_egress_*`), and Skiff's gauges of messages
/// being delivered, waiting to be retried, and not fetched yet.
#[derive(Default)]
pub struct PubSubTopic {
    pub ingress: [Timed; 3],
    pub egress: [Timed; 2],
    pub in_flight: Gauge,
    pub retry_wait: Gauge,
    pub backlog: Backlog,
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

/// One binding: output calls by operation and outcome
/// (`dapr_component_output_binding_*`), input events by outcome
/// (`dapr_component_input_binding_*`); index 1 is success.
pub struct BindingComponent {
    output: Family<String, Arc<[Timed; 2]>>,
    pub input: [Timed; 2],
}

impl Default for BindingComponent {
    fn default() -> Self {
        Self {
            output: Family::new("_other".to_owned()),
            input: Default::default(),
        }
    }
}

impl BindingComponent {
    pub fn output(&self, operation: &str, ok: bool, d: Duration) {
        self.output
            .with(operation, |t| t[usize::from(ok)].record(d));
    }
}

/// A pub/sub component's topics.
pub struct PubSubComponent {
    topics: Family<String, Arc<PubSubTopic>>,
}

impl Default for PubSubComponent {
    fn default() -> Self {
        Self {
            topics: Family::new("_other".to_owned()),
        }
    }
}

impl PubSubComponent {
    pub fn topic(&self, topic: &str) -> Arc<PubSubTopic> {
        self.topics.with(topic, Arc::clone)
    }
}

impl Metrics {
    /// The series of state store `name` (`dapr_component_state_*`).
    pub fn state_component(&self, name: &str) -> Arc<ComponentOps> {
        self.state_components.with(name, Arc::clone)
    }

    /// The series of secret store `name` (`dapr_component_secret_*`).
    pub fn secret_component(&self, name: &str) -> Arc<ComponentOps> {
        self.secret_components.with(name, Arc::clone)
    }

    /// The series of lock store `name` (`dapr_component_lock_*`).
    pub fn lock_component(&self, name: &str) -> Arc<ComponentOps> {
        self.lock_components.with(name, Arc::clone)
    }

    /// The series of configuration store `name`
    /// (`dapr_component_configuration_*`).
    pub fn configuration_component(&self, name: &str) -> Arc<ComponentOps> {
        self.configuration_components.with(name, Arc::clone)
    }

    /// The series of binding `name` (`dapr_component_*_binding_*`).
    pub fn binding_component(&self, name: &str) -> Arc<BindingComponent> {
        self.binding_components.with(name, Arc::clone)
    }

    /// The series of pub/sub component `name`
    /// (`dapr_component_pubsub_*`).
    pub fn pubsub_component(&self, name: &str) -> Arc<PubSubComponent> {
        self.pubsub_components.with(name, Arc::clone)
    }

    pub(super) fn render_components(&self, e: &mut Encoder, app: &str) {
        let ns = self.namespace.get().map_or("", |n| n);
        for (kind, family, ops) in [
            ("state", &self.state_components, &STATE_OPS[..]),
            ("secret", &self.secret_components, &SECRET_OPS[..]),
            ("lock", &self.lock_components, &LOCK_OPS[..]),
            (
                "configuration",
                &self.configuration_components,
                &CONFIGURATION_OPS[..],
            ),
        ] {
            let (count, lat) = (
                format!("dapr_component_{kind}_count"),
                format!("dapr_component_{kind}_latencies"),
            );
            let l = |component: &str, op: usize, ok: usize| {
                labels(&[
                    ("app_id", app),
                    ("component", component),
                    ("namespace", ns),
                    ("operation", ops[op]),
                    ("success", if ok == 1 { "true" } else { "false" }),
                ])
            };
            e.header(
                &count,
                "counter",
                "Operations the sidecar performed on the component.",
            );
            family.each(|c, s| {
                for (op, o) in s.0.iter().enumerate().take(ops.len()) {
                    for (ok, t) in o.iter().enumerate() {
                        if t.count.get() > 0 {
                            e.sample(&count, &l(c, op, ok), t.count.get());
                        }
                    }
                }
            });
            e.header(
                &lat,
                "histogram",
                "Latency of the component's answers, in milliseconds.",
            );
            family.each(|c, s| {
                for (op, o) in s.0.iter().enumerate().take(ops.len()) {
                    for (ok, t) in o.iter().enumerate() {
                        if t.count.get() > 0 {
                            e.histogram(&lat, &l(c, op, ok), &t.latency);
                        }
                    }
                }
            });
        }
    }

    pub(super) fn render_bindings(&self, e: &mut Encoder, app: &str) {
        let ns = self.namespace.get().map_or("", |n| n);
        // One sample (or histogram) of a binding series, when it has any.
        let emit = |e: &mut Encoder,
                    name: &str,
                    hist: bool,
                    op: Option<&str>,
                    c: &str,
                    i: usize,
                    t: &Timed| {
            if t.count.get() == 0 {
                return;
            }
            let ok = if i == 1 { "true" } else { "false" };
            let mut l = vec![("app_id", app), ("component", c), ("namespace", ns)];
            if let Some(op) = op {
                l.push(("operation", op));
            }
            l.push(("success", ok));
            let l = labels(&l);
            if hist {
                e.histogram(name, &l, &t.latency);
            } else {
                e.sample(name, &l, t.count.get());
            }
        };
        for (hist, kind) in [(false, "count"), (true, "latencies")] {
            let ty = if hist { "histogram" } else { "counter" };
            let name = format!("dapr_component_output_binding_{kind}");
            e.header(&name, ty, "Output binding calls, by operation and success.");
            self.binding_components.each(|c, b| {
                b.output.each(|op, t| {
                    for (i, timed) in t.iter().enumerate() {
                        emit(e, &name, hist, Some(op), c, i, timed);
                    }
                });
            });
            let name = format!("dapr_component_input_binding_{kind}");
            e.header(
                &name,
                ty,
                "Input binding events delivered to the app, by success.",
            );
            self.binding_components.each(|c, b| {
                for (i, timed) in b.input.iter().enumerate() {
                    emit(e, &name, hist, None, c, i, timed);
                }
            });
        }
    }

    pub(super) fn render_pubsub(&self, e: &mut Encoder, app: &str) {
        let ns = self.namespace.get().map_or("", |n| n);
        let base = |c: &str, t: &str| {
            labels(&[
                ("app_id", app),
                ("component", c),
                ("namespace", ns),
                ("topic", t),
            ])
        };
        let ingress = |c: &str, t: &str, o: usize| {
            labels(&[
                ("app_id", app),
                ("component", c),
                ("namespace", ns),
                ("process_status", PUBSUB_OUTCOMES[o]),
                ("status", PUBSUB_OUTCOMES[o]),
                ("topic", t),
            ])
        };
        let egress = |c: &str, t: &str, ok: usize| {
            labels(&[
                ("app_id", app),
                ("component", c),
                ("namespace", ns),
                ("success", if ok == 1 { "true" } else { "false" }),
                ("topic", t),
            ])
        };
        let each = |f: &mut dyn FnMut(&str, &str, &PubSubTopic)| {
            self.pubsub_components.each(|c, comp| {
                comp.topics.each(|t, s| f(c, t, s));
            });
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
            each(&mut |c, t, s| {
                for (o, timed) in s.ingress.iter().enumerate() {
                    if timed.count.get() > 0 {
                        if hist {
                            e.histogram(name, &ingress(c, t, o), &timed.latency);
                        } else {
                            e.sample(name, &ingress(c, t, o), timed.count.get());
                        }
                    }
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
            each(&mut |c, t, s| {
                for (ok, timed) in s.egress.iter().enumerate() {
                    if timed.count.get() > 0 {
                        if hist {
                            e.histogram(name, &egress(c, t, ok), &timed.latency);
                        } else {
                            e.sample(name, &egress(c, t, ok), timed.count.get());
                        }
                    }
                }
            });
        }
        e.header(
            "skiff_pubsub_in_flight",
            "gauge",
            "Messages of a subscription being delivered to the app now.",
        );
        each(&mut |c, t, s| e.sample("skiff_pubsub_in_flight", &base(c, t), s.in_flight.get()));
        e.header(
            "skiff_pubsub_retry_waiting",
            "gauge",
            "Messages of a subscription held for a later retry (claimed, not in flight).",
        );
        each(&mut |c, t, s| {
            e.sample(
                "skiff_pubsub_retry_waiting",
                &base(c, t),
                s.retry_wait.get(),
            )
        });
        e.header(
            "skiff_pubsub_backlog",
            "gauge",
            "Messages the broker holds for a subscription that it has not fetched yet (sampled).",
        );
        each(&mut |c, t, s| {
            if let Some(n) = s.backlog.get() {
                e.sample("skiff_pubsub_backlog", &base(c, t), n);
            }
        });
    }
}
