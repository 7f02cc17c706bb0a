//! Name resolution: from an app id (and namespace) to the live set of sidecar
//! endpoints that serve it.
//!
//! A [`Resolver`] hands out an [`EndpointSet`] per app: a snapshot that the
//! resolver keeps current in the background and that the request path reads
//! without locks (`ArcSwap`). Resolvers also register the local sidecar so
//! that others can find it. Implementations: [`local`] (embedded default,
//! one machine, no configuration), [`kubernetes`] (cluster DNS), [`mdns`]
//! (a LAN without a registry) and [`consul`] (VMs with a Consul agent).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

pub mod consul;
pub mod kubernetes;
pub mod local;
pub mod mdns;

/// Errors a resolver reports.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("registry {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry entry {path}: {why}")]
    BadEntry { path: String, why: String },
    /// Not looked up yet: call [`Resolver::lookup`].
    #[error("not resolved yet")]
    Pending,
    #[error("DNS lookup of {name}: {why}")]
    Dns { name: String, why: String },
    #[error("name resolution configuration: {0}")]
    Config(String),
}

/// The app a caller wants to reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppRef {
    pub app_id: String,
    pub namespace: String,
}

impl AppRef {
    pub fn new(app_id: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            namespace: namespace.into(),
        }
    }
}

/// One sidecar instance serving an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where its internal (sidecar-to-sidecar) listener accepts connections.
    pub addr: SocketAddr,
    /// A stable name for the instance (logs, metrics).
    pub instance: Arc<str>,
}

/// What a sidecar publishes about itself.
#[derive(Clone, Debug)]
pub struct Registration {
    pub app: AppRef,
    /// Address other sidecars connect to.
    pub internal_addr: SocketAddr,
    /// The app-facing HTTP port, for resolvers that health-check it.
    pub http_port: u16,
    /// Where that port listens (a health check reaches it there; loopback
    /// when the API is local-only, which a local agent can still reach).
    pub http_ip: std::net::IpAddr,
    pub app_port: Option<u16>,
}

/// The live endpoints of one app. Readers take a lock-free snapshot.
#[derive(Debug, Default)]
pub struct EndpointSet {
    current: ArcSwap<Vec<Endpoint>>,
    generation: AtomicU64,
    /// When the source last confirmed the set (ms since the epoch).
    refreshed_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self {
            current: ArcSwap::from_pointee(endpoints),
            generation: AtomicU64::new(0),
            refreshed_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Time since the source last confirmed the set: how stale a cached
    /// answer may be.
    pub fn age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            now_ms().saturating_sub(self.refreshed_ms.load(Ordering::Relaxed)),
        )
    }

    /// The endpoints as of now.
    pub fn snapshot(&self) -> Arc<Vec<Endpoint>> {
        self.current.load_full()
    }

    /// Bumped on every change; lets callers notice a new set cheaply.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the set when it differs; returns whether it changed.
    pub fn update(&self, endpoints: Vec<Endpoint>) -> bool {
        self.refreshed_ms.store(now_ms(), Ordering::Relaxed);
        if **self.current.load() == endpoints {
            return false;
        }
        self.current.store(Arc::new(endpoints));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// The endpoint sets of a network resolver: the lock-free read calls do,
/// and the one-time install after an app's first lookup.
#[derive(Debug, Default)]
pub struct SetCache(dashmap::DashMap<AppRef, Arc<EndpointSet>>);

impl SetCache {
    /// Every cached set (metrics).
    pub fn entries(&self) -> Vec<(AppRef, Arc<EndpointSet>)> {
        self.0
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// The set, or [`ResolveError::Pending`] before the first lookup.
    pub fn get(&self, app: &AppRef) -> Result<Arc<EndpointSet>, ResolveError> {
        self.0
            .get(app)
            .map(|s| s.clone())
            .ok_or(ResolveError::Pending)
    }

    /// The set of `app`, or its first lookup: `query` answers with the
    /// endpoints and a seed for `keep`, which starts whatever keeps the new
    /// set fresh (it runs once per app, for the lookup that installed it).
    pub async fn get_or_lookup<T>(
        &self,
        app: &AppRef,
        query: impl Future<Output = Result<(Vec<Endpoint>, T), ResolveError>>,
        keep: impl FnOnce(Arc<EndpointSet>, T),
    ) -> Result<Arc<EndpointSet>, ResolveError> {
        if let Ok(s) = self.get(app) {
            return Ok(s);
        }
        let (eps, seed) = query.await?;
        let (set, fresh) = self.install(app, eps);
        if fresh {
            keep(set.clone(), seed);
        }
        Ok(set)
    }

    /// Installs the first answer for `app`; `true` when this call installed
    /// it (and so should start keeping it fresh), `false` when a concurrent
    /// first lookup won.
    pub fn install(&self, app: &AppRef, eps: Vec<Endpoint>) -> (Arc<EndpointSet>, bool) {
        match self.0.entry(app.clone()) {
            dashmap::mapref::entry::Entry::Occupied(o) => (o.get().clone(), false),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                (v.insert(Arc::new(EndpointSet::new(eps))).clone(), true)
            }
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of endpoints. Two implementations exist today: the embedded
/// local registry and the static set used for explicit endpoint lists.
pub trait Resolver: Send + Sync + 'static {
    /// The live endpoint set of `app`. The first call for an app does one
    /// synchronous lookup so an answer is there at once; the resolver keeps the
    /// set current afterwards.
    fn resolve(&self, app: &AppRef) -> Result<Arc<EndpointSet>, ResolveError>;

    /// The first lookup of an app, for resolvers whose answer takes a network
    /// round trip ([`Resolver::resolve`] says [`ResolveError::Pending`] until
    /// then). Bounded in time; afterwards the resolver keeps the set fresh.
    fn lookup<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Arc<EndpointSet>, ResolveError>> {
        Box::pin(std::future::ready(self.resolve(app)))
    }

    /// Publishes this sidecar so that others can find it, and keeps it
    /// published until [`Resolver::deregister`].
    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<(), ResolveError>>;

    /// Removes this sidecar's registration (graceful shutdown).
    fn deregister(&self) -> BoxFuture<'_, Result<(), ResolveError>>;

    /// A short name for logs and the metadata endpoint.
    fn name(&self) -> &'static str;

    /// The apps whose endpoints this resolver keeps, for metrics (endpoint
    /// counts and cache age). Resolvers without a cache list none.
    fn cached(&self) -> Vec<(AppRef, Arc<EndpointSet>)> {
        Vec::new()
    }
}
