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

/// The `/v1.0/metadata` report as `GetMetadataResponse` (one source for
/// both front doors).
pub fn to_grpc(v: &Value) -> skiff_proto::runtime::GetMetadataResponse {
    use skiff_proto::runtime as pb;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let map = |v: &Value| -> std::collections::HashMap<String, String> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let conn = &v["appConnectionProperties"];
    let health = &conn["health"];
    pb::GetMetadataResponse {
        id: s(&v["id"]),
        registered_components: list(&v["components"])
            .iter()
            .map(|c| pb::RegisteredComponents {
                name: s(&c["name"]),
                r#type: s(&c["type"]),
                version: s(&c["version"]),
                capabilities: strs(&c["capabilities"]),
            })
            .collect(),
        extended_metadata: map(&v["extended"]),
        subscriptions: list(&v["subscriptions"])
            .iter()
            .map(|x| pb::PubsubSubscription {
                pubsub_name: s(&x["pubsubname"]),
                topic: s(&x["topic"]),
                metadata: map(&x["metadata"]),
                rules: Some(pb::PubsubSubscriptionRules {
                    rules: list(&x["rules"])
                        .iter()
                        .map(|r| pb::PubsubSubscriptionRule {
                            r#match: s(&r["match"]),
                            path: s(&r["path"]),
                        })
                        .collect(),
                }),
                dead_letter_topic: s(&x["deadLetterTopic"]),
                r#type: match x["type"].as_str() {
                    Some("DECLARATIVE") => pb::PubsubSubscriptionType::Declarative,
                    Some("PROGRAMMATIC") => pb::PubsubSubscriptionType::Programmatic,
                    Some("STREAMING") => pb::PubsubSubscriptionType::Streaming,
                    _ => pb::PubsubSubscriptionType::Unknown,
                } as i32,
            })
            .collect(),
        app_connection_properties: Some(pb::AppConnectionProperties {
            port: conn["port"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0),
            protocol: s(&conn["protocol"]),
            channel_address: s(&conn["channelAddress"]),
            max_concurrency: conn["maxConcurrency"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(-1),
            health: health
                .is_object()
                .then(|| pb::AppConnectionHealthProperties {
                    health_check_path: s(&health["healthCheckPath"]),
                    health_probe_interval: s(&health["healthProbeInterval"]),
                    health_probe_timeout: s(&health["healthProbeTimeout"]),
                    health_threshold: health["healthThreshold"]
                        .as_i64()
                        .and_then(|p| i32::try_from(p).ok())
                        .unwrap_or(0),
                }),
        }),
        runtime_version: s(&v["runtimeVersion"]),
        enabled_features: strs(&v["enabledFeatures"]),
    }
}
