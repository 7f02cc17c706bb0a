//! Wiring: builds the sidecar from its settings, binds the listeners,
//! registers with the resolver, and runs until SIGTERM/SIGINT or
//! `POST /v1.0/shutdown`, then drains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use serde_json::json;
use skiff_resolvers::consul::{ConsulConfig, ConsulResolver};
use skiff_resolvers::kubernetes::{KubeDnsConfig, KubeDnsResolver, SharedKubeDns};
use skiff_resolvers::local::LocalResolver;
use skiff_resolvers::mdns::{MdnsConfig, MdnsResolver};
use skiff_resolvers::{AppRef, Registration, Resolver};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::api::grpc::GrpcApi;
use crate::appchannel::{AppChannel, health};
use crate::config::{Documents, Mode, MtlsSettings, Settings, load_documents};
use crate::headers::Identity;
use crate::identity::{self, Source, WorkloadIdentity};
use crate::invoke::{inbound, outbound::Outbound};
use crate::policy::Policies;
use crate::pool::{Pool, PoolConfig};
use crate::server::{self, Drain, ListenerConfig, Protocols};
use crate::telemetry::config::Telemetry;
use crate::telemetry::metrics::{self, PathMatching};
use crate::telemetry::otlp::{self, OtlpConfig};
use crate::telemetry::trace::Tracer;
use crate::transport::{Acceptor, Connector};
use arc_swap::ArcSwap;
use skiff_proto::sentry::sign_certificate_request::TokenValidator;
use skiff_sentry::SpiffeId;
use skiff_sentry::ca::{Authority, KeyAlg};
use skiff_sentry::tls::Anchors;

/// Reported at `/v1.0/metadata` as `runtimeVersion`.
pub const RUNTIME_VERSION: &str = concat!("skiff-", env!("CARGO_PKG_VERSION"));

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("name resolution: {0}")]
    Resolver(#[from] skiff_resolvers::ResolveError),
    #[error("trust anchors from {from}: {source}")]
    Anchors {
        from: String,
        #[source]
        source: skiff_sentry::tls::TlsError,
    },
    #[error("embedded CA: {0}")]
    EmbeddedCa(#[from] skiff_sentry::ca::CaError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::config::TelemetryError),
    #[error("tracing: {0}")]
    Export(#[from] crate::telemetry::otlp::ExportError),
}

/// Everything a request handler needs, shared by all of them.
pub struct Sidecar {
    pub settings: Settings,
    pub outbound: Outbound,
    pub app: Option<Arc<AppChannel>>,
    pub docs: Documents,
    /// With mTLS: who we are and our current certificate.
    pub identity: Option<Arc<WorkloadIdentity>>,
    /// Access control and resiliency, swapped when the files change.
    pub policies: Arc<ArcSwap<Policies>>,
    ready: AtomicBool,
    shutdown: Notify,
    shutdown_requested: AtomicBool,
    /// Attributes set with `PUT /v1.0/metadata/{key}` (cold path).
    extended: Mutex<BTreeMap<String, String>>,
    internal_addr: Mutex<Option<SocketAddr>>,
    /// W3C tracing, when the Configuration has `spec.tracing`.
    pub tracer: Option<Tracer>,
    /// What `/v1.0/metadata` reports about metrics and tracing.
    telemetry_report: serde_json::Value,
    /// What the callee checks and adds per call, built once.
    pub inbound: inbound::Prepared,
}

impl Sidecar {
    /// Started, registered and, with mTLS, holding a workload certificate.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.identity.as_ref().is_none_or(|i| i.is_ready())
    }

    /// Starts a graceful shutdown (`POST /v1.0/shutdown`).
    pub fn trigger_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::Release);
        self.shutdown.notify_one();
    }

    /// `PUT /v1.0/metadata/{key}`.
    pub fn put_metadata(&self, key: String, value: String) {
        if let Ok(mut m) = self.extended.lock() {
            m.insert(key, value);
        }
    }

    /// `/v1.0/metadata`.
    pub fn metadata(&self) -> serde_json::Value {
        let s = &self.settings;
        let extended = self.extended.lock().map(|m| m.clone()).unwrap_or_default();
        let components: Vec<_> = self
            .docs
            .components_for(&s.app_id)
            .map(|d| {
                json!({
                    "name": d.metadata.name,
                    "type": d.spec.get("type").cloned().unwrap_or_default(),
                    "version": d.spec.get("version").cloned().unwrap_or_default(),
                    "capabilities": [],
                })
            })
            .collect();
        let app = self.app.as_deref();
        let mut conn = json!({
            "port": s.app_port.unwrap_or(0),
            "protocol": s.app_protocol.as_str(),
            "channelAddress": s.app_channel_address.to_string(),
            // daprd reports -1 for unlimited.
            "maxConcurrency": if s.app_max_concurrency == 0 { -1 } else { s.app_max_concurrency as i64 },
        });
        if let (Some(h), Some(app)) = (&s.app_health, app) {
            conn["health"] = json!({
                "healthCheckPath": h.path,
                "healthProbeInterval": format!("{}s", h.interval.as_secs()),
                "healthProbeTimeout": format!("{}ms", h.timeout.as_millis()),
                "healthThreshold": h.threshold,
                "healthy": app.is_healthy(),
            });
        }
        let internal = self.internal_addr.lock().ok().and_then(|a| *a);
        json!({
            "id": s.app_id,
            "runtimeVersion": RUNTIME_VERSION,
            "enabledFeatures": [],
            "actors": [],
            "components": components,
            "subscriptions": [],
            "httpEndpoints": [],
            "appConnectionProperties": conn,
            "extended": extended,
            "skiff": {
                "namespace": s.namespace,
                "resolver": self.outbound.resolver().name(),
                "internalAddress": internal.map(|a| a.to_string()),
                "resiliency": self.policies.load().resiliency.report(),
                "accessControl": self.policies.load().acl.is_some(),
                "telemetry": self.telemetry_report,
                "pool": self.outbound.pool().stats().to_json(),
                "mtls": self.identity.as_ref().map(|i| json!({
                    "spiffeId": i.id().to_string(),
                    "certificateExpiry": i.not_after().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                })),
            },
        })
    }
}

/// Runs the sidecar until it is told to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let docs = load_documents(settings.config_file.as_deref(), &settings.resources_paths)
        .map_err(StartError::from)?;
    let http_listeners = bind_all(&settings.http_addrs, "--dapr-http-port").await?;
    let grpc_listeners = bind_all(&settings.grpc_addrs, "--dapr-grpc-port").await?;
    let internal = bind(settings.internal_addr, "--dapr-internal-grpc-port").await?;
    let internal_addr = internal.local_addr().map_err(|source| StartError::Bind {
        addr: settings.internal_addr,
        what: "--dapr-internal-grpc-port",
        source,
    })?;
    let telemetry = Telemetry::from_documents(&docs)?;
    let metrics_on = settings.metrics_addr.is_some() && telemetry.metrics_enabled;
    metrics::set_enabled(metrics_on);
    metrics::registry().init(
        &settings.app_id,
        &settings.namespace,
        PathMatching::new(&telemetry.path_matching),
    );
    let metrics_listener = match settings.metrics_addr.filter(|_| metrics_on) {
        Some(a) => Some(bind(a, "--metrics-port").await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let tracer = match &telemetry.tracing {
        Some(t) => {
            let queue = match &t.otel {
                Some(o) => Some(otlp::spawn(OtlpConfig {
                    endpoint: o.endpoint.clone(),
                    protocol: o.protocol,
                    service: settings.app_id.clone(),
                })?),
                None => None,
            };
            Some(Tracer::new(t.sampling_rate, queue))
        }
        None => None,
    };
    let telemetry_report = json!({
        "metrics": {
            "enabled": metrics_on,
            "address": metrics_addr.map(|a| a.to_string()),
            "pathMatching": telemetry.path_matching,
        },
        "tracing": telemetry.tracing.as_ref().map(|t| json!({
            "samplingRate": t.sampling_rate,
            "exporter": t.otel.as_ref().map(|o| json!({
                "endpointAddress": o.endpoint,
                "protocol": format!("{:?}", o.protocol).to_lowercase(),
            })),
        })),
    });

    let resolver = build_resolver(&settings, &docs, internal_addr.port())?;
    let me = Identity {
        app_id: HeaderValue::from_str(&settings.app_id)?,
        namespace: HeaderValue::from_str(&settings.namespace)?,
    };
    let identity = match &settings.mtls {
        Some(m) => {
            let (identity, source) = build_identity(&settings, m)?;
            tokio::spawn(identity.clone().rotate(source));
            Some(identity)
        }
        None => None,
    };
    let (connector, internal_acceptor) = match &identity {
        Some(i) => (
            Connector::default().with_identity(i.clone()),
            Acceptor::mtls(i.clone()),
        ),
        None => (Connector::default(), Acceptor::plain()),
    };
    let policies = Arc::new(ArcSwap::from_pointee(Policies::from_documents(
        &docs,
        &settings.app_id,
    )?));
    tokio::spawn(crate::policy::watch(
        policies.clone(),
        crate::policy::Sources {
            config: settings.config_file.clone(),
            resources: settings.resources_paths.clone(),
            app_id: settings.app_id.clone(),
        },
    ));
    let outbound = Outbound::new(
        resolver.clone(),
        Pool::new(PoolConfig::default(), connector),
        me,
    )
    .with_policies(policies.clone(), settings.retry_buffer_size)
    .with_mtls(identity.is_some());
    let app = AppChannel::new(&settings).map(Arc::new);
    let sc = Arc::new(Sidecar {
        outbound,
        app,
        docs,
        identity,
        policies,
        ready: AtomicBool::new(false),
        shutdown: Notify::new(),
        shutdown_requested: AtomicBool::new(false),
        extended: Mutex::default(),
        internal_addr: Mutex::new(Some(internal_addr)),
        tracer,
        telemetry_report,
        inbound: inbound::Prepared::new(&settings),
        settings,
    });
    if let Some(l) = metrics_listener {
        tokio::spawn(crate::telemetry::server::serve(l));
    }
    register_collectors(&sc);

    let drain = Drain::default();
    let http_cfg = ListenerConfig {
        protocols: Protocols::Http1AndH2,
        max_header_bytes: sc.settings.max_header_bytes,
    };
    let h2_cfg = ListenerConfig {
        protocols: Protocols::H2Only,
        ..http_cfg.clone()
    };
    for l in http_listeners {
        let sc = sc.clone();
        tokio::spawn(server::serve(
            l,
            http_cfg.clone(),
            Acceptor::plain(),
            drain.watch(),
            move |_, req| crate::api::http::handle(sc.clone(), req),
        ));
    }
    let grpc_api = GrpcApi::new(sc.clone());
    for l in grpc_listeners {
        let api = grpc_api.clone();
        tokio::spawn(server::serve(
            l,
            h2_cfg.clone(),
            Acceptor::plain(),
            drain.watch(),
            move |_, req| api.clone().handle(req),
        ));
    }
    {
        let sc = sc.clone();
        tokio::spawn(server::serve(
            internal,
            h2_cfg.clone(),
            internal_acceptor,
            drain.watch(),
            move |peer, req| inbound::handle(sc.clone(), peer, req),
        ));
    }
    let probe = match (&sc.app, &sc.settings.app_health) {
        (Some(app), Some(cfg)) => Some(tokio::spawn(health::probe_loop(app.clone(), cfg.clone()))),
        _ => None,
    };

    let registration = Registration {
        app: AppRef::new(sc.settings.app_id.clone(), sc.settings.namespace.clone()),
        internal_addr: SocketAddr::new(sc.settings.advertise_ip, internal_addr.port()),
        http_port: sc.settings.http_addrs.first().map_or(0, |a| a.port()),
        http_ip: sc
            .settings
            .http_addrs
            .first()
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip()),
        app_port: sc.settings.app_port,
    };
    match sc.identity.clone() {
        // Without a certificate the internal port refuses everyone: publish
        // this sidecar (and report ready) only once it has one, so callers
        // are not sent to it in vain. SIGTERM is handled meanwhile.
        Some(identity) => {
            let (sc, resolver) = (sc.clone(), resolver.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while !identity.is_ready() {
                    tick.tick().await;
                }
                match resolver.register(registration).await {
                    Ok(()) => sc.ready.store(true, Ordering::Release),
                    Err(e) => {
                        tracing::error!(error = %e, "registering with the name resolver failed; other sidecars cannot find this one")
                    }
                }
            });
        }
        None => {
            resolver
                .register(registration)
                .await
                .map_err(StartError::from)?;
            sc.ready.store(true, Ordering::Release);
        }
    }
    tracing::info!(
        app_id = %sc.settings.app_id,
        namespace = %sc.settings.namespace,
        http = ?sc.settings.http_addrs,
        grpc = ?sc.settings.grpc_addrs,
        internal = %internal_addr,
        app = ?sc.app.as_ref().map(|a| a.addr()),
        "skiffd ready"
    );

    wait_for_stop(&sc).await;
    sc.ready.store(false, Ordering::Release);
    if let Err(e) = resolver.deregister().await {
        tracing::warn!(error = %e, "deregistration failed");
    }
    if let Some(p) = probe {
        p.abort();
    }
    let grace = sc.settings.graceful_shutdown;
    if drain.wait(grace).await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!(
            ?grace,
            "grace period over with calls still in flight; closing"
        );
    }
    Ok(())
}

async fn wait_for_stop(sc: &Sidecar) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            return sc.shutdown.notified().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = sc.shutdown.notified() => tracing::info!("shutdown requested through the API"),
    }
}

/// The resolver `spec.nameResolution` names; the default is `kubernetes`
/// in Kubernetes mode and the embedded local registry otherwise.
fn build_resolver(
    settings: &Settings,
    docs: &Documents,
    internal_port: u16,
) -> Result<Arc<dyn Resolver>, StartError> {
    let nr = docs
        .configuration
        .as_ref()
        .and_then(|c| c.spec.get("nameResolution"));
    let file = docs
        .configuration
        .as_ref()
        .map(|c| c.source.display().to_string())
        .unwrap_or_default();
    let component = nr
        .and_then(|n| n.get("component"))
        .and_then(|c| c.as_str())
        .unwrap_or(match settings.mode {
            Mode::Kubernetes => "kubernetes",
            Mode::Standalone => "local",
        });
    let cfg = nr.and_then(|n| n.get("configuration"));
    let bad = |why: String| {
        StartError::Resolver(skiff_resolvers::ResolveError::Config(format!(
            "{file}: spec.nameResolution: {why}"
        )))
    };
    match component {
        "local" | "sqlite" | "" => Ok(Arc::new(
            LocalResolver::new(&settings.skiff_home).map_err(StartError::from)?,
        )),
        "kubernetes" => {
            let s = |k: &str| {
                cfg.and_then(|c| c.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let nameserver =
                match s("nameserver") {
                    Some(ns) => Some(ns.parse().map_err(|_| {
                        bad(format!("configuration.nameserver {ns:?} is not ip:port"))
                    })?),
                    None => None,
                };
            let k = KubeDnsResolver::new(
                KubeDnsConfig {
                    cluster_domain: s("clusterDomain"),
                    template: s("template"),
                    nameserver,
                },
                internal_port,
            )
            .map_err(|e| bad(e.to_string()))?;
            Ok(Arc::new(SharedKubeDns(Arc::new(k))))
        }
        "consul" => {
            let c: ConsulConfig = match cfg {
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|e| bad(format!("configuration: {e}")))?,
                None => ConsulConfig::default(),
            };
            Ok(Arc::new(
                ConsulResolver::new(c).map_err(|e| bad(e.to_string()))?,
            ))
        }
        "mdns" => {
            let c: MdnsConfig = match cfg {
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|e| bad(format!("configuration: {e}")))?,
                None => MdnsConfig::default(),
            };
            Ok(Arc::new(
                MdnsResolver::new(c, settings.advertise_ip).map_err(|e| bad(e.to_string()))?,
            ))
        }
        other => Err(bad(format!(
            "component {other:?} is not available (kubernetes, mdns, consul, local)"
        ))),
    }
}

/// Our SPIFFE ID, the trust anchors, and where certificates come from.
fn build_identity(
    s: &Settings,
    m: &MtlsSettings,
) -> Result<(Arc<WorkloadIdentity>, Source), StartError> {
    // Flags validated the components already.
    let id = SpiffeId::new(&m.trust_domain, &s.namespace, &s.app_id).map_err(|e| {
        StartError::Anchors {
            from: "the app id".into(),
            source: skiff_sentry::tls::TlsError::NoSpiffeId(e.to_string()),
        }
    })?;
    match &m.sentry {
        Some(sentry) => {
            let anchors = Anchors::from_pem(sentry.anchors_pem.as_bytes(), &sentry.anchors_from)
                .map_err(|source| StartError::Anchors {
                    from: sentry.anchors_from.clone(),
                    source,
                })?;
            let validator = match (s.mode, &sentry.token_file) {
                (Mode::Kubernetes, _) => TokenValidator::Kubernetes,
                (Mode::Standalone, Some(_)) => TokenValidator::Jwks,
                (Mode::Standalone, None) => TokenValidator::Insecure,
            };
            tracing::info!(%id, sentry = %sentry.address, anchors = %sentry.anchors_from, "mTLS on; asking sentry for a workload certificate");
            let source = Source::Sentry {
                address: sentry.address.clone(),
                token_file: sentry.token_file.clone(),
                validator,
            };
            Ok((WorkloadIdentity::new(id, anchors), source))
        }
        None => {
            let dir = s.skiff_home.join(identity::EMBEDDED_DIR);
            let (authority, created) =
                Authority::load_or_create(&dir, &m.trust_domain, KeyAlg::EcdsaP256)?;
            if created {
                tracing::info!(dir = %dir.display(), "created the embedded CA for self-hosted mTLS");
            }
            let from = dir
                .join(skiff_sentry::ca::CA_CERT_FILE)
                .display()
                .to_string();
            let anchors = Anchors::from_pem(authority.anchors_pem().as_bytes(), &from)
                .map_err(|source| StartError::Anchors { from, source })?;
            tracing::info!(%id, dir = %dir.display(), "mTLS on; signing workload certificates in-process (no --sentry-address)");
            let source = Source::Embedded {
                authority: Box::new(authority),
                ttl: m.workload_ttl,
            };
            Ok((WorkloadIdentity::new(id, anchors), source))
        }
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

async fn bind_all(
    addrs: &[SocketAddr],
    what: &'static str,
) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        out.push(bind(*a, what).await?);
    }
    Ok(out)
}

/// Scrape-time metrics: connection pools, resolver caches, breaker states.
fn register_collectors(sc: &Arc<Sidecar>) {
    let weak = Arc::downgrade(sc);
    metrics::registry().collect(Box::new(move |e| {
        let Some(sc) = weak.upgrade() else { return };
        crate::telemetry::collect::pools(
            e,
            &sc.settings.app_id,
            [
                ("sidecar", Some(sc.outbound.pool().stats())),
                ("app", sc.app.as_ref().map(|a| a.pool_stats())),
            ],
        );
        crate::telemetry::collect::resolver(
            e,
            &sc.settings.app_id,
            sc.outbound.resolver().as_ref(),
        );
        crate::telemetry::collect::breakers(e, &sc.settings, &sc.policies.load());
    }));
}
