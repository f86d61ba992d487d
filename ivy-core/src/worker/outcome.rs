//! What the worker sends back: progress and status notifications, the final outcome (handed to
//! the notifier before the message is settled), sealing them when a key is configured, and
//! returning or dead-lettering the message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use super::flows::Advance;
use super::settle::{Dead, Settlement};
use super::{Settle, Shared};
use crate::backoff::Backoff;
use crate::broker::{Broker, Notifier};
use crate::context::ProgressSink;
use crate::envelope::{Envelope, Notification, Outcome, Status, TaskId};
use crate::error::Result;
use crate::failure::TaskFailure;

/// The longest a status notification waits for the notifier.
const STATUS_WAIT: Duration = Duration::from_secs(1);
/// The first pause before handing a final outcome to the notifier again.
const HANDOFF_FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two hand-offs (before jitter): an outage of any length costs at
/// most one try per 10 s per held call.
const HANDOFF_LONGEST_PAUSE: Duration = Duration::from_secs(10);
/// How long a call is held while its outcome cannot be stored before it is passed on with it:
/// well within what brokers allow an unsettled delivery (RabbitMQ's `consumer_timeout`, 30 min
/// by default, closes the channel and redelivers; SQS hides a message for at most 12 h).
const HOLD_AT_MOST: Duration = Duration::from_secs(10 * 60);

/// Whether [`Shared::finish`] handed the outcome over.
#[must_use]
pub(super) enum HandOff {
    /// Stored and published (or nothing to store: no reply channel).
    Done,
    /// Not stored, and the worker is stopping or held the call for 10 min already: the
    /// outcome, to pass the call on with.
    Pending(Outcome),
}

impl<B: Broker, N: Notifier> ProgressSink for Shared<B, N> {
    fn send(
        self: Arc<Self>,
        channel: String,
        id: TaskId,
        attempt: u32,
        value: Value,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        let note = Notification::progress(id, attempt, value);
        let payload = self.seal(note.to_bytes());
        Box::pin(async move { self.notifier.publish(&channel, payload).await })
    }

    // Progress events (issue 16).
    fn event(&self, queue: &str, info: &crate::context::TaskInfo, value: &Value) {
        let mut event = crate::events::TaskEvent::new(
            crate::events::EventKind::Progress,
            &self.telemetry.worker_id,
            queue,
        )
        .call(&info.name, &info.id, info.attempt);
        event.progress = Some(value.clone());
        self.emit(event);
    }
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Encrypts an outgoing payload when a key is configured.
    pub(super) fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        if self.keyring.is_enabled() {
            self.keyring.seal_binary(&plain)
        } else {
            plain
        }
    }

    /// Encrypts a call sent on in place of one opened with `key_id` (a retry, a call passed
    /// on) under that same key, so it keeps the rights it came with
    /// ([`Keyring::reseal_binary`](crate::crypto::Keyring::reseal_binary)).
    pub(super) fn reseal(&self, key_id: Option<&str>, plain: Vec<u8>) -> Vec<u8> {
        if self.keyring.is_enabled() {
            self.keyring.reseal_binary(key_id, &plain)
        } else {
            plain
        }
    }

    /// Encrypts a call passed on with its outcome: under the key that sent the call if that
    /// key may send results, since the next worker accepts the outcome only from such a key;
    /// under the current key (the one the worker's results are sealed with) otherwise.
    pub(super) fn seal_passed_on(&self, key_id: Option<&str>, plain: Vec<u8>) -> Vec<u8> {
        if self.keyring.may_send_results(key_id) {
            self.reseal(key_id, plain)
        } else {
            self.seal(plain)
        }
    }

    /// Sends a status notification; a failure to notify is logged, never fatal, and it waits
    /// for the notifier at most [`STATUS_WAIT`]: a status is best effort, and the call's run
    /// and result must not wait on an outage.
    pub(super) async fn notify(&self, env: &Envelope, status: Status, error: Option<TaskFailure>) {
        let Some(channel) = &env.reply_to else { return };
        let mut note = Notification::status(env.id.clone(), status, env.attempt);
        if let Some(failure) = error {
            note = note.with_error(failure);
        }
        let publish = self.notifier.publish(channel, self.seal(note.to_bytes()));
        match tokio::time::timeout(STATUS_WAIT, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, task_id = %env.id, %status, "could not publish a status");
            }
            Err(_) => {
                warn!(task_id = %env.id, %status, "the notifier did not take a status within {STATUS_WAIT:?}; it was dropped");
            }
        }
    }

    /// Hands the final outcome to the notifier, trying again until it is taken: the outcome of
    /// a finished task is kept, never thrown away with its call returned to be run again.
    ///
    /// Meanwhile the caller holds the delivery (AMQP leaves it unacknowledged, the SQS
    /// consumer keeps extending its visibility) and its slot stays busy. Pauses double from
    /// 50 ms to 10 s, each stretched by a random 0-100 %. Once the worker is stopping, or after
    /// 10 min of failures, a hand-off that fails gives the outcome back ([`HandOff::Pending`])
    /// for the caller to pass the call on with it ([`Shared::pass_on`]).
    pub(super) async fn finish(&self, env: &Envelope, outcome: Outcome) -> HandOff {
        // A chord member stores its result even when sent fire-and-forget: the member that
        // completes the chord reads them all. So does a call that runs once: its stored
        // result is how a copy of it is recognised.
        let keep = env.once || env.flow.as_ref().is_some_and(|f| f.chord.is_some());
        let Some(channel) = env
            .reply_to
            .as_deref()
            .or(keep.then_some(super::flows::NO_CHANNEL))
        else {
            return HandOff::Done;
        };
        let note = Notification::result(env.id.clone(), env.attempt, outcome);
        let payload = self.seal(note.to_bytes());
        let held_since = tokio::time::Instant::now();
        // Made at the first failure: almost every hand-off succeeds at once.
        let mut retrying: Option<(Backoff, watch::Receiver<bool>)> = None;
        let mut failures: u32 = 0;
        loop {
            let stored = self
                .notifier
                .publish_final(channel, &env.id, payload.clone(), self.config.result_ttl)
                .await;
            let e = match stored {
                Ok(()) => {
                    if failures > 0 {
                        info!(task_id = %env.id, failures, "the result was stored after all");
                    }
                    return HandOff::Done;
                }
                Err(e) => e,
            };
            failures += 1;
            let (pauses, stopping) = retrying.get_or_insert_with(|| {
                (
                    Backoff::doubling(HANDOFF_FIRST_PAUSE, HANDOFF_LONGEST_PAUSE),
                    self.stopping.subscribe(),
                )
            });
            let pause = pauses.next_pause();
            let stop = *stopping.borrow_and_update();
            if stop || held_since.elapsed() >= HOLD_AT_MOST {
                let why = if stop {
                    "the worker is stopping"
                } else {
                    "the call was held for 10 min"
                };
                warn!(error = %e, task_id = %env.id, failures, "could not store the result, and {why}");
                let Notification::Result { outcome, .. } = note else {
                    unreachable!("built as a result above")
                };
                return HandOff::Pending(outcome);
            }
            warn!(
                error = %e, task_id = %env.id, failures, ?pause,
                "could not store the result; holding the call and trying again"
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // The sender lives in `self`: `changed` fails only once the worker is gone.
                _ = stopping.changed() => {}
            }
        }
    }

    /// [`finish`](Self::finish) for a call that failed without running (refused, expired,
    /// unknown task, arguments that do not fit, cancelled), then what follows its failure.
    /// `None` when both were done: the caller settles the message as it decided. Otherwise how
    /// to settle it instead: returned to the broker when the failure could not be stored,
    /// passed on with its outcome after a pause when what follows could not be published yet
    /// (as [`conclude`](Self::conclude) does, so it is not redelivered at once again and
    /// again), dead-lettered when it never can be.
    pub(super) async fn finish_unrun(
        &self,
        env: &Envelope,
        failure: TaskFailure,
        key_id: Option<&str>,
    ) -> Option<Settlement> {
        let kept = env.flow.is_some().then(|| Outcome::Err(failure.clone()));
        if let HandOff::Pending(_) = self.finish(env, Outcome::Err(failure)).await {
            return Some(Settlement::Requeue);
        }
        let outcome = kept?;
        match self.advance(env, &outcome, key_id).await {
            Advance::Done => None,
            Advance::NotYet(pause) => Some(Settlement::PassOn(outcome, pause)),
            Advance::Broken(reason) => Some(Settlement::DeadLetter(reason, Dead::Unusable)),
        }
    }

    /// A call that did not run and failed for good with `failure`: finished (see
    /// [`finish_unrun`](Self::finish_unrun)), then settled as `then` unless that says otherwise.
    pub(super) async fn fail_unrun(
        &self,
        env: &Envelope,
        failure: TaskFailure,
        key_id: Option<&str>,
        then: Settlement,
    ) -> Settlement {
        self.finish_unrun(env, failure, key_id)
            .await
            .unwrap_or(then)
    }

    /// Delivers the final outcome of a call that ran (here, or before it was passed on), then
    /// says how to settle the message: acked after a success, dead-lettered after a failure.
    pub(super) async fn conclude(
        &self,
        env: &Envelope,
        outcome: Outcome,
        key_id: Option<&str>,
    ) -> Settlement {
        let dead_reason = match &outcome {
            Outcome::Err(failure) if failure.permanent => Some(format!(
                "task {} failed permanently (no retry) in attempt {}: {failure}",
                env.task,
                env.attempt.saturating_add(1)
            )),
            Outcome::Err(failure) => Some(format!(
                "task {} failed after {} attempt(s): {failure}",
                env.task,
                env.attempt.saturating_add(1)
            )),
            Outcome::Ok(_) => None,
        };
        // Workflows: what follows the call is published after its outcome is stored and
        // before its message is settled.
        let kept = env.flow.is_some().then(|| outcome.clone());
        if let HandOff::Pending(outcome) = self.finish(env, outcome).await {
            return Settlement::PassOn(outcome, Duration::ZERO);
        }
        if let Some(outcome) = kept {
            match self.advance(env, &outcome, key_id).await {
                Advance::Done => {}
                Advance::NotYet(pause) => return Settlement::PassOn(outcome, pause),
                Advance::Broken(reason) => return Settlement::DeadLetter(reason, Dead::Unusable),
            }
        }
        match dead_reason {
            None => Settlement::Ack(Settle::Succeeded),
            Some(reason) => Settlement::DeadLetter(reason, Dead::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::broker::Results;
    use crate::crypto::Keyring;
    use crate::memory::MemoryBroker;
    use crate::task::Registry;
    use crate::worker::tests::flaky;

    /// Runs `finish` against a notifier failing `failures` times: (tries, time waited).
    async fn finish_with(failures: u32) -> (u32, Duration) {
        let notifier = flaky(failures);
        let calls = notifier.faults.clone();
        let shared = Shared::new(
            MemoryBroker::new(),
            notifier,
            Registry::new(),
            Keyring::new(),
        );
        let env = Envelope::new("a", "t", serde_json::Map::new(), 0).with_reply_to("ivy.reply.x");
        let start = Instant::now();
        assert!(matches!(
            shared.finish(&env, Outcome::Ok(Value::Null)).await,
            HandOff::Done
        ));
        assert!(
            shared.notifier.inner.fetch("a").await.unwrap().is_some(),
            "the result is stored"
        );
        (calls.count("publish_final"), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_outcome_is_tried_until_it_is_stored_with_capped_pauses() {
        assert_eq!(finish_with(0).await, (1, Duration::ZERO));
        for _ in 0..5 {
            // An outage far longer than the old 2 s of patience.
            let (tries, waited) = finish_with(30).await;
            assert_eq!(tries, 31);
            // Pauses grow to 10 s and stop there (each at most doubled by jitter).
            assert!(waited >= Duration::from_secs(10 * 20), "{waited:?}");
            assert!(waited <= Duration::from_secs(20 * 30), "{waited:?}");
        }
    }
}
