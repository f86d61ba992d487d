//! The producer's side of issue 14's lasting cancellation and deduplication:
//! [`Producer::cancel`], [`TaskHandle::cancel`], caller-chosen ids and the `unique_for` claim.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Producer, Slot, TaskHandle};
use crate::broker::{Broker, Notifier};
use crate::cancel::{CancelNote, CancelOutcome, DEFAULT_CANCEL_TTL};
use crate::envelope::{new_task_id, TaskId};
use crate::error::{Error, Result};
use crate::task::{Call, Task};

/// Records a cancellation through the producer's notifier (kept type-erased in `Shared`).
pub(super) type CancelFn = Arc<
    dyn Fn(TaskId, Duration) -> Pin<Box<dyn Future<Output = Result<CancelOutcome>> + Send>>
        + Send
        + Sync,
>;

pub(super) fn cancel_fn<N: Notifier>(notifier: N) -> CancelFn {
    Arc::new(move |id: TaskId, ttl: Duration| {
        let n = notifier.clone();
        Box::pin(async move {
            let note = CancelNote::lasting(id.clone(), ttl).to_bytes();
            // Asked again with the same note after a failure: a first try whose answer was
            // lost is recognised by the note's nonce and counts as this cancel.
            let mut tries = 0;
            loop {
                tries += 1;
                match n.cancel(&id, note.clone(), ttl).await {
                    Err(e) if tries < CLAIM_TRIES => {
                        tracing::debug!(error = %e, task_id = %id, "recording a cancellation failed; asking again");
                        tokio::time::sleep(Duration::from_millis(50) * tries).await;
                    }
                    answer => return answer,
                }
            }
        })
    })
}

/// A call's id and, with `unique_for`, the deduplication key it claimed; or the call that
/// holds that key.
pub(super) enum Claimed {
    /// Publish it: its id and, with `unique_for`, its claim (key, request token).
    Fresh(TaskId, Option<(String, String)>),
    Duplicate(TaskId),
}

/// Tries of a deduplication claim: asking again after a lost answer is safe (the request's
/// token makes it the same claim).
const CLAIM_TRIES: u32 = 3;

/// The longest caller-chosen id, in bytes.
const MAX_ID_LEN: usize = 200;

/// The call's own id, checked, or a fresh one.
pub(super) fn call_id<T: Task>(call: &mut Call<T>) -> Result<TaskId> {
    let Some(id) = call.id.take() else {
        return Ok(new_task_id());
    };
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 200 bytes"
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it holds whitespace or control characters"
    } else {
        return Ok(id);
    };
    Err(Error::InvalidId { id, reason })
}

/// The deduplication key of a call with `unique_for`: its id when the caller chose one, else
/// `<task name>:<hex SHA-256 of the arguments' JSON>`.
pub(super) fn unique_key<T: Task>(call: &Call<T>, id: &str, chosen: bool) -> Option<String> {
    call.unique_for?;
    if chosen {
        return Some(id.to_owned());
    }
    // Arguments that cannot be encoded fail the publish; nothing to claim.
    let args = call.args.as_ref().ok()?;
    let json = serde_json::to_vec(args).expect("a JSON map always serializes");
    let digest = Sha256::digest(&json);
    let mut key = String::with_capacity(T::NAME.len() + 1 + 64);
    key.push_str(T::NAME);
    key.push(':');
    for b in digest {
        key.push_str(&format!("{b:02x}"));
    }
    Some(key)
}

impl<B: Broker, N: Notifier> Producer<B, N> {
    /// Cancels call `id`, made by anyone, for [`DEFAULT_CANCEL_TTL`] (one day): see
    /// [`cancel_for`](Self::cancel_for).
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome> {
        self.cancel_for(id, DEFAULT_CANCEL_TTL).await
    }

    /// Cancels call `id`: recorded by the notifier for `ttl`, so it holds while no worker runs
    /// and across worker restarts. A worker drops the call before it runs, or stops it if it
    /// is running (an async task within a second; a `blocking` one sees
    /// [`is_cancelled`](crate::is_cancelled)); its final result is the error `ivy.cancelled`.
    /// Returns [`CancelOutcome::AlreadyFinished`], recording nothing, when the call's result is
    /// stored already. (A fire-and-forget call stores none, so cancelling one that finished
    /// records a cancellation that never matters.)
    pub async fn cancel_for(&self, id: &str, ttl: Duration) -> Result<CancelOutcome> {
        (self.inner.shared.cancel)(id.to_owned(), ttl).await
    }

    /// The id of a call about to be published and, with `unique_for`, its claim on its
    /// deduplication key, or the call that holds the key.
    pub(super) async fn claim<T: Task>(&self, call: &mut Call<T>) -> Result<Claimed> {
        let chosen = call.id.is_some() && !call.tick;
        let id = call_id(call)?;
        let (Some(key), Some(window)) = (unique_key(call, &id, chosen), call.unique_for) else {
            return Ok(Claimed::Fresh(id, None));
        };
        let token = format!("{:016x}", rand::random::<u64>());
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            match self
                .inner
                .notifier
                .claim_unique(&key, &id, &token, window)
                .await
            {
                Ok(answer) => break answer,
                Err(e) if tries < CLAIM_TRIES => {
                    tracing::debug!(error = %e, key, "claiming a deduplication key failed; asking again");
                    tokio::time::sleep(Duration::from_millis(50) * tries).await;
                }
                Err(e) => return Err(e),
            }
        };
        match answer {
            Some(first) => Ok(Claimed::Duplicate(first)),
            None => Ok(Claimed::Fresh(id, Some((key, token)))),
        }
    }

    /// Publishes a claimed call; gives its key up if that fails (a failure to do so only
    /// keeps the key claimed until its window ends).
    pub(super) async fn publish_claimed<T: Task>(
        &self,
        call: Call<T>,
        id: TaskId,
        key: Option<(String, String)>,
        reply_to: Option<&str>,
    ) -> Result<()> {
        let published = self.publish(call, id.clone(), reply_to).await;
        // A publish whose outcome is unknown may have been taken: the key stays claimed, so
        // sending the call again is not a second call but the same one (its id).
        let not_sent =
            matches!(&published, Err(e) if !matches!(e, Error::PublishOutcomeUnknown { .. }));
        if let (true, Some((key, token))) = (not_sent, key) {
            if let Err(e) = self.inner.notifier.release_unique(&key, &id, &token).await {
                tracing::warn!(error = %e, key, "could not release the deduplication key of a call that was not published");
            }
        }
        published
    }

    /// A handle to call `id` made earlier (a duplicate's original): it follows the call
    /// through the notifier's store, without taking the place of a handle this producer may
    /// hold for it.
    pub(super) fn follow<T: Task>(&self, id: TaskId) -> TaskHandle<T> {
        TaskHandle {
            id,
            slot: Slot::new(),
            shared: self.inner.shared.clone(),
            foreign: true,
            _task: PhantomData,
        }
    }
}

impl<T: Task> TaskHandle<T> {
    /// Cancels this call ([`Producer::cancel`]); the handle then resolves to the error
    /// `ivy.cancelled`: at once for a call of this producer whose countdown (or eta) has not
    /// run out, since no worker can have started it; otherwise once a worker has dropped or
    /// stopped the call. [`CancelOutcome::AlreadyFinished`] if its result has arrived or is
    /// stored.
    pub async fn cancel(&self) -> Result<CancelOutcome> {
        if self.is_finished() {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        let outcome = (self.shared.cancel)(self.id.clone(), DEFAULT_CANCEL_TTL).await?;
        if outcome != CancelOutcome::AlreadyFinished {
            let now = crate::envelope::now_ms();
            self.slot.update(|s| {
                if s.outcome.is_none() && s.not_before.is_some_and(|eta| eta > now) {
                    let failure = crate::failure::TaskFailure::new(
                        crate::failure::TaskFailure::CANCELLED,
                        "cancelled before its countdown ran out",
                    );
                    s.status = crate::envelope::Status::Errored;
                    s.outcome = Some(crate::envelope::Outcome::Err(failure));
                }
            });
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::TaskFailure;
    use serde_json::{Map, Value};

    struct Echo;
    impl Task for Echo {
        const NAME: &'static str = "ivy.conformance.echo";
        const OPTIONS: crate::TaskOptions = crate::TaskOptions::DEFAULT;
        type Output = Value;
        async fn run(args: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
            Ok(Value::Object(args))
        }
    }

    #[test]
    fn ids_are_checked() {
        let mut ok = Call::<Echo>::__new(Ok(Default::default())).id("order-42");
        assert_eq!(call_id(&mut ok).unwrap(), "order-42");
        for bad in ["", "two words", "tab\there", &"x".repeat(201)] {
            let mut call = Call::<Echo>::__new(Ok(Default::default())).id(bad);
            assert!(
                matches!(call_id(&mut call), Err(Error::InvalidId { .. })),
                "{bad:?}"
            );
        }
        let mut fresh = Call::<Echo>::__new(Ok(Default::default()));
        assert_eq!(call_id(&mut fresh).unwrap().len(), 36);
    }

    #[test]
    fn unique_keys_are_the_id_or_the_task_and_arguments() {
        let args = |v: u64| {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), v.into());
            Call::<Echo>::__new(Ok(m))
        };
        assert_eq!(unique_key(&args(1), "x", false), None, "no window, no key");
        let window = Duration::from_secs(1);
        let a = unique_key(&args(1).unique_for(window), "x", false).unwrap();
        let b = unique_key(&args(1).unique_for(window), "y", false).unwrap();
        let c = unique_key(&args(2).unique_for(window), "x", false).unwrap();
        assert_eq!(a, b, "same task and arguments, same key");
        assert_ne!(a, c);
        assert!(
            a.starts_with("ivy.conformance.echo:") && a.len() == 21 + 64,
            "{a}"
        );
        assert_eq!(
            unique_key(&args(1).unique_for(window), "order-42", true).unwrap(),
            "order-42"
        );
    }
}
