//! Consuming: [`SqsConsumer`] long-polls its queues within its prefetch, holds back messages
//! received before their time, and makes what it did not hand out visible again.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use ivy_core::sync::lock;
use ivy_core::{Consumer, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::config::{is_fifo, MAX_VISIBILITY};
use super::queues::queue_missing;
use super::visibility::{heartbeat, Tracker};
use super::wire::{ceil_secs, now_ms, Outgoing, Received};
use super::{ErrorChain, SqsBroker, SqsDelivery, FAILURE};
use crate::failure::BoxError;
use crate::settle;
/// One consumed queue.
#[derive(Debug)]
pub(super) struct QueueRef {
    pub(super) name: Arc<str>,
    /// Replaced when the queue vanishes and is found or created again.
    url: Mutex<Arc<str>>,
    pub(super) fifo: bool,
}

impl QueueRef {
    pub(super) fn new(name: &str, url: Arc<str>) -> Self {
        QueueRef {
            name: Arc::from(name),
            url: Mutex::new(url),
            fifo: is_fifo(name),
        }
    }

    /// The queue's URL as last looked up.
    pub(super) fn url(&self) -> Arc<str> {
        lock(&self.url).clone()
    }
}

impl SqsBroker {
    /// Handles a message received before its `ivy-not-before`: on a standard queue, send it
    /// again with (up to one hop of) the remaining delay and delete the original; on a FIFO
    /// queue, hide it until it is due.
    async fn redelay(&self, queue: &QueueRef, url: &str, message: Received, not_before: u64) {
        let remaining = Duration::from_millis(not_before.saturating_sub(now_ms()));
        let secs = ceil_secs(remaining).max(1);
        let result = if queue.fifo {
            // SQS counts the 12-hour limit from the receive: leave a minute's margin.
            let secs = secs.min(u64::from(MAX_VISIBILITY - 60)) as u32;
            self.change_visibility(url, &message.receipt, secs).await
        } else {
            let out = Outgoing {
                body: message.wire_body,
                attrs: message.attrs,
                delay_secs: secs.min(u64::from(self.config().max_delay)) as u32,
                fifo: None,
            };
            // Send first: if the delete then fails, the early copy comes back and is
            // re-sent again, a duplicate the not-before time keeps from running early.
            match self
                .send_to(&queue.name, false, out, "delay a message again")
                .await
            {
                Ok(()) => self.delete(url, &message.receipt).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => {
                debug!(queue = %queue.name, remaining = ?remaining, "message received before its time; delayed again")
            }
            Err(e) => {
                warn!(queue = %queue.name, error = %ErrorChain(&e), "could not delay an early message again; it reappears after the visibility timeout")
            }
        }
    }
}

/// A ReceiveMessage in flight, with the prefetch permits it may fill. It runs as a task of
/// its own so that a caller giving up on [`Consumer::next`] loses no received message.
struct Pending {
    queue: Arc<QueueRef>,
    url: Arc<str>,
    permits: Vec<OwnedSemaphorePermit>,
    /// The error says whether the queue is missing.
    task: JoinHandle<Result<Vec<Message>, (bool, BoxError)>>,
}

/// A received message waiting to be handed out.
struct Buffered {
    queue: Arc<QueueRef>,
    url: Arc<str>,
    received: Received,
    track_id: u64,
    permit: OwnedSemaphorePermit,
}

/// Deliveries from one or more SQS queues by long polling.
///
/// Never holds more than `prefetch` unsettled messages, received and handed out together.
/// Dropping it makes received messages not handed out yet visible again.
pub struct SqsConsumer {
    broker: SqsBroker,
    queues: Vec<Arc<QueueRef>>,
    next_queue: usize,
    permits: Arc<Semaphore>,
    tracker: Arc<Tracker>,
    buffer: VecDeque<Buffered>,
    pending: Option<Pending>,
    closed: bool,
}

impl fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConsumer")
            .field(
                "queues",
                &self.queues.iter().map(|q| &q.name).collect::<Vec<_>>(),
            )
            .field("buffered", &self.buffer.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SqsConsumer {
    /// A consumer of `queues`, with its heartbeat started.
    pub(super) fn new(broker: SqsBroker, queues: Vec<Arc<QueueRef>>, prefetch: usize) -> Self {
        let tracker = Arc::new(Tracker::default());
        tokio::spawn(heartbeat(
            broker.inner.client.clone(),
            Arc::downgrade(&tracker),
            broker.config().visibility_timeout,
        ));
        SqsConsumer {
            broker,
            queues,
            next_queue: 0,
            permits: Arc::new(Semaphore::new(prefetch)),
            tracker,
            buffer: VecDeque::new(),
            pending: None,
            closed: false,
        }
    }

    fn start_receive(&mut self, first: OwnedSemaphorePermit) {
        let mut permits = vec![first];
        while permits.len() < 10 {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let queue = self.queues[self.next_queue].clone();
        self.next_queue = (self.next_queue + 1) % self.queues.len();
        let config = self.broker.config();
        // With several queues a long poll on one would starve the others.
        let wait = if self.queues.len() == 1 {
            config.wait_time
        } else {
            config.wait_time.min(1)
        };
        let url = queue.url();
        let receive = self
            .broker
            .inner
            .client
            .receive_message()
            .queue_url(&*url)
            .max_number_of_messages(permits.len() as i32)
            .wait_time_seconds(wait as i32)
            .visibility_timeout(config.visibility_timeout as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All");
        let task = tokio::spawn(async move {
            receive
                .send()
                .await
                .map(|out| out.messages.unwrap_or_default())
                .map_err(|e| (queue_missing(&e), Box::new(e) as BoxError))
        });
        self.pending = Some(Pending {
            queue,
            url,
            permits,
            task,
        });
    }

    fn accept(
        &mut self,
        queue: Arc<QueueRef>,
        url: Arc<str>,
        messages: Vec<Message>,
        permits: Vec<OwnedSemaphorePermit>,
    ) {
        let now = now_ms();
        for (m, permit) in messages.into_iter().zip(permits) {
            let Some(received) = Received::new(m) else {
                continue;
            };
            if let Some(not_before) = received.attrs.not_before.filter(|t| *t > now) {
                let broker = self.broker.clone();
                let queue = queue.clone();
                let url = url.clone();
                // Detached: a caller giving up on `next` must not cut this half way.
                tokio::spawn(
                    async move { broker.redelay(&queue, &url, received, not_before).await },
                );
                continue;
            }
            let track_id = self.tracker.insert(url.clone(), received.receipt.clone());
            self.buffer.push_back(Buffered {
                queue: queue.clone(),
                url: url.clone(),
                received,
                track_id,
                permit,
            });
        }
    }

    /// Takes what was received but not handed out, for release.
    fn take_unhanded(&mut self) -> (Vec<(Arc<str>, String)>, Option<Pending>) {
        let buffered = self
            .buffer
            .drain(..)
            .map(|b| {
                self.tracker.remove(b.track_id);
                (b.url, b.received.receipt)
            })
            .collect();
        (buffered, self.pending.take())
    }
}

/// Makes messages visible again: the buffered ones, then those of a receive still in flight.
async fn release_unhanded(
    broker: SqsBroker,
    tracker: Arc<Tracker>,
    buffered: Vec<(Arc<str>, String)>,
    pending: Option<Pending>,
) {
    let mut by_url: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    for (url, receipt) in buffered {
        by_url.entry(url).or_default().push(receipt);
    }
    {
        let _sending = tracker.sending.lock().await;
        for (url, receipts) in by_url {
            broker.release(&url, receipts).await;
        }
    }
    if let Some(p) = pending {
        if let Ok(Ok(messages)) = p.task.await {
            let receipts = messages
                .into_iter()
                .filter_map(|m| m.receipt_handle)
                .collect();
            broker.release(&p.url, receipts).await;
        }
    }
}

impl Consumer for SqsConsumer {
    type Delivery = SqsDelivery;

    async fn next(&mut self) -> Option<Result<SqsDelivery>> {
        // A queue is looked up again at most once per call: one still missing right after
        // (SQS can take a moment to serve a new queue) is the caller's error to back off on.
        let mut renewed_once = false;
        loop {
            if self.closed {
                return None;
            }
            if let Some(b) = self.buffer.pop_front() {
                return Some(Ok(SqsDelivery::new(
                    self.broker.clone(),
                    b.queue,
                    b.url,
                    b.received,
                    self.tracker.clone(),
                    b.track_id,
                    b.permit,
                )));
            }
            if self.pending.is_none() {
                // Waits while `prefetch` messages are unsettled.
                let first = self.permits.clone().acquire_owned().await.ok()?;
                self.start_receive(first);
            }
            let pending = self.pending.as_mut().expect("a receive is in flight");
            let result = (&mut pending.task).await;
            let Pending {
                queue,
                url,
                permits,
                ..
            } = self.pending.take().expect("in flight");
            match result {
                Ok(Ok(messages)) => self.accept(queue, url, messages, permits),
                Ok(Err((true, e))) if !renewed_once => {
                    renewed_once = true;
                    match self.broker.renew_url(&queue.name, false).await {
                        // Poll the queue found or created again.
                        Ok(renewed) => *lock(&queue.url) = renewed,
                        Err(renew) => {
                            warn!(queue = %queue.name, error = %ErrorChain(&renew), "receiving from SQS failed: the queue does not exist");
                            return Some(Err(self.broker.failed(
                                format_args!("could not receive from `{}`", queue.name),
                                e,
                            )));
                        }
                    }
                }
                Ok(Err((_, e))) => {
                    warn!(queue = %queue.name, error = %ErrorChain(e.as_ref()), "receiving from SQS failed");
                    return Some(Err(self
                        .broker
                        .failed(format_args!("could not receive from `{}`", queue.name), e)));
                }
                Err(e) => {
                    return Some(Err(FAILURE.caused(
                        format!("receiving from `{}` was cut short", queue.name),
                        e,
                    )))
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let (buffered, pending) = self.take_unhanded();
        // A receive in flight can take the whole long poll to answer: release its messages
        // in the background rather than hold up the worker's shutdown.
        let broker = self.broker.clone();
        let tracker = self.tracker.clone();
        if let Some(p) = pending {
            tokio::spawn(release_unhanded(
                broker.clone(),
                tracker.clone(),
                Vec::new(),
                Some(p),
            ));
        }
        release_unhanded(broker, tracker, buffered, None).await;
        Ok(())
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        let (buffered, pending) = self.take_unhanded();
        if buffered.is_empty() && pending.is_none() {
            return;
        }
        settle::give_back_on_drop(release_unhanded(
            self.broker.clone(),
            self.tracker.clone(),
            buffered,
            pending,
        ));
    }
}
