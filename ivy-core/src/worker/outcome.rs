//! What the worker sends back: progress and status notifications, the final outcome (handed to
//! the notifier before the message is settled), sealing them when a key is configured, and
//! returning or dead-lettering the message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{error, warn};

use super::{Settle, Shared};
use crate::broker::{Broker, Delivery, Notifier};
use crate::context::ProgressSink;
use crate::envelope::{Envelope, Notification, Outcome, Status, TaskId, PROTOCOL_VERSION};
use crate::error::Result;
use crate::failure::TaskFailure;

impl<B: Broker, N: Notifier> ProgressSink for Shared<B, N> {
    fn send(
        self: Arc<Self>,
        channel: String,
        id: TaskId,
        attempt: u32,
        value: Value,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        let note = Notification::Progress {
            v: PROTOCOL_VERSION,
            id,
            attempt,
            progress: value,
        };
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
        let note = Notification::Status {
            v: PROTOCOL_VERSION,
            id: env.id.clone(),
            status,
            attempt: env.attempt,
            error,
        };
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
        let payload = self.seal(
            Notification::Result {
                v: PROTOCOL_VERSION,
                id: env.id.clone(),
                attempt: env.attempt,
                outcome,
            }
            .to_bytes(),
        );
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=4 {
            match self
                .notifier
                .publish_final(channel, &env.id, payload.clone(), self.config.result_ttl)
                .await
            {
                Ok(()) => return true,
                Err(e) if attempt < 4 => {
                    warn!(error = %e, task_id = %env.id, "could not publish the result; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
                Err(e) => error!(error = %e, task_id = %env.id, "could not publish the result"),
            }
        }
        false
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
