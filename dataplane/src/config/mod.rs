//! Configuration: daprd's command-line flags and environment variables, the
//! validated settings derived from them, and the YAML documents they name.

pub mod component;
mod flags;
pub mod schema;
mod yaml;

pub use flags::{AppProtocol, Flags, LogLevel, Mode, parse_quantity};
pub use yaml::{ConfigError, Document, Documents, lint_documents, load_documents, parse_documents};

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Default namespace when `NAMESPACE` is unset (Dapr's).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default `--max-body-size`: 4 MiB, Dapr's.
pub const DEFAULT_MAX_BODY_SIZE: usize = 4 << 20;
/// The smallest `--read-buffer-size` honoured: a head limit under 8 KiB
/// would refuse ordinary requests (cookies, trace and baggage headers).
pub const MIN_HEADER_BUFFER: usize = 8 << 10;

/// Everything the sidecar runs with, validated once at start.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub app_id: String,
    pub namespace: String,
    pub mode: Mode,
    pub app_port: Option<u16>,
    pub app_protocol: AppProtocol,
    pub app_channel_address: IpAddr,
    /// 0 = unlimited.
    pub app_max_concurrency: usize,
    pub http_addrs: Vec<SocketAddr>,
    pub grpc_addrs: Vec<SocketAddr>,
    /// Port 0 picks a free port (the registry records the real one).
    pub internal_addr: SocketAddr,
    /// The address other sidecars dial, when it differs from the listen address.
    pub advertise_ip: IpAddr,
    pub max_body_size: usize,
    pub max_header_bytes: usize,
    /// What one client may hold of the front doors.
    pub limits: ConnectionLimits,
    pub graceful_shutdown: Duration,
    pub app_health: Option<AppHealthSettings>,
    pub skiff_home: PathBuf,
    pub config_file: Option<PathBuf>,
    pub resources_paths: Vec<PathBuf>,
    pub mtls: Option<MtlsSettings>,
    /// Largest request body kept to replay a retried call.
    pub retry_buffer_size: usize,
    /// Where the Prometheus exporter listens; None with `--enable-metrics=false`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--enable-api-logging`.
    pub api_logging: bool,
    #[serde(skip)]
    pub api_token: Option<String>,
    #[serde(skip)]
    pub app_api_token: Option<String>,
}

/// Open connections a listener takes before it closes new ones at once
/// (`--max-connections`): about 16 KiB of sidecar memory each when idle.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Concurrent streams a client may open on one HTTP/2 connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// A started request head (or the HTTP/2 preface) must be complete within
/// this (`--header-timeout`): slowloris protection.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1.1 connection with no request, or an HTTP/2 one without a
/// stream, for this long is closed (`--idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// An HTTP/2 answer the client grants no flow-control window for this
/// long is reset (`--stream-stall-timeout`): a client that opens streams
/// and never reads would otherwise hold a chunk of memory and the call
/// behind each of them for ever. A minute without a byte of window is
/// far past any live reader's pause (it grants window as its app reads).
pub const DEFAULT_STREAM_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits on what clients hold of the listeners (the API ports and the
/// internal one), so floods and slow clients cannot starve the others.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ConnectionLimits {
    /// Per listener.
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub stream_stall_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            stream_stall_timeout: DEFAULT_STREAM_STALL_TIMEOUT,
        }
    }
}

/// Mutual TLS between sidecars (`--enable-mtls`).
#[derive(Clone, Debug, Serialize)]
pub struct MtlsSettings {
    pub trust_domain: String,
    /// None: the embedded CA under SKIFF_HOME.
    pub sentry: Option<SentrySettings>,
    /// Lifetime of certificates the embedded CA signs.
    pub workload_ttl: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct SentrySettings {
    pub address: String,
    #[serde(skip)]
    pub anchors_pem: String,
    /// Where the anchors came from (a file, or DAPR_TRUST_ANCHORS).
    pub anchors_from: String,
    pub token_file: Option<PathBuf>,
}

/// App health probing (`--enable-app-health-check`).
#[derive(Clone, Debug, Serialize)]
pub struct AppHealthSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
}
