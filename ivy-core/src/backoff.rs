//! The pauses between attempts to reach a service that is down, for every retry loop in Ivy
//! (the worker handing an outcome to the notifier, AMQP reconnects): exponential, each pause
//! stretched by a random 0–100 % of itself so that clients cut off by one outage do not all
//! come back at the same moment. On `backon`; the loops stay with their callers (they have
//! deadlines and report as they go), each choosing its bounds.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Pauses from `first`, multiplied by `factor` each time up to `longest` (both before jitter),
/// as a `backon` builder for `Retryable::retry`. Set the number of tries on it.
pub const fn exponential(first: Duration, factor: f32, longest: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_factor(factor)
        .with_max_delay(longest)
        .with_jitter()
}

/// An endless sequence of [`exponential`] pauses that double, for loops that retry until a
/// deadline of their own.
#[derive(Debug)]
pub struct Backoff {
    pauses: ExponentialBackoff,
    longest: Duration,
}

impl Backoff {
    /// Pauses doubling from `first` to `longest`, before jitter.
    pub fn doubling(first: Duration, longest: Duration) -> Self {
        Backoff {
            pauses: exponential(first, 2.0, longest).without_max_times().build(),
            longest,
        }
    }

    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        // Without a limit on attempts or total delay the sequence never ends.
        self.pauses.next().unwrap_or(self.longest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_within_bounds() {
        let (first, longest) = (Duration::from_millis(100), Duration::from_millis(2_500));
        let mut backoff = Backoff::doubling(first, longest);
        let pause = backoff.next_pause();
        assert!((first..2 * first).contains(&pause), "{pause:?}");
        for _ in 0..20 {
            let pause = backoff.next_pause();
            assert!(pause >= first && pause < 2 * longest, "{pause:?}");
        }
        let late = backoff.next_pause();
        assert!(late >= longest, "{late:?}");
    }
}
