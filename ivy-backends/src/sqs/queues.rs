//! Queue URLs: looked up once per queue and cached, and queues created when missing (a
//! work queue after its dead-letter queue).

use std::sync::Arc;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::QueueAttributeName;
use ivy_core::sync::lock;
use ivy_core::Result;
use tracing::{debug, warn};

use super::config::is_fifo;
use super::{ErrorChain, SqsBroker, FAILURE, MAX_MESSAGE_SIZE};
/// Whether an SQS error says the queue does not exist (any more): the JSON protocol's
/// `QueueDoesNotExist`, or the query protocol's `AWS.SimpleQueueService.NonExistentQueue`.
pub(super) fn queue_missing(e: &impl ProvideErrorMetadata) -> bool {
    e.code()
        .is_some_and(|c| c == "QueueDoesNotExist" || c.contains("NonExistentQueue"))
}

/// Dead letters are kept as long as SQS allows (14 days): someone has to look at them.
const DEAD_RETENTION_SECS: &str = "1209600";

impl SqsBroker {
    /// The URL of the work queue (`dead` false) or dead-letter queue of Ivy queue `queue`,
    /// creating it when missing (if allowed): a new work queue gets its dead-letter queue
    /// alongside. `Ok(None)` when it does not exist and `create` is false.
    pub(super) async fn queue_url(
        &self,
        queue: &str,
        dead: bool,
        create: bool,
    ) -> Result<Option<Arc<str>>> {
        let name = self.config().sqs_name(queue, dead);
        if let Some(url) = lock(&self.inner.urls).get(&name) {
            return Ok(Some(url.clone()));
        }
        let url = match self
            .inner
            .client
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
        {
            Ok(out) => out.queue_url().map(Arc::from),
            Err(e) => {
                if !queue_missing(&e) {
                    return Err(
                        self.failed(format_args!("could not look up SQS queue `{name}`"), e)
                    );
                }
                if !create {
                    return Ok(None);
                }
                if !self.config().create_queues {
                    return Err(FAILURE.error(format!(
                        "SQS queue `{name}` does not exist, and the URL says create_queues=false"
                    )));
                }
                if !dead {
                    // Dead letters must have somewhere to go before any work arrives.
                    Box::pin(self.queue_url(queue, true, true)).await?;
                }
                Some(self.create_queue(&name, is_fifo(queue), dead).await?)
            }
        };
        let url = url.ok_or_else(|| FAILURE.error(format!("SQS gave no URL for `{name}`")))?;
        lock(&self.inner.urls).insert(name, url.clone());
        Ok(Some(url))
    }

    pub(super) async fn create_queue(
        &self,
        name: &str,
        fifo: bool,
        dead: bool,
    ) -> Result<Arc<str>> {
        let mut create = self
            .inner
            .client
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                self.config().visibility_timeout.to_string(),
            );
        if fifo {
            create = create.attributes(QueueAttributeName::FifoQueue, "true");
        }
        if dead {
            create = create.attributes(
                QueueAttributeName::MessageRetentionPeriod,
                DEAD_RETENTION_SECS,
            );
        }
        let out = create
            .send()
            .await
            .map_err(|e| self.failed(format_args!("could not create SQS queue `{name}`"), e))?;
        debug!(queue = name, "created SQS queue");
        out.queue_url()
            .map(Arc::from)
            .ok_or_else(|| FAILURE.error(format!("SQS gave no URL for `{name}`")))
    }

    /// Forgets the cached URL of a queue that turned out to be gone, so that the next
    /// lookup finds (or creates) it again.
    pub(super) fn forget_url(&self, queue: &str, dead: bool) {
        let name = self.config().sqs_name(queue, dead);
        lock(&self.inner.limits).remove(&name);
        lock(&self.inner.urls).remove(&name);
    }

    /// The URL of a work queue that vanished (deleted, or the server restarted): looked up
    /// again, and created again when creating queues is allowed.
    pub(super) async fn renew_url(&self, queue: &str, dead: bool) -> Result<Arc<str>> {
        self.forget_url(queue, dead);
        warn!(
            queue,
            dead, "SQS queue does not exist any more; looking it up or creating it again"
        );
        if dead {
            self.dead_url(queue).await
        } else {
            self.work_url(queue).await
        }
    }

    /// The size limit of the work queue (`dead` false) or dead-letter queue of Ivy queue
    /// `queue`: its `MaximumMessageSize`, looked up once, or [`MAX_MESSAGE_SIZE`] when that
    /// cannot be found out.
    pub(super) async fn size_limit(&self, queue: &str, dead: bool) -> usize {
        let name = self.config().sqs_name(queue, dead);
        if let Some(limit) = lock(&self.inner.limits).get(&name) {
            return *limit;
        }
        let url = match self.queue_url(queue, dead, true).await {
            Ok(Some(url)) => url,
            Ok(None) => return MAX_MESSAGE_SIZE,
            Err(e) => {
                debug!(queue = name, error = %ErrorChain(&e), "could not find a queue's size limit");
                return MAX_MESSAGE_SIZE;
            }
        };
        let limit = self
            .inner
            .client
            .get_queue_attributes()
            .queue_url(&*url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .map_err(|e| debug!(queue = name, error = %DisplayErrorContext(&e), "could not read a queue's size limit"))
            .ok()
            .and_then(|out| {
                out.attributes()?
                    .get(&QueueAttributeName::MaximumMessageSize)?
                    .parse::<usize>()
                    .ok()
            });
        match limit {
            Some(limit) => {
                lock(&self.inner.limits).insert(name, limit);
                limit
            }
            None => MAX_MESSAGE_SIZE,
        }
    }

    pub(super) async fn work_url(&self, queue: &str) -> Result<Arc<str>> {
        self.queue_url(queue, false, true)
            .await?
            .ok_or_else(|| FAILURE.error(format!("SQS queue for `{queue}` is missing")))
    }

    pub(super) async fn dead_url(&self, queue: &str) -> Result<Arc<str>> {
        self.queue_url(queue, true, true)
            .await?
            .ok_or_else(|| FAILURE.error(format!("SQS dead-letter queue for `{queue}` is missing")))
    }
}
