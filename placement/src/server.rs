//! The placement service's streams: `dapr.proto.placement.v1.Placement/
//! ReportDaprStatus` served over tonic, feeding [`crate::rounds`] and
//! carrying out what it says.
//!
//! Each sidecar's stream gets an id and a bounded queue for the orders
//! sent to it. A sidecar that does not read its orders fast enough to keep
//! that queue from filling is dropped like a silent one: a round must not
//! wait on it, and nothing here may block. All state sits behind one
//! `std` mutex held only to apply one event and queue its orders; a
//! ticker applies the clock every [`TICK`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use skiff_proto::placement::placement_server::Placement;
use skiff_proto::placement::{Host, PlacementOrder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::rounds::{Namespace, Out, StreamId};

/// How often the clock is applied (stage timeouts are counted in it).
pub const TICK: Duration = Duration::from_millis(250);
/// Orders queued for one sidecar before it counts as not keeping up: a
/// round sends at most three, and a private round three more.
const ORDERS_QUEUED: usize = 32;

/// The settings of the rounds.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub disseminate_timeout: Duration,
    pub replication_factor: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            disseminate_timeout: crate::rounds::DEFAULT_DISSEMINATE_TIMEOUT,
            replication_factor: crate::rounds::DEFAULT_REPLICATION_FACTOR,
        }
    }
}

/// The placement service (the leader's side).
#[derive(Clone)]
pub struct PlacementService {
    state: Arc<Mutex<State>>,
}

struct State {
    settings: Settings,
    namespaces: HashMap<String, Namespace>,
    streams: HashMap<StreamId, Peer>,
    next: StreamId,
}

/// One sidecar's stream: its namespace (fixed by its first report) and
/// the queue of its orders.
struct Peer {
    namespace: Option<String>,
    orders: mpsc::Sender<Result<PlacementOrder, Status>>,
}

type Orders = Pin<Box<dyn Stream<Item = Result<PlacementOrder, Status>> + Send>>;

impl PlacementService {
    /// The service, with its ticker spawned on the current runtime (it
    /// stops when the service is dropped).
    pub fn new(settings: Settings) -> Self {
        let state = Arc::new(Mutex::new(State {
            settings,
            namespaces: HashMap::new(),
            streams: HashMap::new(),
            next: 1,
        }));
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                lock(&state).tick(Instant::now());
            }
        });
        Self { state }
    }

    /// Sidecars connected, for metrics and tests.
    pub fn streams(&self) -> usize {
        lock(&self.state).streams.len()
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Each event is applied whole before the lock is let go.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn open(&mut self) -> (StreamId, mpsc::Receiver<Result<PlacementOrder, Status>>) {
        let id = self.next;
        self.next += 1;
        let (tx, rx) = mpsc::channel(ORDERS_QUEUED);
        self.streams.insert(
            id,
            Peer {
                namespace: None,
                orders: tx,
            },
        );
        (id, rx)
    }

    fn host(&mut self, id: StreamId, host: &Host, now: Instant) -> Result<(), Status> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(Status::aborted("the stream was dropped"));
        };
        match &s.namespace {
            None => s.namespace = Some(host.namespace.clone()),
            Some(ns) if *ns != host.namespace => {
                return Err(Status::invalid_argument(
                    "a stream's namespace cannot change; open another stream",
                ));
            }
            Some(_) => {}
        }
        let settings = self.settings;
        let ns = self
            .namespaces
            .entry(host.namespace.clone())
            .or_insert_with(|| {
                Namespace::new(
                    &host.namespace,
                    settings.disseminate_timeout,
                    settings.replication_factor,
                )
            });
        let out = ns.on_host(id, host, now);
        self.carry_out(out, now);
        Ok(())
    }

    fn gone(&mut self, id: StreamId, now: Instant) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if let Some(ns) = s.namespace.and_then(|n| self.namespaces.get_mut(&n)) {
            let out = ns.on_gone(id, now);
            self.carry_out(out, now);
        }
    }

    fn tick(&mut self, now: Instant) {
        let outs: Vec<Out> = self
            .namespaces
            .values_mut()
            .flat_map(|ns| ns.on_tick(now))
            .collect();
        self.carry_out(outs, now);
        self.namespaces.retain(|_, ns| ns.streams() > 0);
    }

    /// Queues orders and ends dropped streams. A sidecar whose queue is
    /// full is dropped too, and that is applied as its stream ending.
    fn carry_out(&mut self, out: Vec<Out>, now: Instant) {
        let mut behind = Vec::new();
        for o in out {
            match o {
                Out::Send(id, order) => {
                    if let Some(s) = self.streams.get(&id)
                        && s.orders.try_send(Ok(order)).is_err()
                    {
                        behind.push(id);
                    }
                }
                Out::Drop(id) => {
                    if let Some(s) = self.streams.remove(&id) {
                        let _ = s.orders.try_send(Err(Status::deadline_exceeded(
                            "no ack within the disseminate timeout",
                        )));
                    }
                }
            }
        }
        for id in behind {
            self.gone(id, now);
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes. Accepted
/// connections get `TCP_NODELAY`: a stage's orders and acks are small
/// writes that Nagle's algorithm would hold back for the peer's delayed
/// ACK (40 ms a stage on Linux).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: PlacementService,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    tonic::transport::Server::builder()
        .add_service(skiff_proto::placement::placement_server::PlacementServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[tonic::async_trait]
impl Placement for PlacementService {
    type ReportDaprStatusStream = Orders;

    async fn report_dapr_status(
        &self,
        request: Request<Streaming<Host>>,
    ) -> Result<Response<Self::ReportDaprStatusStream>, Status> {
        let mut inbound = request.into_inner();
        let (id, rx) = lock(&self.state).open();
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                let next = inbound.message().await;
                let now = Instant::now();
                let mut s = lock(&state);
                match next {
                    Ok(Some(host)) => {
                        if let Err(status) = s.host(id, &host, now) {
                            if let Some(st) = s.streams.get(&id) {
                                let _ = st.orders.try_send(Err(status));
                            }
                            s.gone(id, now);
                            return;
                        }
                    }
                    // Closed by the sidecar, or broken.
                    Ok(None) | Err(_) => {
                        s.gone(id, now);
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use skiff_proto::placement::HostOperation;
    use skiff_proto::placement::placement_client::PlacementClient;
    use tokio_stream::StreamExt;
    use tonic::transport::Channel;

    use super::*;

    async fn serve(settings: Settings) -> (SocketAddr, PlacementService) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let svc = PlacementService::new(settings);
        tokio::spawn(super::serve(l, svc.clone(), std::future::pending()));
        (addr, svc)
    }

    /// A sidecar's side: what it sends, and the orders it gets.
    struct Sidecar {
        tx: mpsc::Sender<Host>,
        orders: Streaming<PlacementOrder>,
    }

    impl Sidecar {
        async fn connect(addr: SocketAddr, name: &str, types: &[&str]) -> Self {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            let (tx, rx) = mpsc::channel(8);
            tx.send(host(name, types, HostOperation::Report, None))
                .await
                .expect("report");
            let orders = PlacementClient::new(ch)
                .report_dapr_status(ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            Self { tx, orders }
        }

        async fn next(&mut self) -> Result<PlacementOrder, Status> {
            tokio::time::timeout(Duration::from_secs(10), self.orders.next())
                .await
                .expect("an order in time")
                .expect("stream open")
        }

        /// Reads one order and acks it.
        async fn ack_next(&mut self) -> PlacementOrder {
            let o = self.next().await.expect("order");
            let op = match o.operation.as_str() {
                "lock" => HostOperation::Lock,
                "update" => HostOperation::Update,
                _ => HostOperation::Unlock,
            };
            self.tx
                .send(host("", &[], op, Some(o.version)))
                .await
                .expect("ack");
            o
        }
    }

    fn host(name: &str, types: &[&str], op: HostOperation, version: Option<u64>) -> Host {
        Host {
            name: name.into(),
            id: "app".into(),
            port: 1,
            entities: types.iter().map(|t| (*t).to_owned()).collect(),
            namespace: "default".into(),
            operation: op.into(),
            version,
            ..Default::default()
        }
    }

    fn ops(orders: &[PlacementOrder]) -> Vec<(String, u64)> {
        orders
            .iter()
            .map(|o| (o.operation.clone(), o.version))
            .collect()
    }

    #[tokio::test]
    async fn sidecars_get_rounds_over_the_stream() {
        let (addr, _svc) = serve(Settings::default()).await;
        let mut a = Sidecar::connect(addr, "a:1", &["Cart"]).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(a.ack_next().await);
        }
        assert_eq!(
            ops(&got),
            [
                ("lock".into(), 1),
                ("update".into(), 1),
                ("unlock".into(), 1)
            ]
        );
        let tables = got[1].tables.as_ref().expect("tables");
        assert!(tables.entries["Cart"].load_map.contains_key("a:1"));

        // A caller gets the table in a round of its own, and both get the
        // round that a second host starts.
        let mut c = Sidecar::connect(addr, "c:1", &[]).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(c.ack_next().await);
        }
        assert_eq!(
            ops(&got),
            [
                ("lock".into(), 1),
                ("update".into(), 1),
                ("unlock".into(), 1)
            ]
        );
        let mut b = Sidecar::connect(addr, "b:1", &["Cart"]).await;
        let want = [
            ("lock".to_owned(), 2),
            ("update".into(), 2),
            ("unlock".into(), 2),
        ];
        let (mut ga, mut gb, mut gc) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let (x, y, z) = tokio::join!(a.ack_next(), b.ack_next(), c.ack_next());
            ga.push(x);
            gb.push(y);
            gc.push(z);
        }
        assert_eq!(ops(&ga), want);
        assert_eq!(ops(&gb), want);
        assert_eq!(ops(&gc), want);
    }

    #[tokio::test]
    async fn a_host_that_leaves_starts_a_round_without_it() {
        let (addr, svc) = serve(Settings::default()).await;
        let mut a = Sidecar::connect(addr, "a:1", &["Cart"]).await;
        for _ in 0..3 {
            a.ack_next().await;
        }
        let mut b = Sidecar::connect(addr, "b:1", &["Cart"]).await;
        for _ in 0..3 {
            tokio::join!(a.ack_next(), b.ack_next());
        }
        drop(b);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(a.ack_next().await);
        }
        assert_eq!(got[1].version, 3);
        let hosts: Vec<&String> = got[1].tables.as_ref().expect("tables").entries["Cart"]
            .load_map
            .keys()
            .collect();
        assert_eq!(hosts, ["a:1"]);
        assert_eq!(svc.streams(), 1);
    }

    #[tokio::test]
    async fn a_silent_sidecar_is_dropped_and_the_round_goes_on() {
        let settings = Settings {
            disseminate_timeout: Duration::from_millis(500),
            ..Settings::default()
        };
        let (addr, _svc) = serve(settings).await;
        let mut a = Sidecar::connect(addr, "a:1", &["Cart"]).await;
        for _ in 0..3 {
            a.ack_next().await;
        }
        // b reports and then never acks anything.
        let mut silent = Sidecar::connect(addr, "b:1", &["User"]).await;
        let lock2 = a.ack_next().await;
        assert_eq!((lock2.operation.as_str(), lock2.version), ("lock", 2));
        // After the timeout b is dropped and round 3 runs without it.
        let next = a.ack_next().await;
        assert_eq!((next.operation.as_str(), next.version), ("lock", 3));
        let update = a.ack_next().await;
        assert_eq!(update.tables.expect("tables").entries.len(), 1);
        // b's stream ends with the reason.
        loop {
            match silent.orders.next().await {
                Some(Ok(_)) => continue,
                Some(Err(s)) => {
                    assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
                    break;
                }
                None => break,
            }
        }
    }
}
