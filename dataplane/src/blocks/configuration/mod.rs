//! The configuration block: read items from a configuration store, and
//! subscriptions that forward each change — to the app (HTTP: a `POST
//! /configuration/{store}/{key}` per changed key, each with the whole
//! event `{"id", "items"}`) or down a gRPC stream (`{id}` first, then
//! `{id, items}` per change). A subscription ends when it is unsubscribed,
//! when its stream's client goes away, or with the sidecar. Reads run
//! under the store's `targets.components.<store>.outbound` policy; each
//! update POSTed to an HTTP app under its `inbound` policy (an update the
//! app fails is retried while the policy allows, then logged). Errors
//! are daprd's (`errors.rs`).

pub mod errors;
pub mod grpc;
pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ::http::StatusCode;
use serde_json::{Value, json};
use skiff_components::configuration::{ConfigurationStore, Item, Items, Metadata};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::appchannel::AppChannel;
use crate::blocks::call::{Envelope, Undelivered};
use crate::errors::ApiError;
use crate::telemetry::metrics::{ComponentOps, StoreKind};

/// The block's families, `dapr_component_configuration_*`: `operation`
/// label values by index ([`GET`], [`SUBSCRIBE`]).
pub struct Ops;

impl StoreKind for Ops {
    const KIND: &'static str = "configuration";
    const OPS: &'static [&'static str] = &["get", "subscribe"];
}

const GET: usize = 0;
const SUBSCRIBE: usize = 1;

pub struct Store {
    pub name: String,
    pub driver: Arc<dyn ConfigurationStore>,
    /// Its policies (outbound for reads, inbound for updates to the app)
    /// and `dapr_component_configuration_*`.
    pub call: Envelope<ComponentOps>,
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
        self.stores
            .get(name)
            .ok_or_else(|| errors::store_not_found(name))
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
        let r = s.call.call(GET, || s.driver.get(keys, md)).await;
        r.map_err(|e| errors::get_failed(store, keys, &e))
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
        s.call.record(SUBSCRIBE, t0, r.is_ok());
        let rx = r.map_err(|e| errors::subscribe_failed(store, keys, &e.to_string()))?;
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
        let envelope = self.store(store)?.call.clone();
        let Some(app) = self.app.get().cloned() else {
            return Err(errors::no_app_channel());
        };
        let (id, mut rx) = self.watch(store, keys, md).await?;
        let (sid, sname) = (id.clone(), store.to_owned());
        let task = tokio::spawn(async move {
            while let Some(items) = rx.recv().await {
                deliver(&app, &envelope, &sname, &sid, &items).await;
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

/// `POST /configuration/{store}/{key}` for each key of the change, each
/// with the whole event, as daprd sends them, under the store's inbound
/// policy. The app must answer 200.
async fn deliver(
    app: &AppChannel,
    envelope: &Envelope<ComponentOps>,
    store: &str,
    id: &str,
    items: &Items,
) {
    let body = bytes::Bytes::from(json!({"id": id, "items": items_json(items)}).to_string());
    for key in items.keys() {
        let path = format!("/configuration/{}/{}", enc(store), enc(key));
        let Ok(uri) = path.parse::<::http::Uri>() else {
            continue;
        };
        let once = || post_update(app, uri.clone(), body.clone());
        if let Err(Undelivered(why)) = envelope.deliver_retrying(once).await {
            tracing::warn!(store, key = %key, error = %why, "the app did not take a configuration update");
        }
    }
}

async fn post_update(
    app: &AppChannel,
    uri: ::http::Uri,
    body: bytes::Bytes,
) -> Result<(), Undelivered> {
    let mut req = ::http::Request::new(crate::skiff_body::SkiffBody::full(body));
    *req.method_mut() = ::http::Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("application/json"),
    );
    match app.forward(req).await {
        Ok(r) if r.status() == StatusCode::OK => Ok(()),
        Ok(r) => Err(Undelivered(format!(
            "the app answered HTTP {} (it must answer 200)",
            r.status().as_u16()
        ))),
        Err(e) => Err(Undelivered(e.to_string())),
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
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
