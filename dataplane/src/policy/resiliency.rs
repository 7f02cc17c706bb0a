//! Dapr's `kind: Resiliency` documents: named timeouts, retries and circuit
//! breakers, and what uses them: apps (`targets.apps.<appId>`, applied on
//! the caller's side) and components (`targets.components.<name>.outbound`
//! for calls the sidecar makes to a component, `.inbound` for deliveries
//! from one).
//!
//! Everything is validated when loaded; a mistake names the file, the field
//! and what is wrong, and the sidecar does not start (or, on reload, keeps
//! the previous version).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::Deserialize;

use super::breaker::{Breaker, BreakerSpec, Trip};
use super::retry::{self, Backoff, Budget, Codes, RetrySpec};
use crate::config::Document;
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {why}")]
pub struct ResiliencyError {
    pub file: String,
    pub field: String,
    pub why: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    policies: Policies,
    #[serde(default)]
    targets: Targets,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Policies {
    #[serde(default)]
    timeouts: BTreeMap<String, String>,
    #[serde(default)]
    retries: BTreeMap<String, RetryYaml>,
    #[serde(default)]
    circuit_breakers: BTreeMap<String, BreakerYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryYaml {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    max_interval: Option<String>,
    #[serde(default)]
    max_retries: Option<i64>,
    #[serde(default)]
    matching: Option<MatchingYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchingYaml {
    #[serde(default, rename = "httpStatusCodes")]
    http: Option<String>,
    #[serde(default, rename = "gRPCStatusCodes")]
    grpc: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BreakerYaml {
    #[serde(default)]
    max_requests: Option<u64>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    trip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Targets {
    #[serde(default)]
    apps: BTreeMap<String, TargetYaml>,
    #[serde(default)]
    components: BTreeMap<String, ComponentTargetYaml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentTargetYaml {
    #[serde(default)]
    outbound: Option<TargetYaml>,
    #[serde(default)]
    inbound: Option<TargetYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetYaml {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retry: Option<String>,
    #[serde(default)]
    circuit_breaker: Option<String>,
}

/// What applies to calls to one app.
#[derive(Debug)]
pub struct AppPolicy {
    /// The Resiliency document that targets this app, and the app (the
    /// `name` of Dapr's resiliency metrics, and the app id).
    pub document: Arc<str>,
    pub target: Arc<str>,
    /// The metrics' `target` label: `app_<appId>`.
    pub label: Arc<str>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetrySpec>,
    pub breaker: Option<BreakerSpec>,
    /// One breaker per endpoint of the app.
    breakers: DashMap<SocketAddr, Arc<Breaker>>,
    pub budget: Budget,
    /// Retries sent, and retries the budget refused (metadata, metrics).
    pub retries: std::sync::atomic::AtomicU64,
    pub retries_refused: std::sync::atomic::AtomicU64,
}

impl AppPolicy {
    /// The breaker for one endpoint, when the app has a breaker policy.
    pub fn breaker(&self, ep: SocketAddr) -> Option<Arc<Breaker>> {
        let spec = self.breaker.as_ref()?;
        if let Some(b) = self.breakers.get(&ep) {
            return Some(b.clone());
        }
        Some(
            self.breakers
                .entry(ep)
                .or_insert_with(|| {
                    Arc::new(Breaker::for_target(
                        spec.clone(),
                        self.document.clone(),
                        self.label.clone(),
                    ))
                })
                .clone(),
        )
    }

    /// Breaker states by endpoint (metadata, metrics).
    pub fn breaker_states(&self) -> Vec<(SocketAddr, super::breaker::State)> {
        self.breakers
            .iter()
            .map(|e| (*e.key(), e.value().state()))
            .collect()
    }
}

/// The policies one direction of one component uses, as named.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub timeout: Option<Duration>,
    pub retry: Option<RetrySpec>,
    pub breaker: Option<BreakerSpec>,
}

impl PolicySet {
    fn is_empty(&self) -> bool {
        self.timeout.is_none() && self.retry.is_none() && self.breaker.is_none()
    }
}

/// What applies to calls to (or deliveries from) one component, made
/// when the component is loaded: one breaker for the component.
#[derive(Debug)]
pub struct ComponentPolicy {
    pub document: Arc<str>,
    /// The key of its resiliency series: the metrics' `target` label,
    /// `<Kind>_<name>` (`Statestore_cache`), marked when the policy is
    /// inbound ([`metrics::INBOUND_KEY`]).
    pub label: Arc<str>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetrySpec>,
    pub breaker: Option<Breaker>,
}

#[derive(Debug)]
struct ComponentTargets {
    document: Arc<str>,
    outbound: PolicySet,
    inbound: PolicySet,
}

/// Every app's policy; apps without one use the built-in default.
#[derive(Debug, Default)]
pub struct Resiliency {
    apps: HashMap<Box<str>, Arc<AppPolicy>>,
    components: HashMap<Box<str>, ComponentTargets>,
    /// Component policies compiled on first use, outbound and inbound, so
    /// their breakers live as long as this version of the policies (a
    /// reload starts them afresh, as for apps).
    compiled: DashMap<Box<str>, [Option<Arc<ComponentPolicy>>; 2]>,
    /// Document names, for metadata.
    pub names: Vec<String>,
}

impl Resiliency {
    /// Per target app: policy names, breaker states by endpoint, retry
    /// counts (for `/v1.0/metadata`; the metrics exporter reads the same).
    pub fn report(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let apps: serde_json::Map<String, serde_json::Value> = self
            .apps
            .iter()
            .map(|(app, p)| {
                let breakers: serde_json::Map<String, serde_json::Value> = p
                    .breaker_states()
                    .into_iter()
                    .map(|(ep, st)| (ep.to_string(), format!("{st:?}").to_lowercase().into()))
                    .collect();
                (
                    app.to_string(),
                    serde_json::json!({
                        "timeout": p.timeout.map(|t| format!("{t:?}")),
                        "retry": p.retry.as_ref().map(|r| r.name.clone()),
                        "circuitBreaker": p.breaker.as_ref().map(|b| b.name.clone()),
                        "breakers": breakers,
                        "retries": p.retries.load(Relaxed),
                        "retriesRefusedByBudget": p.retries_refused.load(Relaxed),
                    }),
                )
            })
            .collect();
        serde_json::json!({ "documents": self.names, "apps": apps })
    }

    /// The loaded documents' names.
    pub fn document_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Each app with a breaker policy: (app, document, state index), the
    /// app's state summarising its endpoints' breakers.
    pub fn app_breaker_states(&self) -> Vec<(&str, &str, usize)> {
        use super::breaker::State;
        self.apps
            .iter()
            .filter(|(_, p)| p.breaker.is_some())
            .map(|(app, p)| {
                let states = p.breaker_states();
                let state = if !states.is_empty() && states.iter().all(|(_, s)| *s == State::Open) {
                    State::Open
                } else if states.iter().any(|(_, s)| *s != State::Closed) {
                    State::HalfOpen
                } else {
                    State::Closed
                };
                (&**app, &*p.document, state.index())
            })
            .collect()
    }

    /// The outbound policy of component `name` (a `kind` such as
    /// `Statestore` labels its metrics, as Dapr's do), if it has one.
    pub fn component_outbound(&self, name: &str, kind: &str) -> Option<Arc<ComponentPolicy>> {
        self.component(name, kind, false)
    }

    /// Component `name`'s policy for one direction (`kind` names the
    /// component's block in metric labels: `Statestore`, `Pubsub`, ...),
    /// the same `Arc` on every call of this version of the policies.
    pub fn component(&self, name: &str, kind: &str, inbound: bool) -> Option<Arc<ComponentPolicy>> {
        // Most sidecars have no component policy: no lookup at all.
        if self.components.is_empty() {
            return None;
        }
        let i = usize::from(inbound);
        if let Some(c) = self.compiled.get(name) {
            return c[i].clone();
        }
        let t = self.components.get(name)?;
        let make = |set: &PolicySet, inbound: bool| {
            (!set.is_empty()).then(|| component_policy(&t.document, name, kind, set, inbound))
        };
        let both = [make(&t.outbound, false), make(&t.inbound, true)];
        // A racing first call may have compiled them too: the first kept wins.
        self.compiled.entry(name.into()).or_insert(both)[i].clone()
    }

    /// The inbound policy of component `name` (deliveries to the app).
    pub fn component_inbound(&self, name: &str, kind: &str) -> Option<Arc<ComponentPolicy>> {
        self.component(name, kind, true)
    }

    pub fn for_app(&self, app: &str) -> Option<&Arc<AppPolicy>> {
        // Most sidecars have no policy: skip hashing the app id.
        if self.apps.is_empty() {
            return None;
        }
        self.apps.get(app)
    }

    /// Builds from the `Resiliency` documents scoped to `app_id`.
    pub fn from_documents(docs: &[Document], app_id: &str) -> Result<Self, ResiliencyError> {
        let mut out = Resiliency::default();
        for d in docs.iter().filter(|d| d.kind == "Resiliency") {
            if !(d.scopes.is_empty() || d.scopes.iter().any(|s| s == app_id)) {
                continue;
            }
            let file = d.source.display().to_string();
            let err = |field: String, why: String| ResiliencyError {
                file: file.clone(),
                field,
                why,
            };
            let spec: Spec = serde_json::from_value(d.spec.clone())
                .map_err(|e| err("spec".into(), e.to_string()))?;
            let mut timeouts = HashMap::new();
            for (name, v) in &spec.policies.timeouts {
                let d = parse_duration(v)
                    .map_err(|w| err(format!("spec.policies.timeouts.{name}"), w))?;
                timeouts.insert(name.as_str(), d);
            }
            let mut retries = HashMap::new();
            for (name, r) in &spec.policies.retries {
                let field = format!("spec.policies.retries.{name}");
                retries.insert(
                    name.as_str(),
                    retry_spec(name, r).map_err(|(f, w)| err(format!("{field}.{f}"), w))?,
                );
            }
            let mut breakers = HashMap::new();
            for (name, b) in &spec.policies.circuit_breakers {
                let field = format!("spec.policies.circuitBreakers.{name}");
                breakers.insert(
                    name.as_str(),
                    breaker_spec(name, b).map_err(|(f, w)| err(format!("{field}.{f}"), w))?,
                );
            }
            for (app, t) in &spec.targets.apps {
                let field = |f: &str| format!("spec.targets.apps.{app}.{f}");
                let lookup = |kind: &str,
                              name: &Option<String>,
                              known: bool|
                 -> Result<(), ResiliencyError> {
                    match name {
                        Some(n) if !known => {
                            Err(err(field(kind), format!("no {kind} policy named {n:?}")))
                        }
                        _ => Ok(()),
                    }
                };
                lookup(
                    "timeout",
                    &t.timeout,
                    t.timeout
                        .as_deref()
                        .is_none_or(|n| timeouts.contains_key(n)),
                )?;
                lookup(
                    "retry",
                    &t.retry,
                    t.retry.as_deref().is_none_or(|n| retries.contains_key(n)),
                )?;
                lookup(
                    "circuitBreaker",
                    &t.circuit_breaker,
                    t.circuit_breaker
                        .as_deref()
                        .is_none_or(|n| breakers.contains_key(n)),
                )?;
                let policy = AppPolicy {
                    document: Arc::from(d.metadata.name.as_str()),
                    target: Arc::from(app.as_str()),
                    label: Arc::from(format!("app_{app}").as_str()),
                    timeout: t.timeout.as_deref().and_then(|n| timeouts.get(n).copied()),
                    retry: t.retry.as_deref().and_then(|n| retries.get(n).cloned()),
                    breaker: t
                        .circuit_breaker
                        .as_deref()
                        .and_then(|n| breakers.get(n).cloned()),
                    breakers: DashMap::new(),
                    budget: Budget::default(),
                    retries: Default::default(),
                    retries_refused: Default::default(),
                };
                if out
                    .apps
                    .insert(app.as_str().into(), Arc::new(policy))
                    .is_some()
                {
                    return Err(err(
                        format!("spec.targets.apps.{app}"),
                        "targeted by more than one Resiliency document".into(),
                    ));
                }
            }
            for (name, t) in &spec.targets.components {
                let set =
                    |dir: &str, y: &Option<TargetYaml>| -> Result<PolicySet, ResiliencyError> {
                        let Some(y) = y else {
                            return Ok(PolicySet::default());
                        };
                        let field = |f: &str| format!("spec.targets.components.{name}.{dir}.{f}");
                        let named = |kind: &str, n: &Option<String>, known: bool| match n {
                            Some(n) if !known => {
                                Err(err(field(kind), format!("no {kind} policy named {n:?}")))
                            }
                            _ => Ok(()),
                        };
                        named(
                            "timeout",
                            &y.timeout,
                            y.timeout
                                .as_deref()
                                .is_none_or(|n| timeouts.contains_key(n)),
                        )?;
                        named(
                            "retry",
                            &y.retry,
                            y.retry.as_deref().is_none_or(|n| retries.contains_key(n)),
                        )?;
                        named(
                            "circuitBreaker",
                            &y.circuit_breaker,
                            y.circuit_breaker
                                .as_deref()
                                .is_none_or(|n| breakers.contains_key(n)),
                        )?;
                        Ok(PolicySet {
                            timeout: y.timeout.as_deref().and_then(|n| timeouts.get(n).copied()),
                            retry: y.retry.as_deref().and_then(|n| retries.get(n).cloned()),
                            breaker: y
                                .circuit_breaker
                                .as_deref()
                                .and_then(|n| breakers.get(n).cloned()),
                        })
                    };
                let targets = ComponentTargets {
                    document: Arc::from(d.metadata.name.as_str()),
                    outbound: set("outbound", &t.outbound)?,
                    inbound: set("inbound", &t.inbound)?,
                };
                if out
                    .components
                    .insert(name.as_str().into(), targets)
                    .is_some()
                {
                    return Err(err(
                        format!("spec.targets.components.{name}"),
                        "targeted by more than one Resiliency document".into(),
                    ));
                }
            }
            out.names.push(d.metadata.name.clone());
        }
        Ok(out)
    }
}

fn component_policy(
    document: &Arc<str>,
    name: &str,
    kind: &str,
    set: &PolicySet,
    inbound: bool,
) -> Arc<ComponentPolicy> {
    // The series of an inbound policy are their own (Dapr's
    // `flow_direction="inbound"`), under the same `target`.
    let suffix = if inbound { metrics::INBOUND_KEY } else { "" };
    let label: Arc<str> = Arc::from(format!("{kind}_{name}{suffix}").as_str());
    Arc::new(ComponentPolicy {
        document: document.clone(),
        breaker: set
            .breaker
            .clone()
            .map(|b| Breaker::for_target(b, document.clone(), label.clone())),
        label,
        timeout: set.timeout,
        retry: set.retry.clone(),
    })
}

fn retry_spec(name: &str, r: &RetryYaml) -> Result<RetrySpec, (&'static str, String)> {
    let dur =
        |f: &'static str, v: &Option<String>| -> Result<Option<Duration>, (&'static str, String)> {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|w| (f, w))
        };
    let backoff = match r.policy.as_deref().unwrap_or("constant") {
        "constant" => {
            Backoff::Constant(dur("duration", &r.duration)?.unwrap_or(retry::DEFAULT_CONSTANT))
        }
        "exponential" => Backoff::Exponential {
            max_interval: dur("maxInterval", &r.max_interval)?
                .unwrap_or(retry::DEFAULT_MAX_INTERVAL),
        },
        other => {
            return Err((
                "policy",
                format!("{other:?} is not constant or exponential"),
            ));
        }
    };
    let max_retries = match r.max_retries {
        None | Some(-1) => None,
        Some(n) if n >= 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Some(n) => {
            return Err((
                "maxRetries",
                format!("{n} is not -1 (unlimited) or a count"),
            ));
        }
    };
    let codes = |f: &'static str, v: Option<&String>| -> Result<Codes, (&'static str, String)> {
        v.map_or(Ok(Codes::default()), |s| {
            Codes::parse(s).map_err(|w| (f, w))
        })
    };
    Ok(RetrySpec {
        name: name.to_owned(),
        backoff,
        max_retries,
        http_codes: codes(
            "matching.httpStatusCodes",
            r.matching.as_ref().and_then(|m| m.http.as_ref()),
        )?,
        grpc_codes: codes(
            "matching.gRPCStatusCodes",
            r.matching.as_ref().and_then(|m| m.grpc.as_ref()),
        )?,
    })
}

fn breaker_spec(name: &str, b: &BreakerYaml) -> Result<BreakerSpec, (&'static str, String)> {
    let dur = |f: &'static str,
               v: &Option<String>,
               d: Duration|
     -> Result<Duration, (&'static str, String)> {
        v.as_deref()
            .map_or(Ok(d), |s| parse_duration(s).map_err(|w| (f, w)))
    };
    Ok(BreakerSpec {
        name: name.to_owned(),
        max_requests: b.max_requests.unwrap_or(1).max(1),
        interval: dur("interval", &b.interval, Duration::ZERO)?,
        timeout: dur("timeout", &b.timeout, Duration::from_secs(60))?,
        trip: Trip::parse(b.trip.as_deref().unwrap_or("consecutiveFailures > 5"))
            .map_err(|w| ("trip", w))?,
    })
}

/// Go-style durations: `5s`, `100ms`, `1m30s`, `1.5h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 5s, 100ms or 1m30s");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = t;
    let mut total = 0.0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        let after = &rest[n_end..];
        let u_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let unit = match &after[..u_end] {
            "ns" => 1e-9,
            // Go takes the micro sign and the Greek mu alike.
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &after[u_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Document {
        let mut d: Document = yaml_serde::from_str(yaml).expect("yaml");
        d.source = "res.yaml".into();
        d
    }

    const GOOD: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: { name: r }
spec:
  policies:
    timeouts: { fast: 250ms, general: 1m30s }
    retries:
      flaky: { policy: constant, duration: 10ms, maxRetries: 3, matching: { httpStatusCodes: "429,500-599", gRPCStatusCodes: "14" } }
      forever: { policy: exponential, maxInterval: 2s, maxRetries: -1 }
    circuitBreakers:
      cb: { maxRequests: 2, interval: 0s, timeout: 5s, trip: "consecutiveFailures >= 3" }
  targets:
    apps:
      orders: { timeout: fast, retry: flaky, circuitBreaker: cb }
      audit: { retry: forever }
"#;

    #[test]
    fn a_full_document_compiles() {
        let r = Resiliency::from_documents(&[doc(GOOD)], "me").expect("compile");
        let o = r.for_app("orders").expect("orders");
        assert_eq!(o.timeout, Some(Duration::from_millis(250)));
        let retry = o.retry.as_ref().expect("retry");
        assert_eq!(retry.max_retries, Some(3));
        assert!(retry.http_codes.contains(503) && retry.grpc_codes.contains(14));
        assert_eq!(o.breaker.as_ref().expect("cb").max_requests, 2);
        let a = r.for_app("audit").expect("audit");
        assert_eq!(a.retry.as_ref().expect("retry").max_retries, None);
        assert!(a.timeout.is_none() && a.breaker.is_none());
        assert!(r.for_app("other").is_none());
    }

    #[test]
    fn scopes_choose_the_sidecars() {
        let scoped = GOOD.replace(
            "metadata: { name: r }",
            "metadata: { name: r }\nscopes: [billing]",
        );
        assert!(
            Resiliency::from_documents(&[doc(&scoped)], "me")
                .expect("ok")
                .for_app("orders")
                .is_none()
        );
        assert!(
            Resiliency::from_documents(&[doc(&scoped)], "billing")
                .expect("ok")
                .for_app("orders")
                .is_some()
        );
    }

    #[test]
    fn mistakes_name_the_file_and_field() {
        let bad = |from: &str, to: &str| {
            Resiliency::from_documents(&[doc(&GOOD.replace(from, to))], "me")
                .expect_err("refused")
                .to_string()
        };
        let e = bad(
            "retry: flaky, circuitBreaker",
            "retry: nope, circuitBreaker",
        );
        assert!(
            e.starts_with(
                "res.yaml: spec.targets.apps.orders.retry: no retry policy named \"nope\""
            ),
            "{e}"
        );
        let e = bad("fast: 250ms", "fast: 250 parsecs");
        assert!(
            e.contains("spec.policies.timeouts.fast") && e.contains("not a duration"),
            "{e}"
        );
        let e = bad("consecutiveFailures >= 3", "consecutiveFailures >>= 3");
        assert!(e.contains("spec.policies.circuitBreakers.cb.trip"), "{e}");
        let e = bad("duration: 10ms", "duration: soon");
        assert!(e.contains("spec.policies.retries.flaky.duration"), "{e}");
        let e = bad("maxRetries: 3", "maxRetries: -7");
        assert!(e.contains("spec.policies.retries.flaky.maxRetries"), "{e}");
        let e = bad("\"429,500-599\"", "\"5xx\"");
        assert!(e.contains("matching.httpStatusCodes"), "{e}");
        let e = bad("policy: constant", "policy: linear");
        assert!(e.contains("retries.flaky.policy"), "{e}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        // The Python SDK writes Go's full form with the Greek mu.
        assert_eq!(
            parse_duration("1h0m0s0ms0μs"),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(parse_duration("5µs"), parse_duration("5μs"));
        for b in ["", "5", "s", "5 s", "5d", "-1s"] {
            assert!(parse_duration(b).is_err(), "{b:?}");
        }
    }
}
