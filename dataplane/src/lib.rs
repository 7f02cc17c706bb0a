//! skiffd, the Skiff sidecar.
//!
//! The request path: an app calls its sidecar on localhost (`api`), the
//! sidecar parses the target once (`invoke::target`), picks an endpoint of the
//! remote app (`invoke::balance` over `skiff_resolvers`), and sends the call on
//! a pooled HTTP/2 connection (`pool`) to the remote sidecar, whose internal
//! listener (`invoke::inbound`) hands it to its app (`appchannel`). Bodies
//! stream end to end (`body`); nothing is buffered except where a protocol
//! conversion needs the whole message, bounded by `--max-body-size`.

pub mod api;
pub mod appchannel;
pub mod body;
pub mod config;
pub mod errors;
pub mod headers;
pub mod http1;
pub mod http2;
pub mod identity;
pub mod invoke;
pub mod policy;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod transport;
