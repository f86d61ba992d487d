//! Bulk sends (issue 24): many calls in as few broker requests as the broker allows, as
//! BullMQ's `addBulk` and Sidekiq's `push_bulk` do, each call's own error reported for that
//! call only.

use futures_util::stream::{self, StreamExt};
use tracing::debug;

use super::cancel::Claimed;
use super::{Producer, TaskHandle};
use crate::broker::{Broker, Notifier};
use crate::envelope::TaskId;
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::task::{Call, Task};

/// Deduplication claims (one Redis round trip each, for calls with `unique_for`) made at once.
const CLAIMS_AT_ONCE: usize = 64;

/// A call ready to publish: the call, its id, and the deduplication key and token it holds.
pub(super) struct Item<T: Task> {
    pub(super) call: Call<T>,
    pub(super) id: TaskId,
    pub(super) key: Option<(String, String)>,
}

impl<B: Broker, N: Notifier> Producer<B, N> {
    /// Publishes every call of `calls` without asking for anything back, as
    /// [`send`](Self::send) does each, in as few broker requests as the broker allows: on SQS
    /// batches of up to 10 (`SendMessageBatch`), on RabbitMQ publishes pipelined under one
    /// confirm window. Returns once the broker has taken (or refused) every call: in call
    /// order, each call's task id or its own error. A call the broker refuses (too large,
    /// arguments that do not serialize, a failed request) fails alone; the others are sent.
    ///
    /// With [`Call::unique_for`], a duplicate is not published: its id is the first call's.
    pub async fn send_many<T: Task>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Vec<Result<TaskId>> {
        let claimed = self.claim_all(calls).await;
        let mut out: Vec<Option<Result<TaskId>>> = Vec::with_capacity(claimed.len());
        let mut items = Vec::new();
        let mut slots = Vec::new();
        for (call, claim) in claimed {
            match claim {
                Ok(Claimed::Fresh(id, key)) => {
                    slots.push(out.len());
                    out.push(None);
                    items.push(Item { call, id, key });
                }
                Ok(Claimed::Duplicate(first)) => out.push(Some(Ok(first))),
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let ids: Vec<TaskId> = items.iter().map(|i| i.id.clone()).collect();
        let sent = self.publish_all(items, None).await;
        for ((slot, id), result) in slots.into_iter().zip(ids).zip(sent) {
            out[slot] = Some(result.map(|()| id));
        }
        out.into_iter()
            .map(|r| r.expect("every call has its result"))
            .collect()
    }

    /// Publishes every call of `calls`, as [`delayed_call`](Self::delayed_call) does each, in
    /// as few broker requests as the broker allows (see [`send_many`](Self::send_many)), and
    /// returns, in call order, each call's handle or its own error: a call the broker refuses
    /// fails alone, the others are sent.
    ///
    /// The outer error is one that stops every call before any is sent: this producer's
    /// notification channel could not be subscribed to.
    pub async fn delayed_calls<T: Task>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Result<Vec<Result<TaskHandle<T>>>> {
        self.ensure_listening().await?;
        let claimed = self.claim_all(calls).await;
        let mut out: Vec<Option<Result<TaskHandle<T>>>> = Vec::with_capacity(claimed.len());
        let mut items = Vec::new();
        let mut handles = Vec::new();
        for (call, claim) in claimed {
            match claim {
                Ok(Claimed::Fresh(id, key)) => {
                    // Registered before publishing, so no notification can arrive for an
                    // unknown id.
                    let handle = self.register(id.clone(), false);
                    if let Some(eta) = call.eta.map(crate::envelope::to_ms) {
                        handle.slot.update(|s| s.not_before = Some(eta));
                    }
                    handles.push((out.len(), handle));
                    out.push(None);
                    items.push(Item { call, id, key });
                }
                Ok(Claimed::Duplicate(first)) => out.push(Some(Ok(self.follow(first)))),
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let channel = self.inner.channel.clone();
        let sent = self.publish_all(items, Some(&channel)).await;
        for ((slot, handle), result) in handles.into_iter().zip(sent) {
            // A handle dropped on failure takes its registration with it.
            out[slot] = Some(result.map(|()| handle));
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every call has its result"))
            .collect())
    }

    /// Each call with its deduplication claim (none for calls without `unique_for`).
    async fn claim_all<T: Task>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Vec<(Call<T>, Result<Claimed>)> {
        stream::iter(calls)
            .map(|mut call| async move {
                let claim = self.claim(&mut call).await;
                (call, claim)
            })
            .buffered(CLAIMS_AT_ONCE)
            .collect()
            .await
    }

    /// Prepares and publishes `items` with one [`Broker::publish_many`]; each item's result,
    /// in order. A call not sent gives its deduplication key up and its registration.
    pub(super) async fn publish_all<T: Task>(
        &self,
        items: Vec<Item<T>>,
        reply_to: Option<&str>,
    ) -> Vec<Result<()>> {
        let mut out: Vec<Option<Result<()>>> = Vec::with_capacity(items.len());
        let mut msgs = Vec::with_capacity(items.len());
        let mut sent = Vec::with_capacity(items.len());
        for Item { call, id, key } in items {
            match self.prepare(call, &id, reply_to) {
                Ok(msg) => {
                    sent.push((out.len(), id, key));
                    out.push(None);
                    msgs.push(msg);
                }
                Err(e) => {
                    self.not_sent(&id, key, &e).await;
                    out.push(Some(Err(e)));
                }
            }
        }
        let published = Box::pin(self.inner.broker.publish_many(msgs)).await;
        for ((slot, id, key), result) in sent.into_iter().zip(published) {
            match &result {
                Ok(()) => debug!(task = T::NAME, task_id = %id, "published"),
                Err(e) => self.not_sent(&id, key, e).await,
            }
            out[slot] = Some(result);
        }
        out.into_iter()
            .map(|r| r.expect("every call has its result"))
            .collect()
    }

    /// After call `id` failed with `e`: forgets its registration and, unless it may have been
    /// taken after all, gives its deduplication key up.
    async fn not_sent(&self, id: &TaskId, key: Option<(String, String)>, e: &Error) {
        lock(&self.inner.shared.pending).remove(id);
        if matches!(e, Error::PublishOutcomeUnknown { .. }) {
            return;
        }
        if let Some((key, token)) = key {
            if let Err(e) = self.inner.notifier.release_unique(&key, id, &token).await {
                tracing::warn!(error = %e, key, "could not release the deduplication key of a call that was not published");
            }
        }
    }
}

#[cfg(test)]
#[path = "bulk_tests.rs"]
mod tests;
