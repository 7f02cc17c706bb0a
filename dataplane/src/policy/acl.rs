//! Access control on the callee: who may call which operation, from a
//! Configuration's `spec.accessControl`, Dapr's semantics.
//!
//! The caller is the SPIFFE ID of the mTLS peer and nothing else: no header
//! can grant access, and a call without a verified identity gets the global
//! default. Policies are compiled once into a segment trie per caller, so a
//! decision walks the operation's path once: no regex, no allocation.
//! `/*` matches one segment and `/**` any number; HTTP operation names are
//! compared case-insensitively (ASCII), gRPC proxy calls are matched by their
//! full method name (`/pkg.Service/Method`) and ignore verbs.

use std::collections::HashMap;

use http::Method;
use serde::Deserialize;
use skiff_sentry::SpiffeId;

/// Dapr's trust domain when a policy names none.
pub const DEFAULT_TRUST_DOMAIN: &str = skiff_sentry::DEFAULT_TRUST_DOMAIN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// `spec.accessControl` as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessControlSpec {
    #[serde(default)]
    pub default_action: Option<Action>,
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub app_id: String,
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub default_action: Option<Action>,
    #[serde(default)]
    pub operations: Vec<OperationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSpec {
    pub name: String,
    #[serde(default)]
    pub http_verb: Vec<String>,
    pub action: Action,
}

/// What a call is, for the decision.
#[derive(Clone, Copy, Debug)]
pub struct Operation<'a> {
    /// The path the app sees (`/orders/7`), or the gRPC method path.
    pub path: &'a str,
    /// `None` for gRPC (verbs do not apply).
    pub verb: Option<&'a Method>,
}

/// A compiled access control list.
#[derive(Debug)]
pub struct Acl {
    default_action: Action,
    /// By caller app id; a few namespaces per id at most.
    policies: HashMap<Box<str>, Vec<Policy>>,
}

#[derive(Debug)]
struct Policy {
    namespace: Box<str>,
    trust_domain: Box<str>,
    default_action: Action,
    ops: Node,
}

#[derive(Debug, Default)]
struct Node {
    exact: Vec<(Box<str>, Node)>,
    one: Option<Box<Node>>,
    /// `**`: matches this and every deeper path.
    any: Option<Rule>,
    rule: Option<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    verbs: Verbs,
    action: Action,
}

#[derive(Debug, Clone)]
enum Verbs {
    Any,
    These(Vec<Method>),
}

#[derive(Debug, thiserror::Error)]
#[error("accessControl.{field}: {why}")]
pub struct AclError {
    pub field: String,
    pub why: String,
}

impl Acl {
    /// Compiles the spec, refusing policies Dapr would not accept.
    pub fn compile(spec: AccessControlSpec) -> Result<Self, AclError> {
        // With policies and no default, unknown callers are denied.
        let default_action = spec.default_action.unwrap_or(if spec.policies.is_empty() {
            Action::Allow
        } else {
            Action::Deny
        });
        let global_td = spec
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        let mut policies: HashMap<Box<str>, Vec<Policy>> = HashMap::new();
        for (i, p) in spec.policies.into_iter().enumerate() {
            let err = |field: &str, why: String| AclError {
                field: format!("policies[{i}].{field}"),
                why,
            };
            if p.app_id.is_empty() {
                return Err(err("appId", "is required".into()));
            }
            if p.namespace.is_empty() {
                return Err(err("namespace", "is required".into()));
            }
            let mut ops = Node::default();
            for (j, o) in p.operations.into_iter().enumerate() {
                let verbs = parse_verbs(&o.http_verb)
                    .map_err(|why| err(&format!("operations[{j}].httpVerb"), why))?;
                insert(
                    &mut ops,
                    &o.name,
                    Rule {
                        verbs,
                        action: o.action,
                    },
                )
                .map_err(|why| err(&format!("operations[{j}].name"), why))?;
            }
            policies.entry(p.app_id.into()).or_default().push(Policy {
                namespace: p.namespace.into(),
                trust_domain: p.trust_domain.unwrap_or_else(|| global_td.clone()).into(),
                default_action: p.default_action.unwrap_or(default_action),
                ops,
            });
        }
        Ok(Self {
            default_action,
            policies,
        })
    }

    /// Whether `caller` may run `op`.
    pub fn decide(&self, caller: Option<&SpiffeId>, op: Operation<'_>) -> Action {
        self.decide_why(caller, op).0
    }

    /// The decision, and whether the global default made it (no policy
    /// for the caller's app) rather than the caller's app policy: Dapr's
    /// `global_policy_*` versus `app_policy_*` metrics.
    pub fn decide_why(&self, caller: Option<&SpiffeId>, op: Operation<'_>) -> (Action, bool) {
        let Some(caller) = caller else {
            return (self.default_action, true);
        };
        let Some(policy) = self.policies.get(caller.app_id()).and_then(|ps| {
            ps.iter().find(|p| {
                &*p.namespace == caller.namespace() && &*p.trust_domain == caller.trust_domain()
            })
        }) else {
            return (self.default_action, true);
        };
        let action = match find(&policy.ops, segments(op.path)) {
            Some(rule) if verb_allowed(&rule.verbs, op.verb) => rule.action,
            _ => policy.default_action,
        };
        (action, false)
    }
}

fn parse_verbs(v: &[String]) -> Result<Verbs, String> {
    if v.is_empty() || v.iter().any(|s| s == "*") {
        return Ok(Verbs::Any);
    }
    v.iter()
        .map(|s| {
            Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("{s:?} is not an HTTP verb"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Verbs::These)
}

fn verb_allowed(v: &Verbs, verb: Option<&Method>) -> bool {
    match (v, verb) {
        (Verbs::Any, _) | (_, None) => true,
        (Verbs::These(list), Some(m)) => list.contains(m),
    }
}

/// Path segments without empty ones; the query is not part of the name.
fn segments(path: &str) -> impl Iterator<Item = &str> + Clone {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').filter(|s| !s.is_empty())
}

fn insert(root: &mut Node, name: &str, rule: Rule) -> Result<(), String> {
    if !name.starts_with('/') {
        return Err(format!("{name:?} must start with /"));
    }
    let segs: Vec<&str> = segments(name).collect();
    let mut node = root;
    for (i, s) in segs.iter().enumerate() {
        match *s {
            "**" => {
                if i + 1 != segs.len() {
                    return Err(format!("{name:?}: /** must be the last segment"));
                }
                node.any = Some(rule);
                return Ok(());
            }
            "*" => node = node.one.get_or_insert_with(Box::default),
            s => {
                let key = s.to_ascii_lowercase();
                let pos = match node.exact.iter().position(|(k, _)| **k == *key) {
                    Some(p) => p,
                    None => {
                        node.exact.push((key.into(), Node::default()));
                        node.exact.len() - 1
                    }
                };
                node = &mut node.exact[pos].1;
            }
        }
    }
    node.rule = Some(rule);
    Ok(())
}

/// The most specific rule for the path: exact segments before `*` before
/// `**`.
fn find<'n, 'p>(
    node: &'n Node,
    mut rest: impl Iterator<Item = &'p str> + Clone,
) -> Option<&'n Rule> {
    let Some(seg) = rest.next() else {
        return node.rule.as_ref().or(node.any.as_ref());
    };
    if let Some((_, child)) = node.exact.iter().find(|(k, _)| k.eq_ignore_ascii_case(seg))
        && let Some(r) = find(child, rest.clone())
    {
        return Some(r);
    }
    if let Some(child) = &node.one
        && let Some(r) = find(child, rest.clone())
    {
        return Some(r);
    }
    node.any.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(yaml: &str) -> Acl {
        Acl::compile(yaml_serde::from_str(yaml).expect("yaml")).expect("compile")
    }

    fn id(td: &str, ns: &str, app: &str) -> SpiffeId {
        SpiffeId::new(td, ns, app).expect("id")
    }

    fn op<'a>(path: &'a str, verb: &'a Method) -> Operation<'a> {
        Operation {
            path,
            verb: Some(verb),
        }
    }

    const SPEC: &str = r#"
defaultAction: deny
trustDomain: public
policies:
  - appId: web
    namespace: default
    defaultAction: deny
    operations:
      - name: /orders/*
        httpVerb: [GET]
        action: allow
      - name: /orders/*/items/**
        httpVerb: ["*"]
        action: allow
      - name: /orders/secret
        httpVerb: ["*"]
        action: deny
      - name: /Admin/**
        httpVerb: [POST, put]
        action: allow
  - appId: web
    namespace: staging
    defaultAction: allow
  - appId: batch
    namespace: default
    trustDomain: corp
    defaultAction: allow
"#;

    #[test]
    fn operations_wildcards_and_verbs() {
        let a = acl(SPEC);
        let web = id("public", "default", "web");
        let get = Method::GET;
        let post = Method::POST;
        let d = |p: &str, m: &Method| a.decide(Some(&web), op(p, m));
        assert_eq!(d("/orders/7", &get), Action::Allow);
        assert_eq!(
            d("/orders/7?x=1", &get),
            Action::Allow,
            "the query is not the name"
        );
        assert_eq!(
            d("/orders/7", &post),
            Action::Deny,
            "verb not listed: policy default"
        );
        assert_eq!(d("/orders/7/8", &get), Action::Deny, "/* is one segment");
        assert_eq!(d("/orders/secret", &get), Action::Deny, "exact beats *");
        assert_eq!(
            d("/orders/7/items/a/b/c", &post),
            Action::Allow,
            "/** any depth"
        );
        assert_eq!(
            d("/ORDERS/7", &get),
            Action::Allow,
            "names compare case-insensitively"
        );
        assert_eq!(
            d("/admin/users/1", &Method::PUT),
            Action::Allow,
            "verbs are case-insensitive in YAML"
        );
        assert_eq!(d("/admin/users/1", &Method::DELETE), Action::Deny);
        assert_eq!(d("/elsewhere", &get), Action::Deny);
    }

    #[test]
    fn callers_namespaces_trust_domains_and_defaults() {
        let a = acl(SPEC);
        let get = Method::GET;
        let any = op("/x", &get);
        assert_eq!(
            a.decide(None, any),
            Action::Deny,
            "no identity: global default"
        );
        assert_eq!(
            a.decide(Some(&id("public", "staging", "web")), any),
            Action::Allow
        );
        assert_eq!(
            a.decide(Some(&id("public", "prod", "web")), any),
            Action::Deny,
            "no policy for the namespace"
        );
        assert_eq!(
            a.decide(Some(&id("public", "default", "batch")), any),
            Action::Deny,
            "wrong trust domain"
        );
        assert_eq!(
            a.decide(Some(&id("corp", "default", "batch")), any),
            Action::Allow
        );
        assert_eq!(
            a.decide(Some(&id("public", "default", "stranger")), any),
            Action::Deny
        );
        let grpc = Operation {
            path: "/orders/7",
            verb: None,
        };
        assert_eq!(
            a.decide(Some(&id("public", "default", "web")), grpc),
            Action::Allow,
            "gRPC ignores verbs"
        );
    }

    #[test]
    fn defaults_without_policies_and_with() {
        let get = Method::GET;
        let open = acl("trustDomain: public\n");
        assert_eq!(open.decide(None, op("/a", &get)), Action::Allow);
        let closed = acl("policies:\n  - appId: a\n    namespace: default\n");
        assert_eq!(
            closed.decide(None, op("/a", &get)),
            Action::Deny,
            "policies and no default: deny"
        );
        let a = id("public", "default", "a");
        assert_eq!(
            closed.decide(Some(&a), op("/a", &get)),
            Action::Deny,
            "policy default falls back to global"
        );
    }

    #[test]
    fn grpc_method_names_match_whole() {
        let a = acl(
            "defaultAction: deny\npolicies:\n  - appId: web\n    namespace: default\n    operations:\n      - name: /skiff.echo.v1.Echo/Unary\n        action: allow\n",
        );
        let web = id("public", "default", "web");
        let g = |p| Operation {
            path: p,
            verb: None,
        };
        assert_eq!(
            a.decide(Some(&web), g("/skiff.echo.v1.Echo/Unary")),
            Action::Allow
        );
        assert_eq!(
            a.decide(Some(&web), g("/skiff.echo.v1.Echo/Bidi")),
            Action::Deny
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        let bad = |y: &str| {
            Acl::compile(yaml_serde::from_str(y).expect("yaml"))
                .expect_err("refused")
                .to_string()
        };
        assert!(bad("policies:\n  - namespace: default\n").contains("policies[0].appId"));
        assert!(bad("policies:\n  - appId: a\n").contains("policies[0].namespace"));
        let e = bad(
            "policies:\n  - appId: a\n    namespace: n\n    operations:\n      - name: /x\n        httpVerb: ['G T']\n        action: allow\n",
        );
        assert!(e.contains("operations[0].httpVerb"), "{e}");
        let e = bad(
            "policies:\n  - appId: a\n    namespace: n\n    operations:\n      - name: /**/x\n        action: allow\n",
        );
        assert!(e.contains("must be the last"), "{e}");
        assert!(yaml_serde::from_str::<AccessControlSpec>("defaultAction: maybe\n").is_err());
    }
}
