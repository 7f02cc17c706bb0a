//! Actors: Dapr's virtual actors (issue 30). What is here so far: the
//! placement ring every sidecar computes owners with ([`ring`]), the
//! sidecar's stream to placement and the view of its tables that holds
//! only the types a round changes ([`placement`]), the embedded leader
//! elected through a file lock in `$SKIFF_HOME` ([`embedded`]), the reading of an
//! app's `GET /dapr/config` ([`config`]), one actor's turn queue with
//! reentrancy ([`turns`]) and Dapr's time formats for timers and
//! reminders ([`when`]). The runtime API still answers
//! daprd's error for a sidecar without an actor runtime
//! ([`super::Block::not_configured`]).

pub mod config;
pub mod embedded;
pub mod errors;
pub mod placement;
pub mod ring;
pub mod turns;
pub mod when;
