//! `bindings.localstorage` (Dapr's type, output): files under `rootPath`.
//! `create` writes `metadata.fileName` (a new UUID when missing; the data
//! unquoted when it is a JSON string, then base64-decoded when that
//! works, as Dapr does) and answers `{"fileName"}`; `get` reads it, `list`
//! answers a JSON array of the files' paths, `delete` removes it. A file
//! name is confined to the root: absolute names, `..` and symlinks that
//! lead out are refused. File I/O runs on the blocking pool.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;

use super::{BindingError, OutputBinding, Request, Response};
use crate::{BoxFuture, Properties};

pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn open(meta: &Properties) -> Result<Arc<Self>, crate::MetadataError> {
        let root = PathBuf::from(meta.required("rootPath")?);
        std::fs::create_dir_all(&root).map_err(|e| crate::MetadataError {
            field: "rootPath".into(),
            why: format!("cannot create {}: {e}", root.display()),
        })?;
        let root = std::fs::canonicalize(&root).map_err(|e| crate::MetadataError {
            field: "rootPath".into(),
            why: format!("{}: {e}", root.display()),
        })?;
        Ok(Arc::new(Self { root }))
    }

    /// `name` under the root, or why not.
    fn path(&self, name: &str) -> Result<PathBuf, BindingError> {
        let p = Path::new(name);
        let ok = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(BindingError::Invalid(format!(
                "fileName {name:?} is not a relative path inside rootPath"
            )));
        }
        let full = self.root.join(p);
        // A symlink on the way may not lead out of the root.
        if let Some(parent) = full.parent()
            && let Ok(real) = std::fs::canonicalize(parent)
            && !real.starts_with(&self.root)
        {
            return Err(BindingError::Invalid(format!(
                "fileName {name:?} leads outside rootPath"
            )));
        }
        if let Ok(real) = std::fs::canonicalize(&full)
            && !real.starts_with(&self.root)
        {
            return Err(BindingError::Invalid(format!(
                "fileName {name:?} leads outside rootPath"
            )));
        }
        Ok(full)
    }

    fn run(&self, req: Request) -> Result<Response, BindingError> {
        let io = |e: std::io::Error| BindingError::Backend(format!("localstorage: {e}"));
        let name = req.metadata.get("fileName").cloned();
        match req.operation.as_str() {
            "create" => {
                let name = name.unwrap_or_else(crate::util::uuid_v4);
                let path = self.path(&name)?;
                let mut data = req.data.to_vec();
                if let Ok(serde_json::Value::String(s)) = serde_json::from_slice(&data) {
                    data = s.into_bytes();
                }
                if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(&data) {
                    data = d;
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                std::fs::write(&path, data).map_err(io)?;
                Ok(Response {
                    data: Some(Bytes::from(
                        serde_json::json!({"fileName": name}).to_string(),
                    )),
                    metadata: Default::default(),
                })
            }
            "get" => {
                let name = name
                    .ok_or_else(|| BindingError::Invalid("get needs metadata.fileName".into()))?;
                let data = std::fs::read(self.path(&name)?).map_err(|e| {
                    BindingError::Backend(format!("localstorage: reading {name}: {e}"))
                })?;
                Ok(Response {
                    data: Some(Bytes::from(data)),
                    metadata: Default::default(),
                })
            }
            "list" => {
                let mut out = Vec::new();
                let mut dirs = vec![self.root.clone()];
                while let Some(d) = dirs.pop() {
                    for e in std::fs::read_dir(&d).map_err(io)?.flatten() {
                        let p = e.path();
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            dirs.push(p);
                        } else {
                            out.push(p.display().to_string());
                        }
                    }
                }
                out.sort();
                Ok(Response {
                    data: Some(Bytes::from(serde_json::to_vec(&out).unwrap_or_default())),
                    metadata: Default::default(),
                })
            }
            "delete" => {
                let name = name.ok_or_else(|| {
                    BindingError::Invalid("delete needs metadata.fileName".into())
                })?;
                std::fs::remove_file(self.path(&name)?).map_err(|e| {
                    BindingError::Backend(format!("localstorage: deleting {name}: {e}"))
                })?;
                Ok(Response::default())
            }
            op => Err(BindingError::Invalid(format!(
                "operation {op:?} is not supported (create, get, list, delete)"
            ))),
        }
    }
}

impl OutputBinding for LocalStorage {
    fn operations(&self) -> &'static [&'static str] {
        &["create", "get", "list", "delete"]
    }

    fn invoke(&self, req: Request) -> BoxFuture<'_, Result<Response, BindingError>> {
        let me = Self {
            root: self.root.clone(),
        };
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.run(req))
                .await
                .map_err(|e| BindingError::Backend(e.to_string()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: &str, name: Option<&str>, data: &str) -> Request {
        let mut r = Request {
            operation: op.into(),
            data: Bytes::from(data.to_owned()),
            ..Default::default()
        };
        if let Some(n) = name {
            r.metadata.insert("fileName".into(), n.into());
        }
        r
    }

    #[tokio::test]
    async fn files_stay_under_the_root() {
        let dir = std::env::temp_dir().join(format!("skiff-ls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut p = Properties::new();
        p.insert("rootPath", dir.join("root").display().to_string());
        let ls = LocalStorage::open(&p).expect("opens");
        // A JSON string is unquoted; base64 is decoded.
        ls.invoke(req("create", Some("a.txt"), r#""aGVsbG8=""#))
            .await
            .expect("create");
        let got = ls.invoke(req("get", Some("a.txt"), "")).await.expect("get");
        assert_eq!(got.data.as_deref(), Some(&b"hello"[..]));
        let made = ls
            .invoke(req("create", None, "raw text"))
            .await
            .expect("create");
        let v: serde_json::Value = serde_json::from_slice(&made.data.expect("data")).expect("json");
        assert_eq!(v["fileName"].as_str().map(str::len), Some(36));
        let list = ls.invoke(req("list", None, "")).await.expect("list");
        let l: Vec<String> = serde_json::from_slice(&list.data.expect("data")).expect("json");
        assert_eq!(l.len(), 2);
        for bad in ["../escape", "/etc/passwd", "a/../../x", ""] {
            assert!(
                matches!(
                    ls.invoke(req("create", Some(bad), "x")).await,
                    Err(BindingError::Invalid(_))
                ),
                "{bad}"
            );
        }
        std::os::unix::fs::symlink("/tmp", dir.join("root/link")).expect("symlink");
        assert!(matches!(
            ls.invoke(req("create", Some("link/x"), "x")).await,
            Err(BindingError::Invalid(_))
        ));
        ls.invoke(req("delete", Some("a.txt"), ""))
            .await
            .expect("delete");
        assert!(ls.invoke(req("get", Some("a.txt"), "")).await.is_err());
        assert!(matches!(
            ls.invoke(req("rename", Some("a"), "")).await,
            Err(BindingError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
