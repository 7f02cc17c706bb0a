//! Policy on the call path, from Dapr's own YAML: access control on the
//! callee ([`acl`], from the Configuration) and timeouts, retries and
//! circuit breakers on the caller ([`resiliency`], from `Resiliency`
//! documents).
//!
//! The compiled policies sit behind an `ArcSwap`: a call loads them with one
//! atomic read, and [`watch`] swaps in a new version when the files change.
//! A version that does not validate is logged and the old one kept.

pub mod acl;
pub mod breaker;
pub mod resiliency;
pub mod retry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, Documents, load_documents};
use acl::{AccessControlSpec, Acl};
use resiliency::{Resiliency, ResiliencyError};

/// How often the policy files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: spec.accessControl: {why}")]
    AccessControl { file: String, why: String },
    #[error("{file}: {source}")]
    Acl {
        file: String,
        #[source]
        source: acl::AclError,
    },
    #[error(transparent)]
    Resiliency(#[from] ResiliencyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The compiled policies one sidecar runs with.
#[derive(Debug, Default)]
pub struct Policies {
    /// None: no accessControl, every caller allowed.
    pub acl: Option<Acl>,
    pub resiliency: Resiliency,
}

impl Policies {
    pub fn from_documents(docs: &Documents, app_id: &str) -> Result<Self, PolicyError> {
        let acl = match &docs.configuration {
            Some(c) => match c.spec.get("accessControl") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => {
                    let file = c.source.display().to_string();
                    let spec: AccessControlSpec =
                        serde_json::from_value(v.clone()).map_err(|e| {
                            PolicyError::AccessControl {
                                file: file.clone(),
                                why: e.to_string(),
                            }
                        })?;
                    Some(Acl::compile(spec).map_err(|source| PolicyError::Acl { file, source })?)
                }
            },
            None => None,
        };
        Ok(Self {
            acl,
            resiliency: Resiliency::from_documents(&docs.resources, app_id)?,
        })
    }
}

/// Where the policy files are, for reloading.
#[derive(Clone, Debug)]
pub struct Sources {
    pub config: Option<PathBuf>,
    pub resources: Vec<PathBuf>,
    pub app_id: String,
}

impl Sources {
    /// Modification times of every file that could hold a policy.
    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let mut out = Vec::new();
        let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if let Some(c) = &self.config {
            out.push((c.clone(), stamp(c)));
        }
        for dir in &self.resources {
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                files.sort();
                out.extend(files.into_iter().map(|f| {
                    let s = stamp(&f);
                    (f, s)
                }));
            }
        }
        out
    }
}

/// Reloads the policies when their files change, until the sidecar stops.
pub async fn watch(live: Arc<ArcSwap<Policies>>, src: Sources) {
    let mut seen = src.fingerprint();
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = src.fingerprint();
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = load_documents(src.config.as_deref(), &src.resources)
            .map_err(PolicyError::from)
            .and_then(|d| Policies::from_documents(&d, &src.app_id));
        match loaded {
            Ok(p) => {
                tracing::info!(acl = p.acl.is_some(), resiliency = %p.resiliency.names.join(", "), "policies reloaded");
                live.store(Arc::new(p));
            }
            Err(e) => {
                tracing::warn!(error = %e, "changed policy files are invalid; keeping the previous policies")
            }
        }
    }
}
