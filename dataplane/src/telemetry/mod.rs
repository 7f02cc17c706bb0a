//! Observability: the metrics registry and its Prometheus exporter
//! ([`metrics`], [`server`]), W3C tracing with OTLP export ([`trace`],
//! [`otlp`]), and the telemetry settings read from the Configuration
//! ([`config`]).

pub mod config;
pub mod metrics;
pub mod otlp;
pub mod registry;
pub mod server;
pub mod trace;
