//! Deletes in batches: SQS is billed per request, so a delete waits up to [`FLUSH_AFTER`] for
//! others on the same queue and up to ten go in one `DeleteMessageBatch`. Each caller still
//! hears of its own message: `Ok` once SQS confirmed that entry, its own error otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use ivy_core::sync::lock;
use ivy_core::Result;
use tokio::sync::oneshot;

use super::wire::batch_entries;
use super::{SqsBroker, FAILURE};

/// How long the first delete of a batch waits for others.
const FLUSH_AFTER: Duration = Duration::from_millis(5);

/// The most entries SQS takes in one batch.
const BATCH: usize = 10;

/// One delete waiting: its receipt handle and where its result goes.
type Entry = (String, oneshot::Sender<Result<()>>);

/// The batches being filled, one per queue URL.
#[derive(Debug, Default)]
pub(super) struct Deletes {
    open: Mutex<HashMap<Arc<str>, Open>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Open {
    /// Tells the timer of this batch from that of a later one on the same queue.
    id: u64,
    entries: Vec<Entry>,
}

impl SqsBroker {
    /// Deletes a received message, in a batch with others on the same queue; returns once SQS
    /// reported on this one. The delete is sent even if the caller stops waiting.
    pub(super) async fn delete(&self, queue_url: &str, receipt: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let full = {
            let deletes = &self.inner.deletes;
            let mut open = lock(&deletes.open);
            let batch = match open.get_mut(queue_url) {
                Some(batch) => batch,
                None => {
                    let url: Arc<str> = queue_url.into();
                    let id = deletes.next_id.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(self.clone().flush_later(url.clone(), id));
                    open.entry(url).or_insert(Open {
                        id,
                        entries: Vec::with_capacity(BATCH),
                    })
                }
            };
            batch.entries.push((receipt.to_owned(), tx));
            if batch.entries.len() >= BATCH {
                open.remove(queue_url).map(|batch| batch.entries)
            } else {
                None
            }
        };
        if let Some(entries) = full {
            let url: Arc<str> = queue_url.into();
            tokio::spawn(self.clone().delete_batch(url, entries));
        }
        rx.await.unwrap_or_else(|_| {
            Err(FAILURE.error(format!(
                "could not delete a message at {}: its batch was dropped unsent",
                self.inner.config.url
            )))
        })
    }

    /// Sends batch `id` of `url` after [`FLUSH_AFTER`], unless it filled up and went already.
    async fn flush_later(self, url: Arc<str>, id: u64) {
        tokio::time::sleep(FLUSH_AFTER).await;
        let entries = {
            let mut open = lock(&self.inner.deletes.open);
            match open.get(&url) {
                Some(batch) if batch.id == id => open.remove(&url).map(|batch| batch.entries),
                _ => None,
            }
        };
        if let Some(entries) = entries {
            self.delete_batch(url, entries).await;
        }
    }

    /// One `DeleteMessageBatch`, whose per-entry results go to each entry's caller.
    async fn delete_batch(self, url: Arc<str>, entries: Vec<Entry>) {
        let receipts: Vec<String> = entries.iter().map(|(r, _)| r.clone()).collect();
        let batch = batch_entries(&receipts, |id, receipt| {
            DeleteMessageBatchRequestEntry::builder()
                .id(id)
                .receipt_handle(receipt)
                .build()
        });
        let sent = self
            .inner
            .client
            .delete_message_batch()
            .queue_url(&*url)
            .set_entries(Some(batch))
            .send()
            .await;
        let mut results: Vec<Option<Result<()>>> = entries.iter().map(|_| None).collect();
        match sent {
            Ok(out) => {
                for ok in out.successful() {
                    if let Some(slot) = ok
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| results.get_mut(i))
                    {
                        *slot = Some(Ok(()));
                    }
                }
                for failed in out.failed() {
                    if let Some(slot) = failed
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| results.get_mut(i))
                    {
                        // The code only: SQS's message quotes the receipt handle.
                        let why = format!(
                            "SQS refused it ({} fault): {}",
                            if failed.sender_fault() {
                                "sender"
                            } else {
                                "server"
                            },
                            failed.code()
                        );
                        *slot = Some(Err(FAILURE.error(format!(
                            "could not delete a message at {}: {why}",
                            self.inner.config.url
                        ))));
                    }
                }
            }
            Err(e) => {
                let cause = DisplayErrorContext(&e).to_string();
                for slot in &mut results {
                    *slot = Some(Err(self.failed("could not delete a message", cause.clone())));
                }
            }
        }
        for ((_, reply), result) in entries.into_iter().zip(results) {
            let result = result.unwrap_or_else(|| {
                Err(FAILURE.error(format!(
                    "could not delete a message at {}: SQS did not report on it",
                    self.inner.config.url
                )))
            });
            // A caller that stopped waiting does not need to hear.
            let _ = reply.send(result);
        }
    }
}
