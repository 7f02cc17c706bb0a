//! The configuration block: read items from a configuration store, and
//! subscriptions that forward each change — to the app (HTTP: a `POST
//! /configuration/{store}/{key}` per changed key, each with the whole
//! event `{"id", "items"}`) or down a gRPC stream (`{id}` first, then
//! `{id, items}` per change). A subscription ends when it is unsubscribed,
//! when its stream's client goes away, or with the sidecar. Errors are
//! daprd's.

pub mod grpc;
pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ::http::StatusCode;
use serde_json::{Value, json};
use skiff_components::configuration::{ConfigError, ConfigurationStore, Item, Items, Metadata};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::appchannel::AppChannel;
use crate::blocks::call::{self, OutboundError, PolicyRef};
use crate::errors::ApiError;
use crate::telemetry::metrics::{self, ComponentOps};

/// `operation` label indexes ([`metrics::CONFIGURATION_OPS`]).
const GET: usize = 0;
const SUBSCRIBE: usize = 1;

impl OutboundError for ConfigError {
    fn permanent(&self) -> bool {
        false
    }

    fn timed_out(after: std::time::Duration) -> Self {
        Self::Backend(format!(
            "timeout: no answer within {after:?} (resiliency policy)"
        ))
    }

    fn breaker_open(breaker: &str) -> Self {
        Self::Backend(format!("circuit breaker {breaker} is open"))
    }
}

pub struct Store {
    pub name: String,
    pub driver: Arc<dyn ConfigurationStore>,
    pub ops: Arc<ComponentOps>,
    /// `targets.components.<name>.outbound`, for reads.
    pub policy: PolicyRef,
}

#[derive(Default)]
pub struct ConfigurationBlock {
    app_id: String,
    stores: HashMap<String, Store>,
    /// For HTTP subscriptions; set once the app channel exists.
    app: OnceLock<Arc<AppChannel>>,
    /// Subscription id → (store, the task forwarding its changes).
    subs: Mutex<HashMap<String, (String, JoinHandle<()>)>>,
}

/// One item as Dapr's JSON shows it.
pub fn item_json(i: &Item) -> Value {
    json!({"value": i.value, "version": i.version, "metadata": i.metadata})
}

pub fn items_json(items: &Items) -> Value {
    Value::Object(
        items
            .iter()
            .map(|(k, i)| (k.clone(), item_json(i)))
            .collect(),
    )
}

impl ConfigurationBlock {
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_owned(),
            stores: HashMap::new(),
            app: OnceLock::new(),
            subs: Mutex::default(),
        }
    }

    pub fn add(&mut self, s: Store) {
        self.stores.insert(s.name.clone(), s);
    }

    pub fn set_app(&self, app: Arc<AppChannel>) {
        let _ = self.app.set(app);
    }

    fn store(&self, name: &str) -> Result<&Store, ApiError> {
        if self.stores.is_empty() {
            return Err(super::Block::Configuration.not_configured(name, &self.app_id));
        }
        self.stores.get(name).ok_or_else(|| {
            ApiError::new(
                "ERR_CONFIGURATION_STORE_NOT_FOUND",
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!("configuration store {name} not found"),
            )
        })
    }

    /// The store exists (daprd's errors when it does not).
    pub fn check(&self, store: &str) -> Result<(), ApiError> {
        self.store(store).map(|_| ())
    }

    pub async fn get(
        &self,
        store: &str,
        keys: &[String],
        md: &Metadata,
    ) -> Result<Items, ApiError> {
        let s = self.store(store)?;
        let t0 = Instant::now();
        let r = match s.policy.outbound() {
            Some(p) => call::run(&p, || s.driver.get(keys, md)).await,
            None => s.driver.get(keys, md).await,
        };
        record(&s.ops, GET, t0, r.is_ok());
        r.map_err(|e| {
            ApiError::new(
                "ERR_CONFIGURATION_GET",
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                format!("failed to get {keys:?} from Configuration store {store}: {e}"),
            )
        })
    }

    /// Opens a subscription; its id and its changes.
    pub async fn watch(
        &self,
        store: &str,
        keys: &[String],
        md: &Metadata,
    ) -> Result<(String, mpsc::Receiver<Items>), ApiError> {
        let s = self.store(store)?;
        let t0 = Instant::now();
        let r = s.driver.subscribe(keys, md).await;
        record(&s.ops, SUBSCRIBE, t0, r.is_ok());
        let rx = r.map_err(|e| subscribe_failed(store, keys, &e.to_string()))?;
        Ok((skiff_components::util::uuid_v4(), rx))
    }

    /// Remembers the task forwarding subscription `id`.
    pub fn track(&self, id: &str, store: &str, task: JoinHandle<()>) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|_, (_, t)| !t.is_finished());
        subs.insert(id.to_owned(), (store.to_owned(), task));
    }

    /// An HTTP app's subscription: changes are POSTed to the app.
    pub async fn subscribe_app(
        &self,
        store: &str,
        keys: &[String],
        md: &Metadata,
    ) -> Result<String, ApiError> {
        self.store(store)?;
        let Some(app) = self.app.get().cloned() else {
            return Err(ApiError::new(
                "ERR_APP_CHANNEL_NIL",
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                "app channel is not initialized".into(),
            ));
        };
        let (id, mut rx) = self.watch(store, keys, md).await?;
        let (sid, sname) = (id.clone(), store.to_owned());
        let task = tokio::spawn(async move {
            while let Some(items) = rx.recv().await {
                deliver(&app, &sname, &sid, &items).await;
            }
        });
        self.track(&id, store, task);
        Ok(id)
    }

    /// Ends subscription `id` of `store`; Dapr's `{ok, message}`.
    pub fn unsubscribe(&self, store: &str, id: &str) -> Result<(), String> {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        match subs.get(id) {
            Some((s, _)) if s == store => {
                if let Some((_, t)) = subs.remove(id) {
                    t.abort();
                }
                Ok(())
            }
            _ => Err(format!(
                "subscription {id} of configuration store {store} not found"
            )),
        }
    }
}

impl Drop for ConfigurationBlock {
    fn drop(&mut self) {
        let subs = self.subs.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, (_, t)) in subs.drain() {
            t.abort();
        }
    }
}

fn subscribe_failed(store: &str, keys: &[String], why: &str) -> ApiError {
    ApiError::new(
        "ERR_CONFIGURATION_SUBSCRIBE",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        format!("failed to subscribe {keys:?} from Configuration store {store}: {why}"),
    )
}

/// `POST /configuration/{store}/{key}` for each key of the change, each
/// with the whole event, as daprd sends them.
async fn deliver(app: &AppChannel, store: &str, id: &str, items: &Items) {
    let body = json!({"id": id, "items": items_json(items)}).to_string();
    for key in items.keys() {
        let path = format!("/configuration/{}/{}", enc(store), enc(key));
        let Ok(uri) = path.parse::<::http::Uri>() else {
            continue;
        };
        let mut req = ::http::Request::new(crate::skiff_body::SkiffBody::full(body.clone()));
        *req.method_mut() = ::http::Method::POST;
        *req.uri_mut() = uri;
        req.headers_mut().insert(
            ::http::header::CONTENT_TYPE,
            ::http::HeaderValue::from_static("application/json"),
        );
        match app.forward(req).await {
            Ok(r) if r.status() == StatusCode::OK => {}
            Ok(r) => tracing::warn!(store, key = %key, status = r.status().as_u16(),
                "the app did not take a configuration update (it must answer 200)"),
            Err(e) => {
                tracing::warn!(store, key = %key, error = %e, "delivering a configuration update failed")
            }
        }
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn record(ops: &ComponentOps, op: usize, started: Instant, ok: bool) {
    if metrics::get().is_some() {
        ops.record(op, ok, started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_follow_daprd() {
        let b = ConfigurationBlock::new("a");
        assert_eq!(
            b.get("s", &[], &Metadata::new())
                .await
                .expect_err("none")
                .code,
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED"
        );
        assert!(b.unsubscribe("s", "nope").is_err());
    }
}
