//! What the worker sends back: progress and status notifications, the final outcome (handed to
//! the notifier before the message is settled), sealing them when a key is configured, and
//! returning or dead-lettering the message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;
use tracing::{error, warn};

use super::{Settle, Shared};
use crate::backoff::exponential;
use crate::broker::{Broker, Delivery, Notifier};
use crate::context::ProgressSink;
use crate::envelope::{Envelope, Notification, Outcome, Status, TaskId};
use crate::error::Result;
use crate::failure::TaskFailure;

/// Four tries of handing a final outcome to the notifier, 50, 200 and 800 ms apart, each wait
/// stretched by a random 0-100 % so that workers that lost the notifier together do not come
/// back in step: at most 2.1 s of waiting in all, the patience of the fixed 100/400/1600 ms
/// schedule it replaces, before the call is returned to the broker.
const RESULT_RETRIES: ExponentialBuilder =
    exponential(Duration::from_millis(50), 4.0, Duration::from_millis(800)).with_max_times(3);

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

    /// Hands the final outcome to the notifier, retrying briefly. `false` if it could not.
    pub(super) async fn finish(&self, env: &Envelope, outcome: Outcome) -> bool {
        let Some(channel) = &env.reply_to else {
            return true;
        };
        let payload =
            self.seal(Notification::result(env.id.clone(), env.attempt, outcome).to_bytes());
        let publish = || {
            self.notifier
                .publish_final(channel, &env.id, payload.clone(), self.config.result_ttl)
        };
        match publish
            .retry(RESULT_RETRIES)
            .notify(|e, _| {
                warn!(error = %e, task_id = %env.id, "could not publish the result; trying again");
            })
            .await
        {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, task_id = %env.id, "could not publish the result");
                false
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

pub(super) async fn requeue<D: Delivery>(delivery: D, env: &Envelope) -> Settle {
    error!(task_id = %env.id, "the outcome could not be stored: returning the call to the broker");
    if let Err(e) = delivery.requeue().await {
        error!(error = %e, task_id = %env.id, "requeue failed; the broker will redeliver");
    }
    Settle::Returned
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::crypto::Keyring;
    use crate::error::Error;
    use crate::memory::{MemoryBroker, MemoryNotifier};
    use crate::task::Registry;
    use crate::worker::WorkerConfig;

    /// A notifier whose first `failures` final publishes fail.
    #[derive(Clone, Debug)]
    struct Flaky {
        inner: MemoryNotifier,
        failures: u32,
        calls: Arc<AtomicU32>,
    }

    impl Notifier for Flaky {
        type Subscription = <MemoryNotifier as Notifier>::Subscription;

        async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
            self.inner.publish(channel, payload).await
        }

        async fn publish_final(
            &self,
            channel: &str,
            task_id: &str,
            payload: Vec<u8>,
            ttl: Duration,
        ) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(Error::Closed("flaky notifier"));
            }
            self.inner
                .publish_final(channel, task_id, payload, ttl)
                .await
        }

        async fn fetch(&self, task_id: &str) -> Result<Option<Vec<u8>>> {
            self.inner.fetch(task_id).await
        }

        async fn subscribe(&self, channel: &str) -> Result<Self::Subscription> {
            self.inner.subscribe(channel).await
        }
    }

    /// Runs `finish` against a notifier failing `failures` times: (stored, tries, time waited).
    async fn finish_with(failures: u32) -> (bool, u32, Duration) {
        let calls = Arc::new(AtomicU32::new(0));
        let shared = Shared {
            broker: MemoryBroker::new(),
            notifier: Flaky {
                inner: MemoryNotifier::new(),
                failures,
                calls: calls.clone(),
            },
            registry: Registry::new(),
            config: WorkerConfig::default(),
            keyring: Arc::new(Keyring::new()),
        };
        let env = Envelope::new("a", "t", serde_json::Map::new(), 0).with_reply_to("ivy.reply.x");
        let start = Instant::now();
        let stored = shared.finish(&env, Outcome::Ok(Value::Null)).await;
        (stored, calls.load(Ordering::SeqCst), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_outcome_is_tried_four_times_within_the_old_patience() {
        assert_eq!(finish_with(0).await, (true, 1, Duration::ZERO));
        for _ in 0..20 {
            let (stored, tries, waited) = finish_with(3).await;
            assert!(stored);
            assert_eq!(tries, 4);
            let (min, max) = (Duration::from_millis(1050), Duration::from_millis(2100));
            assert!(min <= waited && waited <= max, "{waited:?}");

            let (stored, tries, waited) = finish_with(4).await;
            assert!(!stored);
            assert_eq!(tries, 4);
            assert!(min <= waited && waited <= max, "{waited:?}");
        }
    }
}
