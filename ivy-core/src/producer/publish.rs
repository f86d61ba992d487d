//! Publishing one call: its envelope encoded (and sealed), checked against the size limit,
//! and handed to the broker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::debug;

use super::Producer;
use crate::broker::{Broker, Notifier, OutgoingMessage};
use crate::envelope::{now_ms, to_ms, EnvelopeRef, TaskId, PROTOCOL_VERSION};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::task::{Call, Task};

impl<B: Broker, N: Notifier> Producer<B, N> {
    pub(super) async fn publish<T: Task>(
        &self,
        call: Call<T>,
        id: TaskId,
        reply_to: Option<&str>,
    ) -> Result<()> {
        let msg = match self.prepare(call, &id, reply_to) {
            Ok(msg) => msg,
            Err(e) => {
                lock(&self.inner.shared.pending).remove(&id);
                return Err(e);
            }
        };
        // Boxed: enum-dispatched brokers make this future several KB, which would otherwise
        // live inside (and be copied with) every caller's `delayed_call` future.
        if let Err(e) = Box::pin(self.inner.broker.publish(msg)).await {
            lock(&self.inner.shared.pending).remove(&id);
            return Err(e);
        }
        debug!(task = T::NAME, task_id = %id, "published");
        Ok(())
    }

    /// The message of `call` with id `id`: its envelope encoded (and sealed), checked against
    /// the size limit.
    pub(super) fn prepare<T: Task>(
        &self,
        call: Call<T>,
        id: &TaskId,
        reply_to: Option<&str>,
    ) -> Result<OutgoingMessage> {
        let args = call
            .args
            .map_err(|(name, source)| Error::Argument { name, source })?;
        let now = now_ms();
        let eta = call.eta.map(to_ms).filter(|&eta| eta > now);
        let queue = self.resolve_queue(call.queue.unwrap_or_else(|| T::OPTIONS.queue.to_owned()));
        let priority = call.priority.or(T::OPTIONS.priority);
        let traceparent = crate::trace::current_traceparent();
        let env = EnvelopeRef {
            v: PROTOCOL_VERSION,
            id,
            task: T::NAME,
            args: &args,
            // The broker knows the queue; not repeated in every message.
            queue: None,
            attempt: 0,
            // Only an override travels; otherwise the worker applies the task's own setting,
            // as Celery does (and the message stays smaller).
            max_retries: call.max_retries,
            created_at: now,
            eta,
            expires: call.expires.map(to_ms),
            reply_to,
            priority,
            traceparent: traceparent.as_deref(),
            flow: call.flow.as_deref(),
            once: call.once,
        };
        let body = if self.inner.shared.keyring.is_enabled() {
            self.inner.shared.keyring.seal_binary(&env.to_bytes())
        } else {
            env.to_bytes()
        };
        drop(args);
        let caps = self.inner.broker.capabilities();
        let limit = match self.inner.max_message_size.load(Ordering::Relaxed) {
            0 => caps.default_message_limit(),
            n => n.min(caps.max_call_size()),
        };
        if body.len() > limit {
            return Err(Error::MessageTooLarge {
                size: body.len(),
                limit,
            });
        }
        self.inner.audience.look(&queue, &self.inner.notifier);
        let mut msg = OutgoingMessage::new(id.clone(), queue, body);
        msg.priority = priority;
        msg.delay = eta.map(|eta| Duration::from_millis(eta - now));
        Ok(msg)
    }
}
