//! Dapr's YAML documents (`apiVersion`/`kind`/`metadata`/`spec`): the
//! `--config` Configuration file and the documents in `--resources-path`.
//!
//! This release reads them to validate them and to report what is loaded at
//! `/v1.0/metadata`; the policy and building-block releases act on their specs.
//! Errors name the file and what to fix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {why}")]
    Yaml { path: String, why: String },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

/// A Dapr document header; the spec is kept as data.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `auth.secretStore`: where a Component's `secretKeyRef`s are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    #[serde(default)]
    pub secret_store: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// The documents a sidecar was started with.
#[derive(Clone, Debug, Default)]
pub struct Documents {
    pub configuration: Option<Document>,
    pub resources: Vec<Document>,
}

impl Documents {
    /// Components (kind Component) that apply to `app_id` (empty scopes = all apps).
    pub fn components_for<'a>(
        &'a self,
        app_id: &'a str,
    ) -> impl Iterator<Item = &'a Document> + 'a {
        self.resources.iter().filter(move |d| {
            d.kind == "Component" && (d.scopes.is_empty() || d.scopes.iter().any(|s| s == app_id))
        })
    }
}

/// Reads `--config` and every `.yaml`/`.yml` file in the resources paths.
pub fn load_documents(
    config: Option<&Path>,
    resources: &[PathBuf],
) -> Result<Documents, ConfigError> {
    let configuration = match config {
        Some(p) => {
            let mut docs = read_file(p)?;
            let doc = match docs.len() {
                1 => docs.remove(0),
                n => {
                    return Err(invalid(
                        p,
                        format!("expected one Configuration document, found {n}"),
                    ));
                }
            };
            if doc.kind != "Configuration" {
                return Err(invalid(
                    p,
                    format!(
                        "kind is {:?}; --config takes a kind: Configuration document",
                        doc.kind
                    ),
                ));
            }
            Some(doc)
        }
        None => None,
    };
    let mut out = Vec::new();
    for dir in resources {
        let rd = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for f in files {
            out.extend(read_file(&f)?);
        }
    }
    Ok(Documents {
        configuration,
        resources: out,
    })
}

fn invalid(p: &Path, why: String) -> ConfigError {
    ConfigError::Invalid {
        path: p.display().to_string(),
        why,
    }
}

fn read_file(p: &Path) -> Result<Vec<Document>, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.display().to_string(),
        source,
    })?;
    parse_documents(&text, p)
}

/// The documents of one YAML text; `p` names it in errors.
pub fn parse_documents(text: &str, p: &Path) -> Result<Vec<Document>, ConfigError> {
    let (docs, warnings) = parse(text, p)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(docs)
}

/// The documents of one YAML text and the warnings about their unknown
/// kinds and fields, in one pass.
fn parse(text: &str, p: &Path) -> Result<(Vec<Document>, Vec<String>), ConfigError> {
    let (mut docs, mut warnings) = (Vec::new(), Vec::new());
    for de in yaml_serde::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(de).map_err(|e| ConfigError::Yaml {
            path: p.display().to_string(),
            why: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document between separators
        }
        warnings.extend(check_fields(&value, p)?);
        let mut doc: Document = serde_json::from_value(value).map_err(|e| {
            invalid(
                p,
                format!("{e}; a Dapr document needs apiVersion, kind and metadata.name"),
            )
        })?;
        if doc.metadata.name.is_empty() {
            return Err(invalid(p, format!("{} without metadata.name", doc.kind)));
        }
        doc.source = p.to_path_buf();
        docs.push(doc);
    }
    Ok((docs, warnings))
}

/// Names every field (and kind) of `value` that Dapr's documents do not
/// have, in a warning with the closest known name; refuses the document
/// when ignoring the field would weaken security ([`super::schema`]).
fn check_fields(value: &serde_json::Value, p: &Path) -> Result<Vec<String>, ConfigError> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let file = p.display();
    if let Some(near) = super::schema::unknown_kind(kind) {
        let hint = near.map_or_else(String::new, |k| format!(" (did you mean {k}?)"));
        return Ok(vec![format!(
            "{file}: kind {kind:?} is not a kind Skiff knows{hint}; document {name:?} is left out"
        )]);
    }
    let mut warnings = Vec::new();
    for u in super::schema::unknown_fields(kind, value) {
        if u.guarded {
            return Err(invalid(
                p,
                format!(
                    "{kind} {name}: {u}; refusing to start, since ignoring it would weaken security"
                ),
            ));
        }
        warnings.push(format!("{file}: {kind} {name}: {u}; it is ignored"));
    }
    Ok(warnings)
}

/// The warnings loading `text` would log (unknown kinds and fields), or
/// the error that refuses it: for checking documents without starting a
/// sidecar (the README test).
pub fn lint_documents(text: &str, p: &Path) -> Result<Vec<String>, ConfigError> {
    parse(text, p).map(|(_, warnings)| warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_files() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\nspec:\n  type: state.in-memory\n  version: v1\nscopes: [a]\n---\napiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec: {}\n";
        let docs = parse_documents(text, Path::new("x.yaml")).expect("valid");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].spec["type"], "state.in-memory");
        let all = Documents {
            configuration: None,
            resources: docs,
        };
        assert_eq!(all.components_for("a").count(), 1);
        assert_eq!(all.components_for("b").count(), 0);
    }

    #[test]
    fn a_guarded_typo_refuses_and_others_load() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  accesControl:\n    defaultAction: deny\n";
        let err = parse_documents(text, Path::new("c.yaml")).expect_err("refused");
        assert!(
            err.to_string()
                .contains("spec.accesControl (did you mean spec.accessControl?)"),
            "{err}"
        );
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  tracng: {}\n";
        assert_eq!(
            parse_documents(text, Path::new("c.yaml"))
                .expect("loads")
                .len(),
            1
        );
    }

    #[test]
    fn errors_name_the_file() {
        let err = parse_documents("kind: [", Path::new("bad.yaml")).expect_err("invalid");
        assert!(
            err.to_string().starts_with("bad.yaml: invalid YAML"),
            "{err}"
        );
        let err =
            parse_documents("kind: Configuration\n", Path::new("c.yaml")).expect_err("invalid");
        assert!(err.to_string().contains("apiVersion"), "{err}");
    }
}
