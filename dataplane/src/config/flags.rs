//! daprd's flags and environment variables, parsed with clap and turned into
//! [`Settings`]. Names and defaults follow daprd so existing launch scripts
//! work unchanged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use super::{
    AppHealthSettings, DEFAULT_MAX_BODY_SIZE, MIN_HEADER_BUFFER, MtlsSettings, SentrySettings,
    Settings,
};

pub const DEFAULT_HTTP_PORT: u16 = 3500;
pub const DEFAULT_GRPC_PORT: u16 = 50001;
pub const DEFAULT_METRICS_PORT: u16 = 9090;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http,
    /// Not offered: refused with a reason (daprd's TLS to the app).
    #[value(hide = true)]
    Https,
    Grpc,
    #[value(hide = true)]
    Grpcs,
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Grpc => "grpc",
            Self::Grpcs => "grpcs",
            Self::H2c => "h2c",
        }
    }
}

/// `--log-level`: daprd's levels, and `trace` below `debug` (Skiff's);
/// anything else is refused (a typo such as `warning` must not silence
/// the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl LogLevel {
    /// The log filter it means (fatal lines are error lines that stop
    /// the sidecar).
    pub fn filter(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error | Self::Fatal => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Standalone,
    Kubernetes,
}

/// skiffd's command line: daprd's flags.
#[derive(Debug, Parser)]
#[command(
    name = "skiffd",
    version,
    about = "Skiff sidecar: a Dapr-compatible runtime"
)]
pub struct Flags {
    /// The id of the app this sidecar serves.
    #[arg(long = "app-id")]
    pub app_id: String,
    /// The port the app listens on; omit for a caller-only app.
    #[arg(long = "app-port")]
    pub app_port: Option<u16>,
    /// How the sidecar talks to the app.
    #[arg(long = "app-protocol", value_enum, default_value = "http")]
    pub app_protocol: AppProtocol,
    /// The address the app listens on.
    #[arg(long = "app-channel-address", default_value = "127.0.0.1")]
    pub app_channel_address: IpAddr,
    /// Concurrent calls delivered to the app; -1 = unlimited.
    #[arg(long = "app-max-concurrency", default_value_t = -1, allow_negative_numbers = true)]
    pub app_max_concurrency: i64,
    /// HTTP port for the Dapr API to listen on.
    #[arg(long = "dapr-http-port", default_value_t = DEFAULT_HTTP_PORT)]
    pub http_port: u16,
    /// gRPC port for the Dapr API to listen on.
    #[arg(long = "dapr-grpc-port", default_value_t = DEFAULT_GRPC_PORT)]
    pub grpc_port: u16,
    /// Sidecar-to-sidecar port; 0 picks a free one (standalone default).
    #[arg(long = "dapr-internal-grpc-port", default_value_t = 0)]
    pub internal_port: u16,
    /// Where the internal listener binds. Default: 127.0.0.1 standalone,
    /// 0.0.0.0 on Kubernetes.
    #[arg(long = "dapr-internal-grpc-listen-address")]
    pub internal_listen_address: Option<IpAddr>,
    /// Addresses the app-facing APIs bind, comma separated.
    #[arg(
        long = "dapr-listen-addresses",
        default_value = "127.0.0.1",
        value_delimiter = ','
    )]
    pub listen_addresses: Vec<IpAddr>,
    /// Prometheus exporter port (`/` and `/metrics`); 0 picks a free port.
    #[arg(env = "DAPR_METRICS_PORT", long = "metrics-port", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,
    /// Serves Prometheus metrics on --metrics-port.
    #[arg(long = "enable-metrics", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_metrics: bool,
    /// Where the exporter binds. Default: 127.0.0.1 standalone, 0.0.0.0 on
    /// Kubernetes (Prometheus scrapes the pod from outside).
    #[arg(long = "metrics-listen-address")]
    pub metrics_listen_address: Option<IpAddr>,
    /// Logs every API call (method, path, status, duration) at info level.
    #[arg(long = "enable-api-logging", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_api_logging: bool,
    /// A Configuration YAML file.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// Directories of component/resiliency YAML; repeatable.
    #[arg(long = "resources-path", visible_alias = "components-path")]
    pub resources_path: Vec<PathBuf>,
    /// Largest message the sidecar buffers (InvokeService, gRPC apps), e.g. 4Mi.
    #[arg(long = "max-body-size", default_value = "4Mi")]
    pub max_body_size: String,
    /// Largest request head (headers) accepted, e.g. 16Ki; at least 8Ki.
    #[arg(
        long = "read-buffer-size",
        alias = "dapr-http-read-buffer-size",
        default_value = "16Ki"
    )]
    pub read_buffer_size: String,
    /// Seconds in-flight calls and deliveries get to finish at shutdown.
    #[arg(long = "dapr-graceful-shutdown-seconds", default_value_t = 5)]
    pub graceful_shutdown_seconds: u64,
    /// Probes the app's health (HTTP GET on --app-health-check-path, or
    /// gRPC HealthCheck) and stops deliveries to it while it fails.
    #[arg(long = "enable-app-health-check", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_app_health_check: bool,
    /// Path used for health checks; HTTP apps only.
    #[arg(long = "app-health-check-path", default_value = "/healthz")]
    pub app_health_check_path: String,
    /// Interval to probe for the health of the app, in seconds.
    #[arg(long = "app-health-probe-interval", default_value_t = 5)]
    pub app_health_probe_interval: u64,
    /// Timeout for app health probes, in milliseconds.
    #[arg(long = "app-health-probe-timeout", default_value_t = 500)]
    pub app_health_probe_timeout: u64,
    /// Consecutive failed probes after which the app is unhealthy.
    #[arg(long = "app-health-threshold", default_value_t = 3)]
    pub app_health_threshold: u32,
    /// Runtime mode: standalone (self-hosted) or kubernetes.
    #[arg(long = "mode", value_enum, default_value = "standalone")]
    pub mode: Mode,
    /// Mutual TLS between sidecars, with workload certificates from sentry
    /// (`--sentry-address`) or, without one, signed in-process from an
    /// issuer kept under SKIFF_HOME.
    #[arg(long = "enable-mtls", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_mtls: bool,
    /// Address of the sentry CA (host:port) that signs workload
    /// certificates; without it, --enable-mtls signs them in-process.
    #[arg(long = "sentry-address")]
    pub sentry_address: Option<String>,
    /// PEM trust anchors (instead of DAPR_TRUST_ANCHORS).
    #[arg(long = "trust-anchors-file")]
    pub trust_anchors_file: Option<PathBuf>,
    #[arg(
        env = "DAPR_TRUST_ANCHORS",
        long = "trust-anchors",
        hide = true,
        hide_env_values = true
    )]
    pub trust_anchors: Option<String>,
    /// The token sentry validates (a bootstrap JWT, or a service account token).
    #[arg(
        env = "DAPR_SENTRY_TOKEN_FILE",
        long = "sentry-token-file",
        hide = true
    )]
    pub sentry_token_file: Option<PathBuf>,
    #[arg(
        env = "SKIFF_TRUST_DOMAIN",
        long = "trust-domain",
        default_value = skiff_sentry::DEFAULT_TRUST_DOMAIN,
        hide = true
    )]
    pub trust_domain: String,
    /// Lifetime of self-signed workload certificates (embedded CA only;
    /// sentry decides its own).
    #[arg(
        env = "SKIFF_WORKLOAD_CERT_TTL",
        long = "workload-cert-ttl",
        default_value = "24h",
        hide = true
    )]
    pub workload_cert_ttl: String,
    /// Log verbosity.
    #[arg(long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// Prints log lines as JSON.
    #[arg(long = "log-as-json", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub log_as_json: bool,
    #[arg(env = "NAMESPACE", long = "namespace", default_value = super::DEFAULT_NAMESPACE, hide = true)]
    pub namespace: String,
    #[arg(
        env = "DAPR_API_TOKEN",
        hide_env_values = true,
        long = "dapr-api-token",
        hide = true
    )]
    pub api_token: Option<String>,
    #[arg(
        env = "APP_API_TOKEN",
        hide_env_values = true,
        long = "app-api-token",
        hide = true
    )]
    pub app_api_token: Option<String>,
    /// Largest request body kept to replay a call a resiliency policy
    /// retries (bigger bodies stream and are not retried); at most
    /// --max-body-size.
    #[arg(long = "retry-buffer-size", default_value = "64Ki")]
    pub retry_buffer_size: String,
    /// Worker threads: 1 (the default) runs everything on one thread with
    /// a current-thread runtime; N > 1 a work-stealing runtime with N
    /// workers; 0 one worker per core.
    #[arg(
        long = "worker-threads",
        env = "SKIFF_WORKER_THREADS",
        default_value_t = DEFAULT_WORKER_THREADS,
        hide = true
    )]
    pub worker_threads: usize,
    /// Open connections each listener takes; past it new ones are closed
    /// at once (the kept ones go on).
    #[arg(
        long = "max-connections",
        env = "SKIFF_MAX_CONNECTIONS",
        default_value_t = super::DEFAULT_MAX_CONNECTIONS
    )]
    pub max_connections: usize,
    /// Concurrent streams a client may open on one HTTP/2 connection.
    #[arg(
        long = "max-concurrent-streams",
        env = "SKIFF_MAX_CONCURRENT_STREAMS",
        default_value_t = super::DEFAULT_MAX_CONCURRENT_STREAMS
    )]
    pub max_concurrent_streams: u32,
    /// A request head (or the HTTP/2 preface) must arrive whole within
    /// this (e.g. 10s, 500ms).
    #[arg(
        long = "header-timeout",
        env = "SKIFF_HEADER_TIMEOUT",
        default_value = "10s"
    )]
    pub header_timeout: String,
    /// An HTTP/1.1 connection without a request, or an HTTP/2 one without
    /// a stream, this long is closed.
    #[arg(
        long = "idle-timeout",
        env = "SKIFF_IDLE_TIMEOUT",
        default_value = "300s"
    )]
    pub idle_timeout: String,
    /// An HTTP/2 answer the client grants no flow-control window for this
    /// long is reset.
    #[arg(
        long = "stream-stall-timeout",
        env = "SKIFF_STREAM_STALL_TIMEOUT",
        default_value = "60s"
    )]
    pub stream_stall_timeout: String,
    /// Home of the embedded registry (default ~/.skiff).
    #[arg(env = "SKIFF_HOME", long = "skiff-home", hide = true)]
    pub skiff_home: Option<PathBuf>,
}

/// One thread by default, as linkerd2-proxy does: a sidecar shares its node
/// with the app it serves, and on one thread a call's tasks wake each other
/// with no cross-thread handoff (no futex, no work stealing). Measured in
/// perf/RESULTS.md ("One thread").
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// The internal port in Kubernetes mode when none is given (daprd's).
pub const DEFAULT_KUBERNETES_INTERNAL_PORT: u16 = 50002;

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {why}")]
pub struct FlagError {
    pub flag: &'static str,
    pub why: String,
}

fn flag_err(flag: &'static str, why: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        why: why.into(),
    }
}

impl Flags {
    /// Validates the flags and derives the settings the sidecar runs with.
    pub fn settings(&self) -> Result<Settings, FlagError> {
        let home = self.skiff_home.clone().unwrap_or_else(default_home);
        validate_name("app-id", &self.app_id)?;
        validate_name("namespace (NAMESPACE)", &self.namespace)?;
        if matches!(self.app_protocol, AppProtocol::Https | AppProtocol::Grpcs) {
            return Err(flag_err(
                "app-protocol",
                format!(
                    "{} is not supported yet; use http, h2c or grpc",
                    self.app_protocol.as_str()
                ),
            ));
        }
        let mtls = self.mtls()?;
        let retry_buffer_size = parse_quantity(&self.retry_buffer_size, 1)
            .map_err(|e| flag_err("retry-buffer-size", e))?;
        if self.app_port == Some(0) {
            return Err(flag_err(
                "app-port",
                "must be a port number from 1 to 65535",
            ));
        }
        let max_body_size = parse_quantity(&self.max_body_size, 1 << 20)
            .map_err(|e| flag_err("max-body-size", e))?;
        let max_header_bytes = parse_quantity(&self.read_buffer_size, 1 << 10)
            .map_err(|e| flag_err("read-buffer-size", e))?
            .max(MIN_HEADER_BUFFER);
        let limits = self.limits()?;
        let internal_ip = self.internal_listen_address.unwrap_or(match self.mode {
            Mode::Standalone => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Mode::Kubernetes => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
        let advertise_ip = if internal_ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            internal_ip
        };
        let app_health = self.enable_app_health_check.then(|| AppHealthSettings {
            path: self.app_health_check_path.clone(),
            interval: Duration::from_secs(self.app_health_probe_interval.max(1)),
            timeout: Duration::from_millis(self.app_health_probe_timeout.max(1)),
            threshold: self.app_health_threshold.max(1),
        });
        Ok(Settings {
            app_id: self.app_id.clone(),
            namespace: self.namespace.clone(),
            mode: self.mode,
            app_port: self.app_port,
            app_protocol: self.app_protocol,
            app_channel_address: self.app_channel_address,
            app_max_concurrency: usize::try_from(self.app_max_concurrency).unwrap_or(0),
            http_addrs: addrs(&self.listen_addresses, self.http_port),
            grpc_addrs: addrs(&self.listen_addresses, self.grpc_port),
            // Kubernetes peers find each other on one fixed port (Dapr's).
            internal_addr: SocketAddr::new(
                internal_ip,
                match (self.mode, self.internal_port) {
                    (Mode::Kubernetes, 0) => DEFAULT_KUBERNETES_INTERNAL_PORT,
                    (_, p) => p,
                },
            ),
            advertise_ip,
            max_body_size: if max_body_size == 0 {
                DEFAULT_MAX_BODY_SIZE
            } else {
                max_body_size
            },
            max_header_bytes,
            limits,
            graceful_shutdown: Duration::from_secs(self.graceful_shutdown_seconds),
            app_health,
            skiff_home: home.clone(),
            config_file: self.config.clone(),
            // As daprd falls back to ~/.dapr/components: the home's
            // components folder, when no path is given and it exists.
            resources_paths: if self.resources_path.is_empty() {
                let d = home.join("components");
                if d.is_dir() { vec![d] } else { Vec::new() }
            } else {
                self.resources_path.clone()
            },
            mtls,
            retry_buffer_size: retry_buffer_size.min(if max_body_size == 0 {
                DEFAULT_MAX_BODY_SIZE
            } else {
                max_body_size
            }),
            metrics_addr: self.enable_metrics.then(|| {
                let ip = self.metrics_listen_address.unwrap_or(match self.mode {
                    Mode::Standalone => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Mode::Kubernetes => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                });
                SocketAddr::new(ip, self.metrics_port)
            }),
            api_logging: self.enable_api_logging,
            api_token: self.api_token.clone().filter(|t| !t.is_empty()),
            app_api_token: self.app_api_token.clone().filter(|t| !t.is_empty()),
        })
    }
}

impl Flags {
    /// The mTLS settings: anchors must be given with a sentry address, and
    /// are read here so a missing or unreadable file stops the start.
    fn mtls(&self) -> Result<Option<MtlsSettings>, FlagError> {
        if !self.enable_mtls {
            return Ok(None);
        }
        let id_check =
            skiff_sentry::SpiffeId::new(&self.trust_domain, &self.namespace, &self.app_id);
        if let Err(e) = id_check {
            return Err(flag_err(
                "app-id",
                format!("not usable in a SPIFFE ID: {e}"),
            ));
        }
        let workload_ttl =
            parse_ttl(&self.workload_cert_ttl).map_err(|e| flag_err("workload-cert-ttl", e))?;
        let sentry = match self.sentry_address.as_deref().filter(|a| !a.is_empty()) {
            None => None,
            Some(address) => {
                let (anchors_pem, anchors_from) = match (
                    &self.trust_anchors_file,
                    &self.trust_anchors,
                ) {
                    (Some(f), _) => (
                        std::fs::read_to_string(f).map_err(|e| {
                            flag_err("trust-anchors-file", format!("{}: {e}", f.display()))
                        })?,
                        f.display().to_string(),
                    ),
                    (None, Some(pem)) if !pem.trim().is_empty() => {
                        (pem.clone(), "DAPR_TRUST_ANCHORS".to_owned())
                    }
                    _ => {
                        return Err(flag_err(
                            "sentry-address",
                            "needs trust anchors to verify sentry: set DAPR_TRUST_ANCHORS or --trust-anchors-file",
                        ));
                    }
                };
                Some(SentrySettings {
                    address: address.to_owned(),
                    anchors_pem,
                    anchors_from,
                    token_file: self.sentry_token_file.clone(),
                })
            }
        };
        Ok(Some(MtlsSettings {
            trust_domain: self.trust_domain.clone(),
            sentry,
            workload_ttl,
        }))
    }
}

/// `24h`, `30m`, `10s`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 24h, 30m, 10s or 500ms"))?;
    let unit_ms = match &s[split..] {
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        "ms" => 1,
        u => return Err(format!("{s:?}: unknown unit {u:?} (h, m, s, ms)")),
    };
    match n.checked_mul(unit_ms) {
        Some(0) | None => Err(format!("{s:?} is out of range")),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

impl Flags {
    fn limits(&self) -> Result<super::ConnectionLimits, FlagError> {
        if self.max_connections == 0 {
            return Err(flag_err("max-connections", "must be at least 1"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(flag_err("max-concurrent-streams", "must be at least 1"));
        }
        Ok(super::ConnectionLimits {
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            header_timeout: parse_ttl(&self.header_timeout)
                .map_err(|e| flag_err("header-timeout", e))?,
            idle_timeout: parse_ttl(&self.idle_timeout).map_err(|e| flag_err("idle-timeout", e))?,
            stream_stall_timeout: parse_ttl(&self.stream_stall_timeout)
                .map_err(|e| flag_err("stream-stall-timeout", e))?,
        })
    }
}

fn addrs(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".skiff")
}

/// App ids and namespaces become path segments, header values and DNS
/// labels: keep them to that common alphabet, and without dots (a dot
/// separates app id from namespace in `app.ns`).
fn validate_name(what: &'static str, v: &str) -> Result<(), FlagError> {
    if v.is_empty() || v.len() > 253 {
        return Err(flag_err(what, "must be 1 to 253 characters"));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(flag_err(
            what,
            format!("{v:?} may hold only letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

/// Parses a Kubernetes-style quantity ("4Mi", "512Ki", "2G") into bytes. A
/// bare number is multiplied by `bare_unit`, as old daprd versions counted
/// these flags in MB and KB.
pub fn parse_quantity(s: &str, bare_unit: usize) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 4Mi, 512Ki or 4"))?;
    let mult = match unit {
        "" => bare_unit,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?}; use Ki, Mi, Gi, K, M or G"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("4Mi", 1), Ok(4 << 20));
        assert_eq!(parse_quantity("4", 1 << 20), Ok(4 << 20));
        assert_eq!(parse_quantity("16Ki", 1), Ok(16 << 10));
        assert_eq!(parse_quantity("2G", 1), Ok(2_000_000_000));
        assert!(parse_quantity("4Xi", 1).is_err());
        assert!(parse_quantity("Mi", 1).is_err());
    }

    #[test]
    fn settings_defaults_and_errors() {
        let f = Flags::try_parse_from(["skiffd", "--app-id", "a"]).expect("parse");
        let s = f.settings().expect("valid");
        assert_eq!(s.http_addrs[0].port(), 3500);
        assert_eq!(s.grpc_addrs[0].port(), 50001);
        assert_eq!(s.max_body_size, 4 << 20);
        assert!(s.app_port.is_none());
        assert_eq!(s.internal_addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

        let bad = Flags::try_parse_from(["skiffd", "--app-id", "a.b"]).expect("parse");
        assert!(bad.settings().is_err());
        let neg = Flags::try_parse_from(["skiffd", "--app-id", "a", "--app-max-concurrency", "-1"])
            .expect("parse");
        assert_eq!(neg.settings().expect("valid").app_max_concurrency, 0);
    }
}
