//! `secretstores.local.file` and `secretstores.local.env`, the stores for
//! development and self-hosted use.
//!
//! The file store reads a JSON file once, at start, and flattens nested
//! objects into `a:b:c` names (`nestedSeparator`), arrays by index; with
//! `multiValued: true` each top-level key is one secret holding its
//! flattened children. Leaves that are not strings are printed the way
//! Dapr's Go driver prints them (`%!s(float64=1)`), so apps see the same
//! text.
//!
//! The env store reads variables at call time, with an optional `prefix`
//! that is stripped; `DAPR_*` and `APP_API_TOKEN` are never handed out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::{Secret, SecretError, SecretStore};
use crate::{BoxFuture, MetadataError, Properties};

pub const DEFAULT_NESTED_SEPARATOR: &str = ":";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("secrets file {path}: {why}")]
    File { path: PathBuf, why: String },
}

pub struct FileStore {
    secrets: BTreeMap<String, Secret>,
    multi: bool,
}

impl FileStore {
    pub fn open(meta: &Properties) -> Result<Arc<Self>, OpenError> {
        let path = PathBuf::from(meta.required("secretsFile")?);
        let sep = meta.string_or("nestedSeparator", DEFAULT_NESTED_SEPARATOR);
        let multi = meta.bool_or("multiValued", false)?;
        let file_err = |why: String| OpenError::File {
            path: path.clone(),
            why,
        };
        let text = std::fs::read(&path).map_err(|e| file_err(e.to_string()))?;
        // The parser's message can quote the file; say where, not what.
        let root: Value = serde_json::from_slice(&text).map_err(|e| {
            file_err(format!(
                "not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(top) = root else {
            return Err(file_err("must hold a JSON object".into()));
        };
        let mut secrets = BTreeMap::new();
        if multi {
            for (name, v) in top {
                let mut flat = BTreeMap::new();
                match v {
                    Value::Object(_) | Value::Array(_) => flatten(&v, "", &sep, &mut flat),
                    leaf => {
                        flat.insert(name.clone(), go_string(&leaf));
                    }
                }
                secrets.insert(name, flat);
            }
        } else {
            let mut flat = BTreeMap::new();
            flatten(&Value::Object(top), "", &sep, &mut flat);
            for (k, v) in flat {
                secrets.insert(k.clone(), BTreeMap::from([(k, v)]));
            }
        }
        Ok(Arc::new(Self { secrets, multi }))
    }
}

fn flatten(v: &Value, prefix: &str, sep: &str, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}{sep}{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(v, &join(k), sep, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, &join(&i.to_string()), sep, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), go_string(leaf));
        }
    }
}

/// A JSON leaf as Go's `fmt.Sprintf("%s", v)` prints it.
fn go_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => format!("%!s(bool={b})"),
        Value::Number(n) => format!("%!s(float64={})", n.as_f64().unwrap_or_default()),
        Value::Null => "%!s(<nil>)".to_owned(),
        other => other.to_string(),
    }
}

impl SecretStore for FileStore {
    fn features(&self) -> Vec<&'static str> {
        if self.multi {
            vec!["MULTIPLE_KEY_VALUES_PER_SECRET"]
        } else {
            Vec::new()
        }
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        let r = self
            .secrets
            .get(name)
            .cloned()
            .ok_or_else(|| SecretError::NotFound(name.to_owned()));
        Box::pin(std::future::ready(r))
    }

    fn bulk_get(&self) -> BoxFuture<'_, Result<BTreeMap<String, Secret>, SecretError>> {
        Box::pin(std::future::ready(Ok(self.secrets.clone())))
    }
}

pub struct EnvStore {
    prefix: String,
}

impl EnvStore {
    pub fn open(meta: &Properties) -> Arc<Self> {
        Arc::new(Self {
            prefix: meta.string_or("prefix", ""),
        })
    }
}

/// Variables no app may read through the env store.
fn hidden(var: &str) -> bool {
    let upper = var.to_ascii_uppercase();
    upper.starts_with("DAPR_") || upper == "APP_API_TOKEN"
}

impl SecretStore for EnvStore {
    /// A missing variable is an empty value, not an error (as in Dapr).
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        let var = format!("{}{name}", self.prefix);
        let value = if hidden(&var) {
            String::new()
        } else {
            std::env::var(&var).unwrap_or_default()
        };
        Box::pin(std::future::ready(Ok(BTreeMap::from([(
            name.to_owned(),
            value,
        )]))))
    }

    fn bulk_get(&self) -> BoxFuture<'_, Result<BTreeMap<String, Secret>, SecretError>> {
        let out = std::env::vars()
            .filter(|(k, _)| !hidden(k))
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(&self.prefix)?.to_owned();
                (!name.is_empty()).then(|| (name.clone(), BTreeMap::from([(name, v)])))
            })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, multi: bool) -> Arc<FileStore> {
        let dir = std::env::temp_dir().join(format!("skiff-secrets-{}", crate::util::uuid_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("s.json");
        std::fs::write(&p, json).expect("write");
        let mut meta = Properties::new();
        meta.insert("secretsFile", p.display().to_string());
        meta.insert("multiValued", multi.to_string());
        FileStore::open(&meta).expect("opens")
    }

    #[tokio::test]
    async fn file_store_flattens_as_dapr_does() {
        let s = file(
            r#"{"db":{"user":"u","pass":"p","ports":[1,2]},"flag":true,"top":"t"}"#,
            false,
        );
        let got = s.get("db:user").await.expect("found");
        assert_eq!(
            got,
            BTreeMap::from([("db:user".to_owned(), "u".to_owned())])
        );
        assert_eq!(
            s.get("db:ports:1").await.expect("found")["db:ports:1"],
            "%!s(float64=2)"
        );
        assert_eq!(
            s.get("flag").await.expect("found")["flag"],
            "%!s(bool=true)"
        );
        assert!(matches!(s.get("db").await, Err(SecretError::NotFound(_))));
        let m = file(r#"{"db":{"user":"u","pass":"p"},"top":"t"}"#, true);
        assert_eq!(m.get("db").await.expect("found").len(), 2);
        assert_eq!(m.get("top").await.expect("found")["top"], "t");
        assert_eq!(m.features(), ["MULTIPLE_KEY_VALUES_PER_SECRET"]);
    }

    #[test]
    fn bad_file_does_not_echo_its_contents() {
        let dir = std::env::temp_dir().join(format!("skiff-secrets-{}", crate::util::uuid_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("s.json");
        std::fs::write(&p, r#"{"pw": "hunter2" oops}"#).expect("write");
        let meta: Properties = [("secretsFile", p.display().to_string())]
            .into_iter()
            .collect();
        let e = FileStore::open(&meta).err().expect("invalid").to_string();
        assert!(!e.contains("hunter2") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn env_store_hides_dapr_variables() {
        assert!(hidden("DAPR_API_TOKEN") && hidden("app_api_token") && !hidden("HOME"));
    }
}
