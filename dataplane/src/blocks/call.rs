//! The envelope of every component call, for every block: a block holds
//! one [`Envelope`] per component and makes each call through it, so no
//! block writes its own resiliency loop or metric bookkeeping.
//!
//! Outbound (`targets.components.<name>.outbound`, [`Envelope::call`]):
//! the breaker is asked first, each attempt runs under the timeout, and
//! failures the policy counts are retried with its backoff; then the
//! outcome is counted once in the block's `dapr_component_*` series.
//! Failures that are the caller's (a wrong ETag, a bad request) are
//! permanent: neither retried nor held against the breaker, as daprd
//! treats them. The block turns the driver's error into Dapr's answer in
//! its `errors.rs`; the span is the API call's, made at the front door
//! ([`super::traced`]), as daprd's spans are.
//!
//! Inbound (`targets.components.<name>.inbound`): deliveries to the app.
//! An input binding event or a configuration update is retried in place
//! ([`Envelope::deliver_retrying`]: breaker, timeout and retries, as
//! outbound); a pub/sub message or bulk batch is one [`attempt`] under
//! the breaker and the timeout, its retries the delivery loop's, which
//! frees the message's slot while it waits and dead-letters when they run
//! out.
//!
//! Policies are read at each call from the sidecar's live policies, so a
//! changed policy file applies from the next call on.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::policy::Policies;
use crate::policy::resiliency::ComponentPolicy;
use crate::telemetry::metrics::{self, ComponentOps, PolicyKind};

/// Where a block counts a call's outcome: its `dapr_component_*` series
/// for one component. `Op` is what names the call in Dapr's labels (an
/// operation index, a topic, a binding operation).
pub trait Series: Send + Sync + 'static {
    type Op<'a>: Copy;
    fn record(&self, op: Self::Op<'_>, ok: bool, took: Duration);
}

/// State, secret, lock and configuration stores: the operation's index in
/// the block's operation list (`state::Ops::OPS`, ...).
impl Series for ComponentOps {
    type Op<'a> = usize;
    fn record(&self, op: usize, ok: bool, took: Duration) {
        ComponentOps::record(self, op, ok, took);
    }
}

/// One component as its block calls it: the component's live policies
/// and its series.
pub struct Envelope<S: Series> {
    policy: PolicyRef,
    series: Arc<S>,
}

impl<S: Series> Clone for Envelope<S> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            series: self.series.clone(),
        }
    }
}

impl<S: Series> Envelope<S> {
    pub fn new(policy: PolicyRef, series: Arc<S>) -> Self {
        Self { policy, series }
    }

    /// The component's series (for what a block counts beyond calls: a
    /// topic's deliveries and gauges, a binding's input events).
    pub fn series(&self) -> &Arc<S> {
        &self.series
    }

    /// One call: `attempt` under the outbound policy (called once per
    /// try), its outcome counted once as `op`.
    pub async fn call<T, E, F, Fut>(&self, op: S::Op<'_>, attempt: F) -> Result<T, E>
    where
        E: OutboundError,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let t0 = Instant::now();
        let r = self.policed(attempt).await;
        self.record(op, t0, r.is_ok());
        r
    }

    /// [`call`](Self::call) for a driver call that takes its request by
    /// value: `input` is moved into the only attempt when there is no
    /// policy, and cloned per try only when a policy may retry.
    pub async fn call_with<I, T, E, F, Fut>(
        &self,
        op: S::Op<'_>,
        input: I,
        attempt: F,
    ) -> Result<T, E>
    where
        I: Clone,
        E: OutboundError,
        F: FnMut(I) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let t0 = Instant::now();
        let r = self.policed_with(input, attempt).await;
        self.record(op, t0, r.is_ok());
        r
    }

    /// `attempt` under the outbound policy, not counted: the parts of
    /// one API call that Dapr counts once (the items of a bulk save).
    pub async fn policed<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        E: OutboundError,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.policy.outbound() {
            Some(p) => run(&p, attempt).await,
            None => attempt().await,
        }
    }

    /// [`policed`](Self::policed), the request moved rather than cloned
    /// when there is no policy.
    pub async fn policed_with<I, T, E, F, Fut>(&self, input: I, mut attempt: F) -> Result<T, E>
    where
        I: Clone,
        E: OutboundError,
        F: FnMut(I) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.policy.outbound() {
            Some(p) => run(&p, || attempt(input.clone())).await,
            None => attempt(input).await,
        }
    }

    /// Whether the component has an outbound policy now (a batch call
    /// that tracks its entries across retries needs to know).
    pub fn has_outbound(&self) -> bool {
        self.policy.outbound().is_some()
    }

    /// Counts one call as `op`, begun at `since` (nothing when metrics
    /// are off).
    pub fn record(&self, op: S::Op<'_>, since: Instant, ok: bool) {
        if metrics::get().is_some() {
            self.series.record(op, ok, since.elapsed());
        }
    }

    /// A delivery the sidecar retries in place (an input binding event, a
    /// configuration update): `attempt` under the inbound policy's
    /// breaker, timeout and retries, called once per try.
    pub async fn deliver_retrying<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        E: OutboundError,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.policy.inbound() {
            Some(p) => run(&p, attempt).await,
            None => attempt().await,
        }
    }

    /// The inbound policy as it is now (a delivery loop reads its retry
    /// budget from it).
    pub fn inbound(&self) -> Option<Arc<ComponentPolicy>> {
        self.policy.inbound()
    }
}

/// Where a component's policies are read, at each call: the sidecar's
/// live policies (swapped when the policy files change), so a changed
/// `targets.components` entry applies from the next call on.
#[derive(Clone)]
pub struct PolicyRef {
    live: Arc<ArcSwap<Policies>>,
    name: Arc<str>,
    /// The component's block, as Dapr's metric labels name it.
    kind: &'static str,
}

impl PolicyRef {
    pub fn new(live: &Arc<ArcSwap<Policies>>, name: &str, kind: &'static str) -> Self {
        Self {
            live: live.clone(),
            name: name.into(),
            kind,
        }
    }

    /// No policies at all, for tests of a block alone.
    #[cfg(test)]
    pub fn none(name: &str, kind: &'static str) -> Self {
        Self::new(&Arc::default(), name, kind)
    }

    /// `targets.components.<name>.outbound`, as the policies are now.
    pub fn outbound(&self) -> Option<Arc<ComponentPolicy>> {
        self.live
            .load()
            .resiliency
            .component(&self.name, self.kind, false)
    }

    /// `targets.components.<name>.inbound`, as the policies are now.
    pub fn inbound(&self) -> Option<Arc<ComponentPolicy>> {
        self.live
            .load()
            .resiliency
            .component(&self.name, self.kind, true)
    }
}

/// What the runner needs to know about a driver's error.
pub trait OutboundError: Sized {
    /// The caller's mistake: no retry, no breaker failure.
    fn permanent(&self) -> bool;
    /// The attempt ran out of its timeout.
    fn timed_out(after: Duration) -> Self;
    /// The breaker is open: the call was not made.
    fn breaker_open(breaker: &str) -> Self;
}

/// Implements [`OutboundError`] for a driver error type whose failures
/// are carried by the variant `$failed(String)`; `$permanent` matches the
/// caller's mistakes (a pattern on `Self`; none when left out).
macro_rules! outbound_error {
    ($t:ty, $failed:ident) => {
        $crate::blocks::call::outbound_error!(@impl $t, $failed, |_: &Self| false);
    };
    ($t:ty, $failed:ident, $permanent:pat) => {
        $crate::blocks::call::outbound_error!(@impl $t, $failed, |e: &Self| matches!(e, $permanent));
    };
    (@impl $t:ty, $failed:ident, $permanent:expr) => {
        impl $crate::blocks::call::OutboundError for $t {
            fn permanent(&self) -> bool {
                ($permanent)(self)
            }

            fn timed_out(after: std::time::Duration) -> Self {
                Self::$failed($crate::blocks::call::timed_out(after))
            }

            fn breaker_open(breaker: &str) -> Self {
                Self::$failed($crate::blocks::call::breaker_open(breaker))
            }
        }
    };
}
pub(crate) use outbound_error;

/// Why an attempt failed when the policy's timeout ran out.
pub fn timed_out(after: Duration) -> String {
    format!("timeout: no answer within {after:?} (resiliency policy)")
}

/// Why a call was not made: the breaker is open.
pub fn breaker_open(breaker: &str) -> String {
    format!("circuit breaker {breaker} is open")
}

/// A delivery the app did not take (why), as an inbound runner retries
/// it: never the caller's mistake, so always retried while the policy
/// allows.
pub struct Undelivered(pub String);

impl OutboundError for Undelivered {
    fn permanent(&self) -> bool {
        false
    }

    fn timed_out(after: Duration) -> Self {
        Self(timed_out(after))
    }

    fn breaker_open(breaker: &str) -> Self {
        Self(breaker_open(breaker))
    }
}

/// Why an attempt under a policy was not made, or not finished.
enum Refused<'a> {
    /// The breaker is open (its name): the call was not made.
    Open(&'a str),
    /// No answer within the policy's timeout.
    TimedOut(Duration),
}

/// One attempt under `p`'s breaker and timeout, the breaker told whether
/// it `failed` (a timeout is a failure). Both runners below are this step.
async fn once<'p, T>(
    p: &'p ComponentPolicy,
    call: impl Future<Output = T>,
    failed: impl Fn(&T) -> bool,
) -> Result<T, Refused<'p>> {
    let permit = match &p.breaker {
        Some(b) => match b.allow() {
            Some(permit) => Some((b, permit)),
            None => return Err(Refused::Open(b.name())),
        },
        None => None,
    };
    let out = match p.timeout {
        Some(t) => tokio::time::timeout(t, call).await.map_err(|_| {
            if let Some(m) = metrics::get() {
                m.resiliency_activated(&p.document, &p.label, PolicyKind::Timeout);
            }
            Refused::TimedOut(t)
        }),
        None => Ok(call.await),
    };
    if let Some((b, permit)) = permit {
        b.record(permit, matches!(&out, Ok(o) if !failed(o)));
    }
    out
}

/// Runs `attempt` under `p`; `attempt` is called once per try.
async fn run<T, E, F, Fut>(p: &ComponentPolicy, mut attempt: F) -> Result<T, E>
where
    E: OutboundError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let failed = |r: &Result<T, E>| matches!(r, Err(e) if !e.permanent());
    executed(p);
    let mut retries = 0u32;
    loop {
        let result = match once(p, attempt(), failed).await {
            Ok(r) => r,
            Err(Refused::Open(breaker)) => return Err(E::breaker_open(breaker)),
            Err(Refused::TimedOut(t)) => Err(E::timed_out(t)),
        };
        match &p.retry {
            Some(r) if failed(&result) && r.may_retry(retries) => {
                tokio::time::sleep(r.delay(retries)).await;
                retries += 1;
                if let Some(m) = metrics::get() {
                    m.resiliency_activated(&p.document, &p.label, PolicyKind::Retry);
                }
            }
            _ => return result,
        }
    }
}

/// One delivery attempt under an inbound policy (`None`: the call as it
/// is). `failed` says whether the outcome counts against the breaker;
/// `refused` makes the outcome of a call that was not made (the breaker
/// is open) or did not finish in time, from the reason.
pub async fn attempt<T>(
    p: Option<&ComponentPolicy>,
    call: impl Future<Output = T>,
    failed: impl Fn(&T) -> bool,
    refused: impl FnOnce(String) -> T,
) -> T {
    let Some(p) = p else {
        return call.await;
    };
    executed(p);
    match once(p, call, failed).await {
        Ok(out) => out,
        Err(Refused::Open(b)) => refused(breaker_open(b)),
        Err(Refused::TimedOut(t)) => refused(timed_out(t)),
    }
}

fn executed(p: &ComponentPolicy) {
    if let Some(m) = metrics::get() {
        m.policy_applied(
            &p.document,
            &p.label,
            [p.timeout.is_some(), p.retry.is_some(), p.breaker.is_some()],
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::policy::breaker::{Breaker, BreakerSpec, Trip};
    use crate::policy::retry::{Backoff, RetrySpec};

    #[derive(Debug, PartialEq)]
    enum E {
        Down,
        Caller,
        Timeout,
        Open,
    }

    impl OutboundError for E {
        fn permanent(&self) -> bool {
            *self == E::Caller
        }
        fn timed_out(_: Duration) -> Self {
            E::Timeout
        }
        fn breaker_open(_: &str) -> Self {
            E::Open
        }
    }

    fn policy(
        timeout: Option<Duration>,
        retries: Option<u32>,
        trip: Option<&str>,
    ) -> ComponentPolicy {
        ComponentPolicy {
            document: Arc::from("r"),
            label: Arc::from("Statestore_s"),
            timeout,
            retry: retries.map(|n| RetrySpec {
                name: "r".into(),
                backoff: Backoff::Constant(Duration::from_millis(10)),
                max_retries: Some(n),
                http_codes: Default::default(),
                grpc_codes: Default::default(),
            }),
            breaker: trip.map(|t| {
                Breaker::new(BreakerSpec {
                    name: "cb".into(),
                    max_requests: 1,
                    interval: Duration::ZERO,
                    timeout: Duration::from_secs(30),
                    trip: Trip::parse(t).expect("trip"),
                })
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_what_failed_and_not_the_callers_mistakes() {
        let p = policy(None, Some(2), None);
        let n = AtomicU32::new(0);
        let r: Result<(), E> = run(&p, || async {
            n.fetch_add(1, Ordering::Relaxed);
            Err(E::Down)
        })
        .await;
        assert_eq!((r, n.load(Ordering::Relaxed)), (Err(E::Down), 3));
        let n = AtomicU32::new(0);
        let r: Result<(), E> = run(&p, || async {
            n.fetch_add(1, Ordering::Relaxed);
            Err(E::Caller)
        })
        .await;
        assert_eq!((r, n.load(Ordering::Relaxed)), (Err(E::Caller), 1));
        let n = AtomicU32::new(0);
        let r = run(&p, || async {
            if n.fetch_add(1, Ordering::Relaxed) == 0 {
                Err(E::Down)
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r, Ok(7), "a retry that succeeds");
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_has_the_timeout() {
        let p = policy(Some(Duration::from_millis(100)), None, None);
        let r: Result<(), E> = run(&p, || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        })
        .await;
        assert_eq!(r, Err(E::Timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn an_inbound_attempt_has_the_timeout_and_the_breaker() {
        let p = policy(
            Some(Duration::from_millis(100)),
            None,
            Some("consecutiveFailures >= 1"),
        );
        let failed = |r: &Result<(), String>| r.is_err();
        let slow = attempt(
            Some(&p),
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            },
            failed,
            Err,
        )
        .await;
        assert!(slow.expect_err("timed out").contains("no answer within"));
        let n = AtomicU32::new(0);
        let shut = attempt(
            Some(&p),
            async {
                n.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
            failed,
            Err,
        )
        .await;
        assert!(
            shut.expect_err("open")
                .contains("circuit breaker cb is open")
        );
        assert_eq!(
            n.load(Ordering::Relaxed),
            0,
            "an open breaker makes no call"
        );
        let plain = attempt(None, async { Ok::<_, String>(1) }, |_| false, |_| Ok(0)).await;
        assert_eq!(plain, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_stops_calls() {
        let p = policy(None, None, Some("consecutiveFailures >= 2"));
        for _ in 0..2 {
            let r: Result<(), E> = run(&p, || async { Err(E::Down) }).await;
            assert_eq!(r, Err(E::Down));
        }
        let n = AtomicU32::new(0);
        let r: Result<(), E> = run(&p, || async {
            n.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await;
        assert_eq!((r, n.load(Ordering::Relaxed)), (Err(E::Open), 0));
        // Caller mistakes do not trip it.
        let p = policy(None, None, Some("consecutiveFailures >= 1"));
        let _: Result<(), E> = run(&p, || async { Err(E::Caller) }).await;
        assert_eq!(run(&p, || async { Ok::<_, E>(1) }).await, Ok(1));
    }
}
