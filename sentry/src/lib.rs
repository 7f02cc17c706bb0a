//! Skiff's identity authority and the workload side of it.
//!
//! - [`spiffe`]: the SPIFFE ID type every crate names.
//! - [`ca`]: root and issuer credentials (load, create, watch for rotation)
//!   and signing of validated CSRs into workload leaves.
//! - [`csr`]: what a CSR must be before it is signed; [`csr::generate`] for
//!   the workload side.
//! - [`validator`]: who may have which identity (insecure, JWT/JWKS,
//!   Kubernetes TokenReview).
//! - [`tls`]: rustls configurations for mTLS between sidecars, with SPIFFE
//!   verification.
//! - [`server`]: Dapr's `dapr.proto.sentry.v1.CA` gRPC service;
//!   [`client`]: the sidecar's call to it.

pub mod ca;
pub mod client;
pub mod csr;
pub mod jwt;
pub mod keyalg;
pub mod kubernetes;
pub mod pem;
pub mod report;
pub mod server;
pub mod spiffe;
pub mod tls;
pub mod validator;

pub use spiffe::{DEFAULT_TRUST_DOMAIN, IdError, SpiffeId};
