//! The handle of a group: many calls of one task, their results in call order or as they
//! arrive.

use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::FuturesUnordered;

use super::TaskHandle;
use crate::error::Error;
use crate::failure::TaskFailure;
use crate::task::Task;

/// The calls of one group ([`Producer::group`](crate::Producer::group)), in the order given.
pub struct GroupHandle<T: Task> {
    handles: Vec<TaskHandle<T>>,
}

impl<T: Task> std::fmt::Debug for GroupHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle")
            .field("task", &T::NAME)
            .field("calls", &self.handles.len())
            .finish()
    }
}

/// A member's result: its value, or its final failure. A result that arrives but does not
/// decode as the task's `Output` is a failure of kind [`TaskFailure::BAD_RESULT`].
fn member<O>(r: crate::Result<O>) -> Result<O, TaskFailure> {
    r.map_err(|e| match e {
        Error::Task(f) => f,
        other => TaskFailure::new(TaskFailure::BAD_RESULT, other.to_string()),
    })
}

impl<T: Task> GroupHandle<T> {
    pub(crate) fn new(handles: Vec<TaskHandle<T>>) -> Self {
        GroupHandle { handles }
    }

    /// The task ids, in call order.
    pub fn ids(&self) -> Vec<&str> {
        self.handles.iter().map(TaskHandle::id).collect()
    }

    /// How many calls the group has.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The handles, one per call, in call order.
    pub fn handles(&mut self) -> &mut [TaskHandle<T>] {
        &mut self.handles
    }

    /// Waits for every call; their results in call order.
    pub async fn results(&mut self) -> Vec<Result<T::Output, TaskFailure>> {
        let mut out = Vec::with_capacity(self.handles.len());
        for h in &mut self.handles {
            out.push(member(h.result().await));
        }
        out
    }

    /// Waits at most `limit` in all; after it, [`Error::Timeout`] (or
    /// [`Error::ResultStoreUnreachable`]) as [`TaskHandle::result_timeout`] reports it.
    pub async fn results_timeout(
        &mut self,
        limit: Duration,
    ) -> crate::Result<Vec<Result<T::Output, TaskFailure>>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::with_capacity(self.handles.len());
        for h in &mut self.handles {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match h.result_timeout(left).await {
                Err(e @ (Error::Timeout(_) | Error::ResultStoreUnreachable { .. })) => {
                    return Err(e)
                }
                r => out.push(member(r)),
            }
        }
        Ok(out)
    }

    /// The results as they arrive, each with its call's index.
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = (usize, Result<T::Output, TaskFailure>)> + Send + Unpin + 'static {
        let pending: FuturesUnordered<_> = self
            .handles
            .into_iter()
            .enumerate()
            .map(|(i, mut h)| Box::pin(async move { (i, member(h.result().await)) }))
            .collect();
        pending
    }
}
