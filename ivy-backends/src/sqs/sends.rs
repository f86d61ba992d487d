//! Sends in batches: SQS is billed per request, so concurrent sends to one queue share a
//! `SendMessageBatch` of up to ten (the most SQS takes, and at most [`MAX_MESSAGE_SIZE`] in
//! all).
//!
//! A send to a queue with no request in flight goes at once, alone (a `SendMessage`): a lone
//! call waits for nothing. Sends that arrive while a request is in flight wait for it to land (at most
//! [`LINGER`]) and then go together; a batch that fills up goes at once, up to
//! [`MAX_IN_FLIGHT`] requests per queue (one on a FIFO queue, whose order it keeps). This is
//! group commit: the busier the producer, the fuller the batches, with no timer on a quiet
//! one. Each caller hears of its own message: `Ok` once SQS confirmed that entry, that
//! entry's error otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use ivy_core::sync::lock;
use ivy_core::{Error, OutgoingMessage, Result};
use tokio::sync::oneshot;

use super::config::is_fifo;
use super::queues::queue_missing;
use super::wire::Outgoing;
use super::{ErrorChain, SqsBroker, FAILURE, MAX_MESSAGE_SIZE};

/// The most entries SQS takes in one batch.
const BATCH: usize = 10;

/// The longest a send waits behind a request in flight before it goes anyway.
pub(super) const LINGER: Duration = Duration::from_millis(20);

/// Requests in flight per standard queue: enough that a busy producer is not held to one
/// round trip per ten messages.
const MAX_IN_FLIGHT: usize = 16;

/// Where a send's result goes.
type Reply = oneshot::Sender<Result<()>>;

/// One send waiting for its batch.
struct Waiting {
    out: Outgoing,
    /// Body and attributes as SQS counts them.
    size: usize,
    reply: Reply,
}

/// The sends of every queue, by Ivy queue name.
#[derive(Default)]
pub(super) struct Sends {
    queues: Mutex<HashMap<Arc<str>, QueueSends>>,
}

impl std::fmt::Debug for Sends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sends").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct QueueSends {
    in_flight: usize,
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
    /// Counts the batches taken: tells a [`LINGER`] timer whether the sends it was started
    /// for are still first in line.
    epoch: u64,
}

impl QueueSends {
    fn full(&self) -> bool {
        self.waiting.len() >= BATCH || self.waiting_bytes >= MAX_MESSAGE_SIZE
    }

    /// The batches that may go now: one (even partial) when nothing is in flight, and every
    /// full one, within `limit` requests in flight.
    fn ready(&mut self, limit: usize) -> Vec<Vec<Waiting>> {
        let mut out = Vec::new();
        while !self.waiting.is_empty()
            && self.in_flight < limit
            && (self.in_flight == 0 || self.full())
        {
            out.push(self.take_batch());
        }
        out
    }

    /// The first batch in line, counted in flight.
    fn take_batch(&mut self) -> Vec<Waiting> {
        self.epoch += 1;
        self.in_flight += 1;
        let mut batch = Vec::with_capacity(BATCH.min(self.waiting.len()));
        let mut bytes = 0;
        while let Some(w) = self.waiting.front() {
            if batch.len() == BATCH || (!batch.is_empty() && bytes + w.size > MAX_MESSAGE_SIZE) {
                break;
            }
            bytes += w.size;
            self.waiting_bytes -= w.size;
            batch.extend(self.waiting.pop_front());
        }
        batch
    }
}

/// Requests in flight allowed on `queue`.
fn limit(queue: &str) -> usize {
    if is_fifo(queue) {
        1
    } else {
        MAX_IN_FLIGHT
    }
}

/// What to do after a change to a queue's sends: the batches to send and, when sends are
/// left waiting behind requests in flight, the epoch to start a [`LINGER`] timer for.
struct Next {
    batches: Vec<Vec<Waiting>>,
    linger: Option<u64>,
}

impl SqsBroker {
    /// Sends `msgs` (planned already), each to its queue, in batches with whatever else is
    /// being sent; one result per message, in order.
    pub(super) async fn send_all(&self, msgs: Vec<(Arc<str>, Outgoing)>) -> Vec<Result<()>> {
        let mut receivers = Vec::with_capacity(msgs.len());
        let mut run: Vec<(Outgoing, Reply)> = Vec::new();
        let mut run_queue: Option<Arc<str>> = None;
        // Consecutive messages of one queue are queued together, so full batches form at once.
        for (queue, out) in msgs {
            if run_queue.as_ref().is_some_and(|q| *q != queue) {
                let q = run_queue.take().expect("checked");
                self.enqueue(q, std::mem::take(&mut run));
            }
            run_queue = Some(queue);
            let (tx, rx) = oneshot::channel();
            run.push((out, tx));
            receivers.push(rx);
        }
        if let Some(q) = run_queue {
            self.enqueue(q, run);
        }
        let mut results = Vec::with_capacity(receivers.len());
        for rx in receivers {
            results.push(rx.await.unwrap_or_else(|_| {
                Err(FAILURE.error(format!(
                    "could not publish at {}: its batch was dropped unsent",
                    self.inner.config.url
                )))
            }));
        }
        results
    }

    /// Plans each of `msgs` as a producer's call and sends those that pass in batches; one
    /// result per message, in order.
    pub(super) async fn publish_calls(&self, msgs: Vec<OutgoingMessage>) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(msgs.len());
        let mut planned = Vec::with_capacity(msgs.len());
        let mut slots = Vec::with_capacity(msgs.len());
        for msg in msgs {
            match self.plan_call(&msg) {
                Ok(out) => {
                    slots.push(results.len());
                    results.push(None);
                    planned.push((Arc::from(msg.queue), out));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        for (slot, sent) in slots.into_iter().zip(self.send_all(planned).await) {
            results[slot] = Some(sent);
        }
        results
            .into_iter()
            .map(|r| r.expect("every message has its result"))
            .collect()
    }

    /// Queues `sends` for `queue` and sends what may go now.
    fn enqueue(&self, queue: Arc<str>, sends: Vec<(Outgoing, Reply)>) {
        let next = {
            let mut queues = lock(&self.inner.sends.queues);
            let q = queues.entry(queue.clone()).or_default();
            let was_waiting = !q.waiting.is_empty();
            for (out, reply) in sends {
                let size = out.attrs.wire_size(&out.body);
                q.waiting_bytes += size;
                q.waiting.push_back(Waiting { out, size, reply });
            }
            let batches = q.ready(limit(&queue));
            // A timer covers the first send in line: started when it starts waiting, and
            // again whenever a batch taken leaves others behind.
            let linger =
                (!q.waiting.is_empty() && (!was_waiting || !batches.is_empty())).then_some(q.epoch);
            Next { batches, linger }
        };
        self.dispatch(queue, next);
    }

    fn dispatch(&self, queue: Arc<str>, next: Next) {
        for batch in next.batches {
            tokio::spawn(self.clone().send_batch(queue.clone(), batch));
        }
        if let Some(epoch) = next.linger {
            tokio::spawn(self.clone().linger(queue, epoch));
        }
    }

    /// After [`LINGER`], sends what has waited that long if no request landed meanwhile.
    async fn linger(self, queue: Arc<str>, epoch: u64) {
        tokio::time::sleep(LINGER).await;
        let next = {
            let mut queues = lock(&self.inner.sends.queues);
            let Some(q) = queues.get_mut(&queue) else {
                return;
            };
            // A batch taken since, or every request slot busy: a landing request sends it.
            if q.epoch != epoch || q.waiting.is_empty() || q.in_flight >= limit(&queue) {
                return;
            }
            let mut batches = vec![q.take_batch()];
            batches.extend(q.ready(limit(&queue)));
            let linger = (!q.waiting.is_empty()).then_some(q.epoch);
            Next { batches, linger }
        };
        self.dispatch(queue, next);
    }

    /// One `SendMessageBatch` of `batch`, each entry's result to its caller; then what waited
    /// behind it goes.
    async fn send_batch(self, queue: Arc<str>, batch: Vec<Waiting>) {
        let (outs, replies): (Vec<Outgoing>, Vec<Reply>) =
            batch.into_iter().map(|w| (w.out, w.reply)).unzip();
        let results = self.send_entries(&queue, outs).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that stopped waiting does not need to hear.
            let _ = reply.send(result);
        }
        let next = {
            let mut queues = lock(&self.inner.sends.queues);
            let Some(q) = queues.get_mut(&queue) else {
                return;
            };
            q.in_flight -= 1;
            // What arrived while this request was in flight goes now, full or not.
            let mut batches = Vec::new();
            if !q.waiting.is_empty() && q.in_flight < limit(&queue) {
                batches.push(q.take_batch());
            }
            batches.extend(q.ready(limit(&queue)));
            let linger = (!q.waiting.is_empty() && !batches.is_empty()).then_some(q.epoch);
            if q.in_flight == 0 && q.waiting.is_empty() {
                queues.remove(&queue);
            }
            Next { batches, linger }
        };
        self.dispatch(queue, next);
    }

    /// Sends `outs` to `queue`'s work queue in one request (again once to a queue found or
    /// created anew if it vanished); one result per entry.
    async fn send_entries(&self, queue: &str, mut outs: Vec<Outgoing>) -> Vec<Result<()>> {
        if outs.len() == 1 {
            // A lone call: SendMessage, the same one request, and what a lone call always took.
            let out = outs.pop().expect("one");
            let what = format!("publish to `{queue}`");
            return vec![self.send_to(queue, false, out, &what).await];
        }
        let n = outs.len();
        let mut results: Vec<Option<Result<()>>> = (0..n).map(|_| None).collect();
        let mut entries = Vec::with_capacity(n);
        for (i, out) in outs.into_iter().enumerate() {
            match entry(i, out) {
                Ok(e) => entries.push(e),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !entries.is_empty() {
            let sent = self.batch_to(queue, entries).await;
            match sent {
                Ok(out) => self.entry_results(queue, &out, &mut results),
                Err(e) => {
                    let text = ErrorChain(&e).to_string();
                    let text = text.strip_prefix("sqs: ").unwrap_or(&text).to_owned();
                    let mut first = Some(e);
                    for slot in results.iter_mut().filter(|r| r.is_none()) {
                        let e = first.take().unwrap_or_else(|| FAILURE.error(text.clone()));
                        *slot = Some(Err(e));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(FAILURE.error(format!(
                        "could not publish to `{queue}` at {}: SQS did not report on the message",
                        self.inner.config.url
                    )))
                })
            })
            .collect()
    }

    /// One `SendMessageBatch` to `queue`'s work queue, again once to a queue found or
    /// created anew if it vanished.
    async fn batch_to(
        &self,
        queue: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<SendMessageBatchOutput> {
        let url = self.work_url(queue).await?;
        let sent = match self.try_batch(&url, entries.clone()).await {
            Err(e) if queue_missing(&e) => {
                let url = self.renew_url(queue, false).await?;
                self.try_batch(&url, entries).await
            }
            other => other,
        };
        sent.map_err(|e| self.failed(format_args!("could not publish to `{queue}`"), e))
    }

    /// One `SendMessageBatch`.
    async fn try_batch(
        &self,
        url: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> std::result::Result<
        SendMessageBatchOutput,
        aws_sdk_sqs::error::SdkError<
            aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError,
            aws_sdk_sqs::config::http::HttpResponse,
        >,
    > {
        self.inner
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
    }

    /// Each entry's result from SQS's answer: `Ok` for those it lists as successful, its
    /// refusal for those it lists as failed.
    fn entry_results(
        &self,
        queue: &str,
        out: &SendMessageBatchOutput,
        results: &mut [Option<Result<()>>],
    ) {
        let index = |id: &str| id.parse::<usize>().ok();
        for ok in out.successful() {
            if let Some(slot) = index(ok.id()).and_then(|i| results.get_mut(i)) {
                *slot = Some(Ok(()));
            }
        }
        for failed in out.failed() {
            if let Some(slot) = index(failed.id()).and_then(|i| results.get_mut(i)) {
                *slot = Some(Err(refused(
                    queue,
                    &self.inner.config.url,
                    failed.sender_fault(),
                    failed.code(),
                    failed.message(),
                )));
            }
        }
    }
}

/// The error of an entry SQS refused.
fn refused(queue: &str, url: &str, sender: bool, code: &str, message: Option<&str>) -> Error {
    let fault = if sender { "sender" } else { "server" };
    let message = message.map(|m| format!(": {m}")).unwrap_or_default();
    FAILURE.error(format!(
        "could not publish to `{queue}` at {url}: SQS refused the message ({fault} fault): {code}{message}"
    ))
}

/// The batch entry of `out`, with id `i` (its place in the batch).
fn entry(i: usize, out: Outgoing) -> Result<SendMessageBatchRequestEntry> {
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(out.body)
        .set_message_attributes(out.attrs.to_sdk()?);
    if out.delay_secs > 0 {
        entry = entry.delay_seconds(out.delay_secs as i32);
    }
    if let Some((group, dedup)) = out.fifo {
        entry = entry
            .message_group_id(group)
            .message_deduplication_id(dedup);
    }
    entry
        .build()
        .map_err(|e| FAILURE.caused("could not build a batch entry", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize, size: usize) -> QueueSends {
        let mut q = QueueSends::default();
        for _ in 0..n {
            let (reply, _) = oneshot::channel();
            q.waiting.push_back(Waiting {
                out: Outgoing {
                    body: String::new(),
                    attrs: Default::default(),
                    delay_secs: 0,
                    fifo: None,
                },
                size,
                reply,
            });
            q.waiting_bytes += size;
        }
        q
    }

    #[test]
    fn a_lone_send_goes_at_once_and_later_ones_wait_for_a_full_batch() {
        let mut q = waiting(1, 100);
        let batches = q.ready(MAX_IN_FLIGHT);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [1]);
        assert_eq!(q.in_flight, 1);
        // Behind a request in flight, nine wait; the tenth makes a batch that goes.
        let mut more = waiting(9, 100);
        q.waiting.append(&mut more.waiting);
        q.waiting_bytes += more.waiting_bytes;
        assert!(q.ready(MAX_IN_FLIGHT).is_empty());
        q.waiting.append(&mut waiting(1, 100).waiting);
        q.waiting_bytes += 100;
        let batches = q.ready(MAX_IN_FLIGHT);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [10]);
        assert_eq!((q.in_flight, q.waiting.len(), q.waiting_bytes), (2, 0, 0));
    }

    #[test]
    fn batches_hold_ten_within_the_size_limit_and_requests_in_flight_are_capped() {
        let mut q = waiting(25, 100);
        let batches = q.ready(MAX_IN_FLIGHT);
        // The first goes as nothing was in flight, then the full ones: 10, 10, and 5 wait.
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10]);
        assert_eq!(q.waiting.len(), 5);
        // Large messages: as many as fit in MAX_MESSAGE_SIZE.
        let mut q = waiting(5, MAX_MESSAGE_SIZE / 2);
        let batches = q.ready(MAX_IN_FLIGHT);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        // A FIFO queue: one request at a time.
        let mut q = waiting(30, 100);
        assert_eq!(q.ready(1).len(), 1);
        assert!(q.ready(1).is_empty());
        assert_eq!(q.waiting.len(), 20);
    }

    #[test]
    fn a_refused_entry_names_queue_url_code_and_reason() {
        let e = refused(
            "q",
            "sqs://127.0.0.1:4566",
            true,
            "InvalidParameterValue",
            Some("too long"),
        );
        assert_eq!(
            e.to_string(),
            "sqs: could not publish to `q` at sqs://127.0.0.1:4566: SQS refused the message (sender fault): InvalidParameterValue: too long"
        );
    }
}
