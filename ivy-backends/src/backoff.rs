//! The pause between attempts to reach a broker that is down: exponential with jitter, on
//! `backon`. The retry loops stay with their backends (they have deadlines and report as they
//! go); this owns only the sequence of pauses.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first pause before jitter, and the shortest a connection attempt is given.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause before jitter. Jitter adds up to as much again, so no pause is longer
/// than 5 s, the longest one before jitter was added.
const MAX_BACKOFF: Duration = Duration::from_millis(2_500);

/// Pauses doubling from [`MIN_BACKOFF`], each stretched by a random part of itself so that
/// clients cut off by one outage do not all come back at the same moment.
#[derive(Debug)]
pub(crate) struct Backoff(ExponentialBackoff);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(
            ExponentialBuilder::new()
                .with_min_delay(MIN_BACKOFF)
                .with_max_delay(MAX_BACKOFF)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    pub(crate) fn next(&mut self) -> Duration {
        // Without a limit on attempts or total delay the sequence never ends.
        self.0.next().unwrap_or(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_within_bounds() {
        let mut backoff = Backoff::new();
        let first = backoff.next();
        assert!((MIN_BACKOFF..2 * MIN_BACKOFF).contains(&first), "{first:?}");
        for _ in 0..20 {
            let pause = backoff.next();
            assert!(pause >= MIN_BACKOFF && pause < 2 * MAX_BACKOFF, "{pause:?}");
        }
        let late = backoff.next();
        assert!(late >= MAX_BACKOFF, "{late:?}");
    }
}
