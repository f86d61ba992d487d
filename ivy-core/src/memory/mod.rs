//! The embedded in-memory broker and notifier: the default for tests, docs and the quickstart.
//!
//! It keeps the semantics of a real broker so that code proven on it holds on RabbitMQ or SQS:
//! unsettled deliveries return to their queue when dropped, retries wait out their delay, dead
//! letters keep their reason, prefetch limits unsettled deliveries, priorities order delivery,
//! and a size limit refuses oversized bodies. Nothing survives the process. The broker is here,
//! the notifier (channels, stored results, worker announcements) in `notifier.rs`.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::broker::{Broker, Capabilities, Consumer, DeadLetter, Delivery, OutgoingMessage};
use crate::error::{Error, Result};
use crate::sync::lock;

mod limits;
mod notifier;

pub use crate::broker::DEFAULT_MAX_MESSAGE_SIZE;
pub use notifier::{MemoryNotifier, MemorySubscription};

/// Parses `memory://[name][?max_message_size=N]` into (name, limit).
fn parse_url(url: &str) -> Result<(String, usize)> {
    let bad = |reason: &str| crate::url::error(url, reason);
    let parsed = crate::url::ParsedUrl::parse(url)
        .ok()
        .filter(|u| u.scheme() == "memory")
        .ok_or_else(|| bad("expected a memory:// URL"))?;
    let mut limit = DEFAULT_MAX_MESSAGE_SIZE;
    for (key, value) in parsed.query_pairs() {
        match key.as_str() {
            "max_message_size" => {
                limit = value
                    .parse()
                    .map_err(|_| bad("max_message_size must be a number of bytes"))?
            }
            _ => return Err(bad("the only option is max_message_size")),
        }
    }
    // The name is host and path, so `memory://a/b` stays a broker of its own, apart from `a`.
    let mut name = parsed.host().unwrap_or_default().to_owned();
    for segment in parsed.path_segments() {
        name.push('/');
        name.push_str(segment);
    }
    Ok((name.trim_end_matches('/').to_owned(), limit))
}

#[derive(Debug)]
struct Stored {
    seq: u64,
    body: Arc<[u8]>,
    priority: u8,
    redelivered: bool,
}

#[derive(Debug)]
struct Ready(Stored);

impl PartialEq for Ready {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ready {
    // A max-heap: higher priority first, then the older sequence number.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0.priority, Reverse(self.0.seq)).cmp(&(other.0.priority, Reverse(other.0.seq)))
    }
}

#[derive(Debug)]
struct Delayed(Instant, Stored);

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    // Earliest due first on a max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (Reverse(self.0), Reverse(self.1.seq)).cmp(&(Reverse(other.0), Reverse(other.1.seq)))
    }
}

#[derive(Debug, Default)]
struct QueueState {
    ready: BinaryHeap<Ready>,
    delayed: BinaryHeap<Delayed>,
    unacked: usize,
    dead: VecDeque<DeadLetter>,
}

impl QueueState {
    fn promote_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|d| d.0 <= now) {
            let Delayed(_, s) = self.delayed.pop().expect("peeked");
            self.ready.push(Ready(s));
        }
    }
}

#[derive(Debug, Default)]
struct BrokerState {
    queues: HashMap<String, QueueState>,
    seq: u64,
}

#[derive(Debug)]
struct BrokerInner {
    state: Mutex<BrokerState>,
    notify: Notify,
    max_message_size: usize,
}

/// Counts of one queue's messages, for tests and inspection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueDepth {
    /// Waiting to be delivered.
    pub ready: usize,
    /// Waiting for their delay to pass.
    pub delayed: usize,
    /// Delivered and not settled yet.
    pub unacked: usize,
    /// In the dead letters.
    pub dead: usize,
}

/// The in-memory broker. Clones share the same queues.
#[derive(Clone, Debug)]
pub struct MemoryBroker {
    inner: Arc<BrokerInner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A new, private broker.
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A new broker refusing bodies over `limit` bytes.
    pub fn with_max_message_size(limit: usize) -> Self {
        MemoryBroker {
            inner: Arc::new(BrokerInner {
                state: Mutex::default(),
                notify: Notify::new(),
                max_message_size: limit,
            }),
        }
    }

    /// The broker named by `memory://name`: the same name gives the same broker within one
    /// process, so a producer and a worker configured with one URL meet.
    pub fn from_url(url: &str) -> Result<Self> {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let (name, limit) = parse_url(url)?;
        let mut named = lock(NAMED.get_or_init(Default::default));
        Ok(named
            .entry(name)
            .or_insert_with(|| Self::with_max_message_size(limit))
            .clone())
    }

    /// How many messages `queue` holds, by state.
    pub fn depth(&self, queue: &str) -> QueueDepth {
        let state = lock(&self.inner.state);
        state
            .queues
            .get(queue)
            .map(|q| QueueDepth {
                ready: q.ready.len(),
                delayed: q.delayed.len(),
                unacked: q.unacked,
                dead: q.dead.len(),
            })
            .unwrap_or_default()
    }

    fn enqueue(&self, queue: &str, stored: Stored, delay: Option<Duration>) {
        let mut state = lock(&self.inner.state);
        let q = state.queues.entry(queue.to_string()).or_default();
        match delay.filter(|d| !d.is_zero()) {
            Some(d) => q.delayed.push(Delayed(Instant::now() + d, stored)),
            None => q.ready.push(Ready(stored)),
        }
        drop(state);
        self.inner.notify.notify_waiters();
    }

    fn next_seq(&self) -> u64 {
        let mut state = lock(&self.inner.state);
        state.seq += 1;
        state.seq
    }
}

impl Broker for MemoryBroker {
    type Delivery = MemoryDelivery;
    type Consumer = MemoryConsumer;

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(self.inner.max_message_size)
            .with_fifo(true)
            .with_priorities(true)
    }

    async fn publish(&self, msg: OutgoingMessage) -> Result<()> {
        if msg.body.len() > self.inner.max_message_size {
            return Err(Error::MessageTooLarge {
                size: msg.body.len(),
                limit: self.inner.max_message_size,
            });
        }
        let stored = Stored {
            seq: self.next_seq(),
            body: msg.body.into(),
            priority: msg.priority.unwrap_or(0),
            redelivered: false,
        };
        self.enqueue(&msg.queue, stored, msg.delay);
        Ok(())
    }

    async fn consume(&self, queues: &[String], prefetch: usize) -> Result<MemoryConsumer> {
        if queues.is_empty() || prefetch == 0 {
            return Err(Error::Config(
                "consume needs at least one queue and a prefetch of at least 1".into(),
            ));
        }
        Ok(MemoryConsumer {
            broker: self.clone(),
            queues: queues.to_vec(),
            permits: Arc::new(Semaphore::new(prefetch)),
            next_queue: 0,
            closed: false,
        })
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        let mut state = lock(&self.inner.state);
        Ok(match state.queues.get_mut(queue) {
            Some(q) => {
                let n = max.min(q.dead.len());
                q.dead.drain(..n).collect()
            }
            None => Vec::new(),
        })
    }
}

/// A consumer of the in-memory broker.
#[derive(Debug)]
pub struct MemoryConsumer {
    broker: MemoryBroker,
    queues: Vec<String>,
    permits: Arc<Semaphore>,
    next_queue: usize,
    closed: bool,
}

impl MemoryConsumer {
    /// Pops the next ready message across this consumer's queues, round robin, or says when the
    /// earliest delayed one falls due.
    fn try_pop(&mut self) -> (Option<(String, Stored)>, Option<Instant>) {
        let now = Instant::now();
        let mut state = lock(&self.broker.inner.state);
        let mut earliest: Option<Instant> = None;
        let n = self.queues.len();
        for i in 0..n {
            let name = &self.queues[(self.next_queue + i) % n];
            let Some(q) = state.queues.get_mut(name) else {
                continue;
            };
            q.promote_due(now);
            if let Some(Ready(s)) = q.ready.pop() {
                q.unacked += 1;
                self.next_queue = (self.next_queue + i + 1) % n;
                return (Some((name.clone(), s)), None);
            }
            if let Some(d) = q.delayed.peek() {
                earliest = Some(earliest.map_or(d.0, |e| e.min(d.0)));
            }
        }
        (None, earliest)
    }
}

impl Consumer for MemoryConsumer {
    type Delivery = MemoryDelivery;

    async fn next(&mut self) -> Option<Result<MemoryDelivery>> {
        if self.closed {
            return None;
        }
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let inner = self.broker.inner.clone();
        loop {
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a publish between the look and the wait is not missed.
            notified.as_mut().enable();
            let (found, due) = self.try_pop();
            if let Some((queue, stored)) = found {
                return Some(Ok(MemoryDelivery {
                    broker: self.broker.clone(),
                    queue,
                    stored: Some(stored),
                    _permit: permit,
                }));
            }
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        Ok(())
    }
}

/// A delivery from the in-memory broker. Dropping it unsettled puts the message back.
#[derive(Debug)]
pub struct MemoryDelivery {
    broker: MemoryBroker,
    queue: String,
    stored: Option<Stored>,
    _permit: OwnedSemaphorePermit,
}

impl MemoryDelivery {
    fn settle(&mut self) -> Stored {
        let stored = self.stored.take().expect("a delivery is settled once");
        let mut state = lock(&self.broker.inner.state);
        if let Some(q) = state.queues.get_mut(&self.queue) {
            q.unacked -= 1;
        }
        stored
    }

    fn put_back(&mut self) {
        let mut stored = self.settle();
        stored.redelivered = true;
        // The original sequence number puts it back near the head, as RabbitMQ does.
        self.broker.enqueue(&self.queue, stored, None);
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if self.stored.is_some() {
            self.put_back();
        }
    }
}

impl Delivery for MemoryDelivery {
    fn body(&self) -> &[u8] {
        &self.stored.as_ref().expect("unsettled").body
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn redelivered(&self) -> bool {
        self.stored.as_ref().expect("unsettled").redelivered
    }

    async fn ack(mut self) -> Result<()> {
        self.settle();
        Ok(())
    }

    fn fits<'a>(&'a self, body: &'a [u8]) -> impl std::future::Future<Output = bool> + Send + 'a {
        std::future::ready(body.len() <= self.broker.inner.max_message_size)
    }

    async fn retry(mut self, body: Vec<u8>, delay: Duration) -> Result<()> {
        if body.len() > self.broker.inner.max_message_size {
            return Err(Error::MessageTooLarge {
                size: body.len(),
                limit: self.broker.inner.max_message_size,
            });
        }
        let old = self.settle();
        let stored = Stored {
            seq: self.broker.next_seq(),
            body: body.into(),
            priority: old.priority,
            redelivered: false,
        };
        self.broker.enqueue(&self.queue, stored, Some(delay));
        Ok(())
    }

    async fn dead_letter(mut self, reason: String) -> Result<()> {
        let stored = self.settle();
        let mut state = lock(&self.broker.inner.state);
        let q = state.queues.entry(self.queue.clone()).or_default();
        q.dead.push_back(DeadLetter::new(
            self.queue.clone(),
            stored.body.to_vec(),
            reason,
        ));
        Ok(())
    }

    async fn requeue(mut self) -> Result<()> {
        self.put_back();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Results;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("memory://").unwrap(),
            (String::new(), DEFAULT_MAX_MESSAGE_SIZE)
        );
        assert_eq!(
            parse_url("memory://x?max_message_size=10").unwrap(),
            ("x".into(), 10)
        );
        assert!(parse_url("memory://x?size=10").is_err());
        assert!(parse_url("amqp://x").is_err());
    }

    #[tokio::test]
    async fn fetch_many_reads_present_and_absent_results_in_order() {
        let n = MemoryNotifier::new();
        let ttl = Duration::from_secs(60);
        n.publish_final("ch", "a", b"first".to_vec(), ttl)
            .await
            .unwrap();
        n.publish_final("ch", "b", b"second".to_vec(), ttl)
            .await
            .unwrap();
        let ids = ["a".to_owned(), "missing".to_owned(), "b".to_owned()];
        assert_eq!(
            n.fetch_many(&ids).await.unwrap(),
            vec![Some(b"first".to_vec()), None, Some(b"second".to_vec())]
        );
    }

    #[test]
    fn named_brokers_are_shared() {
        let a = MemoryBroker::from_url("memory://shared-test").unwrap();
        let b = MemoryBroker::from_url("memory://shared-test").unwrap();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        let c = MemoryBroker::from_url("memory://other-test").unwrap();
        assert!(!Arc::ptr_eq(&a.inner, &c.inner));
    }
}
