//! Actor placement as Dapr's placement service runs it: sidecars report
//! the actor types they host on a stream, and the leader disseminates one
//! table per namespace in rounds of LOCK → UPDATE → UNLOCK, each stage
//! acked by every sidecar of the namespace before the next one is sent
//! (`../shared/dapr-actors-contract.md` §3.2).
//!
//! [`rounds`] is the protocol's logic with no I/O of its own: events in
//! (a report, an ack, a stream gone, the clock), messages out;
//! [`server`] serves it over tonic. The same
//! logic serves both places placement runs: inside the sidecar that holds
//! `$SKIFF_HOME`'s placement lock on one machine, and in `skiff-placement`
//! replicas across machines. Neither keeps the table anywhere but in
//! memory: it is rebuilt from the sidecars' streams after a leader change,
//! as Dapr's is since 1.17.

#![forbid(unsafe_code)]

pub mod rounds;
pub mod server;
