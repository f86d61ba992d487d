//! The producer: `delayed_call` publishes a call and hands back a [`TaskHandle`] that follows
//! it to its result through the producer's own notification channel.
//!
//! Each producer has one channel (`ivy.reply.<uuid>`), subscribed once, lazily, on the first
//! call that wants a result; fire-and-forget calls ([`Producer::send`]) never subscribe. Final
//! results are also kept by the notifier under the task id, so a handle still gets its result
//! after a gap in the subscription, or from another process ([`Producer::handle`]).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use rustc_hash::FxBuildHasher;
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::broker::{Broker, Notifier};
use crate::crypto::Keyring;
use crate::envelope::{to_ms, Notification, Outcome, Status, TaskId};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::task::{Call, Task};
use cancel::{cancel_fn, CancelFn, Claimed};
use state::Slot;

mod audience;
mod bulk;
mod cancel;
mod flows;
mod group;
mod listen;
mod publish;
mod state;

pub use group::GroupHandle;

/// How often, by default, a handle with no news re-reads the stored result, as a safety net
/// under pub/sub ([`Producer::with_result_reread`]).
const STORED_RESULT_POLL: Duration = Duration::from_secs(15);
/// How long before its deadline a handle that has not read the store lately reads it (at most
/// half its limit): long enough for a read to fail while a client reconnects.
const LAST_LOOK: Duration = Duration::from_secs(5);
/// How often a handle made by id (not on this producer's channel) re-reads the stored result.
const FOREIGN_POLL: Duration = Duration::from_millis(250);

// FxHash for the pending ids: the keys are task ids this process made (random UUIDs) or was
// handed by its own code, and notifications only look keys up, so no seed against collision
// attacks is needed, and SipHash's cost on every notification is saved.
type PendingMap = HashMap<TaskId, Arc<Slot>, FxBuildHasher>;
type Pending = Mutex<PendingMap>;
type FetchFn = Arc<
    dyn Fn(TaskId) -> Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>>> + Send>> + Send + Sync,
>;
type Stored = Vec<Option<Vec<u8>>>;
type FetchManyFn =
    Arc<dyn Fn(Vec<TaskId>) -> Pin<Box<dyn Future<Output = Result<Stored>> + Send>> + Send + Sync>;

/// What handles share with their producer, independent of the backend types.
struct Shared {
    pending: Pending,
    fetch: FetchFn,
    fetch_many: FetchManyFn,
    keyring: Keyring,
    /// How often a handle with no news re-reads the store, in milliseconds.
    reread_ms: AtomicU64,
    /// The last read of the store, if it failed: what a handle that times out reports.
    store_failure: Mutex<Option<Arc<Error>>>,
    /// Records cancellations (issue 14).
    cancel: CancelFn,
}

impl Shared {
    /// Opens (when encryption is configured) and decodes a notification payload. One sealed
    /// with a key that may not send results is refused
    /// ([`Keyring::allow_results`]): a producer's key must not forge results.
    fn decode(&self, payload: &[u8]) -> Result<Notification> {
        if self.keyring.is_enabled() {
            let opened = self.keyring.open_result(payload)?;
            Notification::from_slice(&opened.plaintext)
        } else {
            Notification::from_slice(payload)
        }
    }

    fn deliver(&self, payload: &[u8]) {
        match self.decode(payload) {
            Ok(note) => {
                let slot = lock(&self.pending).get(note.id()).cloned();
                if let Some(slot) = slot {
                    slot.update(|s| s.apply(note));
                }
            }
            Err(e) => {
                warn!(error = %e, "ignoring a notification that is malformed or from a key that may not send results")
            }
        }
    }

    /// Reads the stored result of `id`. A failure is logged and remembered, not returned:
    /// the store may come back before the caller stops waiting.
    async fn read_stored(&self, id: TaskId) -> Option<Vec<u8>> {
        let read = (self.fetch)(id).await;
        self.note_store(read).flatten()
    }

    /// Remembers whether a read of the store failed. Logs the start and the end of an
    /// outage once each, not every handle's every read.
    fn note_store<T>(&self, read: Result<T>) -> Option<T> {
        let mut failure = lock(&self.store_failure);
        match read {
            Ok(found) => {
                if failure.take().is_some() {
                    info!("the result store answers again");
                }
                Some(found)
            }
            Err(e) => {
                if failure.is_none() {
                    warn!(error = %e, "could not read stored results; handles keep waiting");
                } else {
                    debug!(error = %e, "the result store is still unreachable");
                }
                *failure = Some(Arc::new(e));
                None
            }
        }
    }

    /// After a gap, re-read the stored results of every call still waiting.
    async fn refetch_pending(&self) {
        let waiting: Vec<TaskId> = lock(&self.pending)
            .iter()
            .filter(|(_, slot)| slot.state().outcome.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        // One request for all of them; a handle whose read fails here re-reads on its own.
        let read = (self.fetch_many)(waiting).await;
        for payload in self.note_store(read).into_iter().flatten().flatten() {
            self.deliver(&payload);
        }
    }

    fn reread_interval(&self) -> Duration {
        Duration::from_millis(self.reread_ms.load(Ordering::Relaxed))
    }

    /// What a handle that waited `waited` in vain reports: the store's last failure if the
    /// last read failed, a plain timeout otherwise.
    fn timed_out(&self, waited: Duration) -> Error {
        match lock(&self.store_failure).clone() {
            Some(source) => Error::ResultStoreUnreachable { waited, source },
            None => Error::Timeout(waited),
        }
    }
}

struct Inner<B, N> {
    broker: B,
    notifier: N,
    channel: String,
    shared: Arc<Shared>,
    listener: OnceCell<tokio::task::JoinHandle<()>>,
    /// The largest call sent, in bytes; 0: the broker's default limit.
    max_message_size: AtomicUsize,
    /// The queues looked for a consumer of.
    audience: audience::Audience,
    /// What the queue `default` stands for ([`Producer::with_default_queue`]).
    default_queue: std::sync::RwLock<Arc<str>>,
}

impl<B, N> Drop for Inner<B, N> {
    fn drop(&mut self) {
        if let Some(l) = self.listener.get() {
            l.abort();
        }
    }
}

/// Sends calls and follows them to their results. Cheap to clone; clones share one channel.
pub struct Producer<B: Broker, N: Notifier> {
    inner: Arc<Inner<B, N>>,
}

impl<B: Broker, N: Notifier> Clone for Producer<B, N> {
    fn clone(&self) -> Self {
        Producer {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Broker, N: Notifier> std::fmt::Debug for Producer<B, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

impl<B: Broker, N: Notifier> Producer<B, N> {
    /// A producer publishing to `broker` and hearing back through `notifier`.
    pub fn new(broker: B, notifier: N) -> Self {
        let cancel = cancel_fn(notifier.clone());
        let fetcher = notifier.clone();
        let fetch: FetchFn = Arc::new(move |id: TaskId| {
            let n = fetcher.clone();
            Box::pin(async move { n.fetch(&id).await })
        });
        let many = notifier.clone();
        let fetch_many: FetchManyFn = Arc::new(move |ids: Vec<TaskId>| {
            let n = many.clone();
            Box::pin(async move { n.fetch_many(&ids).await })
        });
        Producer {
            inner: Arc::new(Inner {
                broker,
                notifier,
                channel: format!("ivy.reply.{}", uuid::Uuid::now_v7().simple()),
                shared: Arc::new(Shared {
                    pending: Mutex::default(),
                    fetch,
                    fetch_many,
                    keyring: Keyring::new(),
                    reread_ms: AtomicU64::new(millis(STORED_RESULT_POLL)),
                    store_failure: Mutex::default(),
                    cancel,
                }),
                listener: OnceCell::new(),
                max_message_size: AtomicUsize::new(0),
                audience: audience::Audience::default(),
                default_queue: std::sync::RwLock::new(Arc::from("default")),
            }),
        }
    }

    /// Encrypts calls and reads encrypted notifications with `keyring` (see [`Keyring`]).
    ///
    /// Meant for a producer just made: then it only sets the keyring. On a producer already
    /// cloned or used, whose clones and handles read notifications with the old keyring, the
    /// result is a new producer on the same broker and notifier with the new keyring and a
    /// notification channel of its own; clones made before keep the old keyring and channel.
    /// Handles made before by this producer itself, if it has no clones, are then left as a
    /// dropped producer leaves them: they get their results from the notifier's store.
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        let unshared =
            Arc::get_mut(&mut self.inner).and_then(|inner| Arc::get_mut(&mut inner.shared));
        if let Some(shared) = unshared {
            shared.keyring = keyring;
            return self;
        }
        Producer::new(self.inner.broker.clone(), self.inner.notifier.clone()).with_keyring(keyring)
    }

    /// How often a handle that hears nothing re-reads its stored result (default 15 s), as a
    /// safety net under the notification channel. Applies to this producer, its clones and
    /// all their handles. A failed re-read does not end the wait: the handle keeps waiting
    /// (and re-reading) until its own limit.
    pub fn with_result_reread(self, every: Duration) -> Self {
        let ms = millis(every).max(1);
        self.inner.shared.reread_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// Refuses calls over `n` bytes ([`Error::MessageTooLarge`]), never more than the broker
    /// takes less room for a retry
    /// ([`Capabilities::max_call_size`](crate::broker::Capabilities::max_call_size)). The
    /// default, the broker's limit at most 16 MiB, less that room
    /// ([`Capabilities::default_message_limit`](crate::broker::Capabilities::default_message_limit)),
    /// is less than a worker reads by default (16 MiB): raise both together, and keep
    /// [`RETRY_ROOM`](crate::broker::RETRY_ROOM) between them. Applies to this producer and its
    /// clones.
    pub fn with_max_message_size(self, n: usize) -> Self {
        self.inner
            .max_message_size
            .store(n.max(1), Ordering::Relaxed);
        self
    }

    /// This producer's notification channel.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The broker it publishes to.
    pub fn broker(&self) -> &B {
        &self.inner.broker
    }

    /// Publishes `call` and returns a handle to its status, progress and result. Returns once
    /// the broker has taken the message.
    ///
    /// With [`Call::unique_for`], a duplicate is not published: the handle is the first call's.
    pub async fn delayed_call<T: Task>(&self, mut call: Call<T>) -> Result<TaskHandle<T>> {
        self.ensure_listening().await?;
        let (id, key) = match self.claim(&mut call).await? {
            Claimed::Fresh(id, key) => (id, key),
            Claimed::Duplicate(first) => return Ok(self.follow(first)),
        };
        // Registered before publishing, so no notification can arrive for an unknown id.
        let handle = self.register(id.clone(), false);
        // Only calls with a countdown or eta: others skip the slot's lock.
        if let Some(eta) = call.eta.map(to_ms) {
            handle.slot.update(|s| s.not_before = Some(eta));
        }
        self.publish_claimed(call, id, key, Some(&self.inner.channel))
            .await?;
        Ok(handle)
    }

    /// A handle to call `id`, registered to receive its notifications; `foreign` when this
    /// producer did not make the call.
    fn register<T: Task>(&self, id: TaskId, foreign: bool) -> TaskHandle<T> {
        let slot = Slot::new();
        lock(&self.inner.shared.pending).insert(id.clone(), slot.clone());
        TaskHandle {
            id,
            slot,
            shared: self.inner.shared.clone(),
            foreign,
            _task: PhantomData,
        }
    }

    /// Publishes `call` without asking for anything back: no subscription, no stored result.
    /// Returns the task id once the broker has taken the message.
    /// With [`Call::unique_for`], a duplicate is not published: the id is the first call's.
    pub async fn send<T: Task>(&self, mut call: Call<T>) -> Result<TaskId> {
        let (id, key) = match self.claim(&mut call).await? {
            Claimed::Fresh(id, key) => (id, key),
            Claimed::Duplicate(first) => return Ok(first),
        };
        self.publish_claimed(call, id.clone(), key, None).await?;
        Ok(id)
    }

    /// A handle to a call made earlier, by anyone, from its id: its result comes from the
    /// notifier's store (kept for the worker's result TTL).
    pub async fn handle<T: Task>(&self, id: TaskId) -> Result<TaskHandle<T>> {
        let handle = self.register(id.clone(), true);
        if let Some(payload) = self.inner.notifier.fetch(&id).await? {
            self.inner.shared.deliver(&payload);
        }
        Ok(handle)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A call in flight: its id, status, progress and, in the end, its typed result.
pub struct TaskHandle<T: Task> {
    id: TaskId,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    foreign: bool,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> std::fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &T::NAME)
            .field("id", &self.id)
            .field("status", &self.status())
            .finish()
    }
}

impl<T: Task> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        // Only its own registration: another handle to the same call may hold the id.
        if pending
            .get(&self.id)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            pending.remove(&self.id);
        }
        drop(pending);
        // Progress streams that outlive the handle end now: nothing will update them.
        self.slot.update(|s| s.closed = true);
    }
}

impl<T: Task> TaskHandle<T> {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The latest status known. `Successful` or `Errored` with a result present means finished;
    /// `Done` once the result was taken with one of the `result` methods.
    pub fn status(&self) -> Status {
        self.slot.state().status
    }

    /// Whether the final result has arrived.
    pub fn is_finished(&self) -> bool {
        self.slot.state().outcome.is_some()
    }

    /// Waits for the result: the task's value, or [`Error::Task`] with its final failure.
    ///
    /// Waits through outages of the result store for as long as it takes.
    pub async fn result(&mut self) -> Result<T::Output> {
        self.result_until(None).await
    }

    /// Waits for the result until `deadline` (`Some((deadline, limit))`) or for ever.
    async fn result_until(&mut self, deadline: Option<(Instant, Duration)>) -> Result<T::Output> {
        let outcome = self.wait_outcome(deadline).await?;
        self.mark_done();
        match outcome {
            Outcome::Ok(v) => serde_json::from_value(v).map_err(|source| Error::Codec {
                what: "task result",
                source,
            }),
            Outcome::Err(f) => Err(Error::Task(f)),
        }
    }

    /// Waits for the outcome until the deadline, if any. Failures to read the store do not
    /// end the wait; they are what the caller hears if the deadline passes.
    async fn wait_outcome(&mut self, deadline: Option<(Instant, Duration)>) -> Result<Outcome> {
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let until = deadline.map_or_else(far, |(at, _)| at);
        let timed_out = || {
            let limit = deadline.map_or(Duration::MAX, |(_, limit)| limit);
            self.shared.timed_out(limit)
        };
        // A handle that has not read the store by then takes a last look shortly before its
        // deadline: a result pub/sub missed still arrives, and a store that cannot be read is
        // what the caller hears about instead of a bare timeout.
        let mut last_look =
            deadline.map(|(at, limit)| at.checked_sub(LAST_LOOK.min(limit / 2)).unwrap_or(at));
        loop {
            let changed = self.slot.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read, so no update can slip in between.
            changed.as_mut().enable();
            if let Some(outcome) = self.slot.state().outcome.clone() {
                return Ok(outcome);
            }
            let poll = if self.foreign {
                FOREIGN_POLL
            } else {
                self.shared.reread_interval()
            };
            let wake = Instant::now()
                .checked_add(poll)
                .map_or(until, |w| w.min(until))
                .min(last_look.unwrap_or(until));
            if tokio::time::timeout_at(wake, changed).await.is_ok() {
                continue;
            }
            if Instant::now() >= until {
                return Err(timed_out());
            }
            // No news for a while (or no one left to send any): read the store.
            if last_look.is_some_and(|at| Instant::now() >= at) {
                last_look = None;
            }
            let read = self.shared.read_stored(self.id.clone());
            let Ok(stored) = tokio::time::timeout_at(until, read).await else {
                return Err(timed_out());
            };
            if let Some(payload) = stored {
                match self.shared.decode(&payload) {
                    Ok(Notification::Result { outcome, .. }) => {
                        self.shared.deliver(&payload);
                        return Ok(outcome);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, task_id = %self.id, "ignoring a stored result that is malformed or from a key that may not send results");
                    }
                }
            }
        }
    }

    /// Waits at most `limit` for the result. The call goes on either way. After `limit`:
    /// [`Error::ResultStoreUnreachable`] if the last read of the result store failed (the
    /// result may be there, out of reach), [`Error::Timeout`] otherwise. A handle that has not
    /// read the store lately reads it once shortly before `limit` (5 s, or half a shorter
    /// limit, before), so a result the notification channel missed still arrives.
    pub async fn result_timeout(&mut self, limit: Duration) -> Result<T::Output> {
        let Some(deadline) = Instant::now().checked_add(limit) else {
            return self.result().await;
        };
        self.result_until(Some((deadline, limit))).await
    }

    /// The result, or `fallback` if the call failed (or its result could not be read).
    pub async fn result_or(&mut self, fallback: T::Output) -> T::Output {
        self.result().await.unwrap_or(fallback)
    }

    /// Progress reports as they come (the latest one when several arrive at once); ends when
    /// the call has finished.
    pub fn progress(&self) -> impl Stream<Item = Value> + Send + Unpin + 'static {
        Slot::progress(self.slot.clone())
    }

    fn mark_done(&self) {
        self.slot.update(|s| s.status = Status::Done);
    }
}

#[cfg(test)]
mod tests;
