//! The Kubernetes resolver: cluster DNS, Dapr's names.
//!
//! An app's sidecars are the addresses of
//! `{appId}-dapr.{namespace}.svc.{clusterDomain}` (or of `template`), at the
//! internal port every sidecar in the cluster uses; a headless service's A
//! and AAAA records are all endpoints. The first call for an app waits for
//! one lookup (bounded by the resolver timeout); after that a task per app
//! re-resolves when the answer's TTL runs out (clamped to
//! [`MIN_REFRESH`]..[`MAX_REFRESH`]) and swaps the endpoint set, so calls
//! never wait on DNS. A failed refresh keeps the last answer; a name that
//! no longer exists empties the set.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::{
    AppRef, BoxFuture, Endpoint, EndpointSet, Registration, ResolveError, Resolver, SetCache,
};

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Re-resolve no sooner than this, whatever the TTL (a TTL of 0 would spin).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Re-resolve at least this often, whatever the TTL.
pub const MAX_REFRESH: Duration = Duration::from_secs(30);
/// One lookup may take this long.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// `spec.nameResolution.configuration` for `kubernetes`.
#[derive(Clone, Debug, Default)]
pub struct KubeDnsConfig {
    pub cluster_domain: Option<String>,
    /// Dapr's template: `{{.ID}}`, `{{.Namespace}}` and `{{.Port}}` are
    /// replaced; a `:port` suffix overrides the internal port.
    pub template: Option<String>,
    /// A nameserver (`ip:port`) instead of the system's (Skiff's key
    /// `nameserver`).
    pub nameserver: Option<SocketAddr>,
}

pub struct KubeDnsResolver {
    dns: TokioResolver,
    cluster_domain: String,
    template: Option<String>,
    /// The internal port of every sidecar.
    port: u16,
    sets: SetCache,
}

impl KubeDnsResolver {
    pub fn new(cfg: KubeDnsConfig, port: u16) -> Result<Self, ResolveError> {
        let dns_err =
            |e: &dyn std::fmt::Display| ResolveError::Config(format!("DNS resolver: {e}"));
        let mut builder = match cfg.nameserver {
            Some(ns) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                let server = NameServerConfig::new(ns.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| dns_err(&e))?,
        };
        let opts = builder.options_mut();
        opts.timeout = LOOKUP_TIMEOUT;
        opts.attempts = 1;
        // Names are fully qualified; no search-list walk.
        opts.ndots = 0;
        if let Some(t) = &cfg.template
            && t.contains("{{.Data")
        {
            return Err(ResolveError::Config(format!(
                "template {t:?}: {{{{.Data.*}}}} is not supported; use {{{{.ID}}}}, {{{{.Namespace}}}} and {{{{.Port}}}}"
            )));
        }
        Ok(Self {
            dns: builder.build().map_err(|e| dns_err(&e))?,
            cluster_domain: cfg
                .cluster_domain
                .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned()),
            template: cfg.template,
            port,
            sets: SetCache::default(),
        })
    }

    /// The DNS name and port for an app.
    pub fn name_of(&self, app: &AppRef) -> (String, u16) {
        let Some(t) = &self.template else {
            return (
                format!(
                    "{}-dapr.{}.svc.{}.",
                    app.app_id, app.namespace, self.cluster_domain
                ),
                self.port,
            );
        };
        let s = t
            .replace("{{.ID}}", &app.app_id)
            .replace("{{.Namespace}}", &app.namespace)
            .replace("{{.Port}}", &self.port.to_string());
        match s.rsplit_once(':') {
            Some((host, p)) if p.parse::<u16>().is_ok() => {
                (host.to_owned(), p.parse().unwrap_or(self.port))
            }
            _ => (s, self.port),
        }
    }

    /// One lookup: the endpoints and when to look again. `Ok(empty)` when the
    /// name does not exist.
    async fn query(&self, app: &AppRef) -> Result<(Vec<Endpoint>, Duration), ResolveError> {
        let (name, port) = self.name_of(app);
        match self.dns.lookup_ip(name.as_str()).await {
            Ok(l) => {
                let mut ips: Vec<IpAddr> = l.iter().collect();
                ips.sort();
                ips.dedup();
                let eps = ips
                    .into_iter()
                    .map(|ip| Endpoint {
                        addr: SocketAddr::new(ip, port),
                        instance: format!("{name}/{ip}").into(),
                    })
                    .collect();
                let ttl = l
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now())
                    .clamp(MIN_REFRESH, MAX_REFRESH);
                Ok((eps, ttl))
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok((Vec::new(), MIN_REFRESH)),
            Err(e) => Err(ResolveError::Dns {
                name,
                why: e.to_string(),
            }),
        }
    }
}

/// Keeps one app's set fresh while anyone holds the resolver.
async fn refresh(
    r: std::sync::Weak<KubeDnsResolver>,
    app: AppRef,
    set: Arc<EndpointSet>,
    mut wait: Duration,
) {
    let mut warned = false;
    loop {
        tokio::time::sleep(wait).await;
        let Some(r) = r.upgrade() else { return };
        match r.query(&app).await {
            Ok((eps, ttl)) => {
                if set.update(eps) {
                    tracing::debug!(app = %app.app_id, "endpoints changed");
                }
                warned = false;
                wait = ttl;
            }
            Err(e) => {
                // Once per outage, not per refresh.
                if !warned {
                    tracing::warn!(error = %e, "DNS refresh failed; keeping the last answer");
                    warned = true;
                }
                wait = MIN_REFRESH;
            }
        }
    }
}

/// The resolver, shared so refresh tasks can find it.
pub struct SharedKubeDns(pub Arc<KubeDnsResolver>);

impl Resolver for SharedKubeDns {
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
                .get_or_lookup(app, self.0.query(app), move |set, seed| {
                    tokio::spawn(refresh(me, app.clone(), set, seed));
                }),
        )
    }

    /// Kubernetes publishes sidecars through their services.
    fn register(&self, _reg: Registration) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), ResolveError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn cached(&self) -> Vec<(AppRef, Arc<EndpointSet>)> {
        self.0.sets.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_follow_dapr() {
        let r = KubeDnsResolver::new(KubeDnsConfig::default(), 50002).expect("resolver");
        let app = AppRef::new("orders", "shop");
        assert_eq!(
            r.name_of(&app),
            ("orders-dapr.shop.svc.cluster.local.".to_owned(), 50002)
        );
        let t = KubeDnsResolver::new(
            KubeDnsConfig {
                template: Some("{{.ID}}.{{.Namespace}}.internal:7000".into()),
                cluster_domain: Some("x".into()),
                ..Default::default()
            },
            50002,
        )
        .expect("resolver");
        assert_eq!(t.name_of(&app), ("orders.shop.internal".to_owned(), 7000));
        assert!(
            KubeDnsResolver::new(
                KubeDnsConfig {
                    template: Some("{{.Data.region}}".into()),
                    ..Default::default()
                },
                1
            )
            .is_err()
        );
    }
}
