//! Wiring, and nothing else: builds the sidecar from its settings in named
//! steps (telemetry, identity, outbound, components, listeners,
//! registration, drain), hands each front door the narrow context it needs,
//! and runs until SIGTERM/SIGINT or `POST /v1.0/shutdown`, then drains.
//! Only `main.rs` imports this module.

mod collect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use serde_json::json;
use skiff_proto::sentry::sign_certificate_request::TokenValidator;
use skiff_resolvers::consul::{ConsulConfig, ConsulResolver};
use skiff_resolvers::kubernetes::{KubeDnsConfig, KubeDnsResolver, SharedKubeDns};
use skiff_resolvers::local::LocalResolver;
use skiff_resolvers::mdns::{MdnsConfig, MdnsResolver};
use skiff_resolvers::{AppRef, Registration, Resolver};
use skiff_sentry::SpiffeId;
use skiff_sentry::ca::{Authority, KeyAlg};
use skiff_sentry::tls::Anchors;
use tokio::net::TcpListener;

use crate::api::Door;
use crate::api::grpc::{GrpcApi, GrpcContext};
use crate::api::health::Health;
use crate::api::http::HttpApi;
use crate::api::metadata::Metadata;
use crate::appchannel::{AppChannel, Properties, health};
use crate::blocks::pubsub::deliver::{self, Runner};
use crate::blocks::pubsub::subscriptions;
use crate::blocks::{Blocks, components};
use crate::config::{Documents, Mode, MtlsSettings, Settings, load_documents};
use crate::identity::{self, Source, WorkloadIdentity};
use crate::invoke::envelope::Invoker;
use crate::invoke::inbound::Inbound;
use crate::invoke::outbound::Outbound;
use crate::invoke::wire::{Callee, Identity};
use crate::lifecycle::Lifecycle;
use crate::middleware;
use crate::policy::Policies;
use crate::pool::{Pool, PoolConfig};
use crate::server::{self, Drain, ListenerConfig, Protocols};
use crate::telemetry::config::{DEFAULT_SAMPLING_RATE, Telemetry};
use crate::telemetry::metrics::{self, PathMatching};
use crate::telemetry::otlp::{self, OtlpConfig};
use crate::telemetry::trace::Tracer;
use crate::transport::{Acceptor, Connector};

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
    #[error(transparent)]
    Components(#[from] crate::blocks::components::LoadError),
    #[error(transparent)]
    Pipeline(Box<crate::middleware::PipelineError>),
    #[error("{0}")]
    Subscription(String),
    #[error("app id or namespace is not a valid header value: {0}")]
    Header(#[source] http::header::InvalidHeaderValue),
}

impl StartError {
    fn header(e: http::header::InvalidHeaderValue) -> Self {
        Self::Header(e)
    }
}

/// The sockets, bound before anything else so a port in use stops the
/// start at once.
struct Listeners {
    http: Vec<TcpListener>,
    grpc: Vec<TcpListener>,
    internal: TcpListener,
    internal_addr: SocketAddr,
}

/// What the steps built, for the front doors' contexts.
struct Parts {
    components: Vec<serde_json::Value>,
    blocks: Arc<Blocks>,
    runner: Arc<Runner>,
    app: Option<Arc<AppChannel>>,
    lifecycle: Arc<Lifecycle>,
    invoker: Arc<Invoker>,
    identity: Option<Arc<WorkloadIdentity>>,
    policies: Arc<ArcSwap<Policies>>,
    tracer: Arc<Tracer>,
    telemetry: serde_json::Value,
    internal_addr: SocketAddr,
    /// `spec.httpPipeline`, for the HTTP API.
    http_pipeline: Option<Arc<crate::middleware::Pipeline>>,
}

/// Each front door's narrow context: the HTTP API, the gRPC API, and the
/// internal port.
fn contexts(s: &Settings, p: Parts) -> (Arc<HttpApi>, GrpcApi, Arc<Inbound>) {
    let door = Door {
        token: s.api_token.clone(),
        api_logging: s.api_logging,
        app_id: s.app_id.clone(),
        namespace: s.namespace.clone(),
        max_body_size: s.max_body_size,
    };
    let metadata = Arc::new(Metadata {
        app_id: s.app_id.clone(),
        namespace: s.namespace.clone(),
        components: p.components,
        app_properties: Properties::new(s),
        app: p.app.clone(),
        invoker: p.invoker.clone(),
        identity: p.identity,
        policies: p.policies.clone(),
        telemetry: p.telemetry,
        internal_address: p.internal_addr,
        subscriptions: p.runner.clone(),
        extended: Default::default(),
    });
    let http_api = Arc::new(HttpApi {
        invoker: p.invoker.clone(),
        health: Health {
            app_id: s.app_id.clone(),
            lifecycle: p.lifecycle.clone(),
            checked_app: p.app.clone().filter(|_| s.app_health.is_some()),
        },
        metadata: metadata.clone(),
        lifecycle: p.lifecycle,
        blocks: p.blocks.clone(),
        door: door.clone(),
        pipeline: p.http_pipeline,
    });
    let grpc_api = GrpcApi::new(Arc::new(GrpcContext {
        invoker: p.invoker,
        blocks: p.blocks,
        runner: p.runner,
        grace: s.graceful_shutdown,
        door,
        metadata,
    }));
    let inbound = Arc::new(Inbound {
        callee: Callee::new(&s.app_id, &s.namespace, s.advertise_ip),
        app_id: s.app_id.clone(),
        app: p.app,
        policies: p.policies,
        tracer: p.tracer,
    });
    (http_api, grpc_api, inbound)
}

/// Runs the sidecar until it is told to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let docs = load_documents(settings.config_file.as_deref(), &settings.resources_paths)
        .map_err(StartError::from)?;
    let listeners = listeners(&settings).await?;
    let (tracer, telemetry_report) = telemetry(&settings, &docs).await?;
    let identity = identity(&settings)?;
    let resolver = build_resolver(&settings, &docs, listeners.internal_addr.port())?;
    let policies = policies(&settings, &docs)?;
    let invoker = Arc::new(Invoker {
        outbound: outbound(&settings, resolver.clone(), &identity, policies.clone())?,
        tracer: tracer.clone(),
        app_id: settings.app_id.clone(),
    });
    let loaded = components::load(
        &docs,
        &settings.app_id,
        &settings.namespace,
        &policies,
        &settings.skiff_home,
    )
    .await
    .map_err(StartError::from)?;
    let pipelines = middleware::build(
        docs.configuration.as_ref(),
        &loaded.middleware,
        &component_names(&docs),
        &settings.app_id,
    )
    .await
    .map_err(Box::new)
    .and_then(|p| {
        let grpc_app = settings.app_port.is_some()
            && matches!(
                settings.app_protocol,
                crate::config::AppProtocol::Grpc | crate::config::AppProtocol::Grpcs
            );
        middleware::check_app(&p, docs.configuration.as_ref(), grpc_app).map(|()| p)
    })
    .map_err(StartError::Pipeline)?;
    let declared = subscriptions::declarative(&docs.resources, &settings.app_id)
        .map_err(|e| StartError::Subscription(e.0))?;
    let runner = Runner::new(tracer.clone());
    let parts = Parts {
        components: loaded.report,
        blocks: Arc::new(loaded.blocks),
        runner: runner.clone(),
        app: AppChannel::new(&settings)
            .map(|a| Arc::new(a.with_pipeline(pipelines.app_http.clone()))),
        lifecycle: Arc::new(Lifecycle::new(identity.clone())),
        invoker,
        identity: identity.clone(),
        policies,
        tracer,
        telemetry: telemetry_report,
        internal_addr: listeners.internal_addr,
        http_pipeline: pipelines.http,
    };
    register_collectors(
        &settings,
        &parts.invoker,
        parts.app.as_ref(),
        &parts.policies,
    );
    let (app, lifecycle) = (parts.app.clone(), parts.lifecycle.clone());
    let blocks = parts.blocks.clone();
    // Configuration subscriptions of HTTP apps post their changes to it;
    // input bindings are read into it once its port answers.
    if let Some(a) = &app {
        blocks.configuration.set_app(a.clone());
        blocks.bindings.start(a.clone(), runner.stopping());
    } else if blocks.bindings.has_inputs() {
        tracing::warn!(
            "input bindings left out: the sidecar has no app (--app-port) to deliver to"
        );
    }
    let (http_api, grpc_api, inbound) = contexts(&settings, parts);
    let internal_addr = listeners.internal_addr;
    let drain = serve(&settings, listeners, &identity, http_api, grpc_api, inbound);
    let probe = match (&app, &settings.app_health) {
        (Some(app), Some(cfg)) => Some(tokio::spawn(health::probe_loop(app.clone(), cfg.clone()))),
        _ => None,
    };
    register(&settings, &resolver, &identity, &lifecycle, internal_addr).await?;
    start_subscriptions(&settings, &runner, &blocks, app.as_ref(), declared);
    announce_ready(
        &settings,
        lifecycle.clone(),
        internal_addr,
        app.as_ref().map(|a| a.addr().to_string()),
    );

    wait_for_stop(&lifecycle).await;
    lifecycle.set_started(false);
    if let Some(p) = probe {
        p.abort();
    }
    // Deliveries and API calls drain together, each within the grace.
    tokio::join!(
        runner.shutdown(),
        drain_and_stop(&resolver, drain, settings.graceful_shutdown)
    );
    Ok(())
}

/// Logs "skiffd ready" when `/v1.0/healthz` says so: at once, or (with
/// mTLS, before the first workload certificate) once it holds one, after
/// a line saying what it waits for.
fn announce_ready(
    s: &Settings,
    lifecycle: Arc<Lifecycle>,
    internal: std::net::SocketAddr,
    app: Option<String>,
) {
    let list = |a: &[std::net::SocketAddr]| {
        a.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let (http, grpc) = (list(&s.http_addrs), list(&s.grpc_addrs));
    let (app_id, namespace) = (s.app_id.clone(), s.namespace.clone());
    tokio::spawn(async move {
        if !lifecycle.is_ready() {
            let why = lifecycle.not_ready_reason().unwrap_or_default();
            tracing::info!(reason = %why, "skiffd started; not ready until it holds a workload certificate");
            while !lifecycle.is_ready() {
                tokio::time::sleep(READY_POLL).await;
            }
        }
        tracing::info!(
            app_id = %app_id,
            namespace = %namespace,
            http = %http,
            grpc = %grpc,
            internal = %internal,
            app = %app.as_deref().unwrap_or("none"),
            "skiffd ready"
        );
    });
}

/// How often a sidecar waiting for its first certificate checks whether
/// it is ready, to say so.
const READY_POLL: Duration = Duration::from_millis(100);

/// The names of every component document, whoever they are scoped to.
fn component_names(docs: &Documents) -> Vec<String> {
    docs.resources
        .iter()
        .filter(|d| d.kind == "Component")
        .map(|d| d.metadata.name.clone())
        .collect()
}

/// Subscriptions start once the app's port answers (in the background);
/// without an app, declarative ones have nowhere to go.
fn start_subscriptions(
    s: &Settings,
    runner: &Arc<Runner>,
    blocks: &Arc<Blocks>,
    app: Option<&Arc<AppChannel>>,
    declared: Vec<subscriptions::Sub>,
) {
    if blocks.pubsub.components().is_empty() {
        return;
    }
    let Some(app) = app else {
        for d in &declared {
            tracing::warn!(pubsub = %d.pubsub, topic = %d.topic,
                "subscription left out: the sidecar has no app (--app-port) to deliver to");
        }
        return;
    };
    tokio::spawn(deliver::subscribe_app(
        runner.clone(),
        blocks.clone(),
        app.clone(),
        declared,
        s.graceful_shutdown,
    ));
}

/// Leaves the resolver, then lets the calls in flight finish, for up to
/// `grace`.
async fn drain_and_stop(resolver: &Arc<dyn Resolver>, drain: Drain, grace: Duration) {
    if let Err(e) = resolver.deregister().await {
        tracing::warn!(error = %e, "deregistration failed");
    }
    if drain.wait(grace).await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!(
            grace = %skiff_components::util::duration_text(grace),
            "grace period over with calls still in flight; closing"
        );
    }
}

async fn listeners(s: &Settings) -> Result<Listeners, StartError> {
    let http = bind_all(&s.http_addrs, "--dapr-http-port").await?;
    let grpc = bind_all(&s.grpc_addrs, "--dapr-grpc-port").await?;
    let internal = bind(s.internal_addr, "--dapr-internal-grpc-port").await?;
    let internal_addr = internal.local_addr().map_err(|source| StartError::Bind {
        addr: s.internal_addr,
        what: "--dapr-internal-grpc-port",
        source,
    })?;
    Ok(Listeners {
        http,
        grpc,
        internal,
        internal_addr,
    })
}

/// Metrics (the registry, and the scrape port) and the tracer; what they
/// are set to, for `/v1.0/metadata`. Without `spec.tracing` the tracer
/// follows daprd's default: parent-based sampling at
/// [`DEFAULT_SAMPLING_RATE`], and nothing exported.
async fn telemetry(
    s: &Settings,
    docs: &Documents,
) -> Result<(Arc<Tracer>, serde_json::Value), StartError> {
    let telemetry = Telemetry::from_documents(docs)?;
    let metrics_on = s.metrics_addr.is_some() && telemetry.metrics_enabled;
    metrics::set_enabled(metrics_on);
    metrics::registry().init(
        &s.app_id,
        &s.namespace,
        PathMatching::new(&telemetry.path_matching),
    );
    crate::blocks::metrics::register(metrics::registry());
    let metrics_listener = match s.metrics_addr.filter(|_| metrics_on) {
        Some(a) => Some(bind(a, "--metrics-port").await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = metrics_listener {
        tokio::spawn(crate::telemetry::server::serve(l));
    }
    let tracer = match &telemetry.tracing {
        Some(t) => {
            let queue = match &t.otel {
                Some(o) => Some(otlp::spawn(OtlpConfig {
                    endpoint: o.endpoint.clone(),
                    protocol: o.protocol,
                    service: s.app_id.clone(),
                })?),
                None => None,
            };
            Tracer::new(t.sampling_rate, queue)
        }
        None => Tracer::new(DEFAULT_SAMPLING_RATE, None),
    };
    let report = json!({
        "metrics": {
            "enabled": metrics_on,
            "address": metrics_addr.map(|a| a.to_string()),
            "pathMatching": telemetry.path_matching,
        },
        "tracing": match &telemetry.tracing {
            Some(t) => json!({
                "samplingRate": t.sampling_rate,
                "exporter": t.otel.as_ref().map(|o| json!({
                    "endpointAddress": o.endpoint,
                    "protocol": format!("{:?}", o.protocol).to_lowercase(),
                })),
            }),
            // No spec.tracing: daprd's default (propagated, exported nowhere).
            None => json!({ "samplingRate": DEFAULT_SAMPLING_RATE, "exporter": null, "default": true }),
        },
    });
    Ok((Arc::new(tracer), report))
}

/// With mTLS: who we are, and a task that keeps our certificate fresh.
fn identity(s: &Settings) -> Result<Option<Arc<WorkloadIdentity>>, StartError> {
    let Some(m) = &s.mtls else { return Ok(None) };
    let (identity, source) = build_identity(s, m)?;
    tokio::spawn(identity.clone().rotate(source));
    Ok(Some(identity))
}

/// Access control and resiliency, reloaded when their files change.
fn policies(s: &Settings, docs: &Documents) -> Result<Arc<ArcSwap<Policies>>, StartError> {
    let policies = Arc::new(ArcSwap::from_pointee(Policies::from_documents(
        docs, &s.app_id,
    )?));
    if policies.load().acl.is_some() && s.mtls.is_none() {
        // daprd is as strict, and as quiet about it.
        tracing::warn!(
            "accessControl needs mTLS (--enable-mtls): without it no calling sidecar can be \
             identified, so every call from one is treated as an unauthenticated caller and \
             refused unless defaultAction is allow"
        );
    }
    tokio::spawn(crate::policy::watch(
        policies.clone(),
        crate::policy::Sources {
            config: s.config_file.clone(),
            resources: s.resources_paths.clone(),
            app_id: s.app_id.clone(),
        },
    ));
    Ok(policies)
}

/// The path to other sidecars: resolver, pool (mTLS when on), policies.
fn outbound(
    s: &Settings,
    resolver: Arc<dyn Resolver>,
    identity: &Option<Arc<WorkloadIdentity>>,
    policies: Arc<ArcSwap<Policies>>,
) -> Result<Outbound, StartError> {
    let me = Identity {
        app_id: HeaderValue::from_str(&s.app_id).map_err(StartError::header)?,
        namespace: HeaderValue::from_str(&s.namespace).map_err(StartError::header)?,
    };
    let connector = match identity {
        Some(i) => Connector::default().with_identity(i.clone()),
        None => Connector::default(),
    };
    Ok(
        Outbound::new(resolver, Pool::new(PoolConfig::default(), connector), me)
            .with_policies(policies, s.retry_buffer_size)
            .with_mtls(identity.is_some()),
    )
}

/// Accept loops for the three front doors; the drain that stops them.
fn serve(
    s: &Settings,
    l: Listeners,
    identity: &Option<Arc<WorkloadIdentity>>,
    http_api: Arc<HttpApi>,
    grpc_api: GrpcApi,
    inbound: Arc<Inbound>,
) -> Drain {
    let drain = Drain::default();
    let http_cfg = ListenerConfig {
        protocols: Protocols::Http1AndH2,
        max_header_bytes: s.max_header_bytes,
        limits: s.limits,
    };
    let h2_cfg = ListenerConfig {
        protocols: Protocols::H2Only,
        ..http_cfg.clone()
    };
    for l in l.http {
        let api = http_api.clone();
        tokio::spawn(server::serve(
            l,
            http_cfg.clone(),
            Acceptor::plain(),
            drain.watch(),
            move |peer, req| api.clone().handle(peer.addr.ip(), req),
        ));
    }
    for l in l.grpc {
        let api = grpc_api.clone();
        tokio::spawn(server::serve(
            l,
            h2_cfg.clone(),
            Acceptor::plain(),
            drain.watch(),
            move |_, req| api.clone().handle(req),
        ));
    }
    let acceptor = match identity {
        Some(i) => Acceptor::mtls(i.clone()),
        None => Acceptor::plain(),
    };
    tokio::spawn(server::serve(
        l.internal,
        h2_cfg,
        acceptor,
        drain.watch(),
        move |peer, req| inbound.clone().handle(peer, req),
    ));
    drain
}

/// Publishes this sidecar in the resolver, then reports ready. With mTLS
/// that waits for the first certificate (the internal port refuses
/// everyone until then, so callers would be sent to it in vain); SIGTERM
/// is handled meanwhile.
async fn register(
    s: &Settings,
    resolver: &Arc<dyn Resolver>,
    identity: &Option<Arc<WorkloadIdentity>>,
    lifecycle: &Arc<Lifecycle>,
    internal_addr: SocketAddr,
) -> Result<(), StartError> {
    let registration = Registration {
        app: AppRef::new(s.app_id.clone(), s.namespace.clone()),
        internal_addr: SocketAddr::new(s.advertise_ip, internal_addr.port()),
        http_port: s.http_addrs.first().map_or(0, |a| a.port()),
        http_ip: s
            .http_addrs
            .first()
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip()),
        app_port: s.app_port,
    };
    let Some(identity) = identity.clone() else {
        resolver.register(registration).await?;
        lifecycle.set_started(true);
        return Ok(());
    };
    let (lifecycle, resolver) = (lifecycle.clone(), resolver.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !identity.is_ready() {
            tick.tick().await;
        }
        match resolver.register(registration).await {
            Ok(()) => lifecycle.set_started(true),
            Err(e) => {
                tracing::error!(error = %e, "registering with the name resolver failed; other sidecars cannot find this one")
            }
        }
    });
    Ok(())
}

async fn wait_for_stop(lifecycle: &Lifecycle) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            return lifecycle.shutdown_requested().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = lifecycle.shutdown_requested() => tracing::info!("shutdown requested through the API"),
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
fn register_collectors(
    s: &Settings,
    invoker: &Arc<Invoker>,
    app: Option<&Arc<AppChannel>>,
    policies: &Arc<ArcSwap<Policies>>,
) {
    let (invoker, app, policies) = (
        Arc::downgrade(invoker),
        app.map(Arc::downgrade),
        Arc::downgrade(policies),
    );
    let (app_id, namespace) = (s.app_id.clone(), s.namespace.clone());
    metrics::registry().collect(Box::new(move |e| {
        let (Some(invoker), Some(policies)) = (invoker.upgrade(), policies.upgrade()) else {
            return;
        };
        let app = app.as_ref().and_then(std::sync::Weak::upgrade);
        collect::pools(
            e,
            &app_id,
            [
                ("sidecar", Some(invoker.outbound.pool().stats())),
                ("app", app.as_ref().map(|a| a.pool_stats())),
            ],
        );
        collect::resolver(e, &app_id, invoker.outbound.resolver().as_ref());
        collect::breakers(e, &app_id, &namespace, &policies.load());
    }));
}
