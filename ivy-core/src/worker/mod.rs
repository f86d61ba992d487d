//! The worker: consumes calls, runs tasks, reports statuses and results, retries and
//! dead-letters, and shuts down without losing a message.
//!
//! Acknowledgement comes last: a message is acked only after its task finished and the outcome
//! was handed to the notifier, so a crash at any point means redelivery, never loss.
//!
//! This file owns the [`Worker`] and its builder; the run loop is in `run.rs`, one delivery's
//! way from body to settlement in `execute.rs`, what goes back to the producer and the broker
//! in `outcome.rs`, the settings in `config.rs` and the shutdown signal in `shutdown.rs`; the
//! tests are in `tests.rs`, those about keys in `key_tests.rs`.

mod config;
mod execute;
#[cfg(test)]
mod key_tests;
mod outcome;
mod run;
mod shutdown;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{Broker, Notifier};
use crate::crypto::Keyring;
use crate::error::Result;
use crate::task::Registry;

pub use config::{
    WorkerConfig, WorkerReport, DEFAULT_PREFETCH_MULTIPLIER, DEFAULT_RESULT_TTL,
    DEFAULT_RUNNING_STATUS_AFTER,
};
pub use shutdown::shutdown_signal;

/// A worker over broker `B` and notifier `N`.
#[derive(Debug)]
pub struct Worker<B: Broker, N: Notifier> {
    shared: Arc<Shared<B, N>>,
}

/// What every job of one worker shares: it outlives the run loop while jobs still settle.
#[derive(Debug)]
struct Shared<B, N> {
    broker: B,
    notifier: N,
    registry: Registry,
    config: WorkerConfig,
    keyring: Arc<Keyring>,
    /// Set once the worker stops taking messages: a job still trying to hand an outcome to
    /// the notifier then passes its call on with the outcome instead of holding it.
    stopping: watch::Sender<bool>,
}

/// How a job settled its message, for the [`WorkerReport`].
enum Settle {
    Succeeded,
    /// Failed for good and dead-lettered.
    Failed,
    Retried,
    /// Put back until its eta.
    Delayed,
    DeadLettered,
    Returned,
    Refused,
}

impl<B: Broker, N: Notifier> Worker<B, N> {
    /// A worker running every `#[task]` linked into the binary, with default settings.
    /// Two tasks with one name are an error here, before anything is consumed.
    pub fn new(broker: B, notifier: N) -> Result<Self> {
        Ok(Self::with_registry(broker, notifier, Registry::linked()?))
    }

    /// A worker running the tasks of `registry`.
    pub fn with_registry(broker: B, notifier: N, registry: Registry) -> Self {
        Worker {
            shared: Arc::new(Shared {
                broker,
                notifier,
                registry,
                config: WorkerConfig::default(),
                keyring: Arc::new(Keyring::new()),
                stopping: watch::Sender::new(false),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut WorkerConfig {
        &mut Arc::get_mut(&mut self.shared)
            .expect("a worker is configured before it runs")
            .config
    }

    /// Opens calls and seals notifications with `keyring`. With keys configured, unencrypted
    /// or unauthenticated calls are dead-lettered unless the keyring allows plain text.
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("a worker is configured before it runs")
            .keyring = Arc::new(keyring);
        self
    }

    /// Consumes these queues (default: `default`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config_mut().queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Runs at most `n` tasks at once (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config_mut().concurrency = n;
        self
    }

    /// Asks the broker for `n` × the concurrency deliveries ahead, where it keeps them safe
    /// (AMQP; default 8, where Celery has 4). 1 takes only as many as run at once: better
    /// for long tasks, which would otherwise hold calls other workers could run.
    pub fn prefetch_multiplier(mut self, n: usize) -> Self {
        self.config_mut().prefetch_multiplier = n;
        self
    }

    /// Time running tasks get to finish after a shutdown signal (default 30 s).
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.config_mut().grace_period = d;
        self
    }

    /// How long results are kept for late producers (default one day).
    pub fn result_ttl(mut self, d: Duration) -> Self {
        self.config_mut().result_ttl = d;
        self
    }

    /// Sends the `running` status of attempts still running after `d` (default 100 ms);
    /// `Duration::ZERO` sends it at the start of every attempt.
    pub fn running_status_after(mut self, d: Duration) -> Self {
        self.config_mut().running_status_after = d;
        self
    }

    /// Dead-letters bodies over `n` bytes without decoding them (default 16 MiB, which no
    /// producer exceeds by default: see
    /// [`Capabilities::default_message_limit`](crate::broker::Capabilities::default_message_limit)).
    /// A call over the limit whose envelope is plain JSON still gets its final error
    /// (`ivy.too_large`).
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.config_mut().max_message_size = n;
        self
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }
}
