//! When a schedule ticks: a fixed interval aligned on the Unix epoch, or a cron expression in
//! a time zone. Every replica computes the same tick times, which is what lets them claim each
//! tick by its time.

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::error::{Error, Result};

/// What to do about the ticks missed while no replica ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missed {
    /// Forget them: the next call goes out at the next tick (the default, as cron does).
    #[default]
    Skip,
    /// On start, publish the last tick that should have gone out before now if no replica
    /// published it, once however many were missed; then go on with the next tick.
    RunOnce,
}

/// When a schedule ticks: [`Schedule::every`] or [`Schedule::cron`].
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
    pub(super) missed: Missed,
}

#[derive(Clone, Debug)]
enum Kind {
    Every(Duration),
    Cron {
        cron: Box<Cron>,
        expression: String,
        zone: TimeZone,
    },
}

impl Schedule {
    /// Every `interval`, at the multiples of `interval` since the Unix epoch (so every
    /// replica ticks at the same times: `every(1 min)` ticks at each whole minute). At least
    /// 1 ms, in whole milliseconds.
    pub fn every(interval: Duration) -> Result<Self> {
        if interval.as_millis() == 0 {
            return Err(Error::Schedule {
                schedule: format!("every {interval:?}"),
                reason: "the interval must be at least 1 ms".into(),
            });
        }
        Ok(Schedule {
            kind: Kind::Every(interval),
            missed: Missed::Skip,
        })
    }

    /// At the times a cron `expression` matches, in UTC: five fields (minute hour day month
    /// weekday) or six with seconds first (`"*/2 * * * * *"`: every 2 s). See
    /// [`in_zone`](Self::in_zone) for local time.
    pub fn cron(expression: &str) -> Result<Self> {
        let cron = Cron::from_str(expression).map_err(|e| Error::Schedule {
            schedule: expression.to_owned(),
            reason: format!("not a valid cron expression: {e}"),
        })?;
        Ok(Schedule {
            kind: Kind::Cron {
                cron: Box::new(cron),
                expression: expression.to_owned(),
                zone: TimeZone::UTC,
            },
            missed: Missed::Skip,
        })
    }

    /// Reads a cron schedule's fields in the IANA time zone `zone` (`"Europe/Paris"`), from
    /// the system's time zone database. An unknown zone is an error naming the schedule.
    pub fn in_zone(mut self, zone: &str) -> Result<Self> {
        match &mut self.kind {
            Kind::Cron {
                expression,
                zone: z,
                ..
            } => {
                *z = TimeZone::get(zone).map_err(|e| Error::Schedule {
                    schedule: format!("{expression} in {zone}"),
                    reason: format!("unknown time zone `{zone}`: {e}"),
                })?;
                Ok(self)
            }
            Kind::Every(d) => Err(Error::Schedule {
                schedule: format!("every {d:?}"),
                reason: "only cron schedules have a time zone".into(),
            }),
        }
    }

    /// Sets what happens to ticks missed while no replica ran (default [`Missed::Skip`]).
    pub fn missed(mut self, policy: Missed) -> Self {
        self.missed = policy;
        self
    }

    /// How the schedule reads, for its default name and logs: `every 30s`, `cron 0 * * * * *`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Every(d) => format!("every {}ms", d.as_millis()),
            Kind::Cron {
                expression, zone, ..
            } => match zone.iana_name() {
                Some(name) if name != "UTC" => format!("cron {expression} in {name}"),
                _ => format!("cron {expression}"),
            },
        }
    }

    /// The first tick strictly after `after_ms` (Unix milliseconds).
    pub(super) fn next_after(&self, after_ms: u64) -> Option<u64> {
        match &self.kind {
            Kind::Every(d) => {
                let step = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                (after_ms / step).checked_add(1)?.checked_mul(step)
            }
            Kind::Cron { cron, zone, .. } => {
                let at = zoned(after_ms, zone)?;
                let next = cron.find_next_occurrence(&at, false).ok()?;
                u64::try_from(next.timestamp().as_millisecond()).ok()
            }
        }
    }

    /// The last tick at or before `at_ms`.
    pub(super) fn last_at_or_before(&self, at_ms: u64) -> Option<u64> {
        match &self.kind {
            Kind::Every(d) => {
                let step = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                Some(at_ms / step * step)
            }
            Kind::Cron { cron, zone, .. } => {
                let at = zoned(at_ms, zone)?;
                let prev = cron.find_previous_occurrence(&at, true).ok()?;
                u64::try_from(prev.timestamp().as_millisecond()).ok()
            }
        }
    }
}

fn zoned(ms: u64, zone: &TimeZone) -> Option<Zoned> {
    let ts = Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()?;
    Some(ts.to_zoned(zone.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_align_on_the_epoch() {
        let s = Schedule::every(Duration::from_secs(30)).unwrap();
        assert_eq!(s.next_after(0), Some(30_000));
        assert_eq!(s.next_after(29_999), Some(30_000));
        assert_eq!(s.next_after(30_000), Some(60_000));
        assert_eq!(s.last_at_or_before(59_999), Some(30_000));
        assert!(Schedule::every(Duration::ZERO).is_err());
    }

    #[test]
    fn cron_ticks_in_their_zone() {
        let s = Schedule::cron("*/2 * * * * *").unwrap();
        assert_eq!(s.next_after(1_000), Some(2_000));
        assert_eq!(s.next_after(2_000), Some(4_000));
        assert_eq!(s.last_at_or_before(3_999), Some(2_000));
        // 09:00 in Paris on 2026-01-15 is 08:00 UTC.
        let paris = Schedule::cron("0 0 9 * * *")
            .unwrap()
            .in_zone("Europe/Paris")
            .unwrap();
        let noon_before = 1_768_392_000_000; // 2026-01-14T12:00:00Z
        assert_eq!(paris.next_after(noon_before), Some(1_768_464_000_000));
        assert_eq!(paris.describe(), "cron 0 0 9 * * * in Europe/Paris");
    }

    #[test]
    fn bad_input_names_the_expression() {
        let e = Schedule::cron("61 * * * *").unwrap_err().to_string();
        assert!(e.contains("`61 * * * *`"), "{e}");
        let e = Schedule::cron("0 * * * *")
            .unwrap()
            .in_zone("Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mars/Olympus") && e.contains("0 * * * *"), "{e}");
    }
}
