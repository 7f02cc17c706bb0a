//! Actors: Dapr's virtual actors (issue 30). What is here so far: the
//! placement ring every sidecar computes owners with ([`ring`]), the
//! reading of an app's `GET /dapr/config` ([`config`]) and one actor's
//! turn queue with reentrancy ([`turns`]). The runtime API still answers
//! daprd's error for a sidecar without an actor runtime
//! ([`super::Block::not_configured`]).

pub mod config;
pub mod ring;
pub mod turns;
