//! The resiliency families, Dapr's `dapr_resiliency_*`: policies applied
//! and acting (timeouts fired, retries sent, breaker state changes), by
//! Resiliency document and target, outbound and inbound.

use super::*;

/// Marks the series key of an inbound policy (a component's deliveries
/// to the app): the same `target` label, `flow_direction="inbound"`. A
/// NUL cannot appear in a component's name.
pub const INBOUND_KEY: &str = "\u{0}inbound";

impl Metrics {
    /// A resiliency policy applied to a call to `target` (Dapr's
    /// `resiliency_count`; `target` is the label value, `app_<appId>` or
    /// `Statestore_<name>`, made once when the policy is loaded).
    pub fn resiliency_executed(&self, name: &str, target: &str, kind: PolicyKind) {
        self.resiliency.with(target, |t| {
            let _ = t.name.get_or_init(|| name.into());
            t.executed[kind as usize].inc();
        });
    }

    /// A call that a policy with these parts (timeout, retry, breaker)
    /// applies to: one `resiliency_count` per part it has.
    pub fn policy_applied(&self, name: &str, target: &str, parts: [bool; 3]) {
        for (on, kind) in parts.into_iter().zip([
            PolicyKind::Timeout,
            PolicyKind::Retry,
            PolicyKind::CircuitBreaker,
        ]) {
            if on {
                self.resiliency_executed(name, target, kind);
            }
        }
    }

    /// A timeout that fired or a retry that was sent.
    pub fn resiliency_activated(&self, name: &str, target: &str, kind: PolicyKind) {
        self.resiliency.with(target, |t| {
            let _ = t.name.get_or_init(|| name.into());
            match kind {
                PolicyKind::Timeout | PolicyKind::Retry => t.activated[kind as usize].inc(),
                PolicyKind::CircuitBreaker => {}
            }
        });
    }

    /// A breaker changed state (`state` indexes [`CB_STATES`]).
    pub fn breaker_transition(&self, name: &str, target: &str, state: usize) {
        self.resiliency.with(target, |t| {
            let _ = t.name.get_or_init(|| name.into());
            t.transitions[state.min(2)].inc();
        });
    }

    pub(super) fn render_resiliency(&self, e: &mut Encoder, app: &str) {
        let ns = self.namespace.get().map_or("", |n| n);
        let l = |t: &ResiliencyTarget, key: &str, policy: usize, status: &str| {
            let (target, flow) = match key.strip_suffix(INBOUND_KEY) {
                Some(target) => (target, "inbound"),
                None => (key, "outbound"),
            };
            labels(&[
                ("app_id", app),
                ("name", t.name.get().map_or("", |n| n)),
                ("policy", POLICY_NAMES[policy]),
                ("namespace", ns),
                ("flow_direction", flow),
                ("target", target),
                ("status", status),
            ])
        };
        e.header(
            "dapr_resiliency_count",
            "counter",
            "Calls a resiliency policy was applied to.",
        );
        self.resiliency.each(|target, t| {
            for (p, c) in t.executed.iter().enumerate() {
                if c.get() > 0 {
                    e.sample("dapr_resiliency_count", &l(t, target, p, ""), c.get());
                }
            }
        });
        e.header(
            "dapr_resiliency_activations_total",
            "counter",
            "Times a policy acted: a timeout fired, a retry was sent, a breaker changed state.",
        );
        self.resiliency.each(|target, t| {
            for (p, c) in t.activated.iter().enumerate() {
                if c.get() > 0 {
                    e.sample(
                        "dapr_resiliency_activations_total",
                        &l(t, target, p, ""),
                        c.get(),
                    );
                }
            }
            for (s, c) in t.transitions.iter().enumerate() {
                if c.get() > 0 {
                    let lab = l(t, target, PolicyKind::CircuitBreaker as usize, CB_STATES[s]);
                    e.sample("dapr_resiliency_activations_total", &lab, c.get());
                }
            }
        });
    }
}
