//! `bindings.cron` (Dapr's type, input): fires on a schedule — 5 fields
//! (`min hour dom month dow`) or 6 with seconds first, `*`, lists, ranges,
//! steps and names (`JAN`, `MON`), `?` for any day, or `@every 15s`,
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`,
//! `@hourly`. Times are UTC. Each fire sends empty data with `timeZone` and
//! `readTimeUTC` metadata and waits for the app's answer; the next fire is
//! the next tick after that answer, so a slow app gets one fire per tick
//! it is ready for — never a burst of missed ones.

use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};
use tokio::sync::mpsc;

use super::{BindingError, Event, InputBinding, Metadata, deliver};
use crate::{BoxFuture, MetadataError, Properties};

/// How far ahead a schedule is searched for its next tick.
const SEARCH_YEARS: i32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Fields {
        seconds: Vec<bool>,
        minutes: Vec<bool>,
        hours: Vec<bool>,
        dom: Vec<bool>,
        months: Vec<bool>,
        dow: Vec<bool>,
        dom_any: bool,
        dow_any: bool,
    },
}

fn field(spec: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(Vec<bool>, bool), String> {
    let mut set = vec![false; hi as usize + 1];
    let any = spec == "*" || spec == "?";
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step 0 in {part:?}"));
        }
        let value = |s: &str| -> Result<u32, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                return Ok(lo + i as u32);
            }
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a number"))
        };
        let (a, b) = match range {
            "*" | "?" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if part.contains('/') => (value(r)?, hi),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        // Sunday is 0 or 7.
        let (a, b) = if hi == 7 { (a, b.min(7)) } else { (a, b) };
        if a < lo || b > hi || a > b {
            return Err(format!("{part:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            set[v as usize] = true;
            v += step;
        }
    }
    if hi == 7 && set[7] {
        set[0] = true;
    }
    Ok((set, any))
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let canned = match s {
            "@yearly" | "@annually" => Some("0 0 0 1 1 *"),
            "@monthly" => Some("0 0 0 1 * *"),
            "@weekly" => Some("0 0 0 * * 0"),
            "@daily" | "@midnight" => Some("0 0 0 * * *"),
            "@hourly" => Some("0 0 * * * *"),
            _ => None,
        };
        if let Some(c) = canned {
            return Self::parse(c);
        }
        if let Some(d) = s.strip_prefix("@every ") {
            let d = crate::util::parse_duration(d.trim())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("@every {d:?} is not a duration (like 15s or 1m30s)"))?;
            return Ok(Self::Every(d));
        }
        let f: Vec<&str> = s.split_whitespace().collect();
        let f: Vec<&str> = match f.len() {
            5 => std::iter::once("0").chain(f).collect(),
            6 => f,
            n => {
                return Err(format!(
                    "{n} fields; a schedule has 5 (min hour dom month dow) or 6 (with seconds first)"
                ));
            }
        };
        const MONTHS: [&str; 12] = [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ];
        const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        let (seconds, _) = field(f[0], 0, 59, &[])?;
        let (minutes, _) = field(f[1], 0, 59, &[])?;
        let (hours, _) = field(f[2], 0, 23, &[])?;
        let (dom, dom_any) = field(f[3], 1, 31, &[])?;
        let (months, _) = field(f[4], 1, 12, &MONTHS)?;
        let (dow, dow_any) = field(f[5], 0, 7, &DAYS)?;
        Ok(Self::Fields {
            seconds,
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_any,
            dow_any,
        })
    }

    /// The first tick strictly after `t` (whole seconds), if one comes
    /// within [`SEARCH_YEARS`].
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let Self::Fields {
            seconds,
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_any,
            dow_any,
        } = self
        else {
            let Self::Every(d) = self else { return None };
            return Some(t + *d);
        };
        let mut c = t.replace_nanosecond(0).ok()? + time::Duration::seconds(1);
        let end_year = c.year() + SEARCH_YEARS;
        let day_ok = |c: &OffsetDateTime| {
            let d = dom[c.day() as usize];
            let w = dow[c.weekday().number_days_from_sunday() as usize];
            match (dom_any, dow_any) {
                (true, true) => true,
                (true, false) => w,
                (false, true) => d,
                // Both given: either matches (Vixie cron).
                (false, false) => d || w,
            }
        };
        while c.year() <= end_year {
            if !months[u8::from(c.month()) as usize] {
                let (y, m) = if c.month() == time::Month::December {
                    (c.year() + 1, time::Month::January)
                } else {
                    (c.year(), c.month().next())
                };
                c = time::Date::from_calendar_date(y, m, 1)
                    .ok()?
                    .midnight()
                    .assume_utc();
                continue;
            }
            if !day_ok(&c) {
                c = (c.date().next_day()?).midnight().assume_utc();
                continue;
            }
            if !hours[c.hour() as usize] {
                c = c.replace_minute(0).ok()?.replace_second(0).ok()? + time::Duration::hours(1);
                continue;
            }
            if !minutes[c.minute() as usize] {
                c = c.replace_second(0).ok()? + time::Duration::minutes(1);
                continue;
            }
            if !seconds[c.second() as usize] {
                c += time::Duration::seconds(1);
                continue;
            }
            return Some(c);
        }
        None
    }
}

pub struct CronBinding {
    schedule: Schedule,
}

impl CronBinding {
    pub fn open(meta: &Properties) -> Result<std::sync::Arc<Self>, MetadataError> {
        let spec = meta.required("schedule")?;
        let schedule = Schedule::parse(spec).map_err(|why| MetadataError {
            field: "schedule".into(),
            why,
        })?;
        Ok(std::sync::Arc::new(Self { schedule }))
    }
}

/// Wall-clock now; tokio time drives the waits (paused in tests).
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().to_offset(UtcOffset::UTC)
}

impl InputBinding for CronBinding {
    fn read(&self, events: mpsc::Sender<Event>) -> BoxFuture<'_, Result<(), BindingError>> {
        Box::pin(async move {
            let mut base = now();
            loop {
                let wait = match &self.schedule {
                    Schedule::Every(d) => *d,
                    s => {
                        let Some(next) = s.next_after(base) else {
                            tracing::warn!("bindings.cron: the schedule never fires again");
                            return Ok(());
                        };
                        Duration::try_from(next - base).unwrap_or(Duration::ZERO)
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = events.closed() => return Ok(()),
                }
                let fired = now();
                let mut md = Metadata::new();
                md.insert("timeZone".into(), "UTC".into());
                md.insert(
                    "readTimeUTC".into(),
                    fired
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                );
                match deliver(&events, bytes::Bytes::new(), md).await {
                    None => return Ok(()),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "bindings.cron: the app did not take a tick")
                    }
                    Some(Ok(())) => {}
                }
                // The next tick after the answer: no burst after a slow one.
                base = match &self.schedule {
                    Schedule::Every(_) => fired,
                    _ => now(),
                };
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(s: &str, t: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(s)
            .expect("parses")
            .next_after(t)
            .expect("fires")
    }

    #[test]
    fn schedules_fire_when_cron_says() {
        let t = datetime!(2026-12-02 21:10:05 UTC);
        assert_eq!(
            next("*/15 * * * * *", t),
            datetime!(2026-12-02 21:10:15 UTC)
        );
        assert_eq!(next("0 * * * *", t), datetime!(2026-12-02 22:00:00 UTC));
        assert_eq!(
            next("30 9 * * MON-FRI", t),
            datetime!(2026-12-03 09:30:00 UTC)
        );
        assert_eq!(next("@daily", t), datetime!(2026-12-03 00:00:00 UTC));
        assert_eq!(next("@hourly", t), datetime!(2026-12-02 22:00:00 UTC));
        assert_eq!(next("0 0 1 JAN *", t), datetime!(2027-01-01 00:00:00 UTC));
        assert_eq!(
            next("0 12 * * 0", t),
            datetime!(2026-12-06 12:00:00 UTC),
            "Sunday as 0"
        );
        assert_eq!(
            next("0 12 * * 7", t),
            datetime!(2026-12-06 12:00:00 UTC),
            "Sunday as 7"
        );
        // Both day fields: either (the 1st, or a Friday).
        assert_eq!(next("0 0 1 * FRI", t), datetime!(2026-12-04 00:00:00 UTC));
        assert_eq!(next("0 0 29 2 *", t), datetime!(2028-02-29 00:00:00 UTC));
        assert_eq!(
            Schedule::parse("@every 1m30s"),
            Ok(Schedule::Every(Duration::from_secs(90)))
        );
        for bad in [
            "* * *",
            "61 * * * *",
            "*/0 * * * *",
            "@every soon",
            "* * * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Schedule::parse("0 0 30 2 *")
                .expect("parses")
                .next_after(t)
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_app_gets_one_fire_per_tick_not_a_burst() {
        let b = CronBinding {
            schedule: Schedule::Every(Duration::from_secs(1)),
        };
        let (tx, mut rx) = mpsc::channel(1);
        let reader = tokio::spawn(async move { b.read(tx).await });
        let t0 = tokio::time::Instant::now();
        let mut fires = Vec::new();
        for _ in 0..3 {
            let ev = rx.recv().await.expect("fires");
            assert!(ev.data.is_empty() && ev.metadata.contains_key("readTimeUTC"));
            fires.push(t0.elapsed().as_millis() as u64);
            // The app takes 2.5 s per tick.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let _ = ev.done.send(Ok(()));
        }
        assert_eq!(fires, [1000, 4500, 8000]);
        // Stops cleanly when the sidecar goes away.
        drop(rx);
        reader.await.expect("joins").expect("ok");
    }
}
