//! The mDNS resolver: sidecars on one network segment announce themselves
//! with multicast DNS-SD and find each other without a server.
//!
//! Record layout, Dapr's as far as DNS-SD allows: the app id is the service
//! type — as `_{appId}._tcp.local.`, because DNS-SD service names need the
//! leading underscore and a protocol label (and so app ids longer than 15
//! characters cannot be announced: DNS-SD's limit) — the instance is
//! `{hostname}-{pid}-{port}`, the port is the internal port, and the TXT
//! record holds `appid` and `namespace`. An instance that shuts down sends a
//! goodbye and leaves at once; one that dies leaves when its records expire,
//! and meanwhile connection failures eject it from the balancer.
//!
//! Interfaces are chosen, not assumed: by default only the interface that
//! holds the sidecar's internal address (loopback when that is 127.0.0.1),
//! so the default never multicasts on a network the user did not mean;
//! `interfaces` names others.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::{
    AppRef, BoxFuture, Endpoint, EndpointSet, Registration, ResolveError, Resolver, SetCache,
};

/// How long the first lookup of an app waits for an answer.
pub const FIRST_LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// `spec.nameResolution.configuration` for `mdns` (Skiff's keys).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MdnsConfig {
    /// Interface names to announce and browse on; default: the interface of
    /// the internal address.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

struct Inner {
    daemon: ServiceDaemon,
    sets: SetCache,
    own: Mutex<Option<String>>,
}

pub struct MdnsResolver(Arc<Inner>);

fn err(e: impl std::fmt::Display) -> ResolveError {
    ResolveError::Config(format!("mdns: {e}"))
}

/// DNS-SD service type for an app.
pub fn service_type(app_id: &str) -> String {
    format!("_{}._tcp.local.", app_id.to_ascii_lowercase())
}

impl MdnsResolver {
    /// `internal_ip` picks the default interface.
    pub fn new(cfg: MdnsConfig, internal_ip: IpAddr) -> Result<Self, ResolveError> {
        let daemon = ServiceDaemon::new().map_err(err)?;
        daemon.disable_interface(IfKind::All).map_err(err)?;
        if cfg.interfaces.is_empty() {
            let kind = match internal_ip {
                IpAddr::V4(ip) if ip.is_loopback() => IfKind::LoopbackV4,
                IpAddr::V6(ip) if ip.is_loopback() => IfKind::LoopbackV6,
                ip if ip.is_unspecified() => {
                    return Err(err(
                        "the internal address is unspecified (0.0.0.0): name the interfaces to use in configuration.interfaces",
                    ));
                }
                ip => IfKind::Addr(ip),
            };
            daemon.enable_interface(kind).map_err(err)?;
        } else {
            for name in &cfg.interfaces {
                daemon
                    .enable_interface(IfKind::Name(name.clone()))
                    .map_err(err)?;
            }
        }
        Ok(Self(Arc::new(Inner {
            daemon,
            sets: SetCache::default(),
            own: Mutex::new(None),
        })))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".to_owned())
}

/// Follows one service type, keeping the app's set current.
async fn browse(
    inner: std::sync::Weak<Inner>,
    app: AppRef,
    set: Arc<EndpointSet>,
    rx: mdns_sd::Receiver<ServiceEvent>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut live: BTreeMap<String, Endpoint> = BTreeMap::new();
    while let Ok(ev) = rx.recv_async().await {
        if inner.strong_count() == 0 {
            return;
        }
        match ev {
            ServiceEvent::ServiceResolved(s) => {
                let ns_ok = s
                    .get_property_val_str("namespace")
                    .is_none_or(|ns| ns == app.namespace);
                let ip = s.get_addresses().iter().map(|a| a.to_ip_addr()).min();
                if let (true, Some(ip)) = (ns_ok, ip) {
                    live.insert(
                        s.fullname.clone(),
                        Endpoint {
                            addr: SocketAddr::new(ip, s.port),
                            instance: s.fullname.as_str().into(),
                        },
                    );
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                live.remove(&fullname);
            }
            _ => continue,
        }
        let mut eps: Vec<Endpoint> = live.values().cloned().collect();
        eps.sort_by_key(|e| e.addr);
        set.update(eps);
        if !live.is_empty()
            && let Some(f) = first.take()
        {
            let _ = f.send(());
        }
    }
}

impl Resolver for MdnsResolver {
    fn resolve(&self, app: &AppRef) -> Result<Arc<EndpointSet>, ResolveError> {
        self.0.sets.get(app)
    }

    fn lookup<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Arc<EndpointSet>, ResolveError>> {
        Box::pin(async move {
            let (set, fresh) = self.0.sets.install(app, Vec::new());
            if fresh {
                let rx = self
                    .0
                    .daemon
                    .browse(&service_type(&app.app_id))
                    .map_err(err)?;
                let (tx, first) = tokio::sync::oneshot::channel();
                tokio::spawn(browse(
                    Arc::downgrade(&self.0),
                    app.clone(),
                    set.clone(),
                    rx,
                    tx,
                ));
                // An unknown app gets about a second to answer.
                let _ = tokio::time::timeout(FIRST_LOOKUP_WAIT, first).await;
            }
            Ok(set)
        })
    }

    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(async move {
            let host = hostname();
            let instance = format!("{host}-{}-{}", std::process::id(), reg.internal_addr.port());
            let props = [
                ("appid", reg.app.app_id.as_str()),
                ("namespace", reg.app.namespace.as_str()),
            ];
            let info = ServiceInfo::new(
                &service_type(&reg.app.app_id),
                &instance,
                &format!("{host}.local."),
                reg.internal_addr.ip(),
                reg.internal_addr.port(),
                &props[..],
            )
            .map_err(err)?;
            let fullname = info.get_fullname().to_owned();
            self.0.daemon.register(info).map_err(err)?;
            tracing::info!(%fullname, "announced over mDNS");
            if let Ok(mut o) = self.0.own.lock() {
                *o = Some(fullname);
            }
            Ok(())
        })
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(async move {
            let own = self.0.own.lock().ok().and_then(|mut o| o.take());
            if let Some(fullname) = own {
                let rx = self.0.daemon.unregister(&fullname).map_err(err)?;
                // Wait for the goodbye to go out, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
            }
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "mdns"
    }

    fn cached(&self) -> Vec<(AppRef, Arc<EndpointSet>)> {
        self.0.sets.entries()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}
