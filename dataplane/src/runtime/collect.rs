//! Scrape-time metrics: state that already lives elsewhere (pools,
//! resolver caches, breakers) is read when Prometheus asks, so keeping it
//! costs the call path nothing.

use crate::policy::Policies;
use crate::pool::PoolStats;
use skiff_resolvers::Resolver;

use crate::telemetry::metrics::CB_STATES;
use crate::telemetry::registry::{Encoder, MAX_SERIES, labels};

/// `skiff_pool_*` for each named pool.
pub fn pools<const N: usize>(e: &mut Encoder, app: &str, pools: [(&str, Option<PoolStats>); N]) {
    type Pick = fn(&PoolStats) -> u64;
    let rows: [(&str, &str, &str, Pick); 5] = [
        (
            "skiff_pool_endpoints",
            "gauge",
            "Endpoints the pool holds connections for.",
            |s| s.endpoints as u64,
        ),
        (
            "skiff_pool_connections_open",
            "gauge",
            "Open pooled HTTP/2 connections.",
            |s| s.connections as u64,
        ),
        (
            "skiff_pool_streams_in_flight",
            "gauge",
            "Calls in flight on pooled connections.",
            |s| s.in_flight as u64,
        ),
        (
            "skiff_pool_connections_opened_total",
            "counter",
            "Connections the pool opened.",
            |s| s.opened,
        ),
        (
            "skiff_pool_connect_failures_total",
            "counter",
            "Dials (TCP, TLS or HTTP/2 handshake) that failed.",
            |s| s.connect_failures,
        ),
    ];
    for (name, kind, help, pick) in rows {
        e.header(name, kind, help);
        for (pool, st) in &pools {
            if let Some(st) = st {
                e.sample(name, &labels(&[("app_id", app), ("pool", pool)]), pick(st));
            }
        }
    }
}

/// Endpoints per app and the age of each cached answer.
pub fn resolver(e: &mut Encoder, app: &str, r: &dyn Resolver) {
    let mut sets = r.cached();
    sets.truncate(MAX_SERIES);
    let rows: Vec<(String, &skiff_resolvers::EndpointSet)> = sets
        .iter()
        .map(|(a, set)| {
            let l = labels(&[
                ("app_id", app),
                ("resolver", r.name()),
                ("dst_app_id", &a.app_id),
                ("dst_namespace", &a.namespace),
            ]);
            (l, &**set)
        })
        .collect();
    e.header(
        "skiff_resolver_endpoints",
        "gauge",
        "Endpoints the resolver knows for an app.",
    );
    for (l, set) in &rows {
        e.sample("skiff_resolver_endpoints", l, set.snapshot().len());
    }
    e.header(
        "skiff_resolver_cache_age_seconds",
        "gauge",
        "Time since the resolver last confirmed an app's endpoints.",
    );
    for (l, set) in &rows {
        e.sample(
            "skiff_resolver_cache_age_seconds",
            l,
            set.age().as_secs_f64(),
        );
    }
}

/// Dapr's `dapr_resiliency_loaded` and `dapr_resiliency_cb_state` (1 for
/// the current state of each app's breaker, 0 for the others). Skiff keeps
/// a breaker per endpoint; the app's state is `open` when every endpoint's
/// is, `half-open` when any is probing, else `closed`.
pub fn breakers(e: &mut Encoder, app: &str, namespace: &str, p: &Policies) {
    e.header(
        "dapr_resiliency_loaded",
        "gauge",
        "Resiliency documents loaded.",
    );
    for name in p.resiliency.document_names() {
        let l = labels(&[("app_id", app), ("name", name), ("namespace", namespace)]);
        e.sample("dapr_resiliency_loaded", &l, 1);
    }
    e.header(
        "dapr_resiliency_cb_state",
        "gauge",
        "Circuit breaker state per target: 1 on the current state.",
    );
    for (target, name, state) in p.resiliency.app_breaker_states() {
        for (i, st) in CB_STATES.iter().enumerate() {
            let l = labels(&[
                ("app_id", app),
                ("name", name),
                ("policy", "circuitbreaker"),
                ("namespace", namespace),
                ("flow_direction", "outbound"),
                ("target", &format!("app_{target}")),
                ("status", st),
            ]);
            e.sample("dapr_resiliency_cb_state", &l, u8::from(i == state));
        }
    }
}
