//! The worker: consumes calls, runs tasks, reports statuses and results, retries and
//! dead-letters, and shuts down without losing a message.
//!
//! Acknowledgement comes last: a message is acked only after its task finished and the outcome
//! was handed to the notifier, so a crash at any point means redelivery, never loss.
//!
//! This file owns the [`Worker`] and its builder; the run loop is in `run.rs`, one delivery's
//! way from body to a decision in `execute.rs`, what goes back to the producer in
//! `outcome.rs`, how a message is settled (one `Settlement`, carried out in one place) in
//! `settle.rs`, calls that run once in `once.rs`, the settings in `config.rs` and the shutdown
//! signal in `shutdown.rs`; the tests are in `tests.rs`, those about keys in `key_tests.rs`,
//! those under faults in `once_tests.rs`, those about concurrency slots in `slot_tests.rs`.

mod cancel;
mod config;
mod execute;
#[cfg(test)]
mod flow_tests;
mod flows;
mod freed;
#[cfg(test)]
mod key_tests;
mod limits;
#[cfg(feature = "metrics")]
mod metrics;
mod once;
#[cfg(test)]
mod once_tests;
mod outcome;
mod run;
mod settle;
mod shutdown;
#[cfg(test)]
mod slot_tests;
mod telemetry;
#[cfg(test)]
mod telemetry_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{Broker, Notifier};
use crate::crypto::Keyring;
use crate::error::Result;
use crate::state::States;
use crate::task::Registry;

pub use config::{
    WorkerConfig, WorkerReport, DEFAULT_ANNOUNCE_EVERY, DEFAULT_PREFETCH_MULTIPLIER,
    DEFAULT_RESULT_TTL, DEFAULT_RUNNING_STATUS_AFTER,
};
pub use freed::SLOT_FREED_CHANNEL;
pub use limits::DEFAULT_SLOT_LEASE;
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
    /// Events, the announcement and the counts it shows.
    telemetry: telemetry::Telemetry,
    /// Live cancellations and the calls in progress.
    cancels: cancel::Cancellations,
    /// What `State<T>` parameters are filled from.
    states: Arc<States>,
    /// The worker's slots, and the lease of cluster concurrency slots.
    limits: limits::Limits,
}

impl<B, N> Shared<B, N> {
    /// The queues this worker consumes: those configured, or else `default` and every
    /// registered task's queue.
    fn queues(&self) -> Vec<String> {
        if !self.config.queues.is_empty() {
            return self.config.queues.clone();
        }
        let default = &self.config.default_queue;
        let mut rest: Vec<String> = (self.registry.queues().into_iter())
            .map(|q| self.queue_of(q))
            .filter(|q| q != default)
            .map(Into::into)
            .collect();
        rest.sort_unstable();
        rest.dedup();
        std::iter::once(default.clone()).chain(rest).collect()
    }

    /// The queue a task's own queue `q` stands for: `default` is the configured default queue.
    fn queue_of<'a>(&'a self, q: &'a str) -> &'a str {
        if q == "default" {
            &self.config.default_queue
        } else {
            q
        }
    }

    /// Each registered task's queue, with `default` resolved.
    fn task_queues(&self) -> std::collections::BTreeMap<String, String> {
        let mut map = self.registry.task_queues();
        for q in map.values_mut() {
            if q == "default" {
                q.clone_from(&self.config.default_queue);
            }
        }
        map
    }

    fn new(broker: B, notifier: N, registry: Registry, keyring: Keyring) -> Self {
        Shared {
            broker,
            notifier,
            registry,
            config: WorkerConfig::default(),
            keyring: Arc::new(keyring),
            stopping: watch::Sender::new(false),
            telemetry: telemetry::Telemetry::new(),
            cancels: cancel::Cancellations::default(),
            states: Arc::default(),
            limits: limits::Limits::default(),
        }
    }
}

/// How a job settled its message, for the [`WorkerReport`].
enum Settle {
    Succeeded,
    /// Failed for good and dead-lettered.
    Failed,
    Retried,
    /// Put back until its eta.
    Delayed,
    /// Dead-lettered with this reason.
    DeadLettered(String),
    Returned,
    /// Refused by the keyring and dead-lettered with this reason.
    Refused(String),
    /// Cancelled: dropped before it ran, or stopped while it ran; acked.
    Cancelled,
    /// A copy of a call that runs once, which ran already: acked without running.
    Duplicate,
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
            shared: Arc::new(Shared::new(broker, notifier, registry, Keyring::new())),
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

    /// Gives tasks a value of type `T` (a database pool, a client): a task parameter of type
    /// `ivy::State<T>` receives a clone of it. Several types may be given; giving a type again
    /// replaces its value. A call of a task whose state is missing fails at once with
    /// `ivy.missing_state` and is dead-lettered.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("a worker is configured before it runs");
        Arc::get_mut(&mut shared.states)
            .expect("states are shared only once the worker runs")
            .insert(value);
        self
    }

    /// Stands `queue` for the queue `default`: tasks that name no queue are consumed there,
    /// and their workflow follow-ups are sent there. Give producers the same
    /// ([`Producer::with_default_queue`](crate::Producer::with_default_queue)): one line per
    /// process instead of `queue = "…"` on every task.
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.config_mut().default_queue = queue.into();
        self
    }

    /// Consumes these queues, and only these. By default a worker consumes `default` and the
    /// queue of every task it has registered; with a list given here, it warns at start about
    /// each registered task whose queue the list leaves out (its calls wait for another
    /// worker). An empty list is the default.
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

    /// Publishes task events (received, started, succeeded, failed, retried, dead-lettered,
    /// refused, …) on the notifier's events channel (default off; PROTOCOL.md §8).
    pub fn events(mut self, on: bool) -> Self {
        self.config_mut().events = on;
        self
    }

    /// With events on ([`Worker::events`]), the `received` event of each call carries its
    /// arguments, so the dashboard shows them on the call's page while it is queued or
    /// running (default off: arguments may hold what should not travel on an events channel;
    /// with keys, events are sealed like results and read only with the keys).
    pub fn event_args(mut self, on: bool) -> Self {
        self.config_mut().event_args = on;
        self
    }

    /// Refreshes this worker's announcement every `d` (default 10 s; kept three times as
    /// long, so a killed worker disappears within 3 `d`); `Duration::ZERO` announces nothing.
    pub fn announce_every(mut self, d: Duration) -> Self {
        self.config_mut().announce_every = d;
        self
    }

    /// Serves Prometheus metrics at `http://<addr>/metrics` while the worker runs (feature
    /// `metrics`): tasks by task and outcome, run and wait time histograms, in flight,
    /// retries, dead letters, refusals. The address is bound when the worker starts: a taken
    /// port fails [`run`](Self::run) before anything is consumed.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, addr: std::net::SocketAddr) -> Self {
        self.config_mut().metrics = Some(addr);
        self
    }

    /// The lease of a task's `max_concurrency` slot and of the run claim of a call that runs
    /// once (default 30 s), renewed every third of it while the task runs: a killed worker's
    /// slots and claims come back after one lease. A run whose lease cannot be renewed before
    /// it runs out is stopped and its call put back (PROTOCOL.md §13).
    pub fn slot_lease(mut self, d: Duration) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("a worker is configured before it runs")
            .limits
            .lease = d.max(Duration::from_millis(30));
        self
    }

    /// The longest pause between two tries of a call waiting for a task's `max_concurrency`
    /// slot when no slot is heard of being given back (default 500 ms; the first pause is a
    /// 25th of it, then each doubles). Workers announce every slot they give back
    /// (PROTOCOL.md §10), so a waiting call usually asks again at once; the pause bounds the
    /// wait when a notice is missed.
    pub fn slot_poll(mut self, d: Duration) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("a worker is configured before it runs")
            .limits
            .poll = d.max(Duration::from_millis(25));
        self
    }

    /// This worker's id in events and announcements (`<host>-<pid>-<random>`).
    pub fn id(&self) -> &str {
        &self.shared.telemetry.worker_id
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }
}
