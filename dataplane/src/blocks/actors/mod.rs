//! Actors: Dapr's virtual actors (issue 30, being built). What is here:
//!
//! - [`ring`]: the placement ring every sidecar computes owners with;
//! - [`placement`]: the sidecar's stream to placement, and the view of its
//!   tables that holds only the types a round changes;
//! - [`embedded`]: the placement leader of one machine, elected through a
//!   file lock in `$SKIFF_HOME`;
//! - [`config`]: an app's `GET /dapr/config`;
//! - [`turns`]: one actor's turn queue, with reentrancy;
//! - [`state`]: actor state keys and transactions;
//! - [`when`]: Dapr's time formats for timers and reminders;
//! - [`errors`]: daprd's actor errors.
//!
//! The actor API is not wired into the doors yet: it answers daprd's
//! error for a sidecar without an actor runtime
//! ([`super::Block::not_configured`]).

pub mod config;
pub mod embedded;
pub mod errors;
pub mod placement;
pub mod ring;
pub mod state;
pub mod turns;
pub mod when;
