//! Dapr's time formats for actor timers and reminders (and, with the
//! scheduler, jobs), with the semantics of dapr/kit's `time` package
//! (`../shared/dapr-actors-contract.md` §2.4):
//!
//! - a *period* ([`parse_period`]) is an ISO 8601 duration, optionally
//!   repeated (`PT1S`, `P1DT2H`, `P2W`, `R5/PT1S`, even `R5` alone), or a
//!   Go duration (`1h30m`); zero repetitions (`R0`) is an error;
//! - a *time* ([`parse_time`], for `dueTime` and `ttl`) is an ISO 8601
//!   duration without repetitions or a Go duration, both counted from
//!   `now`, or an RFC 3339 instant.
//!
//! Years, months and days are calendar arithmetic as Go's `AddDate` does
//! it: January 31 plus one month is March 3 (or 2 in a leap year), not an
//! error and not February 28.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::policy::resiliency::parse_duration;

/// A timer's or reminder's period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Period {
    pub years: i32,
    pub months: i32,
    pub days: i32,
    pub duration: Duration,
    /// How many times it fires; `None` is without end.
    pub repeats: Option<u32>,
}

impl Period {
    /// Whether it fires again after the first time (daprd's `HasRepeats`).
    pub fn has_repeats(&self) -> bool {
        self.repeats != Some(0)
            && (self.years != 0 || self.months != 0 || self.days != 0 || !self.duration.is_zero())
    }

    /// The time it fires next after `t`.
    pub fn following(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        add_date(t, self.years, self.months, self.days)?.checked_add(self.duration.try_into().ok()?)
    }
}

/// A value Dapr's time formats do not take; the words are daprd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(String);

/// A period: ISO 8601 (with `Rn/`), else a Go duration.
pub fn parse_period(s: &str) -> Result<Period, TimeError> {
    let p = match iso8601(s) {
        Some(p) => p,
        None => Period {
            duration: parse_duration(s)
                .map_err(|_| TimeError(format!("unsupported duration format: {s}")))?,
            ..Period::default()
        },
    };
    if p.repeats == Some(0) {
        return Err(TimeError("has zero repetitions".into()));
    }
    Ok(p)
}

/// A `dueTime` or `ttl`: a duration from `now` (ISO 8601 without
/// repetitions, or Go), or an RFC 3339 instant.
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, TimeError> {
    let unsupported = || TimeError(format!("unsupported time/duration format: {s}"));
    if let Some(p) = iso8601(s) {
        if p.repeats.is_some() {
            return Err(TimeError("repetitions are not allowed".into()));
        }
        return p.following(now).ok_or_else(unsupported);
    }
    if let Ok(d) = parse_duration(s) {
        return now
            .checked_add(d.try_into().map_err(|_| unsupported())?)
            .ok_or_else(unsupported);
    }
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| unsupported())
}

/// dapr/kit's ISO 8601 reading, quirks included: `Rn` may stand alone,
/// `M` is months before `T` and minutes after it, a number with no unit
/// after it is ignored, and so is a character that is no unit.
fn iso8601(s: &str) -> Option<Period> {
    let b = s.as_bytes();
    let l = b.len();
    if l < 2 {
        return None;
    }
    let mut p = Period::default();
    let mut i = 0;
    if b[0] == b'R' {
        i = 1;
        while i < l && b[i] != b'/' {
            i += 1;
        }
        if i < 2 {
            return None;
        }
        let n: i64 = s[1..i].parse().ok()?;
        p.repeats = Some(u32::try_from(n).ok()?);
        i += 1;
        if i >= l {
            return Some(p);
        }
    }
    if b[i] != b'P' {
        return None;
    }
    i += 1;
    let mut start = i;
    let mut in_time = false;
    let num = |from: usize, to: usize| -> Option<i32> {
        if from == to {
            return None;
        }
        s.get(from..to)?.parse().ok()
    };
    while i < l {
        match b[i] {
            b'T' => {
                if start != i {
                    return None;
                }
                in_time = true;
                start = i + 1;
            }
            b'Y' | b'W' | b'D' if in_time => return None,
            b'H' | b'S' if !in_time => return None,
            b'Y' => {
                p.years = num(start, i)?;
                start = i + 1;
            }
            b'W' => {
                p.days += num(start, i)?.checked_mul(7)?;
                start = i + 1;
            }
            b'D' => {
                p.days += num(start, i)?;
                start = i + 1;
            }
            b'H' => {
                p.duration += Duration::from_secs(3600 * u64::try_from(num(start, i)?).ok()?);
                start = i + 1;
            }
            b'M' if in_time => {
                p.duration += Duration::from_secs(60 * u64::try_from(num(start, i)?).ok()?);
                start = i + 1;
            }
            b'M' => {
                p.months = num(start, i)?;
                start = i + 1;
            }
            b'S' => {
                p.duration += Duration::from_secs(u64::try_from(num(start, i)?).ok()?);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    Some(p)
}

/// Go's `AddDate`: months past December carry into years, and days past
/// the month's end carry into the next month.
fn add_date(t: OffsetDateTime, years: i32, months: i32, days: i32) -> Option<OffsetDateTime> {
    if years == 0 && months == 0 && days == 0 {
        return Some(t);
    }
    let month0 = i64::from(u8::from(t.month())) - 1 + i64::from(months);
    let year = i64::from(t.year()) + i64::from(years) + month0.div_euclid(12);
    let month = time::Month::try_from(u8::try_from(month0.rem_euclid(12) + 1).ok()?).ok()?;
    let first = time::Date::from_calendar_date(i32::try_from(year).ok()?, month, 1).ok()?;
    let day = first.checked_add(time::Duration::days(
        i64::from(t.day()) - 1 + i64::from(days),
    ))?;
    Some(t.replace_date(day))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn period(s: &str) -> Period {
        parse_period(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn iso_periods_read_as_dapr_kit_reads_them() {
        let p = period("R5/P10Y5M3DT30M");
        assert_eq!(
            (p.years, p.months, p.days, p.duration, p.repeats),
            (10, 5, 3, Duration::from_secs(1800), Some(5))
        );
        let p = period("P1MT2H10M3S");
        assert_eq!((p.months, p.duration), (1, Duration::from_secs(7803)));
        assert_eq!(period("P2W").days, 14);
        assert_eq!(period("PT1M").duration, Duration::from_secs(60));
        assert_eq!(period("P1M").months, 1);
        assert_eq!(period("P1M2D").days, 2);
        // `Rn` alone and `Rn/`: repetitions of nothing.
        assert_eq!(period("R5").repeats, Some(5));
        assert!(!period("R5/").has_repeats());
        assert!(!period("P0D").has_repeats());
    }

    #[test]
    fn go_durations_are_periods_too() {
        assert_eq!(period("0h30m0s").duration, Duration::from_secs(1800));
        assert_eq!(period("0h30m0s").repeats, None);
        assert!(period("1s").has_repeats());
    }

    #[test]
    fn what_dapr_refuses_is_refused() {
        for bad in ["", "10D1M", "P", "PM", "PT1D", "P_D", "PTxS", "soon"] {
            assert!(parse_period(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_period("R0/PT1S").err(),
            Some(TimeError("has zero repetitions".into()))
        );
    }

    #[test]
    fn times_count_from_now_or_are_instants() {
        let now = datetime!(2026-01-31 10:00:00 UTC);
        assert_eq!(
            parse_time("0h30m0s", now),
            Ok(datetime!(2026-01-31 10:30:00 UTC))
        );
        assert_eq!(
            parse_time("P1MT2H10M3S", now),
            Ok(datetime!(2026-03-03 12:10:03 UTC)),
            "January 31 plus a month is March 3, as in Go"
        );
        assert_eq!(
            parse_time("2026-12-08T02:40:00+01:00", now),
            Ok(datetime!(2026-12-08 01:40:00 UTC))
        );
        assert_eq!(
            parse_time("R5/PT30M", now).err(),
            Some(TimeError("repetitions are not allowed".into()))
        );
        assert!(parse_time("", now).is_err());
        assert!(parse_time("tomorrow", now).is_err());
    }

    #[test]
    fn the_following_fire_adds_the_calendar_parts() {
        let p = period("P1Y1M");
        let t = datetime!(2024-12-31 00:00:00 UTC);
        // 2025-13-31 is 2026-01-31.
        assert_eq!(p.following(t), Some(datetime!(2026-01-31 00:00:00 UTC)));
        let leap = datetime!(2024-01-31 08:00:00 UTC);
        assert_eq!(
            period("P1M").following(leap),
            Some(datetime!(2024-03-02 08:00:00 UTC))
        );
    }
}
