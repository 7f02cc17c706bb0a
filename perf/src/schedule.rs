//! The open-loop schedule: request `i` is due at `start + i / rate`, whatever
//! happened to earlier requests. Latency is measured from that due time, so a
//! stalled server shows up as latency instead of silently slowing the load
//! (no coordinated omission).
//!
//! Tokio's timers have millisecond resolution, which at 1000 req/s would add
//! up to a millisecond of the generator's own lateness to every sample. The
//! [`Pacer`] sleeps on a timerfd instead: nanosecond resolution, and it wakes
//! the runtime's own epoll, so pacing costs no extra thread and no
//! cross-thread wake-up per request (a pacer thread spent half the
//! generator's CPU on context switches).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// Due times at a fixed rate.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    interval_ns: f64,
}

impl Schedule {
    /// `rate` requests per second, the first due at `start`.
    pub fn new(start: Instant, rate: f64) -> Self {
        Self {
            start,
            interval_ns: 1e9 / rate.max(1e-9),
        }
    }

    /// The due time of request `i`.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }
}

/// How long to sleep before a request due at `due`; none when it is already
/// due or overdue (a late pacer catches up at once and keeps the due times).
pub fn wait_for(due: Instant, now: Instant) -> Option<Duration> {
    due.checked_duration_since(now).filter(|d| !d.is_zero())
}

/// A tick this close before its due time counts as on time (the periodic
/// timer and the schedule round the interval differently, by nanoseconds).
const EARLY_SLACK: Duration = Duration::from_micros(2);

/// Yields due times on schedule until `end`.
pub struct Pacer {
    timer: AsyncFd<Timer>,
    schedule: Schedule,
    next: u64,
    end: Instant,
}

/// A timerfd that tokio can watch.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Pacer {
    /// Must be called inside a tokio runtime.
    pub fn new(schedule: Schedule, end: Instant) -> io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // Armed once, periodic and aligned with the due times: no syscall per
        // request to re-arm it. (Rust's Instant is CLOCK_MONOTONIC on Linux.)
        let first = schedule
            .due(0)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let interval = Duration::from_nanos((schedule.interval_ns as u64).max(1));
        fd.set(
            Expiration::IntervalDelayed(
                TimeSpec::from_duration(first),
                TimeSpec::from_duration(interval),
            ),
            TimerSetTimeFlags::empty(),
        )?;
        Ok(Self {
            // AsyncFd::new is deprecated because it cannot know whether the fd is
            // owned; here it is: Timer owns the TimerFd for as long as the
            // AsyncFd lives, which is the condition `register` asks for.
            #[allow(deprecated)]
            timer: AsyncFd::new(Timer(fd))?,
            schedule,
            next: 0,
            end,
        })
    }

    /// Waits until the next request is due and returns its due time; `None`
    /// once the schedule reaches `end`. A late caller gets overdue times at
    /// once. Cancel-safe: the schedule only advances when a due time is
    /// returned, so a `select!` that drops this future loses no request.
    pub async fn next(&mut self) -> io::Result<Option<Instant>> {
        let due = self.schedule.due(self.next);
        if due >= self.end {
            return Ok(None);
        }
        // Expirations left over from a late stretch wake us early; wait
        // again until the tick that belongs to `due`.
        while wait_for(due, Instant::now()).is_some_and(|d| d > EARLY_SLACK) {
            let mut ready = self.timer.readable().await?;
            // One read takes every expiration so far, so after a successful
            // read the fd cannot be readable before the next tick: clear
            // readiness ourselves instead of paying a second read for EAGAIN.
            // EAGAIN means the wake-up was spurious.
            if let Ok(r) = ready.try_io(|t| t.get_ref().0.wait().map_err(io::Error::from)) {
                r?;
                ready.clear_ready();
            }
        }
        self.next += 1;
        Ok(Some(due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        for i in 0..5u64 {
            assert_eq!(s.due(i) - t0, Duration::from_millis(i));
        }
        let s = Schedule::new(t0, 3.0);
        assert_eq!(s.due(3) - t0, Duration::from_secs(1));
    }

    #[test]
    fn a_late_pacer_does_not_sleep_and_keeps_due_times() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 100.0);
        let late = t0 + Duration::from_millis(55);
        // Requests 1..=5 are overdue at 55 ms: no sleeping, due times unchanged.
        for i in 1..=5u64 {
            assert_eq!(wait_for(s.due(i), late), None);
            assert_eq!(s.due(i) - t0, Duration::from_millis(10 * i));
        }
        assert_eq!(wait_for(s.due(6), late), Some(Duration::from_millis(5)));
    }

    #[tokio::test]
    async fn the_pacer_yields_every_due_time_on_time_then_stops() {
        let t0 = Instant::now();
        let mut p =
            Pacer::new(Schedule::new(t0, 2000.0), t0 + Duration::from_millis(50)).expect("timerfd");
        let mut got = Vec::new();
        while let Some(due) = p.next().await.expect("pacer") {
            assert!(Instant::now() + EARLY_SLACK >= due, "never early");
            got.push(due);
        }
        assert_eq!(got.len(), 100);
        assert!(
            got.windows(2)
                .all(|w| w[1] - w[0] == Duration::from_micros(500))
        );
    }
}
