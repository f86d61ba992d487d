//! The pause between attempts to reach a broker that is down: exponential, from
//! [`MIN_BACKOFF`] up to a ceiling. The retry loops stay with their backends (they have
//! deadlines and report as they go); this owns only the sequence of pauses.

use std::time::Duration;

/// The first pause, and the shortest a connection attempt is given.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff without jitter: there are few clients per broker here.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(MIN_BACKOFF)
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        d
    }
}
