//! `GET /v1.0/metadata` and `PUT /v1.0/metadata/{key}`: the sidecar as
//! daprd reports itself, each part describing itself (the app channel, the
//! outbound path, the identity, the policies, telemetry), plus Skiff's own
//! `skiff` section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use crate::appchannel::{AppChannel, Properties};
use crate::identity::WorkloadIdentity;
use crate::invoke::envelope::Invoker;
use crate::policy::Policies;

/// Reported as `runtimeVersion`.
pub const RUNTIME_VERSION: &str = concat!("skiff-", env!("CARGO_PKG_VERSION"));

/// What `/v1.0/metadata` asks.
pub struct Metadata {
    pub app_id: String,
    pub namespace: String,
    /// `components[]`: what the components step loaded for this app.
    pub components: Vec<Value>,
    pub app_properties: Properties,
    pub app: Option<Arc<AppChannel>>,
    pub invoker: Arc<Invoker>,
    pub identity: Option<Arc<WorkloadIdentity>>,
    pub policies: Arc<ArcSwap<Policies>>,
    /// What metrics and tracing are set to, built at start.
    pub telemetry: Value,
    pub internal_address: SocketAddr,
    /// The subscription loops (`subscriptions[]`).
    pub subscriptions: Arc<crate::blocks::pubsub::deliver::Runner>,
    /// Attributes set with `PUT /v1.0/metadata/{key}` (cold path).
    pub extended: Mutex<BTreeMap<String, String>>,
}

impl Metadata {
    /// `PUT /v1.0/metadata/{key}`.
    pub fn put(&self, key: String, value: String) {
        if let Ok(mut m) = self.extended.lock() {
            m.insert(key, value);
        }
    }

    /// `GET /v1.0/metadata`.
    pub fn report(&self) -> Value {
        let extended = self.extended.lock().map(|m| m.clone()).unwrap_or_default();
        let policies = self.policies.load();
        json!({
            "id": self.app_id,
            "runtimeVersion": RUNTIME_VERSION,
            "enabledFeatures": [],
            "actors": [],
            "components": self.components,
            "subscriptions": self.subscriptions.describe(),
            "httpEndpoints": [],
            "appConnectionProperties": self.app_properties.describe(self.app.as_deref()),
            "extended": extended,
            "skiff": {
                "namespace": self.namespace,
                "resolver": self.invoker.outbound.resolver().name(),
                "internalAddress": self.internal_address.to_string(),
                "resiliency": policies.resiliency.report(),
                "accessControl": policies.acl.is_some(),
                "telemetry": self.telemetry,
                "pool": self.invoker.outbound.pool().stats().to_json(),
                "mtls": self.identity.as_ref().map(|i| i.describe()),
            },
        })
    }
}
