//! The Consul resolver: Dapr's `consul` name resolution on a small HTTP
//! client of our own (no maintained Consul crate exists).
//!
//! Registration (with `selfRegister`): the sidecar registers its app as
//! service `{appId}` with ID `{appId}-{host}-{httpPort}`, the app's port,
//! the internal port in `Meta[daprPortMetaKey]` (`DAPR_PORT`), and an HTTP
//! check on the sidecar's `/v1.0/healthz?appid=<id>`; with `selfDeregister`
//! it deregisters on shutdown. Lookups read healthy instances only
//! (`/v1/health/service/<app>?passing=1`). After the first lookup a watch
//! per app (blocking queries: `index`, `wait`, `X-Consul-Index`) keeps the
//! endpoint set current, so calls never wait on Consul; when Consul is
//! unreachable the last known endpoints keep serving and the error is
//! logged once per outage. `X-Consul-Token` carries an ACL token.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    AppRef, BoxFuture, Endpoint, EndpointSet, Registration, ResolveError, Resolver, SetCache,
};

pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
pub const DEFAULT_PORT_META_KEY: &str = "DAPR_PORT";
/// How long one blocking query may wait for a change.
pub const WATCH_WAIT: Duration = Duration::from_secs(30);
/// A plain request (register, first lookup) may take this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry backoff for a failing watch, doubling up to the cap.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(500);
const WATCH_RETRY_CAP: Duration = Duration::from_secs(10);
/// The default health check's interval (Dapr's).
pub const DEFAULT_CHECK_INTERVAL: &str = "15s";

/// `spec.nameResolution.configuration` for `consul`, Dapr's keys.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsulConfig {
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub query_options: QueryOptions,
    /// Checks for the registration; default: an HTTP check on the sidecar's
    /// `/v1.0/healthz?appid=<id>` every 15 s.
    #[serde(default)]
    pub checks: Option<Vec<Value>>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub dapr_port_meta_key: Option<String>,
    #[serde(default)]
    pub self_register: bool,
    #[serde(default)]
    pub self_deregister: bool,
    /// Answer from the agent's cache (`?cached`) rather than the servers.
    #[serde(default)]
    pub use_cache: bool,
    /// Interval of the generated health check (Skiff's key; Dapr's is 15s).
    #[serde(default)]
    pub check_interval: Option<String>,
    /// A complete registration body instead of the generated one.
    #[serde(default)]
    pub advanced_registration: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryOptions {
    #[serde(default)]
    pub use_cache: bool,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    #[serde(default)]
    node: NodeEntry,
    service: ServiceEntry,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeEntry {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

struct Inner {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
    cfg: ConsulConfig,
    port_key: String,
    sets: SetCache,
    /// Our registration's service ID, for deregistration.
    registered: Mutex<Option<String>>,
}

/// The Consul resolver.
pub struct ConsulResolver(Arc<Inner>);

impl ConsulResolver {
    pub fn new(cfg: ConsulConfig) -> Result<Self, ResolveError> {
        let addr = cfg
            .client
            .address
            .clone()
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_owned()
        } else if addr.starts_with("https://") {
            return Err(ResolveError::Config(format!(
                "consul client.address {addr:?}: https is not supported; use the local agent over http"
            )));
        } else {
            format!("http://{addr}")
        };
        base.parse::<http::Uri>()
            .map_err(|e| ResolveError::Config(format!("consul client.address {addr:?}: {e}")))?;
        let token = cfg
            .query_options
            .token
            .clone()
            .or_else(|| cfg.client.token.clone());
        let port_key = cfg
            .dapr_port_meta_key
            .clone()
            .unwrap_or_else(|| DEFAULT_PORT_META_KEY.to_owned());
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        Ok(Self(Arc::new(Inner {
            http: Client::builder(TokioExecutor::new()).build(conn),
            base,
            token,
            cfg,
            port_key,
            sets: SetCache::default(),
            registered: Mutex::new(None),
        })))
    }
}

impl Inner {
    fn err(&self, why: impl std::fmt::Display) -> ResolveError {
        ResolveError::Dns {
            name: format!("consul at {}", self.base),
            why: why.to_string(),
        }
    }

    /// One request; returns the body and `X-Consul-Index`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(Bytes, Option<u64>), ResolveError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("x-consul-token", t);
        }
        let req = req
            .body(Full::new(
                body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
            ))
            .map_err(|e| self.err(e))?;
        let resp = tokio::time::timeout(timeout, async {
            let resp = self.http.request(req).await.map_err(|e| self.err(e))?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.err(e))?
                .to_bytes();
            if !status.is_success() {
                return Err(self.err(format!(
                    "{path}: HTTP {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )));
            }
            Ok((bytes, index))
        })
        .await
        .map_err(|_| self.err(format!("{path}: no answer within {timeout:?}")))??;
        Ok(resp)
    }

    fn health_path(&self, app: &AppRef, index: Option<u64>) -> String {
        let mut p = format!("/v1/health/service/{}?passing=1", app.app_id);
        if self.cfg.use_cache || self.cfg.query_options.use_cache {
            p.push_str("&cached");
        }
        if let Some(dc) = self.cfg.query_options.datacenter.as_ref().or(self
            .cfg
            .client
            .datacenter
            .as_ref())
        {
            p.push_str(&format!("&dc={dc}"));
        }
        if let Some(i) = index {
            p.push_str(&format!("&index={i}&wait={}s", WATCH_WAIT.as_secs()));
        }
        p
    }

    /// Healthy instances of an app (Consul has no namespaces in OSS: the
    /// app id alone names the service, as in Dapr).
    async fn healthy(
        &self,
        app: &AppRef,
        index: Option<u64>,
    ) -> Result<(Vec<Endpoint>, Option<u64>), ResolveError> {
        let timeout = if index.is_some() {
            WATCH_WAIT + REQUEST_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        let (body, idx) = self
            .call(Method::GET, &self.health_path(app, index), None, timeout)
            .await?;
        let entries: Vec<HealthEntry> =
            serde_json::from_slice(&body).map_err(|e| self.err(format!("health answer: {e}")))?;
        let mut eps: Vec<Endpoint> = entries
            .into_iter()
            .filter_map(|e| {
                let host = if e.service.address.is_empty() {
                    e.node.address
                } else {
                    e.service.address
                };
                let ip: IpAddr = host.parse().ok()?;
                let port: u16 = e.service.meta.get(&self.port_key)?.parse().ok()?;
                Some(Endpoint {
                    addr: SocketAddr::new(ip, port),
                    instance: e.service.id.into(),
                })
            })
            .collect();
        eps.sort_by_key(|e| e.addr);
        Ok((eps, idx))
    }

    fn registration(&self, reg: &Registration) -> (String, Value) {
        if let Some(adv) = &self.cfg.advanced_registration {
            let id = adv
                .get("ID")
                .and_then(|v| v.as_str())
                .unwrap_or(&reg.app.app_id)
                .to_owned();
            return (id, adv.clone());
        }
        let host = reg.internal_addr.ip().to_string();
        let id = format!("{}-{host}-{}", reg.app.app_id, reg.http_port);
        let mut meta: serde_json::Map<String, Value> = self
            .cfg
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        meta.insert(
            self.port_key.clone(),
            reg.internal_addr.port().to_string().into(),
        );
        let checks = self.cfg.checks.clone().unwrap_or_else(|| {
            vec![json!({
                "Name": "Dapr Health Status",
                "CheckID": format!("daprHealth:{id}"),
                "Interval": self.cfg.check_interval.as_deref().unwrap_or(DEFAULT_CHECK_INTERVAL),
                "HTTP": format!("http://{}/v1.0/healthz?appid={}", check_addr(reg), reg.app.app_id),
            })]
        });
        let body = json!({
            "ID": id,
            "Name": reg.app.app_id,
            "Address": host,
            "Port": reg.app_port.unwrap_or(0),
            "Tags": self.cfg.tags,
            "Meta": meta,
            "Checks": checks,
        });
        (id, body)
    }
}

/// Where the agent reaches the sidecar's HTTP API: its listen address, or
/// the internal address when the API listens on every interface.
fn check_addr(reg: &Registration) -> SocketAddr {
    let ip = if reg.http_ip.is_unspecified() {
        reg.internal_addr.ip()
    } else {
        reg.http_ip
    };
    SocketAddr::new(ip, reg.http_port)
}

/// Keeps one app's set current with blocking queries.
async fn watch(
    inner: std::sync::Weak<Inner>,
    app: AppRef,
    set: Arc<EndpointSet>,
    mut index: Option<u64>,
) {
    let mut retry = WATCH_RETRY_FIRST;
    let mut failing = false;
    loop {
        let Some(c) = inner.upgrade() else { return };
        match c.healthy(&app, Some(index.unwrap_or(0))).await {
            Ok((eps, idx)) => {
                if failing {
                    tracing::info!(app = %app.app_id, "consul reachable again");
                    failing = false;
                }
                retry = WATCH_RETRY_FIRST;
                set.update(eps);
                // An index that goes backwards means Consul was reset.
                index = match (idx, index) {
                    (Some(new), Some(old)) if new < old => Some(0),
                    (new, _) => new,
                };
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(app = %app.app_id, error = %e, "consul watch failing; serving the last known endpoints");
                    failing = true;
                }
                drop(c);
                tokio::time::sleep(retry.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
                retry = (retry * 2).min(WATCH_RETRY_CAP);
            }
        }
    }
}

impl Resolver for ConsulResolver {
    fn resolve(&self, app: &AppRef) -> Result<Arc<EndpointSet>, ResolveError> {
        self.0.sets.get(app)
    }

    fn lookup<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Arc<EndpointSet>, ResolveError>> {
        let me = Arc::downgrade(&self.0);
        Box::pin(
            self.0
                .sets
                .get_or_lookup(app, self.0.healthy(app, None), move |set, seed| {
                    tokio::spawn(watch(me, app.clone(), set, seed));
                }),
        )
    }

    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(async move {
            if !self.0.cfg.self_register {
                return Ok(());
            }
            let (id, body) = self.0.registration(&reg);
            self.0
                .call(
                    Method::PUT,
                    "/v1/agent/service/register",
                    Some(body),
                    REQUEST_TIMEOUT,
                )
                .await?;
            tracing::info!(service = %id, agent = %self.0.base, "registered with consul");
            if let Ok(mut r) = self.0.registered.lock() {
                *r = Some(id);
            }
            Ok(())
        })
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(async move {
            let id = self.0.registered.lock().ok().and_then(|mut r| r.take());
            match id {
                Some(id) if self.0.cfg.self_deregister => {
                    self.0
                        .call(
                            Method::PUT,
                            &format!("/v1/agent/service/deregister/{id}"),
                            None,
                            REQUEST_TIMEOUT,
                        )
                        .await?;
                    tracing::info!(service = %id, "deregistered from consul");
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }

    fn name(&self) -> &'static str {
        "consul"
    }

    fn cached(&self) -> Vec<(AppRef, Arc<EndpointSet>)> {
        self.0.sets.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_follows_dapr() {
        let cfg: ConsulConfig = serde_json::from_value(json!({
            "client": {"address": "127.0.0.1:8500"},
            "selfRegister": true,
            "tags": ["blue"],
            "meta": {"zone": "a"},
        }))
        .expect("config");
        let r = ConsulResolver::new(cfg).expect("resolver");
        let (id, body) = r.0.registration(&Registration {
            app: AppRef::new("orders", "default"),
            internal_addr: "10.0.0.7:50002".parse().expect("addr"),
            http_port: 3500,
            http_ip: "10.0.0.7".parse().expect("ip"),
            app_port: Some(8080),
        });
        assert_eq!(id, "orders-10.0.0.7-3500");
        assert_eq!(body["Name"], "orders");
        assert_eq!(body["Port"], 8080);
        assert_eq!(body["Meta"]["DAPR_PORT"], "50002");
        assert_eq!(body["Meta"]["zone"], "a");
        assert_eq!(body["Tags"][0], "blue");
        assert_eq!(
            body["Checks"][0]["HTTP"],
            "http://10.0.0.7:3500/v1.0/healthz?appid=orders"
        );
        assert!(
            ConsulResolver::new(
                serde_json::from_value(json!({"client": {"address": "https://x"}})).expect("cfg")
            )
            .is_err()
        );
    }
}
