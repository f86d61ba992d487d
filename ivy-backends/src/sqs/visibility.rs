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
use tracing::{debug, error, warn};

use super::config::MAX_VISIBILITY;
use super::wire::batch_entries;
use super::SqsBroker;

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
            .map_err(|e| self.failed("could not change a message's visibility", e))?;
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
    /// Held by the heartbeat from choosing what to extend until the extensions are sent, and
    /// by a release while it makes a message visible: an extension landing after a release
    /// would hide the message again.
    pub(super) sending: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
pub(super) struct Tracked {
    queue_url: Arc<str>,
    receipt: String,
    received_at: Instant,
    /// When the last extension SQS confirmed was sent.
    extended_at: Instant,
    /// Past SQS's 12-hour cap: no longer extended (and reported once).
    capped: bool,
}

/// One extension to send: tracker id, receipt handle, new timeout in seconds.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Extension {
    pub(super) id: u64,
    pub(super) receipt: String,
    pub(super) secs: u32,
}

/// What the heartbeat has to do at one check.
#[derive(Debug, Default)]
pub(super) struct DueNow {
    /// Extensions to send, by queue URL.
    pub(super) extend: HashMap<Arc<str>, Vec<Extension>>,
    /// Messages that reached SQS's 12-hour cap at this check, by queue URL.
    pub(super) capped: Vec<Arc<str>>,
}

/// A margin under SQS's 12-hour cap (counted from the receive, which came a little before the
/// message was tracked).
const CAP_MARGIN: Duration = Duration::from_secs(10);

impl Tracker {
    pub(super) fn insert(&self, queue_url: Arc<str>, receipt: String) -> u64 {
        self.insert_at(queue_url, receipt, Instant::now())
    }

    fn insert_at(&self, queue_url: Arc<str>, receipt: String, now: Instant) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.entries).insert(
            id,
            Tracked {
                queue_url,
                receipt,
                received_at: now,
                extended_at: now,
                capped: false,
            },
        );
        id
    }

    pub(super) fn remove(&self, id: u64) {
        lock(&self.entries).remove(&id);
    }

    /// What is due at `now`: an extension to `visibility` seconds for each entry not extended
    /// for `older_than` (an extension that failed is not confirmed, so it is due again at the
    /// next check), cut short so as not to pass SQS's 12-hour cap; entries that reach the cap
    /// are reported once and then left alone.
    pub(super) fn due(&self, now: Instant, older_than: Duration, visibility: u32) -> DueNow {
        let cap = Duration::from_secs(u64::from(MAX_VISIBILITY)) - CAP_MARGIN;
        let mut due = DueNow::default();
        for (id, t) in lock(&self.entries).iter_mut() {
            if t.capped || now.saturating_duration_since(t.extended_at) < older_than {
                continue;
            }
            let left = cap.saturating_sub(now.saturating_duration_since(t.received_at));
            let secs = (left.as_secs() as u32).min(visibility);
            if secs == 0 {
                t.capped = true;
                due.capped.push(t.queue_url.clone());
                continue;
            }
            due.extend
                .entry(t.queue_url.clone())
                .or_default()
                .push(Extension {
                    id: *id,
                    receipt: t.receipt.clone(),
                    secs,
                });
        }
        due
    }

    /// Records that SQS confirmed the extensions of `ids`, sent at `at`.
    pub(super) fn extended(&self, ids: &[u64], at: Instant) {
        let mut entries = lock(&self.entries);
        for id in ids {
            if let Some(t) = entries.get_mut(id) {
                t.extended_at = at;
            }
        }
    }
}

/// Keeps the unsettled messages of one consumer invisible until they are settled. Ends when
/// the consumer and all its deliveries are gone.
pub(super) async fn heartbeat(client: Client, tracker: Weak<Tracker>, visibility: u32) {
    let visibility_d = Duration::from_secs(u64::from(visibility));
    // Extend once a third of the timeout has passed, checking every sixth: an extension is
    // sent with at least half the timeout left, and a failed one is tried again a sixth later.
    let extend_after = visibility_d / 3;
    let tick = (visibility_d / 6).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        let Some(t) = tracker.upgrade() else {
            return;
        };
        // Chosen under the lock: a message released meanwhile is no longer tracked.
        let _sending = t.sending.lock().await;
        let now = Instant::now();
        let due = t.due(now, extend_after, visibility);
        for queue_url in &due.capped {
            error!(%queue_url, hours = MAX_VISIBILITY / 3600, "a task has run for as long as SQS keeps a message hidden; its message will be delivered again while it runs");
        }
        for (url, extensions) in due.extend {
            // Each extension has its own length: group the equal ones.
            let mut by_secs: HashMap<u32, Vec<&Extension>> = HashMap::new();
            for e in &extensions {
                by_secs.entry(e.secs).or_default().push(e);
            }
            for (secs, group) in by_secs {
                let receipts: Vec<String> = group.iter().map(|e| e.receipt.clone()).collect();
                let done = change_visibility_batch(&client, &url, &receipts, secs as i32, |e| {
                    warn!(error = %e, "could not extend visibility; trying again at the next check")
                })
                .await;
                let ids: Vec<u64> = done.into_iter().map(|i| group[i].id).collect();
                t.extended(&ids, now);
            }
        }
    }
}

/// Sets the visibility timeout of `receipts`, ten per request, and returns the indexes (into
/// `receipts`) of those SQS changed. `on_error` hears of a failed request; a failed single
/// entry is a message settled meanwhile and only logged.
pub(super) async fn change_visibility_batch(
    client: &Client,
    queue_url: &str,
    receipts: &[String],
    timeout: i32,
    on_error: impl Fn(&dyn fmt::Display),
) -> Vec<usize> {
    let mut done = Vec::new();
    for (n, chunk) in receipts.chunks(10).enumerate() {
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
                done.extend(
                    out.successful()
                        .iter()
                        .filter_map(|s| s.id().parse::<usize>().ok())
                        .map(|i| n * 10 + i),
                );
            }
            Err(e) => on_error(&DisplayErrorContext(&e)),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    const THIRD: Duration = Duration::from_secs(10);

    fn receipts(due: &DueNow) -> Vec<(String, u32)> {
        let mut list: Vec<(String, u32)> = due
            .extend
            .values()
            .flatten()
            .map(|e| (e.receipt.clone(), e.secs))
            .collect();
        list.sort();
        list
    }

    #[test]
    fn an_extension_counts_once_sqs_confirmed_it() {
        let t = Tracker::default();
        let start = Instant::now();
        let id = t.insert_at("q".into(), "r".into(), start);
        assert!(receipts(&t.due(start, THIRD, 30)).is_empty());
        let check = start + THIRD;
        assert_eq!(receipts(&t.due(check, THIRD, 30)), [("r".into(), 30)]);
        // The request failed: the next check tries again.
        let next = check + Duration::from_secs(5);
        assert_eq!(receipts(&t.due(next, THIRD, 30)), [("r".into(), 30)]);
        // Confirmed: not due until a third of the timeout later.
        t.extended(&[id], next);
        assert!(receipts(&t.due(next + Duration::from_secs(5), THIRD, 30)).is_empty());
        assert_eq!(receipts(&t.due(next + THIRD, THIRD, 30)).len(), 1);
        // Settled or released: never extended again.
        t.remove(id);
        assert!(receipts(&t.due(next + THIRD * 10, THIRD, 30)).is_empty());
    }

    #[test]
    fn extensions_stop_at_the_twelve_hour_cap() {
        let t = Tracker::default();
        let start = Instant::now();
        let id = t.insert_at("q".into(), "r".into(), start);
        let cap = Duration::from_secs(u64::from(MAX_VISIBILITY)) - CAP_MARGIN;
        // Twenty seconds before the cap, a 30 s extension is cut to 20 s.
        let near = start + cap - Duration::from_secs(20);
        assert_eq!(receipts(&t.due(near, THIRD, 30)), [("r".into(), 20)]);
        t.extended(&[id], near);
        // At the cap: reported once, then left alone.
        let at_cap = start + cap;
        let due = t.due(at_cap, THIRD, 30);
        assert!(due.extend.is_empty());
        assert_eq!(due.capped.len(), 1);
        let later = t.due(at_cap + THIRD, THIRD, 30);
        assert!(later.extend.is_empty() && later.capped.is_empty());
    }
}
