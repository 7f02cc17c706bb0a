//! Skiff's performance tooling. Today: the echo backend that the demo, the
//! end-to-end tests and the benchmarks put behind a sidecar.

pub mod echo;
