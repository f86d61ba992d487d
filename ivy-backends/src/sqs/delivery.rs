//! One message from SQS, [`SqsDelivery`], and how it is settled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ivy_core::{Delivery, Result};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::consumer::QueueRef;
use super::visibility::Tracker;
use super::wire::Received;
use super::{ErrorChain, SqsBroker, FAILURE};
use crate::settle::{self, Remove};

impl SqsBroker {
    pub(super) async fn delete(&self, queue_url: &str, receipt: &str) -> Result<()> {
        self.inner
            .client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| FAILURE.caused("could not delete a message", e))?;
        Ok(())
    }
}

/// One message from SQS. Dropping it unsettled makes it visible again at once.
pub struct SqsDelivery {
    broker: SqsBroker,
    queue: Arc<QueueRef>,
    /// The URL it was received from, which its receipt handle belongs to.
    url: Arc<str>,
    body: Vec<u8>,
    receipt: String,
    redelivered: bool,
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

    async fn retry(self, body: Vec<u8>, delay: Duration) -> Result<()> {
        // A fresh deduplication id: the task id would make a FIFO queue drop the retry.
        let out = self
            .broker
            .plan(&self.queue.name, &body, Some(delay), None, None)?;
        settle::replace(self, async |d: &Self| {
            let what = format!("retry on `{}`", d.queue.name);
            d.broker.send_to(&d.queue.name, false, out, &what).await
        })
        .await
    }

    async fn dead_letter(self, reason: String) -> Result<()> {
        let out = self
            .broker
            .plan(&self.queue.name, &self.body, None, None, Some(&reason))?;
        settle::replace(self, async |d: &Self| {
            let what = format!("dead-letter on `{}`", d.queue.name);
            d.broker.send_to(&d.queue.name, true, out, &what).await
        })
        .await
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
