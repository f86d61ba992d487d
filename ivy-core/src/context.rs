//! What a running task can ask of its worker: who it is, and a way to report progress.
//!
//! Both work through a task-local set by the worker, so the task's signature stays the user's
//! own and calling the function directly (in a unit test) still works: there is no current
//! task then, and progress goes nowhere.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::envelope::TaskId;
use crate::error::{Error, Result};

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
}

/// The running call. Holds no per-call closure: what progress needs is looked up when a task
/// reports it, so calls that never do pay nothing for it.
pub(crate) struct TaskContext {
    pub(crate) info: TaskInfo,
    /// The producer's channel; `None` for fire-and-forget calls.
    pub(crate) reply_to: Option<String>,
    pub(crate) sink: Arc<dyn ProgressSink>,
}

tokio::task_local! {
    pub(crate) static CURRENT: TaskContext;
}

/// The call this code runs in, when it runs in a worker.
pub fn current_task() -> Option<TaskInfo> {
    CURRENT.try_with(|c| c.info.clone()).ok()
}

/// Reports progress to the producer that made the call (any serializable value).
///
/// Returns once the notification was handed to the notifier, so progress arrives in order and
/// before the result. Outside a worker, or for a fire-and-forget call, it does nothing.
pub async fn progress<P: Serialize + ?Sized>(value: &P) -> Result<()> {
    let Ok(Some((sink, channel, id, attempt))) = CURRENT.try_with(|c| {
        c.reply_to
            .clone()
            .map(|channel| (c.sink.clone(), channel, c.info.id.clone(), c.info.attempt))
    }) else {
        return Ok(());
    };
    let value = serde_json::to_value(value).map_err(|source| Error::Codec {
        what: "progress",
        source,
    })?;
    sink.send(channel, id, attempt, value).await
}
