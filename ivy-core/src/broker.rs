//! The backend traits: [`Broker`] carries calls; [`Notifier`] (that is [`Results`],
//! [`Presence`] and [`Coordination`]) carries statuses and results and what processes share.
//!
//! A backend that passes the conformance suite (`ivy_core::conformance`, feature `conformance`)
//! works with the producer and worker. This module defines the contract only; it knows no client.

use std::future::Future;
use std::time::Duration;

use crate::cancel::CancelOutcome;
use crate::envelope::TaskId;
use crate::error::Result;

/// Default body size limit, of the in-memory broker, of what a worker reads and, where the
/// broker takes more, of what a producer sends ([`Capabilities::default_message_limit`]): RabbitMQ's
/// default `max_message_size` is larger, SQS's much smaller; 16 MiB keeps a runaway producer
/// from eating the process.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Bytes a producer keeps below the broker's limit and the worker's for what a retry adds to
/// a call: `"attempt":N` (at most 21 bytes, `,"attempt":4294967295`), up to one more cipher
/// block when sealed (16 bytes), a third more again where the broker carries it base64-encoded
/// (SQS), and an attribute for a long delay (SQS's `ivy-not-before`, 33 bytes): under 100 in
/// all. Without it a call accepted at the limit could never be retried: its retry would be
/// refused, and it would run again and again.
pub const RETRY_ROOM: usize = 256;

/// How many publishes [`Broker::publish_many`]'s default keeps in flight at once.
pub const PUBLISH_MANY_WINDOW: usize = 256;

/// A message to publish: [`OutgoingMessage::new`] and the `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OutgoingMessage {
    /// The task id (used as message id / deduplication id where the broker has one).
    pub id: TaskId,
    /// The queue to publish to.
    pub queue: String,
    /// The encoded envelope.
    pub body: Vec<u8>,
    /// Priority 0..=9 (higher first), where the broker supports priorities.
    pub priority: Option<u8>,
    /// Deliver no earlier than this long from now.
    pub delay: Option<Duration>,
}

impl OutgoingMessage {
    /// A message for `queue` with no priority and no delay.
    pub fn new(id: impl Into<TaskId>, queue: impl Into<String>, body: Vec<u8>) -> Self {
        OutgoingMessage {
            id: id.into(),
            queue: queue.into(),
            body,
            priority: None,
            delay: None,
        }
    }

    /// Sets `priority`.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What a broker promises, so the producer and the conformance suite know what to expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// One consumer receives the messages of one queue in publish order (absent delays,
    /// priorities and redeliveries).
    pub fifo: bool,
    /// Higher-priority messages are delivered first.
    pub priorities: bool,
    /// The largest body the broker accepts, in bytes.
    pub max_message_size: usize,
    /// The largest prefetch (unsettled deliveries of one consumer) the broker can grant;
    /// `usize::MAX` when it has no limit. A worker's concurrency may not exceed it.
    pub max_prefetch: usize,
    /// Deliveries a consumer holds before the worker takes them stay safe however long they
    /// wait (AMQP: unacked until settled or the consumer closes), so a worker may prefetch
    /// beyond its concurrency ([`WorkerConfig::prefetch_multiplier`](crate::worker::WorkerConfig::prefetch_multiplier)).
    /// False where a held message's lease runs out while it waits (SQS's visibility timeout).
    pub prefetch_ahead: bool,
}

impl Capabilities {
    /// Capabilities with the given size limit, no ordering promises and no prefetch limit.
    pub const fn new(max_message_size: usize) -> Self {
        Capabilities {
            fifo: false,
            priorities: false,
            max_message_size,
            max_prefetch: usize::MAX,
            prefetch_ahead: false,
        }
    }

    /// Sets the `prefetch_ahead` promise.
    pub const fn with_prefetch_ahead(mut self, prefetch_ahead: bool) -> Self {
        self.prefetch_ahead = prefetch_ahead;
        self
    }

    /// Sets the `max_prefetch` limit.
    pub const fn with_max_prefetch(mut self, max_prefetch: usize) -> Self {
        self.max_prefetch = max_prefetch;
        self
    }

    /// The body size limit a producer sends unless told otherwise: the broker's
    /// `max_message_size`, at most [`DEFAULT_MAX_MESSAGE_SIZE`] (the default of what a worker
    /// reads), less [`RETRY_ROOM`]. So a call the producer accepts is one a worker reads, and
    /// retries, on any broker. (A worker keeps 16 MiB where the broker's limit is lower: an SQS
    /// queue may carry bodies from other clients larger than what Ivy publishes.)
    pub const fn default_message_limit(&self) -> usize {
        let limit = if self.max_message_size < DEFAULT_MAX_MESSAGE_SIZE {
            self.max_message_size
        } else {
            DEFAULT_MAX_MESSAGE_SIZE
        };
        limit.saturating_sub(RETRY_ROOM)
    }

    /// The most a producer sends, whatever it is told: the broker's `max_message_size` less
    /// [`RETRY_ROOM`], so that the call's retry still fits the broker.
    pub const fn max_call_size(&self) -> usize {
        self.max_message_size.saturating_sub(RETRY_ROOM)
    }

    /// Sets the `fifo` promise.
    pub const fn with_fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Sets the `priorities` promise.
    pub const fn with_priorities(mut self, priorities: bool) -> Self {
        self.priorities = priorities;
        self
    }
}

/// A message that ended in a dead-letter queue, with the reason: [`DeadLetter::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The queue it was consumed from.
    pub queue: String,
    /// The body as it was received.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
}

impl DeadLetter {
    /// The dead letter of `body`, consumed from `queue`, with `reason`.
    pub fn new(queue: impl Into<String>, body: Vec<u8>, reason: impl Into<String>) -> Self {
        DeadLetter {
            queue: queue.into(),
            body,
            reason: reason.into(),
        }
    }
}

/// A queue broker: publish, consume with acknowledgements, retry later, dead-letter.
///
/// Delivery is at least once: a message stays with the broker until a delivery of it is settled
/// with [`Delivery::ack`], [`Delivery::retry`] or [`Delivery::dead_letter`].
pub trait Broker: Clone + Send + Sync + 'static {
    /// A delivery of one message.
    type Delivery: Delivery;
    /// A stream of deliveries from one or more queues.
    type Consumer: Consumer<Delivery = Self::Delivery>;

    /// What this broker promises.
    fn capabilities(&self) -> Capabilities;

    /// The broker node (`host:port`) this client's consumer is connected to, else its
    /// producer's: for a URL naming several nodes, shown in logs, `ivy workers` and the
    /// dashboard. `None` where there is no such thing (one-node URLs may say it too).
    fn connected_node(&self) -> Option<String> {
        None
    }

    /// Publishes one message. Returns once the broker has taken responsibility for it.
    fn publish(&self, msg: OutgoingMessage) -> impl Future<Output = Result<()>> + Send;

    /// Publishes `msgs` in as few requests as the broker allows and returns one result per
    /// message, in order: `Ok` once the broker has taken responsibility for that message, or
    /// that message's own error (one refused message fails no other).
    ///
    /// The default runs [`publish`](Self::publish) for up to [`PUBLISH_MANY_WINDOW`] messages
    /// at once: on a broker whose publishes share a connection (AMQP's confirm window) they
    /// are pipelined. A broker with a batch request (SQS's `SendMessageBatch`) overrides it.
    fn publish_many(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> impl Future<Output = Vec<Result<()>>> + Send {
        use futures_util::stream::{self, StreamExt};
        stream::iter(msgs)
            .map(move |msg| self.publish(msg))
            .buffered(PUBLISH_MANY_WINDOW)
            .collect()
    }

    /// Starts consuming `queues` with at most `prefetch` unsettled deliveries at a time.
    fn consume(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;

    /// Removes and returns up to `max` dead letters of `queue`, oldest first.
    fn take_dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;
}

/// Deliveries from one consumer.
pub trait Consumer: Send + 'static {
    /// The delivery type.
    type Delivery: Delivery;

    /// The next delivery; `None` once the consumer is closed. An `Err` is a transient problem
    /// (the caller logs it and asks again); the consumer reconnects by itself where it can.
    fn next(&mut self) -> impl Future<Output = Option<Result<Self::Delivery>>> + Send;

    /// Stops receiving. Messages not handed out yet go back to the queue; deliveries already
    /// handed out can still be settled.
    fn close(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// One received message. Settle it exactly once.
///
/// Dropping an unsettled delivery returns the message to its queue, at the latest when its
/// consumer or connection goes away: that is what makes a crashed worker lose nothing.
pub trait Delivery: Send + 'static {
    /// The message body.
    fn body(&self) -> &[u8];
    /// The queue it came from.
    fn queue(&self) -> &str;
    /// Whether the broker delivered this message before (to a consumer that did not settle it).
    fn redelivered(&self) -> bool;
    /// Done: remove the message.
    fn ack(self) -> impl Future<Output = Result<()>> + Send;
    /// Replaces the message by `body`, delivered again on the same queue after `delay`. A body
    /// the queue cannot take fails with [`Error::MessageTooLarge`](crate::Error::MessageTooLarge)
    /// and settles nothing; ask [`fits`](Self::fits) first.
    fn retry(self, body: Vec<u8>, delay: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Whether [`retry`](Self::retry) with `body` would be taken by the queue, size-wise (as
    /// the broker encodes it, on this queue). The worker asks before a retry, so a call whose
    /// retry can never be sent ends with a final failure instead of running again and again.
    /// (The future must not hold `&self`: a delivery need not be `Sync`.)
    fn fits<'a>(&'a self, body: &'a [u8]) -> impl Future<Output = bool> + Send + 'a;
    /// Moves the message, unchanged, to the queue's dead letters with `reason`.
    fn dead_letter(self, reason: String) -> impl Future<Output = Result<()>> + Send;
    /// Returns the message unchanged to its queue now, for any consumer.
    fn requeue(self) -> impl Future<Output = Result<()>> + Send;
}

/// What a subscription yields. More kinds may come: match with a wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A payload published on the channel.
    Message(Vec<u8>),
    /// The subscription was interrupted and restored: payloads may have been missed, so final
    /// results should be re-read with [`Results::fetch`].
    Gap,
    /// The subscription's connection was lost; it is being restored, and a [`Gap`](Self::Gap)
    /// follows once it is. Until then payloads are missed: what is known from the channel
    /// alone is not known to be complete.
    Interrupted,
}

/// A notification transport: what the producer, worker and scheduler share besides the
/// broker. Its three concerns are traits of their own, so that a backend implements each in
/// one place and a reader finds each in one place: [`Results`] (per-producer channels and
/// the store of final results), [`Presence`] (live workers' announcements) and
/// [`Coordination`] (cancellations, deduplication, limits, chord counts and fenced claims).
/// Any type with all three is a `Notifier`.
pub trait Notifier: Results + Presence + Coordination {}

impl<T: Results + Presence + Coordination> Notifier for T {}

/// Results and notifications: publishing on a producer's channel, storing final results,
/// reading them back, subscribing.
pub trait Results: Clone + Send + Sync + 'static {
    /// A subscription to one channel.
    type Subscription: Subscription;

    /// Publishes `payload` on `channel` (fire and forget: no subscriber is not an error).
    fn publish(&self, channel: &str, payload: Vec<u8>) -> impl Future<Output = Result<()>> + Send;

    /// Stores a final `payload` under `task_id` for `ttl`, then publishes it on `channel`.
    /// Storing first means a subscriber that misses the publish can still [`fetch`](Self::fetch) it.
    fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The stored final payload of `task_id`, if it is still kept.
    fn fetch(&self, task_id: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// The stored final payloads of `task_ids`, in the same order (`None` where nothing is
    /// kept). The default reads them one at a time with [`fetch`](Self::fetch); a backend that
    /// can read several in one request should override it.
    fn fetch_many(
        &self,
        task_ids: &[TaskId],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send {
        async move {
            let mut found = Vec::with_capacity(task_ids.len());
            for id in task_ids {
                found.push(self.fetch(id).await?);
            }
            Ok(found)
        }
    }

    /// Subscribes to `channel`. Payloads published after this returns are received.
    fn subscribe(&self, channel: &str) -> impl Future<Output = Result<Self::Subscription>> + Send;
}

/// Presence: the announcements of live workers.
pub trait Presence: Clone + Send + Sync + 'static {
    /// Stores (or replaces) the announcement of live worker `worker_id` for `ttl`: a worker
    /// refreshes it while it runs, so a killed one disappears once `ttl` has passed.
    fn announce(
        &self,
        worker_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes the announcement of `worker_id` (a worker stopping gracefully).
    fn withdraw(&self, worker_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// The announcements still kept (their `ttl` not run out), in no particular order.
    fn announcements(&self) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
}

/// Coordination between processes: cancellations, deduplication claims, rate limits and
/// concurrency slots (issue 15), chord counts (issue 14, PROTOCOL.md §12) and fenced claims
/// (issue 21, PROTOCOL.md §13), the one primitive behind everything "once" across processes.
pub trait Coordination: Clone + Send + Sync + 'static {
    /// Records, in one atomic step, that call `task_id` is cancelled for `ttl`, and publishes
    /// `note` (a [`CancelNote`](crate::cancel::CancelNote)) on
    /// [`CANCEL_CHANNEL`](crate::cancel::CANCEL_CHANNEL) for running workers. Records nothing
    /// when the call's final result is stored ([`CancelOutcome::AlreadyFinished`]) or a
    /// cancellation of it is kept already ([`CancelOutcome::AlreadyCancelled`]).
    fn cancel(
        &self,
        task_id: &str,
        note: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<CancelOutcome>> + Send;

    /// Whether a cancellation of `task_id` is kept.
    fn is_cancelled(&self, task_id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Every cancellation kept, as (task id, expiry in ms since the epoch), in no particular
    /// order. Workers read it when they start and after a gap in their subscription.
    fn cancellations(&self) -> impl Future<Output = Result<Vec<(TaskId, u64)>>> + Send;

    /// Claims deduplication key `key` for call `task_id`, by the request `token` (random per
    /// send), for `ttl`, atomically: `None` when the claim is this request's (made now, or
    /// made by an earlier try of it whose answer was lost: asking again is safe), else the
    /// task id of the call that holds it (two calls may share a caller's id: the token tells
    /// them apart).
    fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        token: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<TaskId>>> + Send;

    /// Gives `key` up if the request `token` for call `task_id` still holds it (its publish
    /// failed).
    fn release_unique(
        &self,
        key: &str,
        task_id: &str,
        token: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reserves the next turn of the rate limit `task`, which lets one run start every
    /// `interval` (GCRA without burst): [`Turn::Reserved`] with the wait until that turn (zero:
    /// now), unless it is more than `horizon` away: then [`Turn::Busy`] with that wait, and
    /// nothing is reserved. A reserved turn is never given to anyone else.
    fn reserve_turn(
        &self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> impl Future<Output = Result<Turn>> + Send;

    /// Takes one of the `max` slots of `task` for `holder` until `lease` from now, or extends
    /// `holder`'s slot if it has one; `false` when all are held. Slots whose lease ran out are
    /// free again, so a holder that died cannot keep one.
    fn acquire_slot(
        &self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Gives `holder`'s slot of `task` back (nothing if it holds none).
    fn release_slot(&self, task: &str, holder: &str) -> impl Future<Output = Result<()>> + Send;

    /// Adds `member` to the set `set` (kept for `ttl` from now) and returns how many members
    /// it holds, in one atomic step: a member added twice counts once, and two members added
    /// at once see different counts.
    fn count_member(
        &self,
        set: &str,
        member: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Claims `key` for `owner` until `lease` from now, atomically: [`Claim::Won`] if it was
    /// free, its lease ran out, or `owner` holds it already (then the lease is renewed, so
    /// asking again after a lost answer is safe, and asking again is how a holder renews);
    /// [`Claim::Held`] while another owner's lease runs; [`Claim::Done`] once it was marked
    /// done. Of concurrent claims by different owners, one wins.
    fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Gives `key` up if `owner` holds it (compare-and-delete): nothing if another owner holds
    /// it or it was marked done. Safe to repeat.
    fn release(&self, key: &str, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// Marks `key` done for `ttl`, whoever holds it: every later claim answers
    /// [`Claim::Done`]. Safe to repeat.
    fn mark_done(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<()>> + Send;
}

/// The answer of [`Coordination::reserve_turn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// A turn is reserved for the caller: start after this wait.
    Reserved(Duration),
    /// The next free turn is this far away, beyond the horizon; nothing was reserved.
    Busy(Duration),
}

/// The answer to [`Coordination::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The caller holds it now, until its lease runs out.
    Won,
    /// Another owner holds it and its lease runs: ask again later.
    Held,
    /// It was marked done.
    Done,
}

/// A live subscription.
pub trait Subscription: Send + 'static {
    /// The next payload or gap; `None` once the subscription is closed for good.
    fn next(&mut self) -> impl Future<Output = Option<Result<Incoming>>> + Send;
}
