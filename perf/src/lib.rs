//! Skiff's performance tooling: the echo backend that the demo, the
//! end-to-end tests and the benchmarks put behind a sidecar, and the
//! `skiff-perf` load generator and benchmark runner.

pub mod bench;
pub mod echo;
pub mod hist;
pub mod load;
pub mod lock;
pub mod peers;
pub mod placement;
pub mod plot;
pub mod procfs;
pub mod pubsub;
pub mod report;
pub mod schedule;
pub mod state;
pub mod topology;
