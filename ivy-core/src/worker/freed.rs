//! Freed concurrency slots, told across workers (PROTOCOL.md §10), so that a call waiting for
//! a task's cluster slot asks again as soon as one is given back instead of at its next poll.
//!
//! A worker that gives a slot back publishes the task's name on [`SLOT_FREED_CHANNEL`]; every
//! worker whose calls may wait for a slot subscribes to it and wakes its calls waiting for that
//! task, which ask again at once. A notice only wakes: whether a slot is free is still decided
//! by the notifier's atomic [`acquire_slot`](crate::Coordination::acquire_slot), so a notice
//! lost, late, doubled or sent by anyone changes when a call asks, never how many run at once.
//! Waiting calls still ask on their own as before (20 ms doubling to 500 ms by default): a
//! notice that never comes (no subscription yet, a gap, a failed publish, a killed holder whose
//! slot came back by lease expiry) costs at most one such pause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::Shared;
use crate::backoff::Backoff;
use crate::broker::{Broker, Incoming, Notifier, Subscription};
use crate::sync::lock;

/// The longest a freed-slot notice is tried for.
const NOTICE_WAIT: Duration = Duration::from_secs(5);

/// The channel on which a worker that gave a slot back publishes the task's name (UTF-8).
pub const SLOT_FREED_CHANNEL: &str = "ivy:slots:freed";

/// Per task that calls of this worker waited for, a counter bumped whenever one of its slots
/// may have come free: a waiting call wakes when it changes.
#[derive(Debug, Default)]
pub(super) struct Freed {
    by_task: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Freed {
    /// A receiver that changes when a slot of `task` may have come free from now on. Taken
    /// before asking for a slot, so a slot freed between the answer and the wait is not missed.
    pub(super) fn watch(&self, task: &str) -> watch::Receiver<u64> {
        lock(&self.by_task)
            .entry(task.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes the calls waiting for a slot of `task` (none: nothing kept, so a notice about
    /// another deployment's task costs no memory).
    pub(super) fn wake(&self, task: &str) {
        if let Some(tx) = lock(&self.by_task).get(task) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every waiting call: notices may have been missed.
    fn wake_all(&self) {
        for tx in lock(&self.by_task).values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Starts the subscription to freed slots where calls wait in the worker for one: some
    /// task has a `max_concurrency` and the broker keeps held deliveries safe (elsewhere such a
    /// call goes back to the broker). Abort the handle to stop it.
    pub(super) fn start_slot_watch(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let limited = self.registry.names().iter().any(|name| {
            self.registry
                .get(name)
                .is_some_and(|e| e.options.max_concurrency.is_some())
        });
        (limited && self.broker.capabilities().prefetch_ahead)
            .then(|| tokio::spawn(self.clone().watch_freed_slots()))
    }

    async fn watch_freed_slots(self: Arc<Self>) {
        let mut pauses = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let mut sub = match self.notifier.subscribe(SLOT_FREED_CHANNEL).await {
                Ok(sub) => sub,
                Err(e) => {
                    warn!(error = %e, "could not subscribe to freed concurrency slots; calls waiting for one ask every while meanwhile");
                    tokio::time::sleep(pauses.next_pause()).await;
                    continue;
                }
            };
            pauses = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
            // Slots freed while there was no subscription.
            self.limits.freed.wake_all();
            while let Some(incoming) = sub.next().await {
                match incoming {
                    Ok(Incoming::Message(task)) => match std::str::from_utf8(&task) {
                        Ok(task) => self.limits.freed.wake(task),
                        Err(_) => debug!("ignoring a malformed freed-slot notice"),
                    },
                    Ok(Incoming::Gap) => self.limits.freed.wake_all(),
                    Ok(Incoming::Interrupted) => {}
                    Err(e) => {
                        warn!(error = %e, "the subscription to freed concurrency slots failed")
                    }
                }
            }
            warn!("the subscription to freed concurrency slots ended; subscribing again");
            tokio::time::sleep(pauses.next_pause()).await;
        }
    }

    /// Tells the calls waiting for a slot of `task`, here and in every worker, that one may
    /// be free: after giving a slot back, whether or not that answered (a lost answer may have
    /// freed it). The notice is published apart from the call, which does not wait for it;
    /// one that fails or hangs only leaves waiting calls to ask on their own.
    pub(super) fn announce_freed_slot(&self, task: &'static str) {
        self.limits.freed.wake(task);
        let notifier = self.notifier.clone();
        tokio::spawn(async move {
            let publish = notifier.publish(SLOT_FREED_CHANNEL, task.as_bytes().to_vec());
            match tokio::time::timeout(NOTICE_WAIT, publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(task, error = %e, "could not announce a freed concurrency slot; waiting calls find it when they ask again"),
                Err(_) => debug!(task, "no answer announcing a freed concurrency slot; waiting calls find it when they ask again"),
            }
        });
    }
}
