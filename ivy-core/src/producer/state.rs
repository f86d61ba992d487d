//! One call's state as its handle sees it: status, latest progress and the outcome, updated
//! by notifications in any order (a late status never undoes a final result).

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::Notify;

use crate::envelope::{Notification, Outcome, Status};
use crate::sync::lock;

#[derive(Clone, Debug)]
pub(super) struct TaskState {
    pub(super) status: Status,
    pub(super) progress_seq: u64,
    pub(super) progress: Option<Value>,
    pub(super) outcome: Option<Outcome>,
    /// The handle is gone: no more updates.
    pub(super) closed: bool,
    /// When a worker may take the call at the earliest (its countdown or eta, ms since the
    /// epoch), where this producer made it.
    pub(super) not_before: Option<u64>,
}

impl TaskState {
    pub(super) fn new() -> Self {
        TaskState {
            status: Status::Scheduled,
            progress_seq: 0,
            progress: None,
            outcome: None,
            closed: false,
            not_before: None,
        }
    }

    pub(super) fn apply(&mut self, note: Notification) {
        if self.outcome.is_some() {
            return; // Final already: late statuses from a redelivery change nothing.
        }
        match note {
            Notification::Status { status, .. } => self.status = status,
            Notification::Progress { progress, .. } => {
                // A task that reports progress is running, whether or not its `running`
                // status has been sent yet.
                if matches!(self.status, Status::Scheduled | Status::Errored) {
                    self.status = Status::Running;
                }
                self.progress_seq += 1;
                self.progress = Some(progress);
            }
            Notification::Result { outcome, .. } => {
                self.status = match outcome {
                    Outcome::Ok(_) => Status::Successful,
                    Outcome::Err(_) => Status::Errored,
                };
                self.outcome = Some(outcome);
            }
        }
    }
}

/// One call's state, shared by its handle, its progress streams and the listener.
#[derive(Debug)]
pub(super) struct Slot {
    state: Mutex<TaskState>,
    /// Woken on every change, and when the handle goes.
    pub(super) changed: Notify,
}

impl Slot {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(TaskState::new()),
            changed: Notify::new(),
        })
    }

    pub(super) fn state(&self) -> MutexGuard<'_, TaskState> {
        lock(&self.state)
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut TaskState)) {
        f(&mut self.state());
        self.changed.notify_waiters();
    }

    /// The progress reports of `slot` as they come (the latest one when several arrive at
    /// once), ending when the call has finished or its handle is gone.
    pub(super) fn progress(
        slot: Arc<Slot>,
    ) -> impl futures_core::Stream<Item = Value> + Send + Unpin + 'static {
        Box::pin(futures_util::stream::unfold(
            (slot, 0u64),
            |(slot, seen)| async move {
                let next = loop {
                    let changed = slot.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    {
                        let s = slot.state();
                        if s.progress_seq > seen {
                            break Some((
                                s.progress.clone().unwrap_or(Value::Null),
                                s.progress_seq,
                            ));
                        }
                        if s.outcome.is_some() || s.closed {
                            break None;
                        }
                    }
                    changed.await;
                };
                next.map(|(value, seq)| (value, (slot, seq)))
            },
        ))
    }
}
