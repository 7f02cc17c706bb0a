//! Service invocation: the path a call takes from the caller's sidecar to the
//! callee's app.
//!
//! - [`target`] parses the app id and method once, into what travels.
//! - [`outbound`] resolves the app, balances across its endpoints and sends the
//!   call on the pool (caller side).
//! - [`inbound`] receives calls from other sidecars and hands them to the app
//!   (callee side).
//!
//! Between sidecars a call is one HTTP/2 stream: the app-side method and query
//! are the `:path`, the verb is the `:method`, the app's headers travel as
//! headers together with Dapr's caller/callee headers and Skiff's internal
//! `skiff-` headers (see `headers`), and bodies and trailers stream as DATA
//! and trailing HEADERS frames. gRPC proxy calls keep their own `:path`.

pub mod balance;
pub mod envelope;
pub mod inbound;
pub mod outbound;
pub mod target;
pub mod wire;
