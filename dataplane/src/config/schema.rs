//! The fields Dapr's documents have, and the one check every loaded
//! document goes through: a field that is not among them is named with
//! its file and the closest known name ("did you mean"), so a typo does
//! not silently turn a feature off. daprd ignores unknown fields without
//! a word; Skiff warns, and refuses to start where ignoring the field
//! would weaken security (access control, the HTTP pipelines, secret
//! scopes, API allow lists, component deny lists, `scopes`).
//!
//! The field lists follow dapr/dapr's `pkg/apis/*/types.go`, including
//! fields of newer Dapr versions that Skiff knowingly does not act on
//! (workflow limits, wasm, MCP servers): those load without a warning.
//!
//! A schema is a list of dotted paths: `name[]` is a list of objects,
//! `{}` a map whose keys are the user's (policy names, app ids), and a
//! trailing `*` marks a value whose content is free (JSON values,
//! options).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

/// What every document has, whatever its kind (Kubernetes' TypeMeta and
/// ObjectMeta).
const COMMON: &str = "
apiVersion
kind
metadata.name
metadata.generateName
metadata.namespace
metadata.selfLink
metadata.uid
metadata.resourceVersion
metadata.generation
metadata.creationTimestamp
metadata.deletionTimestamp
metadata.deletionGracePeriodSeconds
metadata.labels.{}
metadata.annotations.{}
metadata.ownerReferences[].*
metadata.finalizers
metadata.managedFields[].*
";

/// Dapr's name/value/secretKeyRef/envRef item, under `prefix`.
fn name_value(prefix: &str) -> String {
    [
        "name",
        "value.*",
        "secretKeyRef.name",
        "secretKeyRef.key",
        "envRef",
    ]
    .iter()
    .map(|f| format!("{prefix}.{f}\n"))
    .collect()
}

fn component() -> String {
    format!(
        "spec.type\nspec.version\nspec.ignoreErrors\nspec.initTimeout\n{}auth.secretStore\nscopes\n",
        name_value("spec.metadata[]")
    )
}

fn configuration() -> String {
    let mut s = String::new();
    for p in ["httpPipeline", "appHttpPipeline"] {
        for f in [
            "name",
            "type",
            "version",
            "selector.fields[].field",
            "selector.fields[].value",
        ] {
            s += &format!("spec.{p}.handlers[].{f}\n");
        }
    }
    s += "
spec.tracing.samplingRate
spec.tracing.stdout
spec.tracing.zipkin.endpointAddress
spec.tracing.otel.protocol
spec.tracing.otel.endpointAddress
spec.tracing.otel.isSecure
spec.tracing.otel.timeout
spec.tracing.otel.headers.*
";
    for m in ["metric", "metrics"] {
        for f in [
            "enabled",
            "recordErrorCodes",
            "http.increasedCardinality",
            "http.pathMatching",
            "http.excludeVerbs",
            "rules[].name",
            "rules[].labels[].name",
            "rules[].labels[].regex.{}",
            "latencyDistributionBuckets",
            "workflow.latencyDistributionBuckets",
            "workflow.latencyDistributionUnits",
        ] {
            s += &format!("spec.{m}.{f}\n");
        }
    }
    s += "
spec.mtls.enabled
spec.mtls.workloadCertTTL
spec.mtls.allowedClockSkew
spec.mtls.sentryAddress
spec.mtls.controlPlaneTrustDomain
spec.mtls.tokenValidators[].name
spec.mtls.tokenValidators[].options.*
spec.secrets.scopes[].storeName
spec.secrets.scopes[].defaultAccess
spec.secrets.scopes[].allowedSecrets
spec.secrets.scopes[].deniedSecrets
spec.accessControl.defaultAction
spec.accessControl.trustDomain
spec.accessControl.policies[].appId
spec.accessControl.policies[].defaultAction
spec.accessControl.policies[].trustDomain
spec.accessControl.policies[].namespace
spec.accessControl.policies[].operations[].name
spec.accessControl.policies[].operations[].action
spec.accessControl.policies[].operations[].httpVerb
spec.nameResolution.component
spec.nameResolution.version
spec.nameResolution.configuration.*
spec.features[].name
spec.features[].enabled
spec.api.allowed[].name
spec.api.allowed[].version
spec.api.allowed[].protocol
spec.api.denied[].name
spec.api.denied[].version
spec.api.denied[].protocol
spec.components.deny
spec.logging.apiLogging.enabled
spec.logging.apiLogging.obfuscateURLs
spec.logging.apiLogging.omitHealthChecks
spec.wasm.strictSandbox
spec.workflow.maxConcurrentWorkflowInvocations
spec.workflow.maxConcurrentActivityInvocations
spec.workflow.globalMaxConcurrentWorkflowInvocations
spec.workflow.globalMaxConcurrentActivityInvocations
spec.workflow.workflowConcurrencyLimits[].name
spec.workflow.workflowConcurrencyLimits[].maxConcurrent
spec.workflow.activityConcurrencyLimits[].name
spec.workflow.activityConcurrencyLimits[].maxConcurrent
spec.workflow.stateRetentionPolicy.anyTerminal
spec.workflow.stateRetentionPolicy.completed
spec.workflow.stateRetentionPolicy.failed
spec.workflow.stateRetentionPolicy.terminated
";
    s
}

const RESILIENCY: &str = "
spec.policies.timeouts.{}
spec.policies.retries.{}.policy
spec.policies.retries.{}.duration
spec.policies.retries.{}.maxInterval
spec.policies.retries.{}.maxRetries
spec.policies.retries.{}.matching.httpStatusCodes
spec.policies.retries.{}.matching.gRPCStatusCodes
spec.policies.circuitBreakers.{}.maxRequests
spec.policies.circuitBreakers.{}.interval
spec.policies.circuitBreakers.{}.timeout
spec.policies.circuitBreakers.{}.trip
spec.targets.apps.{}.timeout
spec.targets.apps.{}.retry
spec.targets.apps.{}.circuitBreaker
spec.targets.apps.{}.circuitBreakerCacheSize
spec.targets.actors.{}.timeout
spec.targets.actors.{}.retry
spec.targets.actors.{}.circuitBreaker
spec.targets.actors.{}.circuitBreakerScope
spec.targets.actors.{}.circuitBreakerCacheSize
spec.targets.components.{}.outbound.timeout
spec.targets.components.{}.outbound.retry
spec.targets.components.{}.outbound.circuitBreaker
spec.targets.components.{}.inbound.timeout
spec.targets.components.{}.inbound.retry
spec.targets.components.{}.inbound.circuitBreaker
scopes
";

/// v1alpha1 and v2alpha1 together (`route` is v1's, `routes` v2's).
const SUBSCRIPTION: &str = "
spec.topic
spec.pubsubname
spec.metadata.{}
spec.route
spec.routes.rules[].match
spec.routes.rules[].path
spec.routes.default
spec.deadLetterTopic
spec.bulkSubscribe.enabled
spec.bulkSubscribe.maxMessagesCount
spec.bulkSubscribe.maxAwaitDurationMs
scopes
";

fn http_endpoint() -> String {
    let mut s = format!("spec.baseUrl\n{}", name_value("spec.headers[]"));
    for d in ["rootCA", "certificate", "privateKey"] {
        for f in ["value.*", "secretKeyRef.name", "secretKeyRef.key"] {
            s += &format!("spec.clientTLS.{d}.{f}\n");
        }
    }
    s + "spec.clientTLS.renegotiation\nauth.secretStore\nscopes\n"
}

/// Kinds Skiff knows but does not serve: their specs are not checked
/// field by field.
const UNCHECKED: &str = "spec.*\nscopes\n";

/// Every kind Skiff reads or knowingly leaves out.
const KINDS: [&str; 7] = [
    "Component",
    "Configuration",
    "Resiliency",
    "Subscription",
    "HTTPEndpoint",
    "MCPServer",
    "WorkflowAccessPolicy",
];

/// Fields whose typo would weaken security if ignored: a document with
/// an unknown field under one of them, or spelt close to one, is refused.
const GUARDED: [&str; 7] = [
    "spec.accessControl",
    "spec.httpPipeline",
    "spec.appHttpPipeline",
    "spec.secrets",
    "spec.api",
    "spec.components",
    "scopes",
];

/// A tree of known field names.
#[derive(Default, Debug)]
struct Node {
    children: BTreeMap<String, Node>,
    /// `{}`: any key, each value checked against this.
    any_key: Option<Box<Node>>,
    /// `*`: the content is free.
    free: bool,
}

impl Node {
    fn add(&mut self, path: &str) {
        let mut n = self;
        for seg in path.split('.') {
            let seg = seg.trim_end_matches("[]");
            n = match seg {
                "*" => {
                    n.free = true;
                    return;
                }
                "{}" => n.any_key.get_or_insert_with(Box::default),
                s => n.children.entry(s.to_owned()).or_default(),
            };
        }
    }

    fn of(paths: &[&str]) -> Self {
        let mut n = Self::default();
        for p in paths.iter().flat_map(|t| t.lines()) {
            let p = p.trim();
            if !p.is_empty() {
                n.add(p);
            }
        }
        n
    }
}

static SCHEMAS: LazyLock<BTreeMap<&'static str, Node>> = LazyLock::new(|| {
    let (c, conf, h) = (component(), configuration(), http_endpoint());
    BTreeMap::from([
        ("Component", Node::of(&[COMMON, &c])),
        ("Configuration", Node::of(&[COMMON, &conf])),
        ("Resiliency", Node::of(&[COMMON, RESILIENCY])),
        ("Subscription", Node::of(&[COMMON, SUBSCRIPTION])),
        ("HTTPEndpoint", Node::of(&[COMMON, &h])),
        ("MCPServer", Node::of(&[COMMON, UNCHECKED])),
        ("WorkflowAccessPolicy", Node::of(&[COMMON, UNCHECKED])),
    ])
});

/// One unknown name in a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// Where it is: `spec.targts`, `spec.metadata[2].vaule`.
    pub field: String,
    /// The known name it is closest to, as a path.
    pub suggestion: Option<String>,
    /// Ignoring it would weaken security: refuse the document.
    pub guarded: bool,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown field {}", self.field)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean {s}?)")?;
        }
        Ok(())
    }
}

/// The unknown kind of a document, with the closest known one.
pub fn unknown_kind(kind: &str) -> Option<Option<&'static str>> {
    if KINDS.contains(&kind) {
        return None;
    }
    Some(closest(kind, KINDS.iter().copied()))
}

/// The fields of `doc` (a document of `kind`) that its kind does not
/// have. Nothing for a kind Skiff does not know.
pub fn unknown_fields(kind: &str, doc: &Value) -> Vec<Unknown> {
    let mut out = Vec::new();
    if let Some(schema) = SCHEMAS.get(kind) {
        walk(schema, doc, "", "", &mut out);
    }
    out
}

/// `at` is the path as the user reads it (with list indexes), `known`
/// the same path in the schema's terms (for suggestions and guards).
fn walk(node: &Node, v: &Value, at: &str, known: &str, out: &mut Vec<Unknown>) {
    if node.free {
        return;
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.is_object() {
                    walk(node, item, &format!("{at}[{i}]"), known, out);
                }
            }
        }
        Value::Object(map) => {
            for (k, child) in map {
                if let Some(n) = node.children.get(k) {
                    walk(n, child, &join(at, k), &join(known, k), out);
                } else if let Some(n) = &node.any_key {
                    walk(n, child, &join(at, k), &join(known, "{}"), out);
                } else if !node.children.is_empty() {
                    let suggestion =
                        closest(k, node.children.keys().map(String::as_str)).map(|s| join(at, s));
                    let spelt_as = suggestion.as_deref().map(|s| join(known, leaf(s)));
                    let field = join(at, k);
                    let guarded =
                        guarded(&join(known, k)) || spelt_as.as_deref().is_some_and(guarded);
                    out.push(Unknown {
                        field,
                        suggestion,
                        guarded,
                    });
                }
            }
        }
        _ => {}
    }
}

/// `base.k`, or `k` at the top.
fn join(base: &str, k: &str) -> String {
    if base.is_empty() {
        k.to_owned()
    } else {
        format!("{base}.{k}")
    }
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

fn guarded(known_path: &str) -> bool {
    GUARDED
        .iter()
        .any(|g| known_path == *g || known_path.starts_with(&format!("{g}.")))
}

/// The candidate nearest to `name` in edits (case counts as half an
/// edit), when near enough to be a typo of it.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over lower-cased characters, a swap of two neighbours
/// counting as one edit (optimal string alignment), plus one when the two
/// differ only in case (so `Targets` still suggests `targets`).
fn distance(a: &str, b: &str) -> usize {
    let (la, lb) = (a.to_lowercase(), b.to_lowercase());
    let (x, y): (Vec<char>, Vec<char>) = (la.chars().collect(), lb.chars().collect());
    // d[i][j]: distance between x[..i] and y[..j].
    let mut d = vec![vec![0usize; y.len() + 1]; x.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=x.len() {
        for j in 1..=y.len() {
            let cost = usize::from(x[i - 1] != y[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[x.len()][y.len()] + usize::from(la == lb && a != b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).expect("yaml")
    }

    fn fields(kind: &str, text: &str) -> Vec<String> {
        unknown_fields(kind, &yaml(text))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn typos_are_named_with_the_closest_field() {
        let r = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\nspec:\n  targts: {}\n  policies:\n    retries:\n      fast: {polcy: constant, duration: 1s}\n";
        assert_eq!(
            fields("Resiliency", r),
            [
                "unknown field spec.policies.retries.fast.polcy (did you mean spec.policies.retries.fast.policy?)",
                "unknown field spec.targts (did you mean spec.targets?)",
            ]
        );
        let c = "kind: Configuration\nmetadata: {name: c}\nspec:\n  tracing: {samplingRat: '1'}\n  tracng: {}\n";
        assert_eq!(
            fields("Configuration", c),
            [
                "unknown field spec.tracing.samplingRat (did you mean spec.tracing.samplingRate?)",
                "unknown field spec.tracng (did you mean spec.tracing?)",
            ]
        );
        let comp = "kind: Component\nmetadata: {name: s}\nspec:\n  type: state.redis\n  metadata:\n  - {name: a, value: 1}\n  - {name: b, vaule: x}\n";
        assert_eq!(
            fields("Component", comp),
            ["unknown field spec.metadata[1].vaule (did you mean spec.metadata[1].value?)"]
        );
    }

    #[test]
    fn known_fields_of_newer_dapr_and_free_values_pass() {
        let c = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\n  labels: {app: x}\n  annotations: {a.b/c: d}\nspec:\n  workflow: {maxConcurrentWorkflowInvocations: 3}\n  wasm: {strictSandbox: true}\n  nameResolution:\n    component: consul\n    configuration: {client: {address: x}, anything: [1]}\n  features: [{name: HotReload, enabled: true}]\n";
        assert!(fields("Configuration", c).is_empty());
        let s = "kind: Subscription\nmetadata: {name: s}\nspec:\n  pubsubname: p\n  topic: t\n  routes: {rules: [{match: 'x', path: /x}], default: /d}\n  metadata: {rawPayload: 'true'}\nscopes: [a]\n";
        assert!(fields("Subscription", s).is_empty());
        assert!(fields("MCPServer", "kind: MCPServer\nspec: {anything: 1}\n").is_empty());
    }

    #[test]
    fn typos_that_would_weaken_security_are_guarded() {
        let c = "kind: Configuration\nspec:\n  accesControl: {defaultAction: deny}\n  tracing: {stdout: true, extra: 1}\n";
        let found = unknown_fields("Configuration", &yaml(c));
        let guarded: Vec<bool> = found.iter().map(|u| u.guarded).collect();
        assert_eq!(guarded, [true, false], "{found:?}");
        let inner = "kind: Configuration\nspec:\n  accessControl:\n    policies: [{appId: a, operatons: []}]\n";
        assert!(unknown_fields("Configuration", &yaml(inner))[0].guarded);
        let scope = "kind: Component\nspec: {type: state.redis}\nscope: [a]\n";
        let u = &unknown_fields("Component", &yaml(scope))[0];
        assert_eq!((u.suggestion.as_deref(), u.guarded), (Some("scopes"), true));
    }

    #[test]
    fn unknown_kinds_suggest_the_closest() {
        assert_eq!(unknown_kind("Component"), None);
        assert_eq!(unknown_kind("Componnt"), Some(Some("Component")));
        assert_eq!(unknown_kind("Deployment"), Some(None));
    }
}
