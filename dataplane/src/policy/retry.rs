//! Retries: Dapr's `retries` policies (backoff, `maxRetries`, `matching`)
//! plus what Dapr lacks, a retry budget.
//!
//! The budget (after linkerd's) lets retries add at most a share of the
//! load: every original call deposits [`BUDGET_RATIO`] of a token, every
//! retry spends one, and a floor of [`BUDGET_MIN_PER_SEC`] retries a second
//! keeps light traffic retrying. When a target is down for good, retries
//! stop at that share instead of multiplying the load on it. All atomics:
//! no lock on the call path.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Extra load retries may add, as a share of calls.
pub const BUDGET_RATIO: f64 = 0.2;
/// Retries always allowed per second, whatever the ratio says.
pub const BUDGET_MIN_PER_SEC: u64 = 10;
/// The balance cannot grow beyond this many retries (a burst allowance).
const BUDGET_MAX_TOKENS: i64 = 100;
const MILLI: i64 = 1000;

/// Exponential backoff, Dapr's numbers.
pub const EXP_INITIAL: Duration = Duration::from_millis(500);
pub const EXP_MULTIPLIER: f64 = 1.5;
pub const EXP_JITTER: f64 = 0.5;
/// Defaults when a policy leaves them out (Dapr's).
pub const DEFAULT_CONSTANT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
pub enum Backoff {
    Constant(Duration),
    Exponential { max_interval: Duration },
}

/// Status codes a policy retries; empty means "every error".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Codes(Vec<RangeInclusive<u32>>);

impl Codes {
    /// `"429,500-599"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let num = |x: &str| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{part:?} is not a code or a range like 500-599"))
            };
            let r = match part.split_once('-') {
                Some((a, b)) => num(a)?..=num(b)?,
                None => num(part)?..=num(part)?,
            };
            if r.is_empty() {
                return Err(format!("{part:?} is an empty range"));
            }
            out.push(r);
        }
        Ok(Self(out))
    }

    pub fn contains(&self, code: u32) -> bool {
        self.0.iter().any(|r| r.contains(&code))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct RetrySpec {
    pub name: String,
    pub backoff: Backoff,
    /// None: unlimited.
    pub max_retries: Option<u32>,
    pub http_codes: Codes,
    pub grpc_codes: Codes,
}

/// How an attempt ended, for the retry and breaker decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response the policy counts as success.
    Ok,
    /// An HTTP status that is an error (outside 200–399).
    Http(u16),
    /// A gRPC status other than OK, from a trailers-only answer.
    Grpc(u32),
    /// No response: connect failure, reset, or timeout.
    Transport,
}

impl RetrySpec {
    /// Whether this outcome is retried (attempt limits aside).
    pub fn retries(&self, o: Outcome) -> bool {
        match o {
            Outcome::Ok => false,
            Outcome::Transport => true,
            Outcome::Http(c) => self.http_codes.is_empty() || self.http_codes.contains(c.into()),
            Outcome::Grpc(c) => self.grpc_codes.is_empty() || self.grpc_codes.contains(c),
        }
    }

    /// Whether another attempt is allowed after `retries` retries.
    pub fn may_retry(&self, retries: u32) -> bool {
        self.max_retries.is_none_or(|m| retries < m)
    }

    /// The wait before retry number `n` (from 0).
    pub fn delay(&self, n: u32) -> Duration {
        match &self.backoff {
            Backoff::Constant(d) => *d,
            Backoff::Exponential { max_interval } => {
                let base = EXP_INITIAL.as_secs_f64() * EXP_MULTIPLIER.powi(n.min(64) as i32);
                let jitter = 1.0 + EXP_JITTER * (2.0 * fastrand::f64() - 1.0);
                Duration::from_secs_f64((base * jitter).min(max_interval.as_secs_f64()))
            }
        }
    }
}

/// A retry budget for one target app.
#[derive(Debug)]
pub struct Budget {
    /// Thousandths of a retry.
    balance: AtomicI64,
    /// Milliseconds since `epoch` when the floor was last refilled.
    refilled_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            balance: AtomicI64::new(BUDGET_MIN_PER_SEC as i64 * MILLI),
            refilled_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Budget {
    /// An original call: adds its share.
    pub fn deposit(&self) {
        let add = (BUDGET_RATIO * MILLI as f64) as i64;
        self.add_capped(add);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.refill_floor();
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= MILLI).then(|| b - MILLI)
            })
            .is_ok()
    }

    fn refill_floor(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.refilled_ms.load(Ordering::Acquire);
        let elapsed = now.saturating_sub(last);
        // At most one caller refills a given stretch of time.
        if elapsed >= 100
            && self
                .refilled_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.add_capped((BUDGET_MIN_PER_SEC * elapsed) as i64 * MILLI / 1000);
        }
    }

    fn add_capped(&self, add: i64) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + add).min(BUDGET_MAX_TOKENS * MILLI))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backoff: Backoff, max: Option<u32>, http: &str) -> RetrySpec {
        RetrySpec {
            name: "r".into(),
            backoff,
            max_retries: max,
            http_codes: Codes::parse(http).expect("codes"),
            grpc_codes: Codes::default(),
        }
    }

    #[test]
    fn matching_and_limits() {
        let s = spec(
            Backoff::Constant(Duration::from_secs(1)),
            Some(2),
            "429,500-599",
        );
        assert!(s.retries(Outcome::Http(503)) && s.retries(Outcome::Http(429)));
        assert!(!s.retries(Outcome::Http(404)) && !s.retries(Outcome::Ok));
        assert!(
            s.retries(Outcome::Transport),
            "transport errors always retry"
        );
        assert!(s.may_retry(1) && !s.may_retry(2));
        let any = spec(Backoff::Constant(Duration::ZERO), None, "");
        assert!(any.retries(Outcome::Http(404)) && any.retries(Outcome::Grpc(14)));
        assert!(any.may_retry(1_000_000));
        assert!(Codes::parse("5xx").is_err() && Codes::parse("600-500").is_err());
    }

    #[test]
    fn exponential_backoff_grows_with_jitter_and_caps() {
        let s = spec(
            Backoff::Exponential {
                max_interval: Duration::from_secs(2),
            },
            None,
            "",
        );
        for _ in 0..50 {
            let d0 = s.delay(0).as_secs_f64();
            assert!((0.25..=0.75).contains(&d0), "{d0}");
            let d2 = s.delay(2).as_secs_f64();
            assert!((0.5625..=1.6875).contains(&d2), "{d2}");
            assert!(s.delay(20) <= Duration::from_secs(2));
        }
        assert_eq!(
            spec(Backoff::Constant(Duration::from_millis(7)), None, "").delay(9),
            Duration::from_millis(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_at_a_share_of_calls() {
        let b = Budget::default();
        // The floor's initial allowance.
        let mut free = 0;
        while b.withdraw() {
            free += 1;
        }
        assert_eq!(free, BUDGET_MIN_PER_SEC);
        // 1000 calls in no time earn 200 retries' worth (capped at 100).
        for _ in 0..1000 {
            b.deposit();
        }
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, BUDGET_MAX_TOKENS as u64);
        // 100 calls earn 20.
        for _ in 0..100 {
            b.deposit();
        }
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, 20);
        // Time refills the floor: 10 a second.
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, BUDGET_MIN_PER_SEC);
    }
}

/// The budget never lets more retries through than it was given.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn retries_never_exceed_what_the_budget_holds(ops in prop::collection::vec(any::<bool>(), 0..400)) {
            // All within a few milliseconds: no time-based refill.
            let b = Budget::default();
            let (mut deposits, mut granted) = (0u64, 0u64);
            for deposit in ops {
                if deposit {
                    b.deposit();
                    deposits += 1;
                } else if b.withdraw() {
                    granted += 1;
                }
            }
            let allowed = BUDGET_MIN_PER_SEC as f64 + deposits as f64 * BUDGET_RATIO;
            prop_assert!(granted as f64 <= allowed.floor() + f64::EPSILON,
                "{granted} retries from {deposits} calls (allowed {allowed})");
        }
    }
}
