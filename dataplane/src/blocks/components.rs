//! Loading components: every `kind: Component` document that applies to
//! this app (its `scopes`), typed, its `secretKeyRef`s and `envRef`s
//! resolved, its driver opened within `initTimeout`, and handed to its
//! block. Secret stores load first so later components can read their
//! passwords from them.
//!
//! A component that fails stops the sidecar with one line naming the file,
//! the component and the cause, unless `spec.ignoreErrors` is set (then it
//! is logged and left out). Components of blocks this skiffd does not
//! serve yet (actors) are logged and left out, so the
//! usual Dapr components folder does not stop the sidecar.
//!
//! `middleware.http.*` components have their metadata resolved here and
//! are handed to the pipelines (`crate::middleware`), which open them: a
//! pipeline that names one that failed refuses the start whatever
//! `ignoreErrors` says.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use serde_json::{Value, json};
use skiff_components::Properties;
use skiff_components::registry::{self, Component};

use super::Blocks;
use super::bindings::{self, BindingsBlock};
use super::configuration::{self, ConfigurationBlock};
use super::lock::{self, LockBlock};
use super::pubsub::{self, PubSubBlock};
use super::secrets::{self, SecretsBlock};
use super::state::{self, StateBlock, Store, key_prefix};
use crate::blocks::call::{Envelope, PolicyRef, Series};
use crate::config::component::{ComponentSpec, MetaValue, secret_scopes};
use crate::config::{ConfigError, Documents};
use crate::middleware::MiddlewareComponent;
use crate::policy::Policies;
use crate::telemetry::metrics::{self, OpsFamily};

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
    matches!(
        registry::block_of(type_name),
        "state" | "secretstores" | "pubsub" | "lock" | "configuration" | "bindings"
    )
}

/// What was loaded, and the `components` list `/v1.0/metadata` reports.
pub struct Loaded {
    pub blocks: Blocks,
    pub report: Vec<Value>,
    /// The middleware components, metadata resolved, for the pipelines.
    pub middleware: Vec<MiddlewareComponent>,
}

/// Loads the app's components. Each reads its `targets.components`
/// policies from the live `policies` at every call, so they reload with
/// the policy files.
pub async fn load(
    docs: &Documents,
    app_id: &str,
    namespace: &str,
    policies: &Arc<ArcSwap<Policies>>,
    home: &std::path::Path,
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
    let mut pubsub = PubSubBlock::new(app_id);
    let mut secrets = SecretsBlock::new(secret_scopes(docs.configuration.as_ref())?);
    let mut lock = LockBlock::new(app_id);
    let mut configuration = ConfigurationBlock::new(app_id);
    let mut bindings = BindingsBlock::default();
    let mut report = Vec::new();
    let mut actor_store: Option<String> = None;
    let mut middleware = Vec::new();
    for spec in specs {
        if registry::block_of(&spec.type_name) == "middleware" {
            match resolve(&spec, &secrets).await {
                Ok(meta) => {
                    report.push(describe(&spec, Vec::new()));
                    middleware.push(MiddlewareComponent {
                        name: spec.name.clone(),
                        type_name: spec.type_name.clone(),
                        version: spec.version.clone(),
                        init_timeout: spec.init_timeout,
                        meta,
                    });
                }
                // A pipeline that names it will refuse the start.
                Err(why) => tracing::warn!(component = %spec.name, r#type = %spec.type_name,
                    file = %spec.source.display(), error = %why, "middleware component left out"),
            }
            continue;
        }
        if !served(&spec.type_name) {
            tracing::warn!(component = %spec.name, r#type = %spec.type_name, file = %spec.source.display(),
                "component left out: the {} building block is not served by this skiffd yet",
                registry::block_of(&spec.type_name));
            continue;
        }
        match open(&spec, &secrets, home).await {
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
                state.add(Store {
                    name: spec.name.clone(),
                    driver,
                    prefix,
                    actor,
                    call: envelope(policies, &spec.name, "Statestore", |m| {
                        m.section::<OpsFamily<state::Ops>>().component(&spec.name)
                    }),
                });
            }
            Ok((Component::PubSub(driver), meta)) => {
                let c = pubsub_component(&spec, driver, &meta, app_id, namespace, policies)
                    .map_err(|why| fail(&spec, why))?;
                report.push(describe(&spec, c.features.names()));
                announce(&spec);
                pubsub.add(c);
            }
            Ok((Component::Lock(driver), meta)) => {
                let prefix = lock::Prefix::from_meta(&meta).map_err(|why| fail(&spec, why))?;
                report.push(describe(&spec, Vec::new()));
                announce(&spec);
                lock.add(lock::Store {
                    name: spec.name.clone(),
                    driver,
                    prefix,
                    call: envelope(policies, &spec.name, "Lock", |m| {
                        m.section::<OpsFamily<lock::Ops>>().component(&spec.name)
                    }),
                });
            }
            Ok((Component::Configuration(driver), _)) => {
                report.push(describe(&spec, Vec::new()));
                announce(&spec);
                configuration.add(configuration::Store {
                    name: spec.name.clone(),
                    driver,
                    call: envelope(policies, &spec.name, "Configuration", |m| {
                        m.section::<OpsFamily<configuration::Ops>>()
                            .component(&spec.name)
                    }),
                });
            }
            Ok((Component::Binding { input, output }, meta)) => {
                let direction = meta.get("direction").map(str::to_ascii_lowercase);
                let wants = |d: &str| {
                    direction
                        .as_deref()
                        .is_none_or(|v| v.split(',').any(|x| x.trim() == d))
                };
                let mut caps = Vec::new();
                let call = envelope(policies, &spec.name, "Binding", |m| {
                    m.section::<bindings::metrics::Families>()
                        .binding(&spec.name)
                });
                if let Some(i) = input.filter(|_| wants("input")) {
                    caps.push("INPUT_BINDING");
                    bindings.add_input(bindings::Input {
                        name: spec.name.clone(),
                        driver: i,
                        route: meta.get("route").unwrap_or(&spec.name).to_owned(),
                        declared_input: direction
                            .as_deref()
                            .is_some_and(|v| v.split(',').any(|x| x.trim() == "input")),
                        call: call.clone(),
                    });
                }
                if let Some(o) = output.filter(|_| wants("output")) {
                    caps.push("OUTPUT_BINDING");
                    bindings.add_output(spec.name.clone(), bindings::Output { driver: o, call });
                }
                report.push(describe(&spec, caps));
                announce(&spec);
            }
            Ok((Component::Secrets(driver), _)) => {
                report.push(describe(&spec, driver.features()));
                announce(&spec);
                let call = envelope(policies, &spec.name, "Secretstore", |m| {
                    m.section::<OpsFamily<secrets::Ops>>().component(&spec.name)
                });
                secrets.add(spec.name.clone(), driver, call);
            }
            Err(why) if spec.ignore_errors => {
                tracing::warn!(component = %spec.name, r#type = %spec.type_name, file = %spec.source.display(),
                    error = %why, "component failed to start and is left out (ignoreErrors)");
            }
            Err(why) => return Err(fail(&spec, why)),
        }
    }
    Ok(Loaded {
        blocks: Blocks {
            state,
            secrets,
            pubsub,
            lock,
            configuration,
            bindings: std::sync::Arc::new(bindings),
        },
        report,
        middleware,
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
    home: &std::path::Path,
) -> Result<(Component, Properties), String> {
    let mut meta = resolve(spec, secrets).await?;
    // The embedded broker lives in $SKIFF_HOME unless told otherwise, so
    // every sidecar of the machine finds the same file.
    if spec.type_name == "pubsub.skiff.sqlite"
        && meta.get_any(&["connectionString", "url"]).is_none()
    {
        meta.insert(
            "connectionString",
            home.join(PUBSUB_DB).display().to_string(),
        );
    }
    let opening = registry::open(&spec.type_name, &spec.version, &meta);
    match tokio::time::timeout(spec.init_timeout, opening).await {
        Ok(Ok(c)) => Ok((c, meta)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "did not start within initTimeout {}",
            skiff_components::util::duration_text(spec.init_timeout)
        )),
    }
}

/// The embedded broker's file in `$SKIFF_HOME`.
pub const PUBSUB_DB: &str = "pubsub.db";

/// A pub/sub driver with its Dapr semantics: scopes, consumer group,
/// limits and policies.
fn pubsub_component(
    spec: &ComponentSpec,
    driver: std::sync::Arc<dyn skiff_components::pubsub::PubSub>,
    meta: &Properties,
    app_id: &str,
    namespace: &str,
    policies: &Arc<ArcSwap<Policies>>,
) -> Result<pubsub::Component, String> {
    let raw_id = meta.get("consumerID").unwrap_or(app_id);
    let namespaced = raw_id.contains("{namespace}");
    let consumer_id = raw_id
        .replace("{appID}", app_id)
        .replace("{namespace}", &format!("{namespace}.{app_id}"))
        .replace(
            "{podName}",
            &std::env::var("POD_NAME").unwrap_or_else(|_| app_id.to_owned()),
        )
        .replace("{uuid}", &skiff_components::util::uuid_v4());
    let concurrency = match meta.get("concurrency").map(str::trim) {
        None | Some("") => pubsub::DEFAULT_CONCURRENCY,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("metadata concurrency: {v:?} is not a positive number"))?,
    };
    let claim = match meta.get("processingTimeout").map(str::trim) {
        None | Some("") => pubsub::DEFAULT_CLAIM,
        Some(v) => match v.parse::<u64>() {
            Ok(0) => pubsub::DEFAULT_CLAIM,
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => skiff_components::util::parse_duration(v)
                .ok_or_else(|| format!("metadata processingTimeout: {v:?} is not a duration"))?,
        },
    };
    Ok(pubsub::Component {
        name: spec.name.clone(),
        app_id: app_id.to_owned(),
        type_name: spec.type_name.clone(),
        features: driver.features(),
        driver,
        scopes: pubsub::scopes::Scopes::from_metadata(meta, app_id),
        consumer_id,
        topic_prefix: if namespaced {
            namespace.to_owned()
        } else {
            String::new()
        },
        concurrency,
        claim,
        call: envelope(policies, &spec.name, "Pubsub", |m| {
            m.section::<pubsub::metrics::Families>()
                .component(&spec.name)
        }),
    })
}

/// A component's envelope: its live policies under `kind` (Dapr's
/// resiliency label: `Statestore`, `Pubsub`, ...) and its series from the
/// one registry.
fn envelope<S: Series>(
    policies: &Arc<ArcSwap<Policies>>,
    name: &str,
    kind: &'static str,
    series: impl FnOnce(&metrics::Metrics) -> Arc<S>,
) -> Envelope<S> {
    Envelope::new(
        PolicyRef::new(policies, name, kind),
        series(metrics::registry()),
    )
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
