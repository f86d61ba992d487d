//! One message from SQS, [`SqsDelivery`], and how it is settled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ivy_core::{Delivery, Error, Result};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use super::consumer::QueueRef;
use super::visibility::Tracker;
use super::wire::Received;
use super::{ErrorChain, SqsBroker};
use crate::settle::{self, Remove};

/// One message from SQS. Dropping it unsettled makes it visible again at once.
pub struct SqsDelivery {
    broker: SqsBroker,
    queue: Arc<QueueRef>,
    /// The URL it was received from, which its receipt handle belongs to.
    url: Arc<str>,
    body: Vec<u8>,
    receipt: String,
    redelivered: bool,
    receive_count: u32,
    tracker: Arc<Tracker>,
    track_id: u64,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl SqsDelivery {
    pub(super) fn new(
        broker: SqsBroker,
        queue: Arc<QueueRef>,
        url: Arc<str>,
        received: Received,
        tracker: Arc<Tracker>,
        track_id: u64,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        SqsDelivery {
            broker,
            body: received.body(),
            queue,
            url,
            receipt: received.receipt,
            redelivered: received.receive_count > 1,
            receive_count: received.receive_count,
            tracker,
            track_id,
            settled: false,
            _permit: permit,
        }
    }

    /// Marks the delivery settled and stops its heartbeat.
    fn settle(&mut self) {
        self.settled = true;
        self.tracker.remove(self.track_id);
    }

    /// Removes the original once its replacement (a retry, a dead letter) is `sent`, or backs
    /// off when it was not.
    async fn finish(mut self, sent: Result<()>) -> Result<()> {
        match sent {
            Ok(()) => self.remove().await,
            Err(e) => self.back_off(e).await,
        }
    }

    /// After a failure to settle: the message stays hidden for [`settle_backoff`] of its
    /// receive count instead of coming straight back, then is received again. Returns `error`.
    async fn back_off(mut self, error: Error) -> Result<()> {
        self.settle();
        let secs = settle_backoff(self.receive_count);
        warn!(queue = %self.queue.name, error = %ErrorChain(&error), secs, "could not settle a message; it comes back after a pause");
        let _sending = self.tracker.sending.lock().await;
        if let Err(e) = self
            .broker
            .change_visibility(&self.url, &self.receipt, secs)
            .await
        {
            debug!(error = %ErrorChain(&e), "could not pause a message; it reappears after the visibility timeout");
        }
        Err(error)
    }
}

/// How long a message that could not be settled stays hidden, by its receive count: 2 s after
/// the first receive, doubling each time, at most 15 minutes.
pub(super) fn settle_backoff(receive_count: u32) -> u32 {
    2u32.saturating_pow(receive_count.clamp(1, 10)).min(900)
}

impl Remove for SqsDelivery {
    async fn remove(&mut self) -> Result<()> {
        self.settle();
        self.broker.delete(&self.url, &self.receipt).await
    }
}

impl Delivery for SqsDelivery {
    fn body(&self) -> &[u8] {
        &self.body
    }

    fn queue(&self) -> &str {
        &self.queue.name
    }

    fn redelivered(&self) -> bool {
        self.redelivered
    }

    async fn ack(mut self) -> Result<()> {
        self.remove().await
    }

    fn fits<'a>(&'a self, body: &'a [u8]) -> impl std::future::Future<Output = bool> + Send + 'a {
        let (broker, queue) = (self.broker.clone(), self.queue.clone());
        async move {
            let limit = broker.size_limit(&queue.name, false).await;
            // As `retry` plans it (a delay adds an attribute).
            let planned = broker.plan(
                &queue.name,
                body,
                Some(Duration::from_secs(1)),
                None,
                None,
                limit,
            );
            !matches!(planned, Err(Error::MessageTooLarge { .. }))
        }
    }

    async fn retry(self, body: Vec<u8>, delay: Duration) -> Result<()> {
        let limit = self.broker.size_limit(&self.queue.name, false).await;
        // A fresh deduplication id: the task id would make a FIFO queue drop the retry.
        let planned = self
            .broker
            .plan(&self.queue.name, &body, Some(delay), None, None, limit);
        let out = match planned {
            Ok(out) => out,
            // The retry never will fit, so the call must end, but the caller must end it: it
            // owes the call's caller a final result and the dead letter a reason. Nothing is
            // settled; the message comes back at once, as from any dropped delivery.
            Err(e @ Error::MessageTooLarge { .. }) => return Err(e),
            Err(e) => return self.back_off(e).await,
        };
        let what = format!("retry on `{}`", self.queue.name);
        let sent = self
            .broker
            .send_to(&self.queue.name, false, out, &what)
            .await;
        self.finish(sent).await
    }

    async fn dead_letter(self, reason: String) -> Result<()> {
        let limit = self.broker.size_limit(&self.queue.name, true).await;
        let planned = self.broker.plan(
            &self.queue.name,
            &self.body,
            None,
            None,
            Some(&reason),
            limit,
        );
        let out = match planned {
            Ok(out) => out,
            Err(e) => return self.back_off(e).await,
        };
        let what = format!("dead-letter on `{}`", self.queue.name);
        let sent = self
            .broker
            .send_to(&self.queue.name, true, out, &what)
            .await;
        self.finish(sent).await
    }

    async fn requeue(mut self) -> Result<()> {
        self.settle();
        let _sending = self.tracker.sending.lock().await;
        self.broker
            .change_visibility(&self.url, &self.receipt, 0)
            .await
    }
}

impl Drop for SqsDelivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.settle();
        // Without this the message would stay hidden for the rest of its visibility timeout.
        let broker = self.broker.clone();
        let tracker = self.tracker.clone();
        let url = self.url.clone();
        let receipt = std::mem::take(&mut self.receipt);
        settle::give_back_on_drop(async move {
            let _sending = tracker.sending.lock().await;
            if let Err(e) = broker.change_visibility(&url, &receipt, 0).await {
                debug!(error = %ErrorChain(&e), "could not return a dropped delivery; it reappears after the visibility timeout");
            }
        });
    }
}

impl fmt::Debug for SqsDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        settle::debug(self, "SqsDelivery", f)
    }
}

#[cfg(test)]
mod tests {
    use super::settle_backoff;

    #[test]
    fn settling_backs_off_within_a_bound() {
        assert_eq!(settle_backoff(0), 2);
        assert_eq!(settle_backoff(1), 2);
        assert_eq!(settle_backoff(2), 4);
        assert_eq!(settle_backoff(9), 512);
        assert_eq!(settle_backoff(10), 900);
        assert_eq!(settle_backoff(u32::MAX), 900);
    }
}
