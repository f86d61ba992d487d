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
    body: Vec<u8>,
    receipt: String,
    redelivered: bool,
    tracker: Arc<Tracker>,
    track_id: u64,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for SqsDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsDelivery")
            .field("queue", &self.queue.name)
            .field("len", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl SqsDelivery {
    pub(super) fn new(
        broker: SqsBroker,
        queue: Arc<QueueRef>,
        received: Received,
        tracker: Arc<Tracker>,
        track_id: u64,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        SqsDelivery {
            broker,
            body: received.body(),
            queue,
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

    async fn delete_now(&mut self) -> Result<()> {
        self.settle();
        self.broker.delete(&self.queue.url, &self.receipt).await
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
        self.delete_now().await
    }

    async fn retry(mut self, body: Vec<u8>, delay: Duration) -> Result<()> {
        // A fresh deduplication id: the task id would make a FIFO queue drop the retry.
        let out = self
            .broker
            .plan(&self.queue.name, &body, Some(delay), None, None)?;
        // Send first: if that fails, dropping `self` returns the original.
        self.broker
            .send(
                &self.queue.url,
                out,
                &format!("retry on `{}`", self.queue.name),
            )
            .await?;
        self.delete_now().await
    }

    async fn dead_letter(mut self, reason: String) -> Result<()> {
        let out = self
            .broker
            .plan(&self.queue.name, &self.body, None, None, Some(&reason))?;
        let dead = self.broker.dead_url(&self.queue.name).await?;
        self.broker
            .send(&dead, out, &format!("dead-letter on `{}`", self.queue.name))
            .await?;
        self.delete_now().await
    }

    async fn requeue(mut self) -> Result<()> {
        self.settle();
        let _sending = self.tracker.sending.lock().await;
        self.broker
            .change_visibility(&self.queue.url, &self.receipt, 0)
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
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let broker = self.broker.clone();
            let tracker = self.tracker.clone();
            let url = self.queue.url.clone();
            let receipt = std::mem::take(&mut self.receipt);
            runtime.spawn(async move {
                let _sending = tracker.sending.lock().await;
                if let Err(e) = broker.change_visibility(&url, &receipt, 0).await {
                    debug!(error = %ErrorChain(&e), "could not return a dropped delivery; it reappears after the visibility timeout");
                }
            });
        }
    }
}
