//! Publishing: planning a send (encoding, delay hops, FIFO ids, the size check) and one
//! SendMessage (retries, dead letters, delay hops); a producer's calls go in batches
//! (`sends`).

use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::operation::send_message::SendMessageError;
use ivy_core::{Error, OutgoingMessage, Result};

use super::config::is_fifo;
use super::queues::queue_missing;
use super::wire::{
    ceil_secs, dedup_id, encode_body, millis, now_ms, reason_attribute, Attrs, Outgoing,
};
use super::{SqsBroker, MAX_MESSAGE_SIZE, REASON_ATTRIBUTE};

impl SqsBroker {
    /// Plans a send of `body` to Ivy queue `queue` after `delay`; refuses it when larger than
    /// `limit` (body and attributes, as SQS counts them).
    pub(super) fn plan(
        &self,
        queue: &str,
        body: &[u8],
        delay: Option<Duration>,
        dedup: Option<&str>,
        reason: Option<&str>,
        limit: usize,
    ) -> Result<Outgoing> {
        let (body, encoding) = encode_body(body);
        let mut attrs = Attrs {
            encoding: encoding.attribute(),
            ..Attrs::default()
        };
        let delay = delay.filter(|d| !d.is_zero());
        let fifo = is_fifo(queue);
        let mut delay_secs = 0;
        if let Some(d) = delay {
            let secs = ceil_secs(d);
            if fifo {
                // FIFO queues take no per-message delay: the consumer holds it back.
                attrs.not_before = Some(now_ms().saturating_add(millis(d)));
            } else if secs > u64::from(self.config().max_delay) {
                delay_secs = self.config().max_delay;
                attrs.not_before = Some(now_ms().saturating_add(millis(d)));
            } else {
                delay_secs = secs as u32;
            }
        }
        if let Some(reason) = reason {
            let used = attrs.wire_size(&body) + REASON_ATTRIBUTE.len() + "String".len();
            attrs.reason = reason_attribute(reason, limit.saturating_sub(used).min(16 * 1024));
        }
        let size = attrs.wire_size(&body);
        if size > limit {
            return Err(Error::MessageTooLarge { size, limit });
        }
        let fifo = fifo.then(|| {
            let dedup = match dedup {
                Some(id) => dedup_id(id),
                None => ivy_core::envelope::new_task_id(),
            };
            // A delayed message in the queue's group would hold up every message behind it
            // while it waits; its own group lets the rest flow.
            let group = if attrs.not_before.is_some() {
                dedup.clone()
            } else {
                self.config().group(queue).to_owned()
            };
            (group, dedup)
        });
        Ok(Outgoing {
            body,
            attrs,
            delay_secs,
            fifo,
        })
    }

    /// Sends `out` to the work queue (`dead` false) or dead-letter queue of Ivy queue
    /// `queue`; a queue that vanished since its URL was cached is found or created again.
    pub(super) async fn send_to(
        &self,
        queue: &str,
        dead: bool,
        out: Outgoing,
        what: &str,
    ) -> Result<()> {
        let url = if dead {
            self.dead_url(queue).await?
        } else {
            self.work_url(queue).await?
        };
        let result = match self.try_send(&url, out.clone()).await? {
            Err(e) if queue_missing(&e) => {
                let url = self.renew_url(queue, dead).await?;
                self.try_send(&url, out).await?
            }
            other => other,
        };
        result.map_err(|e| self.failed(format_args!("could not {what}"), e))
    }

    /// One SendMessage; the outer error is a message that could not be put together.
    async fn try_send(
        &self,
        queue_url: &str,
        out: Outgoing,
    ) -> Result<Result<(), SdkError<SendMessageError, HttpResponse>>> {
        let mut send = self
            .inner
            .client
            .send_message()
            .queue_url(queue_url)
            .message_body(out.body)
            .set_message_attributes(out.attrs.to_sdk()?);
        if out.delay_secs > 0 {
            send = send.delay_seconds(out.delay_secs as i32);
        }
        if let Some((group, dedup)) = out.fifo {
            send = send.message_group_id(group).message_deduplication_id(dedup);
        }
        Ok(send.send().await.map(|_| ()))
    }

    /// Checks and plans a producer's call: held to [`MAX_MESSAGE_SIZE`] so that it fits any
    /// queue, deduplicated by its task id on FIFO queues.
    pub(super) fn plan_call(&self, msg: &OutgoingMessage) -> Result<Outgoing> {
        self.config().check_queue_name(&msg.queue)?;
        self.plan(
            &msg.queue,
            &msg.body,
            msg.delay,
            Some(&msg.id),
            None,
            MAX_MESSAGE_SIZE,
        )
    }
}
