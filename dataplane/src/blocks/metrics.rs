//! The blocks' metric families in the one registry, registered in one
//! place and in one order (state, secret, lock and configuration stores,
//! then pub/sub, then bindings), so `/metrics` lists them the same way in
//! every run whichever component loads first. Each block defines its
//! families beside its code (`state::Ops`, `pubsub::metrics`, ...).
//!
//! The golden test here keeps the whole exposition byte for byte: Dapr's
//! dashboards and alerts read these names and labels.

use crate::telemetry::metrics::{Metrics, OpsFamily};

use super::{bindings, configuration, lock, pubsub, secrets, state};

/// Places every block's families in `m`'s rendering order; called at
/// start, before any component is loaded.
pub fn register(m: &Metrics) {
    m.section::<OpsFamily<state::Ops>>();
    m.section::<OpsFamily<secrets::Ops>>();
    m.section::<OpsFamily<lock::Ops>>();
    m.section::<OpsFamily<configuration::Ops>>();
    m.section::<pubsub::metrics::Families>();
    m.section::<bindings::metrics::Families>();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;
    use skiff_sentry::spiffe::SpiffeId;

    use super::*;
    use crate::telemetry::metrics::{INBOUND_KEY, PathMatching, PolicyKind, SpanDrop};

    /// Every family recorded once, rendered: the exposition must stay
    /// byte for byte what Dapr's dashboards read (names, labels, their
    /// order). `process_*` lines vary by run and are left out. After a
    /// deliberate change, rewrite the file with `SKIFF_BLESS=1`.
    #[test]
    fn the_exposition_keeps_dapr_names_and_labels() {
        let m = Metrics::new();
        m.init("app", "ns", PathMatching::new(&["/orders/{id}".into()]));
        let ms = Duration::from_millis(3);
        m.http_server(&Method::POST, 201, m.path_index("/orders/7"), ms);
        m.app_http(&Method::GET, 200, ms);
        m.grpc_server("/dapr.proto.runtime.v1.Dapr/GetState")
            .record(0, ms);
        m.app_grpc("/dapr.proto.runtime.v1.AppCallback/OnInvoke", 5, ms);
        m.invoke_sent("callee", true);
        m.invoke_answered("callee", 200, true, ms);
        m.invoke_received("caller");
        m.invoke_responded("caller", 404);
        let id = SpiffeId::new("public", "default", "caller").expect("id");
        m.acl(&id, true, false);
        m.policy_applied("res", "app_callee", [true, true, true]);
        m.resiliency_activated("res", "app_callee", PolicyKind::Retry);
        m.breaker_transition("res", "app_callee", 2);
        m.retry_budget_exhausted("app_callee");
        // A component's inbound policy: its own series, flow_direction inbound.
        let inbound = format!("Pubsub_bus{INBOUND_KEY}");
        m.policy_applied("res", &inbound, [false, true, false]);
        m.resiliency_activated("res", &inbound, PolicyKind::Retry);
        register(&m);
        m.section::<OpsFamily<state::Ops>>()
            .component("store")
            .record(0, true, ms);
        m.section::<OpsFamily<secrets::Ops>>()
            .component("vault")
            .record(0, false, ms);
        m.section::<OpsFamily<lock::Ops>>()
            .component("locks")
            .record(1, true, ms);
        m.section::<OpsFamily<configuration::Ops>>()
            .component("conf")
            .record(0, true, ms);
        let topic = m
            .section::<pubsub::metrics::Families>()
            .component("bus")
            .topic("orders");
        topic.ingress[0].record(ms);
        topic.egress[1].record(ms);
        topic.subscribed();
        topic.in_flight.add(2);
        // Published to only: no gauges.
        m.section::<pubsub::metrics::Families>()
            .component("bus")
            .topic("audit")
            .egress[1]
            .record(ms);
        topic.backlog.set(Some(5));
        let b = m.section::<bindings::metrics::Families>().binding("cron");
        b.output("create", true, ms);
        b.input[1].record(ms);
        m.mtls_init();
        m.cert_rotated();
        m.cert_rotate_failed("sentry down");
        m.resolver_error();
        m.connection_refused();
        m.spans_exported(3);
        m.spans_dropped(SpanDrop::QueueFull, 1);
        let out: String = m
            .render()
            .lines()
            .filter(|l| !l.contains("process_"))
            .map(|l| format!("{l}\n"))
            .collect();
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry/golden.prom");
        if std::env::var_os("SKIFF_BLESS").is_some() {
            std::fs::write(golden, &out).expect("bless");
        }
        let want = std::fs::read_to_string(golden).expect("golden file");
        assert!(
            out == want,
            "the /metrics exposition changed; diff against {golden}:\n{out}"
        );
    }
}
