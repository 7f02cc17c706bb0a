//! The sidecar's side of placement: the stream to the placement leader,
//! and the view of the tables that every actor call looks its owner up in.
//!
//! The stream ([`connect_and_follow`]) reports this sidecar's actor types
//! and acks each stage of a round; the [`View`] applies the stages:
//!
//! - `lock`: the version is noted; lookups go on with the current rings;
//! - `update`: the new rings replace the old at once, and the types whose
//!   hosts changed are **held**: a lookup of such a type waits for the
//!   round's `unlock` instead of failing (daprd answers "did not find
//!   address for actor" here, dapr#4882); every other type goes on;
//! - `unlock`: held types are let go; the view is ready.
//!
//! When the stream breaks the view turns not ready at once (`/healthz`
//! says so, dapr#10337), lookups wait for the next table up to their
//! deadline, and the stream is opened again, round-robin over the
//! placement addresses with daprd's jittered 0.5 s pause.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::placement::placement_client::PlacementClient;
use skiff_proto::placement::{Host as Report, HostOperation, PlacementOrder};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::ring::{Host, Rings};

/// The pause between two attempts to reach placement, before jitter.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Why an owner could not be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No table arrived in time (daprd's `ERR_ACTOR_NO_PLACEMENT`).
    #[error("placement tables are not available")]
    NoPlacement,
    /// The type has no host (daprd's `ERR_ACTOR_NO_ADDRESS`).
    #[error("did not find address for actor {0}")]
    NoAddress(String),
}

#[derive(Clone, Debug, Default)]
struct Snapshot {
    rings: Arc<Rings>,
    /// Types whose hosts changed in the round in progress.
    held: Arc<BTreeSet<String>>,
    /// A table is in force and no round holds it.
    ready: bool,
    /// The version a `lock` announced.
    locked: u64,
    /// Rounds seen to their end.
    rounds: u64,
}

/// The tables as this sidecar knows them.
pub struct View {
    tx: watch::Sender<Snapshot>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(Snapshot::default()),
        }
    }
}

impl View {
    /// Applies one order; returns the ack to send, if any.
    pub fn apply(&self, order: &PlacementOrder) -> Option<HostOperation> {
        match order.operation.as_str() {
            "lock" => {
                self.tx.send_modify(|s| s.locked = order.version);
                Some(HostOperation::Lock)
            }
            "update" => {
                let empty = Default::default();
                let tables = order.tables.as_ref().unwrap_or(&empty);
                let next = self.tx.borrow().rings.after(tables, order.version);
                self.tx.send_modify(|s| {
                    let changed = s.rings.changed_types(&next);
                    s.held = Arc::new(changed.into_iter().collect());
                    s.rings = Arc::new(next);
                });
                Some(HostOperation::Update)
            }
            "unlock" => {
                self.tx.send_modify(|s| {
                    s.held = Arc::default();
                    s.ready = true;
                    s.rounds += 1;
                });
                Some(HostOperation::Unlock)
            }
            _ => None,
        }
    }

    /// The stream broke: not ready until the next round ends.
    pub fn lost(&self) {
        self.tx.send_modify(|s| s.ready = false);
    }

    pub fn ready(&self) -> bool {
        self.tx.borrow().ready
    }

    /// Rounds this sidecar has seen to their end (from any leader).
    pub fn rounds(&self) -> u64 {
        self.tx.borrow().rounds
    }

    /// The version of the tables in force.
    pub fn version(&self) -> u64 {
        self.tx.borrow().rings.version
    }

    /// The owner of actor `id` of `actor_type`, waiting up to `wait` while
    /// a round holds the type or no table has come yet.
    pub async fn owner(
        &self,
        actor_type: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Arc<Host>, LookupError> {
        let mut rx = self.tx.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let held = {
                let s = rx.borrow_and_update();
                let held = s.held.contains(actor_type);
                let have_table = s.ready || s.rings.version > 0;
                if have_table && !held {
                    return s
                        .rings
                        .owner(actor_type, id)
                        .cloned()
                        .ok_or_else(|| LookupError::NoAddress(format!("{actor_type}/{id}")));
                }
                held
            };
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(if held {
                    LookupError::NoAddress(format!("{actor_type}/{id}"))
                } else {
                    LookupError::NoPlacement
                });
            }
        }
    }
}

/// Where placement is.
#[derive(Clone, Debug)]
pub enum Addresses {
    /// `--placement-host-address`: tried in turn.
    Listed(Vec<String>),
    /// The embedded leader's address file in `$SKIFF_HOME`, read again
    /// before every attempt (the leader may have changed).
    File(std::path::PathBuf),
}

impl Addresses {
    fn pick(&self, attempt: usize) -> Option<String> {
        match self {
            Self::Listed(l) if !l.is_empty() => Some(l[attempt % l.len()].clone()),
            Self::Listed(_) => None,
            Self::File(p) => std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        }
    }
}

/// Follows placement for as long as it is polled: connects to `addrs` in
/// turn, reports `me`, applies and acks every order, and starts again
/// when the stream breaks.
pub async fn connect_and_follow(addrs: Addresses, me: Report, view: Arc<View>) {
    let mut attempt = 0usize;
    loop {
        let picked = addrs.pick(attempt);
        attempt = attempt.wrapping_add(1);
        if let Some(addr) = picked
            && let Err(e) = follow(&addr, &me, &view).await
        {
            // Said once per outage, not at every attempt.
            if view.ready() || attempt == 1 {
                tracing::warn!(placement = %addr, error = %e, "placement stream ended; reconnecting");
            } else {
                tracing::debug!(placement = %addr, error = %e, "placement not reached");
            }
        }
        view.lost();
        let pause = RECONNECT_PAUSE.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(pause).await;
    }
}

async fn follow(addr: &str, me: &Report, view: &View) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Report>(8);
    let mut report = me.clone();
    report.set_operation(HostOperation::Report);
    report.version = None;
    tx.send(report).await.map_err(|e| e.to_string())?;
    let mut orders = PlacementClient::new(channel)
        .report_dapr_status(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    while let Some(order) = orders.next().await {
        let order = order.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        if let Some(op) = view.apply(&order) {
            let mut ack = me.clone();
            ack.set_operation(op);
            ack.version = Some(order.version);
            tx.send(ack).await.map_err(|e| e.to_string())?;
        }
    }
    Err("the placement service closed the stream".into())
}

#[cfg(test)]
mod tests {
    use skiff_proto::placement::PlacementTables;

    use super::*;

    fn tables(types: &[(&str, &[&str])]) -> PlacementTables {
        super::super::ring::tests::tables(types, 0)
    }

    fn order(op: &str, v: u64, t: Option<PlacementTables>) -> PlacementOrder {
        PlacementOrder {
            tables: t,
            operation: op.into(),
            version: v,
        }
    }

    fn round(view: &View, v: u64, t: PlacementTables) {
        view.apply(&order("lock", v, None));
        view.apply(&order("update", v, Some(t)));
        view.apply(&order("unlock", v, None));
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn before_any_table_a_lookup_waits_then_says_no_placement() {
        let view = View::default();
        assert_eq!(
            view.owner("Cart", "1", WAIT).await,
            Err(LookupError::NoPlacement)
        );
        assert!(!view.ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_makes_the_view_ready_and_names_owners() {
        let view = View::default();
        round(&view, 1, tables(&[("Cart", &["a:1"])]));
        assert!(view.ready());
        assert_eq!(
            view.owner("Cart", "1", WAIT).await.expect("owner").name,
            "a:1"
        );
        assert_eq!(
            view.owner("User", "1", WAIT).await,
            Err(LookupError::NoAddress("User/1".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_type_waits_for_the_unlock_and_the_others_go_on() {
        let view = Arc::new(View::default());
        round(&view, 1, tables(&[("Cart", &["a:1"]), ("User", &["a:1"])]));
        view.apply(&order("lock", 2, None));
        view.apply(&order(
            "update",
            2,
            Some(tables(&[("Cart", &["a:1", "b:1"]), ("User", &["a:1"])])),
        ));
        // User did not change: answered at once.
        assert_eq!(
            view.owner("User", "x", WAIT).await.expect("user").name,
            "a:1"
        );
        // Cart waits for the unlock, then gets the new owner.
        let v = view.clone();
        let waiting = tokio::spawn(async move { v.owner("Cart", "x", WAIT).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a held type was answered mid-round");
        view.apply(&order("unlock", 2, None));
        let got = waiting.await.expect("task").expect("owner");
        let want = view.owner("Cart", "x", WAIT).await.expect("owner");
        assert_eq!(got, want);
        assert_eq!(view.version(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_that_never_unlocks_fails_the_held_lookup_at_its_deadline() {
        let view = View::default();
        round(&view, 1, tables(&[("Cart", &["a:1"])]));
        view.apply(&order("lock", 2, None));
        view.apply(&order("update", 2, Some(tables(&[("Cart", &["b:1"])]))));
        assert_eq!(
            view.owner("Cart", "x", WAIT).await,
            Err(LookupError::NoAddress("Cart/x".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_stream_turns_the_view_not_ready_but_keeps_the_table() {
        let view = View::default();
        round(&view, 1, tables(&[("Cart", &["a:1"])]));
        view.lost();
        assert!(!view.ready());
        // Calls go on with the last table while placement is away.
        assert_eq!(
            view.owner("Cart", "1", WAIT).await.expect("owner").name,
            "a:1"
        );
    }

    #[tokio::test]
    async fn follows_a_real_placement_service() {
        use skiff_placement::server::{PlacementService, Settings};

        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let svc = PlacementService::new(Settings::default());
        tokio::spawn(skiff_placement::server::serve(
            l,
            svc,
            std::future::pending(),
        ));
        let me = |name: &str| Report {
            name: name.into(),
            id: "app".into(),
            entities: vec!["Cart".into()],
            namespace: "default".into(),
            ..Default::default()
        };
        let (a, b) = (Arc::new(View::default()), Arc::new(View::default()));
        let at = Addresses::Listed(vec![addr.to_string()]);
        let fa = tokio::spawn(connect_and_follow(at.clone(), me("a:1"), a.clone()));
        let fb = tokio::spawn(connect_and_follow(at, me("b:1"), b.clone()));
        // Both end up on the same table, naming both hosts, and agree on
        // every owner.
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(a.ready() && b.ready() && a.version() == b.version() && a.version() >= 2) {
            assert!(tokio::time::Instant::now() < end, "never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut seen = BTreeSet::new();
        for id in (0..200).map(|i| i.to_string()) {
            let x = a.owner("Cart", &id, WAIT).await.expect("a");
            let y = b.owner("Cart", &id, WAIT).await.expect("b");
            assert_eq!(x, y, "{id}");
            seen.insert(x.name.clone());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        fa.abort();
        fb.abort();
    }
}
