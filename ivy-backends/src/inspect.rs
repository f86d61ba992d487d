//! What an operator reads and does on a broker's queues (the `ivy` command, later a
//! dashboard): depths, dead letters read without taking them, dead letters replayed onto their
//! work queue, dead letters purged. The shared types live here; each broker's side is in
//! `amqp/inspect.rs` and `sqs/inspect.rs`.
//!
//! Two promises every broker keeps: reading dead letters (`peek_dead_letters`) leaves every
//! message where it was (unsettled reads are given back), and a replayed message
//! leaves the dead letters only after its copy was confirmed on the work queue, so a crash in
//! between duplicates a call, never loses one. This module knows no envelope and no key: the
//! caller decides, per message, whether and with which body it is replayed.

/// How many messages one Ivy queue holds, by state. `None`: this broker, or this way of
/// asking it, cannot tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueDepth {
    /// Waiting on the work queue, deliverable now.
    pub ready: Option<u64>,
    /// Delivered to a consumer and not settled yet (AMQP unacknowledged, SQS not visible).
    pub in_flight: Option<u64>,
    /// Waiting for a delay to pass (AMQP delay queues, SQS delayed messages).
    pub delayed: Option<u64>,
    /// In the dead-letter queue.
    pub dead: Option<u64>,
    /// Consumers of the work queue.
    pub consumers: Option<u64>,
}

/// A dead letter as read, still in its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeekedDeadLetter {
    /// The body, byte for byte (possibly sealed).
    pub body: Vec<u8>,
    /// Why it was dead-lettered (AMQP `x-ivy-reason`, SQS `ivy-reason`).
    pub reason: Option<String>,
    /// The broker's message id where the message carries one (AMQP `message_id`: the task id).
    pub message_id: Option<String>,
    /// When it entered the dead letters (ms since the Unix epoch), where the broker says
    /// (SQS `SentTimestamp`); AMQP messages carry no time.
    pub dead_since_ms: Option<u64>,
}

/// What to do with one dead letter during a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pick {
    /// Leave it in the dead letters.
    Leave,
    /// Publish `body` to the work queue under the task id `id`, then remove the dead letter.
    Replay {
        /// The task id (AMQP message id, SQS FIFO deduplication id).
        id: String,
        /// The body to publish: the dead letter's own, or a changed one.
        body: Vec<u8>,
    },
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// The task ids put back onto the work queue (and removed from the dead letters).
    pub replayed: Vec<String>,
    /// Dead letters read and left where they were.
    pub left: usize,
}
