//! The worker's loop: takes deliveries while a slot is free, hands each to a job, tallies the
//! finished ones, and on shutdown drains the running jobs within the grace period.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::limits::SLOT;
use super::{Worker, WorkerReport};
use crate::broker::{Broker, Consumer, Notifier};
use crate::error::{Error, Result};

/// A consumer failure this long after the last one counts as a new outage, not one in a row.
const QUIET_SPELL: Duration = Duration::from_secs(10);

impl<B: Broker, N: Notifier> Worker<B, N> {
    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<WorkerReport> {
        self.run(super::shutdown_signal()).await
    }

    /// Runs until `shutdown` completes: then takes no new message, gives running tasks the
    /// grace period, returns the unfinished ones to the broker, and returns.
    ///
    /// Dropping this future (aborting the worker) drops every running task and with it its
    /// unsettled delivery, which the broker redelivers.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<WorkerReport> {
        let cfg = &self.shared.config;
        if cfg.concurrency == 0 || cfg.prefetch_multiplier == 0 {
            return Err(Error::Config(
                "a worker needs a concurrency and a prefetch multiplier of at least 1".into(),
            ));
        }
        let queues = self.shared.queues();
        let caps = self.shared.broker.capabilities();
        let max_prefetch = caps.max_prefetch;
        if cfg.concurrency > max_prefetch {
            return Err(Error::Config(format!(
                "a concurrency of {} exceeds the broker's prefetch maximum of {max_prefetch}: \
                 run more workers, or set the concurrency to at most {max_prefetch}",
                cfg.concurrency
            )));
        }
        if self.shared.registry.is_empty() {
            warn!(
                "the worker has no tasks registered: every call will be dead-lettered. A \
                 #[task] registers itself only when it is linked into the worker's binary, \
                 and the linker leaves out a crate of tasks that nothing in the binary uses: \
                 use one of its items from main, or build the worker with \
                 Worker::with_registry(.., Registry::new().register::<my_task>()?)"
            );
        }
        let outside: Vec<String> = self
            .shared
            .task_queues()
            .into_iter()
            .filter(|(_, q)| !queues.contains(q))
            .map(|(t, q)| format!("{t} (queue {q})"))
            .collect();
        if !outside.is_empty() {
            warn!(
                tasks = %outside.join(", "),
                queues = %queues.join(", "),
                "this worker does not consume the queue of some of its tasks: their calls wait \
                 for another worker. Add the queues to Worker::queues, or leave it out to \
                 consume every registered task's queue"
            );
        }
        #[cfg(feature = "metrics")]
        let metrics = self.shared.start_metrics().await?;
        // Before consuming: a call cancelled while no worker ran must be seen.
        let cancel_watch = self.shared.start_cancel_watch().await;
        let slot_watch = self.shared.start_slot_watch();
        let consumed = self
            .shared
            .broker
            .consume(&queues, cfg.prefetch(&caps))
            .await;
        #[cfg(feature = "metrics")]
        if let (Err(_), Some(serving)) = (&consumed, &metrics) {
            serving.abort();
        }
        if consumed.is_err() {
            cancel_watch.abort();
            if let Some(w) = &slot_watch {
                w.abort();
            }
        }
        let mut consumer = consumed?;
        let telemetry = self.shared.start_telemetry();
        info!(
            worker = %self.shared.telemetry.worker_id,
            queues = %queues.join(", "),
            concurrency = cfg.concurrency,
            prefetch = cfg.prefetch(&caps),
            tasks = %self.shared.registry.names().join(", "),
            events = cfg.events,
            "worker started"
        );
        let mut jobs: JoinSet<()> = JoinSet::new();
        // When consuming last failed: a first failure after a quiet spell is asked about again
        // at once (a consumer reconnects in `next`, to another node where the URL names
        // several), failures in a row a second apart.
        let mut failed_at: Option<std::time::Instant> = None;
        let slots = self.shared.limits.slots.clone();
        slots.add_permits(cfg.concurrency);
        tokio::pin!(shutdown);

        loop {
            // Settle the books of finished jobs without waiting; with every slot busy, wait for
            // one to finish. A finished job wakes this loop only when it waits for one.
            while let Some(done) = jobs.try_join_next() {
                log_failed_job(done);
            }
            // A job holds its slot (a permit) while it runs; one waiting for a task's limit
            // gives it back meanwhile, and takes one again after (limits.rs). So the loop
            // waits for a free slot without holding it while it waits for a message: a slot
            // it held idle would keep a waiting job from ever resuming.
            if slots.available_permits() == 0 {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(done) = jobs.join_next() => log_failed_job(done),
                    _ = slots.acquire() => {}
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
                    // Usually at once; a job resuming after its wait may have taken the slot.
                    let slot = tokio::select! {
                        biased;
                        // Dropped unsettled, the delivery goes back to the broker.
                        _ = &mut shutdown => break,
                        slot = slots.clone().acquire_owned() => slot,
                    };
                    let Ok(slot) = slot else { break };
                    let shared = self.shared.clone();
                    // Boxed: a job's future is KBs, which tokio would otherwise copy by value
                    // a number of times per task.
                    // Each job counts itself, so the worker's announcement is current while
                    // this loop waits for a message.
                    shared.telemetry.counts.started();
                    let slot = RefCell::new(Some(slot));
                    jobs.spawn(SLOT.scope(
                        slot,
                        Box::pin(async move {
                            let settle = shared.process(delivery).await;
                            shared.telemetry.counts.settled(&settle);
                        }),
                    ));
                }
                Some(Err(e)) => {
                    let in_a_row = failed_at.is_some_and(|t| t.elapsed() < QUIET_SPELL);
                    failed_at = Some(std::time::Instant::now());
                    if in_a_row {
                        error!(error = %e, "consuming failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } else {
                        error!(error = %e, "consuming failed; retrying");
                    }
                }
                None => {
                    warn!("the consumer closed; the worker stops");
                    break;
                }
            }
        }

        // Jobs that finished while the loop waited for a message are still in the set.
        while let Some(done) = jobs.try_join_next() {
            log_failed_job(done);
        }
        // Calls taken and not yet settled (running, waiting for a limit, or settling).
        let running = self.shared.telemetry.counts.running();
        info!(running, grace = ?cfg.grace_period, "worker stopping: no new messages");
        // Jobs holding an outcome the notifier would not take pass their calls on now.
        self.shared.stopping.send_replace(true);
        if let Err(e) = consumer.close().await {
            warn!(error = %e, "closing the consumer failed");
        }
        let grace = tokio::time::sleep(cfg.grace_period);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = jobs.join_next() => match done {
                    Some(done) => log_failed_job(done),
                    None => break,
                },
                _ = &mut grace => {
                    let n = jobs.len() as u64;
                    warn!(unfinished = n, "grace period over: returning unfinished tasks to the broker");
                    // Aborting drops each task with its unsettled delivery, which puts the
                    // message back on the queue.
                    jobs.abort_all();
                    while jobs.join_next().await.is_some() {}
                    self.shared.telemetry.counts.aborted(n);
                    break;
                }
            }
        }
        drop(consumer);
        cancel_watch.abort();
        if let Some(w) = &slot_watch {
            w.abort();
        }
        let report = self.shared.telemetry.counts.report();
        telemetry.stop().await;
        #[cfg(feature = "metrics")]
        if let Some(serving) = metrics {
            serving.abort();
        }
        info!(%report, "worker stopped");
        Ok(report)
    }
}

/// Jobs catch task panics themselves: a failed join is the worker's own bookkeeping failing.
fn log_failed_job(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        error!(error = %e, "a worker job failed");
    }
}
