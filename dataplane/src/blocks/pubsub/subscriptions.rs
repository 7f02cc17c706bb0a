//! Subscriptions, from the three places Dapr takes them: declarative
//! (`kind: Subscription`, `dapr.io/v1alpha1` and `v2alpha1`, with
//! `scopes`), programmatic (the app's `GET /dapr/subscribe`, v1 and v2
//! shapes, or a gRPC app's `ListTopicSubscriptions`), and streaming
//! (`SubscribeTopicEventsAlpha1`). Each becomes a [`Sub`] whose routing
//! rules are CEL programs compiled once; [`Sub::route`] picks the path of
//! one event.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use skiff_proto::runtime as pb;

use crate::config::Document;

/// Skiff's per-subscription limit on messages in flight (subscription
/// metadata); the component's `concurrency` applies otherwise.
pub const MAX_IN_FLIGHT_KEY: &str = "skiff.maxInFlight";
/// Bulk subscribe defaults (daprd's).
pub const BULK_MAX_COUNT: usize = 100;
pub const BULK_MAX_AWAIT_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Declarative,
    Programmatic,
    Streaming,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declarative => "DECLARATIVE",
            Self::Programmatic => "PROGRAMMATIC",
            Self::Streaming => "STREAMING",
        }
    }
}

/// One routing rule: a CEL condition (none: always) and the app path.
#[derive(Clone)]
pub struct Rule {
    pub source: String,
    pub program: Option<Arc<cel::Program>>,
    pub path: String,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({:?} -> {})", self.source, self.path)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bulk {
    pub max_count: usize,
    pub max_await_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Sub {
    pub pubsub: String,
    pub topic: String,
    pub rules: Vec<Rule>,
    pub dead_letter: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub bulk: Option<Bulk>,
    pub kind: Kind,
    /// `rawPayload: true`: the broker holds bare payloads.
    pub raw: bool,
    pub max_in_flight: Option<usize>,
}

/// Where one event goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Path(&'a str),
    /// No rule matched: acked (dead-lettered when a topic is set).
    NoMatch,
    /// A rule did not evaluate to a bool: dead-lettered, else retried.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubError(pub String);

impl Sub {
    /// Whether routing needs the event decoded.
    pub fn needs_event(&self) -> bool {
        self.rules.iter().any(|r| r.program.is_some())
    }

    /// The first rule whose condition holds (`event` is the CloudEvent).
    pub fn route(&self, event: Option<&Value>) -> Route<'_> {
        // The event is bound once, for every rule that needs it.
        let mut cx: Option<cel::Context<'_, '_>> = None;
        for r in &self.rules {
            let Some(p) = &r.program else {
                return Route::Path(&r.path);
            };
            let Some(event) = event else {
                return Route::Failed(format!("rule {:?}: the event is not JSON", r.source));
            };
            let cx = match &mut cx {
                Some(c) => c,
                None => match bind(event) {
                    Ok(c) => cx.insert(c),
                    Err(e) => return Route::Failed(format!("rule {:?}: {e}", r.source)),
                },
            };
            match eval(p, cx) {
                Ok(true) => return Route::Path(&r.path),
                Ok(false) => {}
                Err(e) => return Route::Failed(format!("rule {:?}: {e}", r.source)),
            }
        }
        Route::NoMatch
    }

    /// The routes as a user wrote them, for the log: `/orders` or
    /// `event.type == "x" -> /x, /default`.
    pub fn routes_text(&self) -> String {
        let parts: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                if r.source.is_empty() {
                    r.path.clone()
                } else {
                    format!("{} -> {}", r.source, r.path)
                }
            })
            .collect();
        parts.join(", ")
    }

    /// `/v1.0/metadata`'s `subscriptions[]` entry.
    pub fn describe(&self) -> Value {
        let mut v = serde_json::json!({
            "pubsubname": self.pubsub,
            "topic": self.topic,
            "deadLetterTopic": self.dead_letter.clone().unwrap_or_default(),
            "type": self.kind.as_str(),
            "rules": self.rules.iter().map(|r| {
                let mut o = serde_json::json!({"path": r.path});
                if !r.source.is_empty() {
                    o["match"] = Value::String(r.source.clone());
                }
                o
            }).collect::<Vec<_>>(),
        });
        if !self.metadata.is_empty() {
            v["metadata"] = self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        v
    }
}

/// CEL's standard library, built once (a context made with
/// `Context::default()` builds it again each time).
static CEL_ENV: std::sync::LazyLock<Arc<cel::Env>> =
    std::sync::LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A context with `event` bound.
fn bind(event: &Value) -> Result<cel::Context<'static, 'static>, String> {
    let mut cx = cel::Context::with_env(CEL_ENV.clone());
    cx.add_variable("event", event.clone())
        .map_err(|e| e.to_string())?;
    Ok(cx)
}

fn eval(p: &cel::Program, cx: &cel::Context<'_, '_>) -> Result<bool, String> {
    match p.execute(cx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("evaluated to {other:?}, not a bool")),
        Err(e) => Err(e.to_string()),
    }
}

/// Compiles the rules (in order) and the default route (last).
fn rules(list: &[RuleSpec], default: Option<&str>) -> Result<Vec<Rule>, SubError> {
    let mut out = Vec::with_capacity(list.len() + 1);
    for r in list {
        let m = r.r#match.trim();
        let program = if m.is_empty() {
            None
        } else {
            Some(Arc::new(cel::Program::compile(m).map_err(|e| {
                SubError(format!("routing rule {m:?} is not valid CEL: {e}"))
            })?))
        };
        if r.path.is_empty() {
            return Err(SubError(format!("routing rule {m:?} has no path")));
        }
        out.push(Rule {
            source: m.to_owned(),
            program,
            path: r.path.clone(),
        });
    }
    if let Some(d) = default.filter(|d| !d.is_empty()) {
        out.push(Rule {
            source: String::new(),
            program: None,
            path: d.to_owned(),
        });
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
struct RuleSpec {
    #[serde(default)]
    r#match: String,
    #[serde(default)]
    path: String,
}

#[derive(Debug, Default, Deserialize)]
struct RoutesSpec {
    #[serde(default)]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    default: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkSpec {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: Option<i64>,
    #[serde(default)]
    max_await_duration_ms: Option<i64>,
}

/// One subscription as the YAML spec or `/dapr/subscribe` writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubSpec {
    #[serde(default, alias = "pubsubName")]
    pubsubname: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    route: String,
    #[serde(default)]
    routes: Option<RoutesSpec>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    dead_letter_topic: String,
    #[serde(default)]
    bulk_subscribe: Option<BulkSpec>,
}

fn bulk(b: Option<&BulkSpec>) -> Option<Bulk> {
    let b = b.filter(|b| b.enabled)?;
    Some(Bulk {
        max_count: b
            .max_messages_count
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(BULK_MAX_COUNT),
        max_await_ms: b
            .max_await_duration_ms
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(BULK_MAX_AWAIT_MS),
    })
}

fn build(
    pubsub: String,
    topic: String,
    rules: Vec<Rule>,
    dead_letter: String,
    metadata: Vec<(String, String)>,
    bulk: Option<Bulk>,
    kind: Kind,
) -> Sub {
    let get = |k: &str| {
        metadata
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let raw = get("rawPayload").and_then(skiff_components::metadata::truthy) == Some(true);
    let max_in_flight = get(MAX_IN_FLIGHT_KEY)
        .and_then(|v| v.trim().parse().ok())
        .filter(|n: &usize| *n > 0);
    Sub {
        pubsub,
        topic,
        rules,
        dead_letter: Some(dead_letter).filter(|d| !d.is_empty()),
        metadata,
        bulk,
        kind,
        raw,
        max_in_flight,
    }
}

fn strings(m: Option<serde_json::Map<String, Value>>) -> Vec<(String, String)> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// One item of `/dapr/subscribe` or a Subscription spec; `None` when it
/// names no path (daprd drops those).
fn from_spec(s: SubSpec, kind: Kind) -> Result<Option<Sub>, SubError> {
    let (list, default) = match &s.routes {
        Some(r) => (
            &r.rules[..],
            Some(r.default.as_str())
                .filter(|d| !d.is_empty())
                .or(Some(s.route.as_str())),
        ),
        None => (&[][..], Some(s.route.as_str())),
    };
    let rules = rules(list, default)?;
    if rules.is_empty() {
        return Ok(None);
    }
    if s.pubsubname.is_empty() || s.topic.is_empty() {
        return Err(SubError("pubsubname and topic are required".into()));
    }
    Ok(Some(build(
        s.pubsubname,
        s.topic,
        rules,
        s.dead_letter_topic,
        strings(s.metadata),
        bulk(s.bulk_subscribe.as_ref()),
        kind,
    )))
}

/// The `kind: Subscription` documents that apply to `app_id`.
pub fn declarative(docs: &[Document], app_id: &str) -> Result<Vec<Sub>, SubError> {
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| d.kind == "Subscription") {
        if !d.scopes.is_empty() && !d.scopes.iter().any(|s| s == app_id) {
            continue;
        }
        let file = d.source.display();
        let name = &d.metadata.name;
        if !matches!(
            d.api_version.as_str(),
            "dapr.io/v1alpha1" | "dapr.io/v2alpha1"
        ) {
            return Err(SubError(format!(
                "{file}: subscription {name}: apiVersion {} is not dapr.io/v1alpha1 or dapr.io/v2alpha1",
                d.api_version
            )));
        }
        let spec: SubSpec = serde_json::from_value(d.spec.clone())
            .map_err(|e| SubError(format!("{file}: subscription {name}: spec: {e}")))?;
        match from_spec(spec, Kind::Declarative)
            .map_err(|e| SubError(format!("{file}: subscription {name}: {e}")))?
        {
            Some(s) => out.push(s),
            None => {
                return Err(SubError(format!(
                    "{file}: subscription {name}: no route (spec.route or spec.routes)"
                )));
            }
        }
    }
    Ok(out)
}

/// The answer of an HTTP app's `GET /dapr/subscribe`. Items that fail are
/// named in the returned errors and left out; the others stand.
pub fn programmatic(body: &[u8]) -> (Vec<Sub>, Vec<String>) {
    let items: Vec<Value> = match serde_json::from_slice(body) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Null) => Vec::new(),
        Ok(_) => {
            return (
                Vec::new(),
                vec!["/dapr/subscribe did not answer a JSON array".into()],
            );
        }
        Err(e) => {
            return (
                Vec::new(),
                vec![format!("/dapr/subscribe answered invalid JSON: {e}")],
            );
        }
    };
    let (mut subs, mut errors) = (Vec::new(), Vec::new());
    for item in items {
        let spec: SubSpec = match serde_json::from_value(item) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("subscription item: {e}"));
                continue;
            }
        };
        let what = format!("{}/{}", spec.pubsubname, spec.topic);
        match from_spec(spec, Kind::Programmatic) {
            Ok(Some(s)) => subs.push(s),
            Ok(None) => {}
            Err(e) => errors.push(format!("subscription {what}: {e}")),
        }
    }
    (subs, errors)
}

/// A gRPC app's `ListTopicSubscriptions` answer.
pub fn from_grpc(r: pb::ListTopicSubscriptionsResponse) -> (Vec<Sub>, Vec<String>) {
    let (mut subs, mut errors) = (Vec::new(), Vec::new());
    for s in r.subscriptions {
        let what = format!("{}/{}", s.pubsub_name, s.topic);
        let routes = s.routes.unwrap_or_default();
        let list: Vec<RuleSpec> = routes
            .rules
            .into_iter()
            .map(|r| RuleSpec {
                r#match: r.r#match,
                path: r.path,
            })
            .collect();
        // No routes: the path is "" (OnTopicEvent carries it).
        let compiled = if list.is_empty() && routes.default.is_empty() {
            Ok(vec![Rule {
                source: String::new(),
                program: None,
                path: String::new(),
            }])
        } else {
            rules(&list, Some(&routes.default))
        };
        match compiled {
            Ok(rules) if !s.pubsub_name.is_empty() && !s.topic.is_empty() => {
                let b = s.bulk_subscribe.filter(|b| b.enabled).map(|b| Bulk {
                    max_count: usize::try_from(b.max_messages_count)
                        .ok()
                        .filter(|n| *n > 0)
                        .unwrap_or(BULK_MAX_COUNT),
                    max_await_ms: u64::try_from(b.max_await_duration_ms)
                        .ok()
                        .filter(|n| *n > 0)
                        .unwrap_or(BULK_MAX_AWAIT_MS),
                });
                subs.push(build(
                    s.pubsub_name,
                    s.topic,
                    rules,
                    s.dead_letter_topic,
                    s.metadata.into_iter().collect(),
                    b,
                    Kind::Programmatic,
                ));
            }
            Ok(_) => errors.push(format!(
                "subscription {what}: pubsub_name and topic are required"
            )),
            Err(e) => errors.push(format!("subscription {what}: {e}")),
        }
    }
    (subs, errors)
}

/// A streaming subscription's first message.
pub fn streaming(
    pubsub: String,
    topic: String,
    metadata: Vec<(String, String)>,
    dead_letter: Option<String>,
) -> Sub {
    let rules = vec![Rule {
        source: String::new(),
        program: None,
        path: String::new(),
    }];
    build(
        pubsub,
        topic,
        rules,
        dead_letter.unwrap_or_default(),
        metadata,
        None,
        Kind::Streaming,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v1_and_v2_shapes_with_rules_in_order() {
        let body = json!([
            {"pubsubname": "ps", "topic": "a", "route": "/a", "metadata": {"rawPayload": "true"}},
            {"pubsubname": "ps", "topic": "b", "route": "/ignored", "routes": {
                "rules": [{"match": "event.type == \"big\"", "path": "/big"},
                          {"match": "event.data.n > 10", "path": "/many"}],
                "default": "/b"}, "deadLetterTopic": "dead"},
            {"pubsubname": "ps", "topic": "c"},
        ])
        .to_string();
        let (subs, errors) = programmatic(body.as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(subs.len(), 2, "the item without a path is dropped");
        assert!(subs[0].raw && !subs[0].needs_event());
        assert_eq!(subs[0].route(None), Route::Path("/a"));
        let b = &subs[1];
        assert_eq!(b.dead_letter.as_deref(), Some("dead"));
        assert_eq!(b.route(Some(&json!({"type": "big"}))), Route::Path("/big"));
        assert_eq!(
            b.route(Some(&json!({"type": "x", "data": {"n": 11}}))),
            Route::Path("/many")
        );
        assert_eq!(
            b.route(Some(&json!({"type": "x", "data": {"n": 1}}))),
            Route::Path("/b")
        );
    }

    #[test]
    fn bad_cel_is_an_error_and_non_bool_fails_routing() {
        let body = br#"[{"pubsubname":"ps","topic":"t","routes":{"rules":[{"match":"event.type ==","path":"/x"}]}}]"#;
        let (subs, errors) = programmatic(body);
        assert!(subs.is_empty());
        assert!(errors[0].contains("not valid CEL"), "{errors:?}");
        let body = br#"[{"pubsubname":"ps","topic":"t","routes":{"rules":[{"match":"event.type","path":"/x"}]}}]"#;
        let (subs, _) = programmatic(body);
        assert!(matches!(
            subs[0].route(Some(&json!({"type": "s"}))),
            Route::Failed(_)
        ));
        let body = br#"[{"pubsubname":"ps","topic":"t","routes":{"rules":[{"match":"event.type == 'z'","path":"/x"}]}}]"#;
        let (subs, _) = programmatic(body);
        assert_eq!(subs[0].route(Some(&json!({"type": "s"}))), Route::NoMatch);
    }

    #[test]
    fn bulk_and_limits() {
        let body = br#"[{"pubsubname":"ps","topic":"t","route":"/t","bulkSubscribe":{"enabled":true,"maxMessagesCount":5},"metadata":{"skiff.maxInFlight":"3"}}]"#;
        let (subs, _) = programmatic(body);
        assert_eq!(
            subs[0].bulk,
            Some(Bulk {
                max_count: 5,
                max_await_ms: 1000
            })
        );
        assert_eq!(subs[0].max_in_flight, Some(3));
    }
}
