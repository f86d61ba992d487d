//! The producer's side of workflows (issue 14): sending a chain, a group, a chord. Each is
//! published as ordinary calls whose envelopes carry what follows (`flow`); workers do the
//! rest.

use super::bulk::Item;
use super::{GroupHandle, Producer, TaskHandle};
use crate::broker::{Broker, Notifier};
use crate::envelope::new_task_id;
use crate::envelope::ChordRef;
use crate::error::{Error, Result};
use crate::failure::TaskFailure;
use crate::flow::{Chain, Step};
use crate::task::{Call, Task};

impl<B: Broker, N: Notifier> Producer<B, N> {
    /// Publishes the first call of `chain` and returns a handle to its last step: it resolves
    /// to the last step's result, or to the failure of the step that failed, whose message
    /// names that step. Each later step is published by the worker that finished the one
    /// before.
    ///
    /// The first call keeps an id given with [`Call::id`] (so it can be cancelled by it, which
    /// ends the chain with `ivy.cancelled`); `unique_for` does not apply to chains.
    pub async fn chain<F: Task, L: Task>(&self, chain: Chain<F, L>) -> Result<TaskHandle<L>> {
        let mut first = chain.first;
        let id = super::cancel::call_id(&mut first)?;
        self.ensure_listening().await?;
        let handle = self.register(chain.last_id.clone(), false);
        let channel = self.inner.channel.clone();
        self.publish(first, id, Some(&channel)).await?;
        Ok(handle)
    }

    /// Publishes every call of `calls`, in as few broker requests as the broker allows
    /// ([`delayed_calls`](Self::delayed_calls)), and returns one handle for all of them:
    /// their results in call order ([`GroupHandle::results`]) or as they arrive
    /// ([`GroupHandle::into_stream`]). If the broker refuses a call, the first such error is
    /// returned; the calls it took are sent and run.
    pub async fn group<T: Task>(
        &self,
        calls: impl IntoIterator<Item = Call<T>>,
    ) -> Result<GroupHandle<T>> {
        let handles = self
            .delayed_calls(calls)
            .await?
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupHandle::new(handles))
    }

    /// Publishes the `calls` of a chord and returns a handle to its `callback`, which runs
    /// once every call has ended, with their results in call order as its first argument.
    /// The callback is published exactly once, however often a member is delivered. If a
    /// call fails for good, the callback does not run and the handle gets that call's
    /// failure (see [`chord_passing_failures`](Self::chord_passing_failures) for the other
    /// choice).
    ///
    /// The members are published together, in as few broker requests as the broker allows:
    /// if the broker refuses one, the first such error is returned, the members it took still
    /// run, and the callback never does.
    pub async fn chord<T: Task, C: Task>(
        &self,
        calls: Vec<Call<T>>,
        callback: Step<C, Vec<T::Output>>,
    ) -> Result<TaskHandle<C>> {
        self.send_chord(calls, callback, false).await
    }

    /// As [`chord`](Self::chord), but the callback runs whatever the members' outcomes and
    /// gets each one as a `Result`.
    pub async fn chord_passing_failures<T: Task, C: Task>(
        &self,
        calls: Vec<Call<T>>,
        callback: Step<C, Vec<Result<T::Output, TaskFailure>>>,
    ) -> Result<TaskHandle<C>> {
        self.send_chord(calls, callback, true).await
    }

    async fn send_chord<T: Task, C: Task, In>(
        &self,
        calls: Vec<Call<T>>,
        callback: Step<C, In>,
        pass_failures: bool,
    ) -> Result<TaskHandle<C>> {
        let id = new_task_id();
        let size = u32::try_from(calls.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "a chord needs between 1 and {} calls, not {}",
                    u32::MAX,
                    calls.len()
                ))
            })?;
        let callback = callback
            .into_wire(id.clone())
            .map_err(|(name, source)| Error::Argument { name, source })?;
        let chord = ChordRef {
            id: id.clone(),
            size,
            callback,
            pass_failures,
        };
        self.ensure_listening().await?;
        let handle = self.register(id.clone(), false);
        let channel = self.inner.channel.clone();
        let members = (0..size)
            .zip(calls)
            .map(|(index, mut call)| {
                call.flow_mut().chord = Some(chord.clone());
                Item {
                    call,
                    id: ChordRef::member_id(&id, index),
                    key: None,
                }
            })
            .collect();
        for sent in self.publish_all(members, Some(&channel)).await {
            sent?;
        }
        Ok(handle)
    }
}
