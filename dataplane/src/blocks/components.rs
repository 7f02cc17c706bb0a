//! Loading components: every `kind: Component` document that applies to
//! this app (its `scopes`), typed, its `secretKeyRef`s and `envRef`s
//! resolved, its driver opened within `initTimeout`, and handed to its
//! block. Secret stores load first so later components can read their
//! passwords from them.
//!
//! A component that fails stops the sidecar with one line naming the file,
//! the component and the cause, unless `spec.ignoreErrors` is set (then it
//! is logged and left out). Components of blocks this skiffd does not
//! serve yet (pub/sub, bindings, ...) are logged and left out, so the
//! usual Dapr components folder does not stop the sidecar.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use skiff_components::Properties;
use skiff_components::registry::{self, Component};

use super::Blocks;
use super::secrets::SecretsBlock;
use super::state::guarded::Guarded;
use super::state::{StateBlock, Store, key_prefix};
use crate::config::component::{ComponentSpec, MetaValue, secret_scopes};
use crate::config::{ConfigError, Documents};
use crate::policy::resiliency::Resiliency;
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: component {name} ({type_name}): {why}")]
    Component {
        file: String,
        name: String,
        type_name: String,
        why: String,
    },
}

/// The blocks a component type belongs to that this skiffd serves.
fn served(type_name: &str) -> bool {
    matches!(registry::block_of(type_name), "state" | "secretstores")
}

/// What was loaded, and the `components` list `/v1.0/metadata` reports.
pub struct Loaded {
    pub blocks: Blocks,
    pub report: Vec<Value>,
}

/// Loads the app's components.
/// State stores get their `targets.components` outbound policy from
/// `resiliency` (taken once, at load).
pub async fn load(
    docs: &Documents,
    app_id: &str,
    namespace: &str,
    resiliency: &Resiliency,
) -> Result<Loaded, LoadError> {
    let mut specs = Vec::new();
    let mut names = HashSet::new();
    for d in docs.components_for(app_id) {
        let spec = ComponentSpec::from_document(d)?;
        if !names.insert(spec.name.clone()) {
            return Err(fail(&spec, "another component has the same name".into()));
        }
        specs.push(spec);
    }
    // Secret stores first, in file order; then everything else.
    specs.sort_by_key(|s| registry::block_of(&s.type_name) != "secretstores");

    let mut state = StateBlock::new(app_id);
    let mut secrets = SecretsBlock::new(secret_scopes(docs.configuration.as_ref())?);
    let mut report = Vec::new();
    let mut actor_store: Option<String> = None;
    for spec in specs {
        if !served(&spec.type_name) {
            tracing::warn!(component = %spec.name, r#type = %spec.type_name, file = %spec.source.display(),
                "component left out: the {} building block is not served by this skiffd yet",
                registry::block_of(&spec.type_name));
            continue;
        }
        match open(&spec, &secrets, app_id, namespace).await {
            Ok((Component::State(driver), meta)) => {
                let prefix = key_prefix(&meta, &spec.name, app_id, Some(namespace))
                    .map_err(|why| fail(&spec, why))?;
                let actor = meta
                    .get("actorStateStore")
                    .and_then(skiff_components::metadata::truthy)
                    .unwrap_or(false);
                if actor {
                    if let Some(other) = &actor_store {
                        return Err(fail(
                            &spec,
                            format!(
                                "component {other} is already the actor state store (actorStateStore: true)"
                            ),
                        ));
                    }
                    actor_store = Some(spec.name.clone());
                }
                report.push(describe(&spec, driver.features().names()));
                announce(&spec);
                let policy = resiliency.component_outbound(&spec.name, "Statestore");
                state.add(Store {
                    name: spec.name.clone(),
                    driver: Guarded::wrap(driver, policy),
                    prefix,
                    actor,
                    ops: metrics::registry().state_component(&spec.name),
                });
            }
            Ok((Component::Secrets(driver), _)) => {
                report.push(describe(&spec, driver.features()));
                announce(&spec);
                let ops = metrics::registry().secret_component(&spec.name);
                secrets.add(spec.name.clone(), driver, ops);
            }
            Err(why) if spec.ignore_errors => {
                tracing::warn!(component = %spec.name, r#type = %spec.type_name, file = %spec.source.display(),
                    error = %why, "component failed to start and is left out (ignoreErrors)");
            }
            Err(why) => return Err(fail(&spec, why)),
        }
    }
    Ok(Loaded {
        blocks: Blocks { state, secrets },
        report,
    })
}

fn fail(spec: &ComponentSpec, why: String) -> LoadError {
    LoadError::Component {
        file: spec.source.display().to_string(),
        name: spec.name.clone(),
        type_name: spec.type_name.clone(),
        why,
    }
}

/// daprd's "Component loaded" line (name and type only: metadata may hold
/// secrets).
fn announce(spec: &ComponentSpec) {
    tracing::info!(component = %spec.name, r#type = %spec.type_name,
        version = if spec.version.is_empty() { "v1" } else { spec.version.as_str() },
        "component loaded");
}

fn describe(spec: &ComponentSpec, capabilities: Vec<&'static str>) -> Value {
    let mut v = json!({
        "name": spec.name,
        "type": spec.type_name,
        "version": if spec.version.is_empty() { "v1" } else { spec.version.as_str() },
    });
    if !capabilities.is_empty() {
        v["capabilities"] = json!(capabilities);
    }
    v
}

/// Resolves the metadata and opens the driver within `initTimeout`.
async fn open(
    spec: &ComponentSpec,
    secrets: &SecretsBlock,
    app_id: &str,
    namespace: &str,
) -> Result<(Component, Properties), String> {
    let meta = resolve(spec, secrets).await?;
    let _ = (app_id, namespace);
    let opening = registry::open(&spec.type_name, &spec.version, &meta);
    match tokio::time::timeout(spec.init_timeout, opening).await {
        Ok(Ok(c)) => Ok((c, meta)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "did not start within initTimeout {}",
            humanize(spec.init_timeout)
        )),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Plain values as given; `envRef` from the environment (never `DAPR_*`);
/// `secretKeyRef` from `auth.secretStore`. Errors name the reference,
/// never a value.
async fn resolve(spec: &ComponentSpec, secrets: &SecretsBlock) -> Result<Properties, String> {
    let mut meta = Properties::new();
    for item in &spec.metadata {
        let value = match &item.value {
            MetaValue::Plain(v) => v.clone(),
            MetaValue::Env(var) => {
                if var.to_ascii_uppercase().starts_with("DAPR_") {
                    return Err(format!(
                        "metadata {}: envRef {var} is not allowed (DAPR_* variables are the sidecar's)",
                        item.name
                    ));
                }
                std::env::var(var).unwrap_or_default()
            }
            MetaValue::Secret { name, key } => {
                let Some(store_name) = &spec.secret_store else {
                    return Err(format!(
                        "metadata {}: secretKeyRef {name} needs auth.secretStore (the secret store to read it from)",
                        item.name
                    ));
                };
                let Some(store) = secrets.driver(store_name) else {
                    return Err(format!(
                        "metadata {}: secret store {store_name} (auth.secretStore) is not loaded",
                        item.name
                    ));
                };
                let secret = store.get(name).await.map_err(|e| {
                    format!(
                        "metadata {}: secretKeyRef {name} in {store_name}: {e}",
                        item.name
                    )
                })?;
                match secret.get(key) {
                    Some(v) => v.clone(),
                    None => {
                        return Err(format!(
                            "metadata {}: secret {name} in {store_name} has no key {key}",
                            item.name
                        ));
                    }
                }
            }
        };
        meta.insert(item.name.clone(), value);
    }
    Ok(meta)
}
