//! Visibility: the heartbeat that keeps unsettled messages hidden while they run, and making
//! messages visible again (one, or ten per request).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use aws_sdk_sqs::Client;
use ivy_core::sync::lock;
use ivy_core::Result;
use tracing::{debug, warn};

use super::wire::batch_entries;
use super::{SqsBroker, FAILURE};

impl SqsBroker {
    pub(super) async fn change_visibility(
        &self,
        queue_url: &str,
        receipt: &str,
        secs: u32,
    ) -> Result<()> {
        self.inner
            .client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs as i32)
            .send()
            .await
            .map_err(|e| FAILURE.caused("could not change a message's visibility", e))?;
        Ok(())
    }

    /// Makes received messages visible again, ten per call.
    pub(super) async fn release(&self, queue_url: &str, receipts: Vec<String>) {
        change_visibility_batch(&self.inner.client, queue_url, &receipts, 0, |e| {
            debug!(error = %e, "could not release received messages; they reappear after the visibility timeout")
        })
        .await;
    }
}

/// The unsettled messages of one consumer, whose visibility the heartbeat extends.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    entries: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    /// Held by the heartbeat while it extends visibilities, and by a release while it makes
    /// a message visible: an extension landing after a release would hide the message again.
    pub(super) sending: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
pub(super) struct Tracked {
    queue_url: Arc<str>,
    receipt: String,
    extended_at: Instant,
}

impl Tracker {
    pub(super) fn insert(&self, queue_url: Arc<str>, receipt: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.entries).insert(
            id,
            Tracked {
                queue_url,
                receipt,
                extended_at: Instant::now(),
            },
        );
        id
    }

    pub(super) fn remove(&self, id: u64) {
        lock(&self.entries).remove(&id);
    }

    /// Entries due for an extension, grouped by queue URL, marked extended now.
    pub(super) fn due(&self, older_than: Duration) -> HashMap<Arc<str>, Vec<String>> {
        let now = Instant::now();
        let mut due: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for t in lock(&self.entries).values_mut() {
            if now.duration_since(t.extended_at) >= older_than {
                t.extended_at = now;
                due.entry(t.queue_url.clone())
                    .or_default()
                    .push(t.receipt.clone());
            }
        }
        due
    }
}

/// Keeps the unsettled messages of one consumer invisible until they are settled. Ends when
/// the consumer and all its deliveries are gone.
pub(super) async fn heartbeat(client: Client, tracker: Weak<Tracker>, visibility: u32) {
    let visibility_d = Duration::from_secs(u64::from(visibility));
    // Extend once a third of the timeout has passed, checking every sixth: an extension is
    // sent with at least half the timeout left.
    let extend_after = visibility_d / 3;
    let tick = (visibility_d / 6).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        let Some(t) = tracker.upgrade() else {
            return;
        };
        let due = t.due(extend_after);
        if due.is_empty() {
            continue;
        }
        let _sending = t.sending.lock().await;
        for (url, receipts) in due {
            change_visibility_batch(
                &client,
                &url,
                &receipts,
                visibility as i32,
                |e| warn!(error = %e, "could not extend visibility; a long task may run twice"),
            )
            .await;
        }
    }
}

/// Sets the visibility timeout of `receipts`, ten per request. `on_error` hears of a failed
/// request; a failed single entry is a message settled meanwhile and only logged.
pub(super) async fn change_visibility_batch(
    client: &Client,
    queue_url: &str,
    receipts: &[String],
    timeout: i32,
    on_error: impl Fn(&dyn fmt::Display),
) {
    for chunk in receipts.chunks(10) {
        let entries = batch_entries(chunk, |id, receipt| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(id)
                .receipt_handle(receipt)
                .visibility_timeout(timeout)
                .build()
        });
        match client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for f in out.failed() {
                    debug!(code = f.code(), "visibility not changed for one message");
                }
            }
            Err(e) => on_error(&DisplayErrorContext(&e)),
        }
    }
}
