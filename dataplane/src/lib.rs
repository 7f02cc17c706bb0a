//! skiffd, the Skiff sidecar.
//!
//! The request path: an app calls its sidecar on localhost (`api`), the
//! sidecar parses the target once (`invoke::target`), picks an endpoint of the
//! remote app (`invoke::balance` over `skiff_resolvers`), and sends the call on
//! a pooled HTTP/2 connection (`pool`) to the remote sidecar, whose internal
//! listener (`invoke::inbound`) hands it to its app (`appchannel`). Bodies
//! stream end to end (`skiff_body`); nothing is buffered except where a
//! protocol conversion needs the whole message, bounded by `--max-body-size`.
//!
//! Imports point one way, from the top: `runtime` (wiring, imported by
//! `main.rs` alone) → the front doors (`api`) → `blocks`, `invoke` →
//! `appchannel` → `middleware` (the Configuration's HTTP pipelines, run by
//! the HTTP API and the app channel) → `errors` → `skiff_body` → `pool` →
//! `http2`, `http1` →
//! `transport` → `identity`, `policy` → `telemetry` → `headers`, `config`,
//! `body` (with `server`, the accept loops, under `runtime`, and
//! `lifecycle` under `api`). The codecs and the pool speak their own body
//! types and send any `body::OutBody`; `skiff_body::SkiffBody` wraps them.

// On the call path, functions are written `fn f(..) -> impl Future {
// async move { .. } }` on purpose: an `async fn` copies its arguments into
// its state before its body runs, so a request handed through a chain of
// them is held once per link, and every call's future is moved whole when
// its task starts (`future_sizes` measures them; perf/RESULTS.md has the
// instructions it saved).
#![allow(clippy::manual_async_fn)]

pub mod api;
pub mod appchannel;
pub mod blocks;
pub mod body;
pub mod config;
pub mod errors;
#[cfg(test)]
mod future_sizes;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod http1;
pub mod http2;
pub mod identity;
pub mod invoke;
pub mod lifecycle;
pub mod middleware;
pub mod policy;
pub mod pool;
pub mod protowire;
pub mod runtime;
pub mod server;
pub mod skiff_body;
pub mod telemetry;
pub mod transport;
