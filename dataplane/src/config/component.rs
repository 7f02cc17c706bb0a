//! The `kind: Component` document, typed: `spec.type`, `spec.version`,
//! `spec.metadata` (plain values, `secretKeyRef`s and `envRef`s, resolved
//! later by the components step), `spec.ignoreErrors`, `spec.initTimeout`,
//! `auth.secretStore`; and the Configuration's secret scopes
//! (`spec.secrets.scopes`). Errors name the file, the component and the
//! field, never a value.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{ConfigError, Document};

/// daprd's default `initTimeout`.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ComponentSpec {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub metadata: Vec<MetadataItem>,
    pub ignore_errors: bool,
    pub init_timeout: Duration,
    /// `auth.secretStore`.
    pub secret_store: Option<String>,
    pub source: PathBuf,
}

#[derive(Clone, Debug)]
pub struct MetadataItem {
    pub name: String,
    pub value: MetaValue,
}

#[derive(Clone)]
pub enum MetaValue {
    Plain(String),
    /// `secretKeyRef: {name, key}` (key defaults to name).
    Secret {
        name: String,
        key: String,
    },
    /// `envRef: VAR`.
    Env(String),
}

impl std::fmt::Debug for MetaValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("<value>"),
            Self::Secret { name, key } => write!(f, "secretKeyRef {name}/{key}"),
            Self::Env(v) => write!(f, "envRef {v}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(rename = "type", default)]
    type_name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    metadata: Vec<RawItem>,
    #[serde(default)]
    ignore_errors: Value,
    #[serde(default)]
    init_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem {
    name: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    secret_key_ref: Option<RawRef>,
    #[serde(default)]
    env_ref: Option<String>,
}

#[derive(Deserialize)]
struct RawRef {
    name: String,
    #[serde(default)]
    key: String,
}

/// A YAML scalar as the text Dapr's metadata holds (`true`, `10`, `a`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl ComponentSpec {
    pub fn from_document(d: &Document) -> Result<Self, ConfigError> {
        let name = &d.metadata.name;
        let bad = |why: String| ConfigError::Invalid {
            path: d.source.display().to_string(),
            why: format!("component {name}: {why}"),
        };
        let raw: RawSpec =
            serde_json::from_value(d.spec.clone()).map_err(|e| bad(format!("spec: {e}")))?;
        if raw.type_name.is_empty() {
            return Err(bad("spec.type is required (like state.sqlite)".into()));
        }
        let mut metadata = Vec::with_capacity(raw.metadata.len());
        for item in raw.metadata {
            let value = match (item.secret_key_ref, item.env_ref) {
                (Some(r), _) => MetaValue::Secret {
                    key: if r.key.is_empty() {
                        r.name.clone()
                    } else {
                        r.key
                    },
                    name: r.name,
                },
                (None, Some(var)) => MetaValue::Env(var),
                (None, None) => MetaValue::Plain(scalar(&item.value).ok_or_else(|| {
                    bad(format!(
                        "spec.metadata {}: value must be a string, number or boolean",
                        item.name
                    ))
                })?),
            };
            metadata.push(MetadataItem {
                name: item.name,
                value,
            });
        }
        let ignore_errors = match &raw.ignore_errors {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => skiff_components::metadata::truthy(s)
                .ok_or_else(|| bad("spec.ignoreErrors must be true or false".into()))?,
            _ => return Err(bad("spec.ignoreErrors must be true or false".into())),
        };
        let init_timeout = match raw.init_timeout.as_deref() {
            None | Some("") => DEFAULT_INIT_TIMEOUT,
            Some(t) => skiff_components::util::parse_duration(t)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad(format!("spec.initTimeout {t:?} is not a duration like 5s")))?,
        };
        Ok(Self {
            name: name.clone(),
            type_name: raw.type_name,
            version: raw.version,
            metadata,
            ignore_errors,
            init_timeout,
            secret_store: d
                .auth
                .as_ref()
                .map(|a| a.secret_store.clone())
                .filter(|s| !s.is_empty()),
            source: d.source.clone(),
        })
    }
}

/// One entry of the Configuration's `spec.secrets.scopes`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretScope {
    pub store_name: String,
    #[serde(default)]
    pub default_access: String,
    #[serde(default)]
    pub allowed_secrets: Vec<String>,
    #[serde(default)]
    pub denied_secrets: Vec<String>,
}

impl SecretScope {
    /// Dapr's rule: a non-empty allow list decides alone; else the deny
    /// list; else `defaultAccess` (allow unless it says deny).
    pub fn allows(&self, secret: &str) -> bool {
        if !self.allowed_secrets.is_empty() {
            return self.allowed_secrets.iter().any(|s| s == secret);
        }
        if self.denied_secrets.iter().any(|s| s == secret) {
            return false;
        }
        !self.default_access.eq_ignore_ascii_case("deny")
    }
}

/// The secret scopes of a Configuration document (none: every store open).
pub fn secret_scopes(config: Option<&Document>) -> Result<Vec<SecretScope>, ConfigError> {
    let Some(d) = config else {
        return Ok(Vec::new());
    };
    let Some(scopes) = d.spec.get("secrets").and_then(|s| s.get("scopes")) else {
        return Ok(Vec::new());
    };
    let scopes: Vec<SecretScope> =
        serde_json::from_value(scopes.clone()).map_err(|e| ConfigError::Invalid {
            path: d.source.display().to_string(),
            why: format!("spec.secrets.scopes: {e}"),
        })?;
    for s in &scopes {
        if !matches!(
            s.default_access.to_ascii_lowercase().as_str(),
            "" | "allow" | "deny"
        ) {
            return Err(ConfigError::Invalid {
                path: d.source.display().to_string(),
                why: format!(
                    "spec.secrets.scopes {}: defaultAccess must be allow or deny",
                    s.store_name
                ),
            });
        }
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(spec: Value) -> Document {
        Document {
            api_version: "dapr.io/v1alpha1".into(),
            kind: "Component".into(),
            metadata: super::super::yaml::Metadata {
                name: "store".into(),
                namespace: None,
            },
            spec,
            scopes: vec![],
            auth: None,
            source: PathBuf::from("c.yaml"),
        }
    }

    #[test]
    fn parses_metadata_kinds() {
        let d = doc(serde_json::json!({
            "type": "state.redis", "version": "v1", "ignoreErrors": "true", "initTimeout": "2s",
            "metadata": [
                {"name": "redisHost", "value": "h:1"},
                {"name": "enableTLS", "value": false},
                {"name": "redisPassword", "secretKeyRef": {"name": "redis", "key": "pw"}},
                {"name": "other", "secretKeyRef": {"name": "same"}},
            ]
        }));
        let c = ComponentSpec::from_document(&d).expect("valid");
        assert!(c.ignore_errors);
        assert_eq!(c.init_timeout, Duration::from_secs(2));
        assert!(matches!(&c.metadata[1].value, MetaValue::Plain(v) if v == "false"));
        assert!(
            matches!(&c.metadata[3].value, MetaValue::Secret { name, key } if name == "same" && key == "same")
        );
        let e = ComponentSpec::from_document(&doc(serde_json::json!({"version": "v1"})))
            .expect_err("no type");
        assert!(
            e.to_string().contains("c.yaml: component store: spec.type"),
            "{e}"
        );
    }

    #[test]
    fn secret_scope_rules() {
        let s = |d: &str, a: &[&str], n: &[&str]| SecretScope {
            store_name: "s".into(),
            default_access: d.into(),
            allowed_secrets: a.iter().map(|x| x.to_string()).collect(),
            denied_secrets: n.iter().map(|x| x.to_string()).collect(),
        };
        assert!(s("", &[], &[]).allows("x"));
        assert!(!s("deny", &[], &[]).allows("x"));
        assert!(s("deny", &["x"], &[]).allows("x"));
        assert!(
            !s("allow", &["y"], &[]).allows("x"),
            "an allow list decides alone"
        );
        assert!(!s("allow", &[], &["x"]).allows("x"));
    }
}
