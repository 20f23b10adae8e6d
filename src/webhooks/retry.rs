//! When to try a failed delivery again: a schedule of delays, jittered, and `Retry-After`.
//!
//! Pure: the caller supplies the random draw and the clock, so the rules are unit-tested.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The delays between attempts. A delivery gets `delays.len() + 1` attempts in all; when the
/// last one fails, retries are exhausted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// How far a delay is spread either way, so receivers recovering from an outage are not hit by
/// every subscription at the same instant.
const JITTER: f64 = 0.2;

/// The longest `Retry-After` honoured; a receiver asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("a retry schedule is a comma-separated list of delays like `1s,5s,30s,5m,1h`; {0:?} is not a delay")]
    BadDelay(String),
    #[error("a retry schedule lists at most 50 delays")]
    TooLong,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Result<Self, ScheduleError> {
        if delays.len() > 50 {
            return Err(ScheduleError::TooLong);
        }
        Ok(Self { delays })
    }

    /// Parses `1s,5s,30s,5m,1h` (units `ms`, `s`, `m`, `h`); an empty text means no retries.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| parse_duration(s).ok_or_else(|| ScheduleError::BadDelay(s.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    /// How many attempts a delivery gets in all.
    pub fn attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The wait after failed attempt number `failed` (1-based), or `None` when that was the
    /// last. `draw` is uniform in `[0, 1)`: the delay is spread by ±20% around the schedule.
    /// A receiver's `Retry-After` lengthens the wait (it knows when it will be back), up to
    /// [`MAX_RETRY_AFTER`]; it never shortens it, or a receiver answering `Retry-After: 1`
    /// through a long outage would use up every attempt in seconds.
    pub fn next_delay(
        &self,
        failed: u32,
        retry_after: Option<Duration>,
        draw: f64,
    ) -> Option<Duration> {
        let scheduled = self.delays.get(failed.checked_sub(1)? as usize)?;
        let factor = 1.0 + JITTER * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        let jittered = scheduled.mul_f64(factor);
        Some(match retry_after {
            Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
            None => jittered,
        })
    }
}

impl Default for RetrySchedule {
    /// Roughly ×5 each time, about 5½ hours in all: 1s, 5s, 30s, 2m, 10m, 30m, 1h, 4h.
    fn default() -> Self {
        let secs = [1, 5, 30, 120, 600, 1800, 3600, 4 * 3600];
        Self {
            delays: secs.into_iter().map(Duration::from_secs).collect(),
        }
    }
}

impl std::fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .delays
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

/// A `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the
/// past means "now"; anything unreadable is ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn schedules_parse_with_units() {
        let s = RetrySchedule::parse("100ms, 2s,3m,1h").unwrap();
        assert_eq!(s.attempts(), 5);
        assert_eq!(s.next_delay(4, None, 0.5), Some(Duration::from_secs(3600)));
        assert_eq!(
            RetrySchedule::parse("5x"),
            Err(ScheduleError::BadDelay("5x".into()))
        );
        assert_eq!(RetrySchedule::parse("").unwrap().attempts(), 1);
    }

    #[test]
    fn the_last_attempt_has_no_next_delay() {
        let s = RetrySchedule::parse("1s,2s").unwrap();
        assert!(s.next_delay(2, None, 0.5).is_some());
        assert_eq!(s.next_delay(3, None, 0.5), None);
        assert_eq!(s.next_delay(3, Some(Duration::from_secs(1)), 0.5), None);
        assert_eq!(s.next_delay(0, None, 0.5), None);
    }

    #[test]
    fn retry_after_lengthens_the_wait_but_never_shortens_it() {
        let s = RetrySchedule::parse("10ms,10s").unwrap();
        assert_eq!(
            s.next_delay(1, Some(Duration::from_secs(2)), 0.5),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            s.next_delay(2, Some(Duration::from_secs(1)), 0.5),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            s.next_delay(1, Some(Duration::from_secs(10 * 24 * 3600)), 0.0),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    proptest! {
        /// The jittered delay stays within ±20% of the schedule, and grows with the schedule.
        #[test]
        fn jitter_stays_within_bounds(draw in 0.0f64..1.0, failed in 1u32..=8) {
            let s = RetrySchedule::default();
            let base = s.delays[failed as usize - 1];
            let d = s.next_delay(failed, None, draw).unwrap();
            prop_assert!(d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2));
            if failed < 8 {
                let next = s.next_delay(failed + 1, None, draw).unwrap();
                prop_assert!(next > d);
            }
        }
    }
}
