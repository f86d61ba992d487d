//! What a running task can ask of its worker: who it is, a way to report progress, whether it
//! was cancelled, and the worker's shared state (`State<T>` parameters).
//!
//! All work through a task-local set by the worker (and carried onto the thread of a
//! `blocking` task), so the task's signature stays the user's own and calling the function
//! directly (in a unit test) still works: there is no current task then, progress goes
//! nowhere and nothing is ever cancelled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::cancel::CancelFlag;
use crate::envelope::TaskId;
use crate::error::{Error, Result};
use crate::failure::TaskFailure;
use crate::state::{State, States};

/// Facts about the call being run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task id.
    pub id: TaskId,
    /// The task name.
    pub name: String,
    /// 0 for the first run.
    pub attempt: u32,
    /// Retries allowed after the first run.
    pub max_retries: u32,
    /// The call's `expires` time, if it has one: a call not started by then is dropped as
    /// expired, so work done on its behalf after it may be wasted.
    pub deadline: Option<SystemTime>,
}

/// Where progress goes: the worker, which seals and publishes it.
pub(crate) trait ProgressSink: Send + Sync {
    /// Publishes `value` as progress of attempt `attempt` of call `id` on `channel`.
    fn send(
        self: Arc<Self>,
        channel: String,
        id: TaskId,
        attempt: u32,
        value: Value,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

    // Progress events (issue 16).
    /// Queues a `progress` task event for the call `info` from `queue` (never waits).
    fn event(&self, queue: &str, info: &TaskInfo, value: &Value);
}

/// The running call. Holds no per-call closure: what progress needs is looked up when a task
/// reports it, so calls that never do pay nothing for it.
#[derive(Clone)]
pub(crate) struct TaskContext {
    pub(crate) info: TaskInfo,
    /// The producer's channel; `None` for fire-and-forget calls.
    pub(crate) reply_to: Option<String>,
    /// The queue the call came from, for `progress` task events; `None` when the worker
    /// publishes no events.
    pub(crate) events_queue: Option<String>,
    pub(crate) sink: Arc<dyn ProgressSink>,
    /// Set when the call is cancelled while it runs.
    pub(crate) cancel: CancelFlag,
    /// The worker's shared state (`Worker::state`).
    pub(crate) states: Arc<States>,
}

tokio::task_local! {
    pub(crate) static CURRENT: TaskContext;
}

/// The call this code runs in, when it runs in a worker.
pub fn current_task() -> Option<TaskInfo> {
    CURRENT.try_with(|c| c.info.clone()).ok()
}

/// Reports progress to the producer that made the call (any serializable value), and as a
/// `progress` task event when the worker publishes events (PROTOCOL.md §8).
///
/// Returns once the notification was handed to the notifier, so progress arrives in order and
/// before the result (the event is only queued: it never waits). Progress is best effort: a
/// report the notifier does not take within 1 s (Redis down or slow) is dropped and an error
/// returned, so a task never waits on an outage for longer than that per report. Outside a
/// worker, or for a fire-and-forget call on a worker without events, it does nothing.
pub async fn progress<P: Serialize + ?Sized>(value: &P) -> Result<()> {
    let Ok(Some((sink, channel, queue, info))) = CURRENT.try_with(|c| {
        (c.reply_to.is_some() || c.events_queue.is_some()).then(|| {
            (
                c.sink.clone(),
                c.reply_to.clone(),
                c.events_queue.clone(),
                c.info.clone(),
            )
        })
    }) else {
        return Ok(());
    };
    let value = serde_json::to_value(value).map_err(|source| Error::Codec {
        what: "progress",
        source,
    })?;
    if let Some(queue) = &queue {
        sink.event(queue, &info, &value);
    }
    let Some(channel) = channel else {
        return Ok(());
    };
    match tokio::time::timeout(PROGRESS_WAIT, sink.send(channel, info.id, info.attempt, value))
        .await
    {
        Ok(sent) => sent,
        Err(_) => Err(Error::backend(
            "notifier",
            format!(
                "a progress report was not taken within {PROGRESS_WAIT:?}; it was dropped and the task goes on"
            ),
        )),
    }
}

/// The longest a progress report waits for the notifier.
const PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the running call has been cancelled (`TaskHandle::cancel`, `Producer::cancel`).
///
/// For `blocking` tasks, which the worker cannot stop: check it between steps and return
/// early. (An async task is stopped by the worker, its future dropped, within a second of the
/// cancel; it needs no check.) Once a running call is cancelled its outcome is the error
/// `ivy.cancelled`, whatever it returns. False outside a worker.
pub fn is_cancelled() -> bool {
    CURRENT
        .try_with(|c| c.cancel.is_cancelled())
        .unwrap_or(false)
}

/// Completes when the running call is cancelled; never outside a worker. For async code that
/// wants to clean up before the worker drops it: `tokio::select!` on it beside the work.
pub async fn cancelled() {
    match CURRENT.try_with(|c| c.cancel.clone()) {
        Ok(flag) => flag.cancelled().await,
        Err(_) => std::future::pending().await,
    }
}

/// Runs `f` on the blocking thread pool with the current call's context, so that
/// [`current_task`], [`is_cancelled`] and progress work in a `blocking` task.
#[doc(hidden)]
pub fn spawn_blocking_in_context<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match CURRENT.try_with(TaskContext::clone) {
        Ok(ctx) => tokio::task::spawn_blocking(move || CURRENT.sync_scope(ctx, f)),
        Err(_) => tokio::task::spawn_blocking(f),
    }
}

/// A parameter the worker fills in (`State<T>`), not one that travels. Used by `#[task]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `ivy::State<T>`",
    label = "a parameter of a type named `State` is filled from the worker's state",
    note = "use `ivy::State<T>` with `Worker::state(value)`, or rename your own `State` type"
)]
pub trait FromWorker: Sized {
    /// The value for the running call.
    fn from_worker(task: &'static str) -> Result<Self, TaskFailure>;
}

impl<T: Clone + Send + Sync + 'static> FromWorker for State<T> {
    fn from_worker(task: &'static str) -> Result<Self, TaskFailure> {
        CURRENT
            .try_with(|c| c.states.get::<T>())
            .ok()
            .flatten()
            .map(State)
            .ok_or_else(|| {
                TaskFailure::new(
                    TaskFailure::MISSING_STATE,
                    format!(
                        "task `{task}` takes a `State<{}>`, which this worker was not given \
                         (Worker::state)",
                        std::any::type_name::<T>()
                    ),
                )
                .with_permanent(true)
            })
    }
}
