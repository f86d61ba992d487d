//! The worker: consumes calls, runs tasks, reports statuses and results, retries and
//! dead-letters, and shuts down without losing a message.
//!
//! Acknowledgement comes last: a message is acked only after its task finished and the outcome
//! was handed to the notifier, so a crash at any point means redelivery, never loss.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::broker::{Broker, Consumer, Delivery, Notifier};
use crate::context::{ProgressSink, TaskContext, TaskInfo, CURRENT};
use crate::crypto::Keyring;
use crate::envelope::{now_ms, Envelope, Notification, Outcome, Status, PROTOCOL_VERSION};
use crate::error::{Error, Result};
use crate::failure::TaskFailure;
use crate::task::Registry;

/// How long finished results are kept for producers that were not listening: one day, as Celery.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Attempts shorter than this send no `running` status: for them the result follows at once,
/// and the extra notification would cost every call a publish and a decode (Celery, for the
/// same reason, does not track "started" by default).
pub const DEFAULT_RUNNING_STATUS_AFTER: Duration = Duration::from_millis(100);

/// Worker settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Tasks run at once (and the broker prefetch).
    pub concurrency: usize,
    /// How long running tasks may take to finish after a shutdown signal.
    pub grace_period: Duration,
    /// How long final results are kept in the notifier.
    pub result_ttl: Duration,
    /// Bodies over this size are dead-lettered unread.
    pub max_message_size: usize,
    /// An attempt still running after this long gets its `running` status sent; a faster one
    /// only sends its result. Zero sends `running` at the start of every attempt.
    pub running_status_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec!["default".into()],
            concurrency: 16,
            grace_period: Duration::from_secs(30),
            result_ttl: DEFAULT_RESULT_TTL,
            max_message_size: crate::broker::DEFAULT_MAX_MESSAGE_SIZE,
            running_status_after: DEFAULT_RUNNING_STATUS_AFTER,
        }
    }
}

/// What a worker did before it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Calls that ended successfully.
    pub succeeded: u64,
    /// Calls that ended in their final error (retries used up, bad arguments).
    pub failed: u64,
    /// Failed attempts that were scheduled for a retry.
    pub retried: u64,
    /// Messages moved to the dead letters.
    pub dead_lettered: u64,
    /// Messages returned to the broker unfinished at shutdown.
    pub returned: u64,
    /// Messages refused by the keyring (unencrypted, unauthenticated, unknown key, a key not
    /// allowed to call the task) and dead-lettered. Not counted in `dead_lettered`.
    pub refused: u64,
}

/// A worker over broker `B` and notifier `N`.
#[derive(Debug)]
pub struct Worker<B: Broker, N: Notifier> {
    shared: Arc<Shared<B, N>>,
}

#[derive(Debug)]
struct Shared<B, N> {
    broker: B,
    notifier: N,
    registry: Registry,
    config: WorkerConfig,
    keyring: Arc<Keyring>,
}

enum Settle {
    Succeeded,
    Failed,
    Retried,
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

    /// Dead-letters bodies over `n` bytes without decoding them.
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.config_mut().max_message_size = n;
        self
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<WorkerReport> {
        self.run(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes: then takes no new message, gives running tasks the
    /// grace period, returns the unfinished ones to the broker, and returns.
    ///
    /// Dropping this future (aborting the worker) drops every running task and with it its
    /// unsettled delivery, which the broker redelivers.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<WorkerReport> {
        let cfg = &self.shared.config;
        if cfg.queues.is_empty() || cfg.concurrency == 0 {
            return Err(Error::Config(
                "a worker needs at least one queue and a concurrency of at least 1".into(),
            ));
        }
        if self.shared.registry.is_empty() {
            warn!("the worker has no tasks registered: every call will be dead-lettered");
        }
        let mut consumer = self
            .shared
            .broker
            .consume(&cfg.queues, cfg.concurrency)
            .await?;
        info!(
            queues = ?cfg.queues,
            concurrency = cfg.concurrency,
            tasks = ?self.shared.registry.names(),
            "worker started"
        );
        let mut jobs: JoinSet<Settle> = JoinSet::new();
        let mut report = WorkerReport::default();
        tokio::pin!(shutdown);

        loop {
            // Settle the books of finished jobs without waiting; with every slot busy, wait for
            // one to finish. A finished job wakes this loop only when it waits for one.
            while let Some(done) = jobs.try_join_next() {
                tally(&mut report, done);
            }
            if jobs.len() >= cfg.concurrency {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(done) = jobs.join_next() => tally(&mut report, done),
                }
                continue;
            }
            // Only shutdown interrupts a wait for the next message: a consumer's `next` is
            // never dropped half-way for anything else.
            let next = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let shared = self.shared.clone();
                    // Boxed: a job's future is KBs, which tokio would otherwise copy by value
                    // a number of times per task.
                    jobs.spawn(Box::pin(shared.process(delivery)));
                }
                Some(Err(e)) => {
                    error!(error = %e, "consuming failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => {
                    warn!("the consumer closed; the worker stops");
                    break;
                }
            }
        }

        info!(running = jobs.len(), grace = ?cfg.grace_period, "worker stopping: no new messages");
        if let Err(e) = consumer.close().await {
            warn!(error = %e, "closing the consumer failed");
        }
        let grace = tokio::time::sleep(cfg.grace_period);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = jobs.join_next() => match done {
                    Some(done) => tally(&mut report, done),
                    None => break,
                },
                _ = &mut grace => {
                    let n = jobs.len() as u64;
                    warn!(unfinished = n, "grace period over: returning unfinished tasks to the broker");
                    // Aborting drops each task with its unsettled delivery, which puts the
                    // message back on the queue.
                    jobs.abort_all();
                    while jobs.join_next().await.is_some() {}
                    report.returned += n;
                    break;
                }
            }
        }
        drop(consumer);
        info!(?report, "worker stopped");
        Ok(report)
    }
}

fn tally(report: &mut WorkerReport, done: std::result::Result<Settle, tokio::task::JoinError>) {
    match done {
        Ok(Settle::Succeeded) => report.succeeded += 1,
        Ok(Settle::Failed) => report.failed += 1,
        Ok(Settle::Retried) => report.retried += 1,
        Ok(Settle::DeadLettered) => report.dead_lettered += 1,
        Ok(Settle::Returned) => report.returned += 1,
        Ok(Settle::Refused) => report.refused += 1,
        // Task panics are caught inside; this is the worker's own bookkeeping failing.
        Err(e) => error!(error = %e, "a worker job failed"),
    }
}

impl<B: Broker, N: Notifier> ProgressSink for Shared<B, N> {
    fn send(
        self: Arc<Self>,
        channel: String,
        id: crate::envelope::TaskId,
        attempt: u32,
        value: Value,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        let note = Notification::Progress {
            v: PROTOCOL_VERSION,
            id,
            attempt,
            progress: value,
        };
        let payload = self.seal(note.to_bytes());
        Box::pin(async move { self.notifier.publish(&channel, payload).await })
    }
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    async fn process(self: Arc<Self>, delivery: B::Delivery) -> Settle {
        let size = delivery.body().len();
        if size > self.config.max_message_size {
            let reason = format!(
                "message of {size} bytes exceeds the worker's limit of {} bytes",
                self.config.max_message_size
            );
            return self.dead_letter(delivery, reason).await;
        }
        if !self.keyring.is_enabled() && !looks_sealed(delivery.body()) {
            // No keys and a plain body: nothing to open, no copy.
            return match Envelope::from_slice(delivery.body()) {
                Ok(env) => self.run_call(delivery, env, None).await,
                Err(e) => self.dead_letter(delivery, e.to_string()).await,
            };
        }
        let (env, key_id) = match self.keyring.open(delivery.body()) {
            Ok(opened) => match Envelope::from_slice(&opened.plaintext) {
                Ok(env) => (env, opened.key_id),
                Err(e) => return self.dead_letter(delivery, e.to_string()).await,
            },
            Err(e) => {
                let reason = format!("refused by the keyring: {e}");
                return match self.dead_letter(delivery, reason).await {
                    Settle::DeadLettered => Settle::Refused,
                    other => other,
                };
            }
        };
        self.run_call(delivery, env, key_id).await
    }

    /// Runs a decoded call: permissions, expiry, eta, the task, and settling the message.
    async fn run_call(
        self: Arc<Self>,
        delivery: B::Delivery,
        mut env: Envelope,
        key_id: Option<String>,
    ) -> Settle {
        if !self.keyring.may_call(key_id.as_deref(), &env.task) {
            let who = key_id.as_deref().unwrap_or("(unencrypted)");
            let f = TaskFailure::new(
                TaskFailure::FORBIDDEN,
                format!("key `{who}` may not call task `{}`", env.task),
            );
            let reason = f.message.clone();
            self.finish(&env, Outcome::Err(f)).await;
            return match self.dead_letter(delivery, reason).await {
                Settle::DeadLettered => Settle::Refused,
                other => other,
            };
        }
        let now = now_ms();
        if env.expires.is_some_and(|exp| exp <= now) {
            let f = TaskFailure::new(TaskFailure::EXPIRED, "the call expired before it could run");
            self.finish(&env, Outcome::Err(f)).await;
            return self
                .dead_letter(delivery, format!("task {} ({}) expired", env.task, env.id))
                .await;
        }
        if let Some(wait) = env.delay_until_eta(now) {
            // A broker without delays, or a clock ahead of ours: wait out the eta.
            let body = delivery.body().to_vec();
            return match delivery.retry(body, wait).await {
                Ok(()) => Settle::Retried,
                Err(e) => {
                    error!(error = %e, task_id = %env.id, "could not re-delay an early call");
                    Settle::Returned
                }
            };
        }
        let Some(entry) = self.registry.get(&env.task).copied() else {
            let f = TaskFailure::new(
                TaskFailure::UNKNOWN_TASK,
                format!("no task named `{}` in this worker", env.task),
            );
            self.finish(&env, Outcome::Err(f)).await;
            let reason = format!("unknown task `{}`", env.task);
            return self.dead_letter(delivery, reason).await;
        };

        debug!(task = %env.task, task_id = %env.id, attempt = env.attempt, "running");
        // The task takes the arguments; a retry re-reads them from the delivery.
        let args = std::mem::take(&mut env.args);
        let outcome = self.run_reporting_status(&entry, &env, args).await;

        match outcome {
            Ok(value) => {
                if !self.finish(&env, Outcome::Ok(value)).await {
                    return requeue(delivery, &env).await;
                }
                match delivery.ack().await {
                    Ok(()) => Settle::Succeeded,
                    Err(e) => {
                        // The broker will redeliver; the task runs again (at least once).
                        error!(error = %e, task_id = %env.id, "ack failed");
                        Settle::Returned
                    }
                }
            }
            Err(failure) if failure.kind == TaskFailure::BAD_ARGUMENTS => {
                error!(task = %env.task, task_id = %env.id, error = %failure, "arguments do not match the task");
                let reason = format!("task {}: {}", env.task, failure.message);
                self.finish(&env, Outcome::Err(failure)).await;
                self.dead_letter(delivery, reason).await
            }
            Err(failure) if env.attempt < env.max_retries.unwrap_or(entry.options.max_retries) => {
                let retry = env.attempt + 1;
                let delay = entry.options.backoff(retry);
                warn!(task = %env.task, task_id = %env.id, attempt = env.attempt, ?delay, error = %failure, "attempt failed; retrying");
                self.notify(&env, Status::Errored, Some(failure)).await;
                let mut next = match self.reread(delivery.body()) {
                    Ok(next) => next,
                    // It was read once already, so this cannot happen; if it did, the call
                    // must not vanish.
                    Err(e) => {
                        let reason = format!("could not re-read the call to retry it: {e}");
                        return self.dead_letter(delivery, reason).await;
                    }
                };
                next.attempt = retry;
                match delivery.retry(self.seal(next.to_bytes()), delay).await {
                    Ok(()) => Settle::Retried,
                    Err(e) => {
                        error!(error = %e, task_id = %env.id, "could not schedule the retry; the broker will redeliver");
                        Settle::Returned
                    }
                }
            }
            Err(failure) => {
                error!(task = %env.task, task_id = %env.id, attempts = env.attempt + 1, error = %failure, "task failed for good");
                let reason = format!(
                    "task {} failed after {} attempt(s): {failure}",
                    env.task,
                    env.attempt + 1
                );
                if !self.finish(&env, Outcome::Err(failure)).await {
                    return requeue(delivery, &env).await;
                }
                match self.dead_letter(delivery, reason).await {
                    Settle::DeadLettered => Settle::Failed,
                    other => other,
                }
            }
        }
    }

    /// Runs the task, sending `running` once it has run `running_status_after`. The status goes
    /// out alongside the run, never before it: the task does not wait a round trip to start.
    async fn run_reporting_status(
        self: &Arc<Self>,
        entry: &crate::task::TaskEntry,
        env: &Envelope,
        args: serde_json::Map<String, Value>,
    ) -> std::result::Result<Value, TaskFailure> {
        let after = self.config.running_status_after;
        let run = self.run_task(entry, env, args);
        if env.reply_to.is_none() {
            return run.await;
        }
        if after.is_zero() {
            let ((), outcome) = tokio::join!(self.notify(env, Status::Running, None), run);
            return outcome;
        }
        tokio::pin!(run);
        tokio::select! {
            biased;
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(after) => {
                let ((), outcome) =
                    tokio::join!(self.notify(env, Status::Running, None), &mut run);
                outcome
            }
        }
    }

    /// Encrypts an outgoing payload when a key is configured.
    fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        if self.keyring.is_enabled() {
            self.keyring.seal_binary(&plain)
        } else {
            plain
        }
    }

    /// Opens and decodes a delivery's body again (for a retry, which needs the arguments the
    /// task consumed).
    fn reread(&self, body: &[u8]) -> Result<Envelope> {
        if !self.keyring.is_enabled() && !looks_sealed(body) {
            Envelope::from_slice(body)
        } else {
            Envelope::from_slice(&self.keyring.open(body)?.plaintext)
        }
    }

    async fn run_task(
        self: &Arc<Self>,
        entry: &crate::task::TaskEntry,
        env: &Envelope,
        args: serde_json::Map<String, Value>,
    ) -> std::result::Result<Value, TaskFailure> {
        let ctx = TaskContext {
            info: TaskInfo {
                id: env.id.clone(),
                name: env.task.clone(),
                attempt: env.attempt,
                max_retries: env.max_retries.unwrap_or(entry.options.max_retries),
            },
            reply_to: env.reply_to.clone(),
            sink: self.clone(),
        };
        let run = CURRENT.scope(ctx, AssertUnwindSafe(entry.run(args)).catch_unwind());
        let caught = match entry.options.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(caught) => caught,
                Err(_) => {
                    return Err(TaskFailure::new(
                        TaskFailure::TIMEOUT,
                        format!("the run took longer than its time limit of {limit:?}"),
                    ))
                }
            },
            None => run.await,
        };
        caught.unwrap_or_else(|payload| Err(TaskFailure::from_panic(payload)))
    }

    /// Sends a status notification; a failure to notify is logged, never fatal.
    async fn notify(&self, env: &Envelope, status: Status, error: Option<TaskFailure>) {
        let Some(channel) = &env.reply_to else { return };
        let note = Notification::Status {
            v: PROTOCOL_VERSION,
            id: env.id.clone(),
            status,
            attempt: env.attempt,
            error,
        };
        if let Err(e) = self
            .notifier
            .publish(channel, self.seal(note.to_bytes()))
            .await
        {
            warn!(error = %e, task_id = %env.id, %status, "could not publish a status");
        }
    }

    /// Hands the final outcome to the notifier, retrying briefly. `false` if it could not.
    async fn finish(&self, env: &Envelope, outcome: Outcome) -> bool {
        let Some(channel) = &env.reply_to else {
            return true;
        };
        let payload = self.seal(
            Notification::Result {
                v: PROTOCOL_VERSION,
                id: env.id.clone(),
                attempt: env.attempt,
                outcome,
            }
            .to_bytes(),
        );
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=4 {
            match self
                .notifier
                .publish_final(channel, &env.id, payload.clone(), self.config.result_ttl)
                .await
            {
                Ok(()) => return true,
                Err(e) if attempt < 4 => {
                    warn!(error = %e, task_id = %env.id, "could not publish the result; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
                Err(e) => error!(error = %e, task_id = %env.id, "could not publish the result"),
            }
        }
        false
    }

    async fn dead_letter(&self, delivery: B::Delivery, reason: String) -> Settle {
        error!(queue = %delivery.queue(), %reason, "dead-lettering a message");
        match delivery.dead_letter(reason).await {
            Ok(()) => Settle::DeadLettered,
            Err(e) => {
                error!(error = %e, "dead-lettering failed; the broker will redeliver");
                Settle::Returned
            }
        }
    }
}

async fn requeue<D: Delivery>(delivery: D, env: &Envelope) -> Settle {
    error!(task_id = %env.id, "the outcome could not be stored: returning the call to the broker");
    if let Err(e) = delivery.requeue().await {
        error!(error = %e, task_id = %env.id, "requeue failed; the broker will redeliver");
    }
    Settle::Returned
}

/// Whether a body is in one of the encrypted forms (which a keyring must open or refuse).
fn looks_sealed(body: &[u8]) -> bool {
    body.starts_with(b"ivy1.") || body.starts_with(b"ivy1:") || body.starts_with(b"$aes-256-cbc$")
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    info!("shutdown signal received");
}
