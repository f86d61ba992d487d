//! What a worker tells operators while it runs: task events on the notifier's events channel
//! (when turned on) and its own announcement, refreshed while it runs and withdrawn at a
//! graceful stop (PROTOCOL.md §8, §9). Both go out from background tasks: a job only queues
//! an event (never waits for Redis), and neither ever holds up a call. Events are best effort:
//! when the notifier is down or slower than the worker, they are dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::settle::{Dead, Settlement};
use super::{Settle, Shared, WorkerReport};
use crate::broker::{Broker, Delivery, Notifier};
use crate::envelope::now_ms;
use crate::events::{EventKind, TaskEvent, WorkerInfo, EVENTS_CHANNEL, EVENTS_VERSION};

/// Events waiting to be published; beyond this they are dropped (and counted).
const EVENT_BUFFER: usize = 16_384;
/// Events published at once (pipelined on the notifier's connection).
const EVENT_BATCH: usize = 128;

/// The worker's side of events and announcements, in [`Shared`].
#[derive(Debug)]
pub(super) struct Telemetry {
    /// `<host>-<pid>-<random>`.
    pub(super) worker_id: String,
    /// Set when the worker runs with events on.
    events: OnceLock<mpsc::Sender<Vec<u8>>>,
    /// Set when the worker serves metrics.
    #[cfg(feature = "metrics")]
    metrics: OnceLock<std::sync::Arc<super::metrics::Metrics>>,
    dropped: AtomicU64,
    /// Counts so far, kept by the jobs themselves (the run loop may be waiting for a message).
    pub(super) counts: LiveCounts,
    started_at: u64,
}

/// A worker's counts while it runs; [`LiveCounts::report`] makes the [`WorkerReport`].
#[derive(Debug, Default)]
pub(super) struct LiveCounts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    delayed: AtomicU64,
    dead_lettered: AtomicU64,
    returned: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
    duplicates: AtomicU64,
    running: AtomicU64,
}

impl LiveCounts {
    /// Calls taken and not yet settled.
    pub(super) fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    pub(super) fn started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a job that settled its message as `settle`.
    pub(super) fn settled(&self, settle: &Settle) {
        let counter = match settle {
            Settle::Succeeded => &self.succeeded,
            Settle::Failed => {
                self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                &self.failed
            }
            Settle::Retried => &self.retried,
            Settle::Delayed => &self.delayed,
            Settle::DeadLettered(_) => &self.dead_lettered,
            Settle::Returned => &self.returned,
            Settle::Refused(_) => &self.refused,
            Settle::Cancelled => &self.cancelled,
            Settle::Duplicate => &self.duplicates,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts `n` jobs aborted at the end of the grace period (their messages go back).
    pub(super) fn aborted(&self, n: u64) {
        self.returned.fetch_add(n, Ordering::Relaxed);
        self.running.fetch_sub(n, Ordering::Relaxed);
    }

    pub(super) fn report(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            delayed: get(&self.delayed),
            dead_lettered: get(&self.dead_lettered),
            returned: get(&self.returned),
            refused: get(&self.refused),
            cancelled: get(&self.cancelled),
            duplicates: get(&self.duplicates),
        }
    }
}

impl Telemetry {
    pub(super) fn new() -> Self {
        let tail = crate::envelope::new_task_id();
        let tail = &tail[tail.len().saturating_sub(8)..];
        Telemetry {
            worker_id: format!("{}-{}-{tail}", host_name(), std::process::id()),
            events: OnceLock::new(),
            #[cfg(feature = "metrics")]
            metrics: OnceLock::new(),
            dropped: AtomicU64::new(0),
            counts: LiveCounts::default(),
            started_at: now_ms(),
        }
    }

    /// Whether anything takes events: publishing or metrics (so callers build them only then).
    pub(super) fn events_on(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics.get().is_some() {
            return true;
        }
        self.events.get().is_some()
    }

    /// Whether the worker publishes task events (not only metrics).
    pub(super) fn publishes_events(&self) -> bool {
        self.events.get().is_some()
    }
}

/// The host's name, for worker ids: the kernel's, else `$HOSTNAME`, else `unknown`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// What a job saw of a run, for its last event.
#[derive(Debug, Default)]
pub(super) struct RunNote {
    /// How long the attempt ran.
    pub(super) ran: Option<Duration>,
    /// The attempt's failure: kind and message.
    pub(super) failure: Option<(String, String)>,
}

impl RunNote {
    /// Notes `failure` when events are on (`template` is set).
    pub(super) fn failed(&mut self, template: Option<&TaskEvent>, failure: &crate::TaskFailure) {
        if template.is_some() {
            self.failure = Some((failure.kind.clone(), failure.message.clone()));
        }
    }
}

/// The event that says how a job settled its message, from the job's `received` event.
pub(super) fn settled_event(mut event: TaskEvent, settle: &Settle, note: RunNote) -> TaskEvent {
    event.at = now_ms();
    event.wait_ms = None;
    event.event = match settle {
        Settle::Succeeded => EventKind::Succeeded,
        Settle::Failed => EventKind::Failed,
        Settle::Retried => EventKind::Retried,
        Settle::Delayed => EventKind::Delayed,
        Settle::DeadLettered(_) => EventKind::DeadLettered,
        Settle::Returned => EventKind::Returned,
        Settle::Refused(_) => EventKind::Refused,
        Settle::Cancelled => EventKind::Cancelled,
        Settle::Duplicate => EventKind::Duplicate,
    };
    event.run_ms = note.ran.map(|d| d.as_secs_f64() * 1000.0);
    if let Some((kind, message)) = note.failure {
        event.error_kind = Some(kind);
        event.message = Some(message);
    }
    if let Settle::DeadLettered(reason) | Settle::Refused(reason) = settle {
        event.message = Some(reason.clone());
    }
    event
}

/// The background tasks of one run; [`Running::stop`] flushes and withdraws.
pub(super) struct Running {
    close: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Queues `event` for publishing (sealed like notifications); drops it when the buffer is
    /// full. Does nothing when events are off.
    pub(super) fn emit(&self, mut event: TaskEvent) {
        // Later events are made from the `received` one: only it carries the arguments.
        if event.event != EventKind::Received {
            event.args = None;
        }
        #[cfg(feature = "metrics")]
        if let Some(metrics) = self.telemetry.metrics.get() {
            metrics.observe(&event);
        }
        let Some(tx) = self.telemetry.events.get() else {
            return;
        };
        if tx.try_send(self.seal(event.to_bytes())).is_err()
            && self.telemetry.dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
            warn!("task events are produced faster than the notifier takes them: dropping some (counted in the announcement)");
        }
    }

    /// Dead-letters (or, `refused`, refuses) a message whose call could not be read, with its
    /// event.
    pub(super) async fn unread(
        &self,
        delivery: B::Delivery,
        reason: String,
        refused: bool,
    ) -> Settle {
        let event = self.telemetry.events_on().then(|| {
            TaskEvent::new(
                EventKind::DeadLettered,
                &self.telemetry.worker_id,
                delivery.queue(),
            )
        });
        let dead = if refused {
            Dead::Refused
        } else {
            Dead::Unusable
        };
        let settle = self
            .settle(delivery, "", Settlement::DeadLetter(reason, dead))
            .await;
        if let Some(event) = event {
            self.emit(settled_event(event, &settle, RunNote::default()));
        }
        settle
    }

    /// Starts publishing events (if on) and announcing this worker (if on).
    pub(super) fn start_telemetry(self: &std::sync::Arc<Self>) -> Running {
        let mut running = Running {
            close: Vec::new(),
            tasks: Vec::new(),
        };
        if self.config.events {
            let (tx, rx) = mpsc::channel(EVENT_BUFFER);
            let (close, closed) = oneshot::channel();
            if self.telemetry.events.set(tx).is_ok() {
                running.close.push(close);
                running.tasks.push(tokio::spawn(publish_events(
                    self.notifier.clone(),
                    rx,
                    closed,
                )));
            }
        }
        if !self.config.announce_every.is_zero() {
            let (close, closed) = oneshot::channel();
            running.close.push(close);
            running
                .tasks
                .push(tokio::spawn(self.clone().announce(closed)));
        }
        running
    }

    /// Binds the metrics address and serves `/metrics` until the returned task is aborted.
    #[cfg(feature = "metrics")]
    pub(super) async fn start_metrics(
        self: &std::sync::Arc<Self>,
    ) -> crate::Result<Option<JoinHandle<()>>> {
        let Some(addr) = self.config.metrics else {
            return Ok(None);
        };
        let listener = super::metrics::bind(addr).await?;
        let metrics = std::sync::Arc::new(super::metrics::Metrics::new());
        let _ = self.telemetry.metrics.set(metrics.clone());
        let shared = self.clone();
        let render = std::sync::Arc::new(move || {
            let t = &shared.telemetry;
            metrics.render(
                t.counts.running.load(Ordering::Relaxed),
                t.dropped.load(Ordering::Relaxed),
            )
        });
        info!(%addr, "serving the worker's metrics at /metrics");
        Ok(Some(tokio::spawn(super::metrics::serve(listener, render))))
    }

    /// This worker's announcement as of now.
    fn info(&self) -> WorkerInfo {
        let counts = &self.telemetry.counts;
        WorkerInfo {
            v: EVENTS_VERSION,
            id: self.telemetry.worker_id.clone(),
            host: host_name(),
            pid: std::process::id(),
            queues: self.queues(),
            tasks: self.registry.names().into_iter().map(Into::into).collect(),
            task_queues: self.task_queues(),
            concurrency: self.config.concurrency,
            started_at: self.telemetry.started_at,
            seen_at: now_ms(),
            ttl_ms: u64::try_from(self.announce_ttl().as_millis()).unwrap_or(u64::MAX),
            events: self.config.events,
            events_dropped: self.telemetry.dropped.load(Ordering::Relaxed),
            running: counts.running.load(Ordering::Relaxed),
            broker_node: self.broker.connected_node(),
            counts: counts.report(),
        }
    }

    /// Three refresh intervals: one missed refresh does not make a live worker vanish.
    fn announce_ttl(&self) -> Duration {
        self.config.announce_every * 3
    }

    /// Announces this worker every `announce_every` until `closed`, then withdraws it.
    async fn announce(self: std::sync::Arc<Self>, mut closed: oneshot::Receiver<()>) {
        let id = self.telemetry.worker_id.clone();
        let mut failing = false;
        loop {
            match self
                .notifier
                .announce(&id, self.seal(self.info().to_bytes()), self.announce_ttl())
                .await
            {
                Ok(()) if failing => {
                    failing = false;
                    info!(worker = %id, "announcing the worker works again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    warn!(worker = %id, error = %e, "could not announce the worker; it may look absent to `ivy workers` until this works again");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.announce_every) => {}
                _ = &mut closed => break,
            }
        }
        if let Err(e) = self.notifier.withdraw(&id).await {
            warn!(worker = %id, error = %e, "could not withdraw the worker's announcement; it expires by itself");
        }
    }
}

/// Publishes queued events in batches until `closed`, then what is still queued.
async fn publish_events<N: Notifier>(
    notifier: N,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    let mut failing = false;
    loop {
        let open = tokio::select! {
            n = rx.recv_many(&mut batch, EVENT_BATCH) => n > 0,
            _ = &mut closed => false,
        };
        if !open {
            // Stopping: what is queued still goes out.
            while let Ok(p) = rx.try_recv() {
                batch.push(p);
            }
        }
        let sent = futures_util::future::join_all(
            batch.drain(..).map(|p| notifier.publish(EVENTS_CHANNEL, p)),
        )
        .await;
        match sent.into_iter().find_map(|r| r.err()) {
            Some(e) if !failing => {
                failing = true;
                warn!(error = %e, "could not publish task events; dropping them until the notifier answers");
            }
            None if failing => {
                failing = false;
                info!("publishing task events works again");
            }
            _ => {}
        }
        if !open {
            return;
        }
    }
}

impl Running {
    /// Publishes the events still queued and withdraws the announcement (each within 5 s).
    pub(super) async fn stop(self) {
        for close in self.close {
            let _ = close.send(());
        }
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                warn!("task events or the worker's announcement did not finish within 5 s");
            }
        }
    }
}
