//! The worker's settings ([`WorkerConfig`] and its defaults) and what it reports when it stops
//! ([`WorkerReport`]).

use std::time::Duration;

/// How long finished results are kept for producers that were not listening: one day, as Celery.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Attempts shorter than this send no `running` status: for them the result follows at once,
/// and the extra notification would cost every call a publish and a decode (Celery, for the
/// same reason, does not track "started" by default).
pub const DEFAULT_RUNNING_STATUS_AFTER: Duration = Duration::from_millis(100);

/// The default of [`WorkerConfig::prefetch_multiplier`]. Measured on RabbitMQ (issue 12, W1
/// and W2, concurrency 16, paired runs): against 1, a multiplier of 4 gave 1.4–1.65× the
/// throughput and 8 gave 1.9–2.6×, with 17–37 % less RabbitMQ CPU per task; 16 gained a little
/// more, but holds twice as many calls away from other workers (and in memory).
pub const DEFAULT_PREFETCH_MULTIPLIER: usize = 8;

/// Worker settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Queues to consume. Empty (the default): the default queue and the queue of every
    /// registered task, so that no registered task's calls wait for a worker that never comes.
    pub queues: Vec<String>,
    /// What the queue `default` stands for (default `default`): the queue of tasks that name
    /// none, consumed in its place, and where their follow-ups (workflow steps) go. Set it as
    /// the producers' [`Producer::with_default_queue`](crate::Producer::with_default_queue).
    pub default_queue: String,
    /// Tasks run at once. A worker whose concurrency exceeds the broker's prefetch maximum
    /// (AMQP: 65,535) refuses to start.
    pub concurrency: usize,
    /// The broker prefetch is `concurrency` × this (at most the broker's maximum), where the
    /// broker keeps deliveries held ahead safe
    /// ([`Capabilities::prefetch_ahead`](crate::broker::Capabilities::prefetch_ahead): AMQP);
    /// elsewhere it is `concurrency`. Deliveries held ahead wait for a free slot: a slot
    /// that frees finds the next call already here instead of waiting a round trip for
    /// RabbitMQ to send it. At least 1; default [`DEFAULT_PREFETCH_MULTIPLIER`].
    pub prefetch_multiplier: usize,
    /// How long running tasks may take to finish after a shutdown signal.
    pub grace_period: Duration,
    /// How long final results are kept in the notifier.
    pub result_ttl: Duration,
    /// Bodies over this size are dead-lettered unread. Default 16 MiB
    /// ([`DEFAULT_MAX_MESSAGE_SIZE`](crate::broker::DEFAULT_MAX_MESSAGE_SIZE)), the most a
    /// producer sends by default: the broker's limit may be lower, never the worker's.
    pub max_message_size: usize,
    /// An attempt still running after this long gets its `running` status sent; a faster one
    /// only sends its result. Zero sends `running` at the start of every attempt.
    pub running_status_after: Duration,
    /// Publish task events on the notifier ([`EVENTS_CHANNEL`](crate::events::EVENTS_CHANNEL)).
    pub events: bool,
    /// With events on: the `received` event carries the call's arguments.
    pub event_args: bool,
    /// How often the worker refreshes its announcement (kept three times as long); zero
    /// announces nothing.
    pub announce_every: Duration,
    /// Where the worker serves Prometheus metrics (feature `metrics`); `None`: nowhere.
    #[cfg(feature = "metrics")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// How often a worker refreshes its announcement by default (kept 30 s).
pub const DEFAULT_ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: Vec::new(),
            default_queue: "default".into(),
            concurrency: 16,
            prefetch_multiplier: DEFAULT_PREFETCH_MULTIPLIER,
            grace_period: Duration::from_secs(30),
            result_ttl: DEFAULT_RESULT_TTL,
            max_message_size: crate::broker::DEFAULT_MAX_MESSAGE_SIZE,
            running_status_after: DEFAULT_RUNNING_STATUS_AFTER,
            events: false,
            event_args: false,
            announce_every: DEFAULT_ANNOUNCE_EVERY,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl WorkerConfig {
    /// The prefetch a worker asks of a broker with `caps`.
    pub(crate) fn prefetch(&self, caps: &crate::broker::Capabilities) -> usize {
        if caps.prefetch_ahead {
            self.concurrency
                .saturating_mul(self.prefetch_multiplier.max(1))
                .min(caps.max_prefetch)
                .max(self.concurrency)
        } else {
            self.concurrency
        }
    }
}

/// What a worker did before it stopped; also what a running worker announces so far
/// ([`WorkerInfo::counts`](crate::events::WorkerInfo::counts), PROTOCOL.md §9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Calls that ended successfully.
    pub succeeded: u64,
    /// Calls whose task failed for good (retries used up) and that were dead-lettered; each is
    /// counted in `dead_lettered` too.
    pub failed: u64,
    /// Failed attempts that were scheduled for a retry.
    pub retried: u64,
    /// Calls that arrived before their eta and were put back until then (not retries).
    pub delayed: u64,
    /// Messages moved to the dead letters, whatever the reason: calls that failed for good,
    /// bodies that could not be read, unknown tasks, arguments that do not fit, expired calls.
    /// Refused ones are counted in `refused` instead.
    pub dead_lettered: u64,
    /// Messages returned to the broker unsettled: unfinished at shutdown, or passed on with
    /// an outcome the notifier would not take (stopping, or held 10 min), or whose settling
    /// failed.
    pub returned: u64,
    /// Messages refused by the keyring (unencrypted, unauthenticated, unknown key, a key not
    /// allowed to call the task) and dead-lettered. Not counted in `dead_lettered`.
    pub refused: u64,
    /// Calls cancelled (dropped before they ran, or stopped while they ran) and acked.
    pub cancelled: u64,
    /// Copies of calls that run once (chain steps, hooks, chord callbacks, ticks,
    /// `Call::once`) recognised by their id and acked without running again.
    pub duplicates: u64,
}

/// One line: `succeeded: 3, failed: 0, retried: 1, delayed: 0, dead_lettered: 0, returned: 0,
/// refused: 0, cancelled: 0, duplicates: 0`.
impl std::fmt::Display for WorkerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "succeeded: {}, failed: {}, retried: {}, delayed: {}, dead_lettered: {}, returned: {}, refused: {}, cancelled: {}, duplicates: {}",
            self.succeeded,
            self.failed,
            self.retried,
            self.delayed,
            self.dead_lettered,
            self.returned,
            self.refused,
            self.cancelled,
            self.duplicates
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Capabilities;

    #[test]
    fn prefetch_is_concurrency_times_the_multiplier_where_the_broker_keeps_it_safe() {
        let cfg = WorkerConfig::default();
        assert_eq!(cfg.prefetch_multiplier, DEFAULT_PREFETCH_MULTIPLIER);
        let ahead = Capabilities::new(1).with_prefetch_ahead(true);
        assert_eq!(cfg.prefetch(&ahead), 16 * DEFAULT_PREFETCH_MULTIPLIER);
        // Capped by the broker, never below the concurrency.
        assert_eq!(cfg.prefetch(&ahead.with_max_prefetch(20)), 20);
        assert_eq!(cfg.prefetch(&ahead.with_max_prefetch(10)), 16);
        // Where held messages' leases run out (SQS), only what runs is taken.
        assert_eq!(cfg.prefetch(&Capabilities::new(1)), 16);
        let one = WorkerConfig {
            prefetch_multiplier: 1,
            ..WorkerConfig::default()
        };
        assert_eq!(one.prefetch(&ahead), 16);
    }
}
