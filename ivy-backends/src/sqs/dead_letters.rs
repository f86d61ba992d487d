//! Taking dead letters: received in rounds of ten, deleted, and handed back in the order they
//! were sent.

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use ivy_core::{DeadLetter, Result};
use tracing::warn;

use super::queues::queue_missing;
use super::wire::{batch_entries, Received};
use super::SqsBroker;

impl SqsBroker {
    pub(super) async fn take_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        self.config().check_queue_name(queue)?;
        let Some(url) = self.queue_url(queue, true, false).await? else {
            return Ok(Vec::new());
        };
        let mut letters: Vec<(u64, DeadLetter)> = Vec::new();
        while letters.len() < max {
            let out = self
                .inner
                .client
                .receive_message()
                .queue_url(&*url)
                .max_number_of_messages((max - letters.len()).min(10) as i32)
                // A short wait only: callers poll, and want what is there now.
                .wait_time_seconds(if letters.is_empty() { 1 } else { 0 })
                .visibility_timeout(30)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_attribute_names("All")
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                // The queue vanished since its URL was cached: it has no letters now.
                Err(e) if queue_missing(&e) && letters.is_empty() => {
                    self.forget_url(queue, true);
                    return Ok(Vec::new());
                }
                Err(e) => {
                    return Err(self.failed(
                        format_args!("could not receive dead letters of `{queue}`"),
                        e,
                    ))
                }
            };
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            let round_start = letters.len();
            let mut receipts = Vec::new();
            for m in messages {
                let sent = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let Some(received) = Received::new(m) else {
                    continue;
                };
                receipts.push(received.receipt.clone());
                letters.push((
                    sent,
                    DeadLetter::new(
                        queue,
                        received.body(),
                        received.attrs.reason.clone().unwrap_or_default(),
                    ),
                ));
            }
            let entries = batch_entries(&receipts, |id, receipt| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(receipt)
                    .build()
            });
            let deleted = self
                .inner
                .client
                .delete_message_batch()
                .queue_url(&*url)
                .set_entries(Some(entries))
                .send()
                .await;
            // A letter not deleted comes back after the visibility timeout: hand it out then,
            // not twice. Letters of earlier rounds are deleted already and must be returned.
            match deleted {
                Ok(out) => {
                    let mut failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    failed.sort_unstable();
                    for i in failed.into_iter().rev() {
                        letters.remove(round_start + i);
                    }
                }
                Err(e) if round_start > 0 => {
                    warn!(queue, error = %DisplayErrorContext(&e), "could not delete dead letters; they come back later");
                    letters.truncate(round_start);
                    break;
                }
                Err(e) => {
                    return Err(self.failed(
                        format_args!("could not delete dead letters of `{queue}`"),
                        e,
                    ))
                }
            }
        }
        // SQS standard queues do not keep order; the sent time restores it within one take.
        letters.sort_by_key(|(sent, _)| *sent);
        Ok(letters.into_iter().map(|(_, l)| l).collect())
    }
}
