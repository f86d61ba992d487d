//! What the worker sends back: progress and status notifications, the final outcome (handed to
//! the notifier before the message is settled), sealing them when a key is configured, and
//! returning or dead-lettering the message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{error, info, warn};

use super::{Settle, Shared};
use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery, Notifier};
use crate::context::ProgressSink;
use crate::envelope::{Envelope, Notification, Outcome, Status, TaskId};
use crate::error::Result;
use crate::failure::TaskFailure;

/// The first pause before handing a final outcome to the notifier again.
const HANDOFF_FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two hand-offs (before jitter): an outage of any length costs at
/// most one try per 10 s per held call.
const HANDOFF_LONGEST_PAUSE: Duration = Duration::from_secs(10);

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

    /// Sends a status notification; a failure to notify is logged, never fatal.
    pub(super) async fn notify(&self, env: &Envelope, status: Status, error: Option<TaskFailure>) {
        let Some(channel) = &env.reply_to else { return };
        let mut note = Notification::status(env.id.clone(), status, env.attempt);
        if let Some(failure) = error {
            note = note.with_error(failure);
        }
        if let Err(e) = self
            .notifier
            .publish(channel, self.seal(note.to_bytes()))
            .await
        {
            warn!(error = %e, task_id = %env.id, %status, "could not publish a status");
        }
    }

    /// Hands the final outcome to the notifier, trying again until it is taken: the outcome of
    /// a finished task is kept, never thrown away with its call returned to be run again.
    ///
    /// Meanwhile the caller holds the delivery (AMQP leaves it unacknowledged, the SQS
    /// consumer keeps extending its visibility) and its slot stays busy. Pauses double from
    /// 50 ms to 10 s, each stretched by a random 0-100 %. At shutdown the grace period bounds
    /// the wait: a job still holding its outcome then is dropped with its delivery, which the
    /// broker redelivers.
    pub(super) async fn finish(&self, env: &Envelope, outcome: Outcome) {
        let Some(channel) = &env.reply_to else {
            return;
        };
        let payload =
            self.seal(Notification::result(env.id.clone(), env.attempt, outcome).to_bytes());
        let mut pauses = Backoff::doubling(HANDOFF_FIRST_PAUSE, HANDOFF_LONGEST_PAUSE);
        let mut failures: u32 = 0;
        loop {
            let stored = self
                .notifier
                .publish_final(channel, &env.id, payload.clone(), self.config.result_ttl)
                .await;
            match stored {
                Ok(()) => {
                    if failures > 0 {
                        info!(task_id = %env.id, failures, "the result was stored after all");
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let pause = pauses.next_pause();
                    warn!(
                        error = %e, task_id = %env.id, failures, ?pause,
                        "could not store the result; holding the call and trying again"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    pub(super) async fn dead_letter(&self, delivery: B::Delivery, reason: String) -> Settle {
        error!(queue = %delivery.queue(), %reason, "dead-lettering a message");
        match delivery.dead_letter(reason).await {
            Ok(()) => Settle::DeadLettered,
            Err(e) => {
                error!(error = %e, "dead-lettering failed; the broker will redeliver");
                Settle::Returned
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::time::Instant;

    use super::*;
    use crate::crypto::Keyring;
    use crate::memory::MemoryBroker;
    use crate::task::Registry;
    use crate::worker::tests::Flaky;
    use crate::worker::WorkerConfig;

    /// Runs `finish` against a notifier failing `failures` times: (tries, time waited).
    async fn finish_with(failures: u32) -> (u32, Duration) {
        let notifier = Flaky::new(failures);
        let calls = notifier.calls.clone();
        let shared = Shared {
            broker: MemoryBroker::new(),
            notifier,
            registry: Registry::new(),
            config: WorkerConfig::default(),
            keyring: Arc::new(Keyring::new()),
        };
        let env = Envelope::new("a", "t", serde_json::Map::new(), 0).with_reply_to("ivy.reply.x");
        let start = Instant::now();
        shared.finish(&env, Outcome::Ok(Value::Null)).await;
        assert!(
            shared.notifier.inner.fetch("a").await.unwrap().is_some(),
            "the result is stored"
        );
        (calls.load(Ordering::SeqCst), start.elapsed())
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
