//! Circuit breakers: Dapr's `circuitBreakers` policies, with gobreaker's
//! state machine (what Dapr runs) and its trip expressions.
//!
//! Closed: calls flow and are counted (the counts reset every `interval`
//! when it is set); when a failure makes `trip` true the breaker opens.
//! Open: calls fail fast until `timeout` has passed, then half-open.
//! Half-open: up to `maxRequests` probes go through; that many successes in
//! a row close it, any failure opens it again. Only sidecars with a breaker
//! policy pay for the small mutex each breaker holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::metrics::CB_STATES;

/// The counters a trip expression reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub total_successes: u64,
    pub total_failures: u64,
    pub consecutive_successes: u64,
    pub consecutive_failures: u64,
}

impl Counts {
    fn success(&mut self) {
        self.total_successes += 1;
        self.consecutive_successes += 1;
        self.consecutive_failures = 0;
    }

    fn failure(&mut self) {
        self.total_failures += 1;
        self.consecutive_failures += 1;
        self.consecutive_successes = 0;
    }
}

/// A parsed trip condition: comparisons joined by `&&` and `||`, with
/// parentheses; `&&` binds tighter.
#[derive(Clone, Debug, PartialEq)]
pub enum Trip {
    Cmp(Var, Op, u64),
    And(Box<Trip>, Box<Trip>),
    Or(Box<Trip>, Box<Trip>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Requests,
    TotalSuccesses,
    TotalFailures,
    ConsecutiveSuccesses,
    ConsecutiveFailures,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Trip {
    pub fn eval(&self, c: &Counts) -> bool {
        match self {
            Trip::Cmp(v, op, n) => {
                let x = match v {
                    Var::Requests => c.requests,
                    Var::TotalSuccesses => c.total_successes,
                    Var::TotalFailures => c.total_failures,
                    Var::ConsecutiveSuccesses => c.consecutive_successes,
                    Var::ConsecutiveFailures => c.consecutive_failures,
                };
                match op {
                    Op::Gt => x > *n,
                    Op::Ge => x >= *n,
                    Op::Lt => x < *n,
                    Op::Le => x <= *n,
                    Op::Eq => x == *n,
                    Op::Ne => x != *n,
                }
            }
            Trip::And(a, b) => a.eval(c) && b.eval(c),
            Trip::Or(a, b) => a.eval(c) || b.eval(c),
        }
    }

    /// Parses e.g. `consecutiveFailures > 5 || (requests >= 10 && totalFailures > 3)`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let toks = tokenize(s)?;
        let mut p = Parser { toks: &toks, at: 0 };
        let t = p.or()?;
        if p.at != toks.len() {
            return Err(format!("unexpected {:?} in {s:?}", toks[p.at]));
        }
        Ok(t)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(u64),
    Op(Op),
    And,
    Or,
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let two = b.get(i..i + 2);
        match c {
            b' ' | b'\t' | b'\n' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'&' if two == Some(b"&&") => {
                out.push(Tok::And);
                i += 2;
            }
            b'|' if two == Some(b"||") => {
                out.push(Tok::Or);
                i += 2;
            }
            b'>' | b'<' | b'=' | b'!' => {
                let (op, n) = match (c, two) {
                    (b'>', Some(b">=")) => (Op::Ge, 2),
                    (b'<', Some(b"<=")) => (Op::Le, 2),
                    (b'=', Some(b"==")) => (Op::Eq, 2),
                    (b'!', Some(b"!=")) => (Op::Ne, 2),
                    (b'>', _) => (Op::Gt, 1),
                    (b'<', _) => (Op::Lt, 1),
                    _ => return Err(format!("unknown operator at {:?}", &s[i..])),
                };
                out.push(Tok::Op(op));
                i += n;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n = s[start..i]
                    .parse()
                    .map_err(|_| format!("number {:?} is too large", &s[start..i]))?;
                out.push(Tok::Num(n));
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < b.len() && b[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                out.push(Tok::Ident(s[start..i].to_owned()));
            }
            _ => return Err(format!("unexpected {:?}", &s[i..])),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [Tok],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<Trip, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            left = Trip::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Trip, String> {
        let mut left = self.atom()?;
        while self.peek() == Some(&Tok::And) {
            self.at += 1;
            left = Trip::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Trip, String> {
        match self.next() {
            Some(Tok::Open) => {
                let t = self.or()?;
                match self.next() {
                    Some(Tok::Close) => Ok(t),
                    _ => Err("missing )".into()),
                }
            }
            Some(Tok::Ident(name)) => {
                let var = match name.as_str() {
                    "requests" => Var::Requests,
                    "totalSuccesses" => Var::TotalSuccesses,
                    "totalFailures" => Var::TotalFailures,
                    "consecutiveSuccesses" => Var::ConsecutiveSuccesses,
                    "consecutiveFailures" => Var::ConsecutiveFailures,
                    other => {
                        return Err(format!(
                            "unknown counter {other:?} (requests, totalSuccesses, totalFailures, consecutiveSuccesses, consecutiveFailures)"
                        ));
                    }
                };
                let Some(Tok::Op(op)) = self.next() else {
                    return Err(format!("expected a comparison after {name}"));
                };
                let Some(Tok::Num(n)) = self.next() else {
                    return Err(format!("expected a number after {name}"));
                };
                Ok(Trip::Cmp(var, op, n))
            }
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("the expression ends early".into()),
        }
    }
}

/// A breaker's settings.
#[derive(Clone, Debug)]
pub struct BreakerSpec {
    pub name: String,
    pub max_requests: u64,
    /// 0: counts are never cleared while closed.
    pub interval: Duration,
    pub timeout: Duration,
    pub trip: Trip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Index into [`crate::telemetry::metrics::CB_STATES`].
    pub fn index(self) -> usize {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    counts: Counts,
    /// Closed: when the counts reset. Open: when to half-open.
    until: Option<Instant>,
    /// Bumped on every state change, so late results of an older
    /// generation are ignored.
    generation: u64,
}

/// One breaker (per app endpoint).
#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    inner: Mutex<Inner>,
    /// For metrics: the Resiliency document and the target app.
    document: Arc<str>,
    target: Arc<str>,
}

/// Permission for one call; report how it went with [`Breaker::record`].
#[derive(Debug, Clone, Copy)]
pub struct Permit {
    generation: u64,
}

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Self {
        Self::for_target(spec, Arc::from(""), Arc::from(""))
    }

    /// A breaker whose state changes are counted for `target` (an app id)
    /// under the Resiliency document `document`.
    pub fn for_target(spec: BreakerSpec, document: Arc<str>, target: Arc<str>) -> Self {
        let until = (!spec.interval.is_zero()).then(|| Instant::now() + spec.interval);
        Self {
            document,
            target,
            spec,
            inner: Mutex::new(Inner {
                state: State::Closed,
                counts: Counts::default(),
                until,
                generation: 0,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The state now (open turns half-open once its timeout is over).
    pub fn state(&self) -> State {
        let mut g = self.lock();
        self.tick(&mut g, Instant::now());
        g.state
    }

    /// A call may go ahead, or the breaker is open.
    pub fn allow(&self) -> Option<Permit> {
        let mut g = self.lock();
        self.tick(&mut g, Instant::now());
        match g.state {
            State::Open => None,
            State::HalfOpen if g.counts.requests >= self.spec.max_requests => None,
            _ => {
                g.counts.requests += 1;
                Some(Permit {
                    generation: g.generation,
                })
            }
        }
    }

    pub fn record(&self, permit: Permit, success: bool) {
        let now = Instant::now();
        let mut g = self.lock();
        self.tick(&mut g, now);
        if g.generation != permit.generation {
            return;
        }
        if success {
            g.counts.success();
            if g.state == State::HalfOpen
                && g.counts.consecutive_successes >= self.spec.max_requests
            {
                self.to(&mut g, State::Closed, now);
            }
        } else {
            g.counts.failure();
            match g.state {
                State::Closed if self.spec.trip.eval(&g.counts) => {
                    self.to(&mut g, State::Open, now)
                }
                State::HalfOpen => self.to(&mut g, State::Open, now),
                _ => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave the counters unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self, g: &mut Inner, now: Instant) {
        match (g.state, g.until) {
            (State::Closed, Some(t)) if now >= t => {
                g.counts = Counts::default();
                g.generation += 1;
                g.until = Some(now + self.spec.interval);
            }
            (State::Open, Some(t)) if now >= t => self.to(g, State::HalfOpen, now),
            _ => {}
        }
    }

    fn to(&self, g: &mut Inner, state: State, now: Instant) {
        if state != g.state {
            tracing::info!(breaker = %self.spec.name, target = %self.target, from = CB_STATES[g.state.index()], to = CB_STATES[state.index()], "circuit breaker");
            if let Some(m) = crate::telemetry::metrics::get() {
                m.breaker_transition(&self.document, &self.target, state.index());
            }
        }
        g.state = state;
        g.counts = Counts::default();
        g.generation += 1;
        g.until = match state {
            State::Open => Some(now + self.spec.timeout),
            State::Closed if !self.spec.interval.is_zero() => Some(now + self.spec.interval),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trip_expressions_parse_and_evaluate() {
        let t = Trip::parse("consecutiveFailures > 5").expect("parse");
        let mut c = Counts {
            consecutive_failures: 5,
            ..Counts::default()
        };
        assert!(!t.eval(&c));
        c.consecutive_failures = 6;
        assert!(t.eval(&c));
        let t = Trip::parse("requests >= 10 && totalFailures > 3 || consecutiveFailures == 2")
            .expect("parse");
        let c = Counts {
            requests: 10,
            total_failures: 4,
            ..Counts::default()
        };
        assert!(t.eval(&c));
        let c = Counts {
            consecutive_failures: 2,
            ..Counts::default()
        };
        assert!(t.eval(&c), "|| binds looser than &&");
        let t = Trip::parse("(requests > 1 || totalSuccesses != 0) && totalFailures <= 1")
            .expect("parse");
        assert!(matches!(t, Trip::And(..)));
        for bad in [
            "",
            "failures > 1",
            "requests >",
            "requests > x",
            "requests > 1 &&",
            "(requests > 1",
            "requests => 1",
            "requests > 1 requests",
        ] {
            assert!(Trip::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    fn spec() -> BreakerSpec {
        BreakerSpec {
            name: "cb".into(),
            max_requests: 2,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(30),
            trip: Trip::parse("consecutiveFailures >= 3").expect("trip"),
        }
    }

    fn fail(b: &Breaker) {
        let p = b.allow().expect("allowed");
        b.record(p, false);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_half_opens_and_closes() {
        let b = Breaker::new(spec());
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), State::Open);
        assert!(b.allow().is_none(), "open fails fast");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.allow().is_none(), "still open before the timeout");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let p1 = b.allow().expect("probe 1");
        let p2 = b.allow().expect("probe 2");
        assert!(b.allow().is_none(), "only maxRequests probes");
        b.record(p1, true);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(p2, true);
        assert_eq!(b.state(), State::Closed, "maxRequests successes close it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = Breaker::new(spec());
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        fail(&b);
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.allow().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn interval_clears_counts_while_closed() {
        let b = Breaker::new(BreakerSpec {
            interval: Duration::from_secs(10),
            ..spec()
        });
        fail(&b);
        fail(&b);
        tokio::time::advance(Duration::from_secs(10)).await;
        fail(&b);
        assert_eq!(
            b.state(),
            State::Closed,
            "the first two failures were in an earlier interval"
        );
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Open);
    }
}

/// The breaker against a model written another way: the model keeps the
/// outcomes of the current epoch as a list and derives gobreaker's counts
/// from it, and keeps time as plain milliseconds.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Ask for a permit; a granted one is kept.
        Allow,
        /// Report the outcome of the kept permit at this index (mod len).
        Record(usize, bool),
        /// Let this many milliseconds pass.
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Allow),
            4 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Record(i, ok)),
            1 => (0u64..1500).prop_map(Op::Wait),
        ]
    }

    const TRIPS: [&str; 4] = [
        "consecutiveFailures >= 3",
        "requests >= 4 && totalFailures > 1",
        "totalFailures > 2 || consecutiveSuccesses == 0",
        "(requests > 2 && consecutiveFailures != 0) || totalFailures >= 5",
    ];

    struct Model {
        state: State,
        /// Permits granted in this epoch, and their outcomes in order.
        granted: u64,
        outcomes: Vec<bool>,
        epoch: u64,
        /// Closed with an interval: counts clear then. Open: half-opens then.
        deadline: Option<u64>,
        max_requests: u64,
        interval: u64,
        timeout: u64,
    }

    impl Model {
        fn counts(&self) -> Counts {
            let run = |want: bool| {
                self.outcomes
                    .iter()
                    .rev()
                    .take_while(|&&o| o == want)
                    .count() as u64
            };
            Counts {
                requests: self.granted,
                total_successes: self.outcomes.iter().filter(|&&o| o).count() as u64,
                total_failures: self.outcomes.iter().filter(|&&o| !o).count() as u64,
                consecutive_successes: run(true),
                consecutive_failures: run(false),
            }
        }

        fn enter(&mut self, state: State, now: u64) {
            self.state = state;
            self.granted = 0;
            self.outcomes.clear();
            self.epoch += 1;
            self.deadline = match state {
                State::Open => Some(now + self.timeout),
                State::Closed if self.interval > 0 => Some(now + self.interval),
                _ => None,
            };
        }

        fn at(&mut self, now: u64) {
            match (self.state, self.deadline) {
                (State::Open, Some(d)) if now >= d => self.enter(State::HalfOpen, now),
                (State::Closed, Some(d)) if now >= d => {
                    // A new counting window; the state stays closed.
                    self.enter(State::Closed, now);
                }
                _ => {}
            }
        }

        fn allow(&mut self, now: u64) -> Option<u64> {
            self.at(now);
            let ok = match self.state {
                State::Open => false,
                State::HalfOpen => self.granted < self.max_requests,
                State::Closed => true,
            };
            ok.then(|| {
                self.granted += 1;
                self.epoch
            })
        }

        fn record(&mut self, epoch: u64, success: bool, trip: &Trip, now: u64) {
            self.at(now);
            if epoch != self.epoch {
                return; // a late answer from before a change: ignored
            }
            self.outcomes.push(success);
            let c = self.counts();
            match (self.state, success) {
                (State::HalfOpen, true) if c.consecutive_successes >= self.max_requests => {
                    self.enter(State::Closed, now)
                }
                (State::HalfOpen, false) => self.enter(State::Open, now),
                (State::Closed, false) if trip.eval(&c) => self.enter(State::Open, now),
                _ => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_breaker_follows_the_model(
            trip in 0..TRIPS.len(),
            max_requests in 1u64..4,
            interval in prop_oneof![Just(0u64), 500u64..3000],
            timeout in 200u64..2000,
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            rt.block_on(async {
                let trip = Trip::parse(TRIPS[trip]).expect("trip");
                let b = Breaker::new(BreakerSpec {
                    name: "model".into(),
                    max_requests,
                    interval: Duration::from_millis(interval),
                    timeout: Duration::from_millis(timeout),
                    trip: trip.clone(),
                });
                let mut m = Model {
                    state: State::Closed,
                    granted: 0,
                    outcomes: Vec::new(),
                    epoch: 0,
                    deadline: (interval > 0).then_some(interval),
                    max_requests,
                    interval,
                    timeout,
                };
                let mut now = 0u64;
                let mut held: Vec<(Permit, u64)> = Vec::new();
                for (step, op) in ops.iter().enumerate() {
                    match *op {
                        Op::Allow => {
                            let (real, model) = (b.allow(), m.allow(now));
                            prop_assert_eq!(real.is_some(), model.is_some(), "step {}: allow", step);
                            if let (Some(p), Some(e)) = (real, model) {
                                held.push((p, e));
                            }
                        }
                        Op::Record(i, ok) if !held.is_empty() => {
                            let (p, e) = held.swap_remove(i % held.len());
                            b.record(p, ok);
                            m.record(e, ok, &trip, now);
                        }
                        Op::Record(..) => {}
                        Op::Wait(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                            now += ms;
                        }
                    }
                    m.at(now);
                    prop_assert_eq!(b.state(), m.state, "step {}: {:?}", step, op);
                }
                Ok(())
            })?;
        }
    }
}
