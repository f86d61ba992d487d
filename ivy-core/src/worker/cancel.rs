//! The worker's side of cancellation: the live cancellations kept in memory, the watcher that
//! keeps them current, and dropping a cancelled call.
//!
//! Why in memory: a check per message must not cost a round trip to the notifier. The set is
//! read from the notifier's index when the worker starts (so a cancel recorded while no worker
//! ran is seen) and again after every gap in the subscription to [`CANCEL_CHANNEL`], from which
//! new cancellations arrive in between. While the set is not known to be complete (the
//! notifier unreachable), each call is checked with [`Coordination::is_cancelled`](crate::Coordination::is_cancelled) instead; if
//! that fails too the call runs, since nothing says it was cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::settle::Settlement;
use super::{Settle, Shared};
use crate::backoff::Backoff;
use crate::broker::{Broker, Incoming, Notifier, Subscription};
use crate::cancel::{CancelFlag, CancelNote, CANCEL_CHANNEL};
use crate::envelope::{now_ms, Envelope, TaskId};
use crate::failure::TaskFailure;
use crate::sync::lock;

/// How long a worker waits, when it starts, for the cancellations kept by the notifier before
/// it consumes anyway (and checks each call with the notifier until it has them).
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);
/// How long a check of one call with the notifier may take.
const POINT_CHECK_WAIT: Duration = Duration::from_secs(1);
/// The most live cancellations a worker keeps in memory. Beyond that it keeps none and asks
/// the notifier about each call instead (one round trip per call), until a re-read finds
/// fewer: memory stays bounded however many calls are cancelled.
const MOST_KNOWN: usize = 100_000;

/// The cancellations a worker knows of, and the calls it is running.
#[derive(Debug, Default)]
pub(super) struct Cancellations {
    inner: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Live cancellations: task id → expiry (ms since the epoch).
    live: HashMap<TaskId, u64>,
    /// Whether `live` holds every cancellation the notifier keeps: read since the
    /// subscription was last established.
    synced: bool,
    /// The flags of calls in progress, by task id (a call delivered twice shares one), with
    /// how many deliveries hold it.
    running: HashMap<TaskId, (CancelFlag, usize)>,
    learnt_since_purge: usize,
    /// More than [`MOST_KNOWN`] were live: none is kept, and the set is not complete.
    overflowed: bool,
}

impl Known {
    fn add(&mut self, id: TaskId, until: u64) {
        if let Some((flag, _)) = self.running.get(&id) {
            flag.cancel();
        }
        if self.overflowed {
            return;
        }
        let e = self.live.entry(id).or_insert(until);
        *e = (*e).max(until);
        self.learnt_since_purge += 1;
        if self.learnt_since_purge >= 1024 || self.live.len() > MOST_KNOWN {
            self.learnt_since_purge = 0;
            let now = now_ms();
            self.live.retain(|_, until| *until > now);
        }
        if self.live.len() > MOST_KNOWN {
            self.live = HashMap::new();
            self.overflowed = true;
            self.synced = false;
        }
    }
}

/// A call in progress, registered so that a cancel reaches it; unregistered when dropped.
pub(super) struct InProgress<'a> {
    cancels: &'a Cancellations,
    id: TaskId,
    pub(super) flag: CancelFlag,
    /// Whether the set was complete when the call was registered.
    synced: bool,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut known = lock(&self.cancels.inner);
        if let Some((_, holders)) = known.running.get_mut(&self.id) {
            *holders -= 1;
            if *holders == 0 {
                known.running.remove(&self.id);
            }
        }
    }
}

impl Cancellations {
    /// Registers a call in progress. Its flag is already set if the call is known to be
    /// cancelled.
    pub(super) fn enter(&self, id: &str) -> InProgress<'_> {
        let mut known = lock(&self.inner);
        let cancelled = known.live.get(id).is_some_and(|&until| until > now_ms());
        let synced = known.synced;
        let (flag, holders) = known
            .running
            .entry(id.to_owned())
            .or_insert_with(|| (CancelFlag::new(), 0));
        *holders += 1;
        let flag = flag.clone();
        if cancelled {
            flag.cancel();
        }
        InProgress {
            cancels: self,
            id: id.to_owned(),
            flag,
            synced,
        }
    }

    /// Whether call `id` is cancelled, when the set is complete; `None` when it is not (the
    /// notifier must be asked).
    pub(super) fn knows(&self, id: &str) -> Option<bool> {
        let known = lock(&self.inner);
        known
            .synced
            .then(|| known.live.get(id).is_some_and(|&until| until > now_ms()))
    }

    fn learn(&self, note: CancelNote) {
        let until = note.until_here();
        lock(&self.inner).add(note.id, until);
    }

    /// Replaces what is known by the notifier's list, which is complete.
    fn synced(&self, list: Vec<(TaskId, u64)>) {
        let mut known = lock(&self.inner);
        let now = now_ms();
        known.live.retain(|_, until| *until > now);
        known.overflowed = false;
        for (id, until) in list {
            if until > now {
                known.add(id, until);
            }
        }
        // Too many to keep: the set stays incomplete, and each call is asked about.
        known.synced = !known.overflowed;
    }

    fn unsynced(&self) {
        lock(&self.inner).synced = false;
    }
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Starts the watcher and waits (a few seconds at most) until it has read the
    /// cancellations kept by the notifier. Abort the handle to stop it.
    pub(super) async fn start_cancel_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (ready, first_sync) = oneshot::channel();
        let watch = tokio::spawn(self.clone().watch_cancels(ready));
        if tokio::time::timeout(FIRST_SYNC_WAIT, first_sync)
            .await
            .is_err()
        {
            warn!("could not read the kept cancellations yet; checking each call with the notifier until then");
        }
        watch
    }

    async fn watch_cancels(self: Arc<Self>, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut pauses = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let mut sub = match self.notifier.subscribe(CANCEL_CHANNEL).await {
                Ok(sub) => sub,
                Err(e) => {
                    warn!(error = %e, "could not subscribe to cancellations; trying again");
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    tokio::time::sleep(pauses.next_pause()).await;
                    continue;
                }
            };
            self.sync_cancels(&mut ready).await;
            pauses = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
            while let Some(incoming) = sub.next().await {
                match incoming {
                    Ok(Incoming::Message(payload)) => match CancelNote::from_slice(&payload) {
                        Ok(note) => {
                            debug!(task_id = %note.id, "cancellation received");
                            self.cancels.learn(note);
                        }
                        Err(e) => warn!(error = %e, "ignoring a malformed cancellation"),
                    },
                    Ok(Incoming::Gap) => {
                        self.cancels.unsynced();
                        self.sync_cancels(&mut ready).await;
                    }
                    // Cancels published from now until the gap are missed: each call is
                    // checked with the notifier meanwhile.
                    Ok(Incoming::Interrupted) => self.cancels.unsynced(),
                    Err(e) => {
                        self.cancels.unsynced();
                        warn!(error = %e, "the subscription to cancellations failed");
                    }
                }
            }
            self.cancels.unsynced();
            warn!("the subscription to cancellations ended; subscribing again");
            tokio::time::sleep(pauses.next_pause()).await;
        }
    }

    /// Reads the kept cancellations until it succeeds; says `ready` after the first try.
    async fn sync_cancels(&self, ready: &mut Option<oneshot::Sender<()>>) {
        let mut pauses = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let read = self.notifier.cancellations().await;
            let ok = read.is_ok();
            match read {
                Ok(list) => {
                    debug!(kept = list.len(), "cancellations read");
                    self.cancels.synced(list);
                }
                Err(e) => warn!(error = %e, "could not read the kept cancellations; trying again"),
            }
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            if ok {
                return;
            }
            tokio::time::sleep(pauses.next_pause()).await;
        }
    }

    /// Whether the call is cancelled: from memory when the set is complete, else from the
    /// notifier (a failed check counts as not cancelled).
    pub(super) async fn is_cancelled(&self, call: &InProgress<'_>) -> bool {
        if call.flag.is_cancelled() {
            return true;
        }
        if call.synced {
            return false;
        }
        match tokio::time::timeout(POINT_CHECK_WAIT, self.notifier.is_cancelled(&call.id)).await {
            Ok(Ok(true)) => {
                call.flag.cancel();
                true
            }
            Ok(Ok(false)) => false,
            Ok(Err(e)) => {
                warn!(error = %e, task_id = %call.id, "could not check for a cancellation; running the call");
                false
            }
            Err(_) => {
                warn!(task_id = %call.id, "no answer about a cancellation within {POINT_CHECK_WAIT:?}; running the call");
                false
            }
        }
    }

    /// A cancelled call: its final error `ivy.cancelled` is stored and published like any
    /// result, then the message is acked (a cancel is not a failure to dead-letter).
    pub(super) async fn drop_cancelled(
        &self,
        env: &Envelope,
        ran: bool,
        key_id: Option<&str>,
    ) -> Settlement {
        let message = if ran {
            "the call was cancelled while it ran"
        } else {
            "the call was cancelled before it ran"
        };
        info!(task = %env.task, task_id = %env.id, "{message}");
        let f = TaskFailure::new(TaskFailure::CANCELLED, message);
        // Through `fail_unrun`: a cancelled chain step ends its chain, a cancelled chord
        // member counts as failed (workflows).
        self.fail_unrun(env, f, key_id, Settlement::Ack(Settle::Cancelled))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: &str, in_ms: u64) -> CancelNote {
        CancelNote::new(id, now_ms() + in_ms)
    }

    #[test]
    fn the_set_answers_only_once_it_is_complete() {
        let c = Cancellations::default();
        c.learn(note("a", 60_000));
        assert_eq!(c.knows("a"), None, "not read from the notifier yet");
        c.synced(vec![("b".into(), now_ms() + 60_000)]);
        assert_eq!(c.knows("a"), Some(true));
        assert_eq!(c.knows("b"), Some(true));
        assert_eq!(c.knows("c"), Some(false));
        c.unsynced();
        assert_eq!(c.knows("c"), None, "a gap: the notifier must be asked");
    }

    #[test]
    fn a_cancel_reaches_the_calls_in_progress_and_the_ones_to_come() {
        let c = Cancellations::default();
        let first = c.enter("a");
        let second = c.enter("a"); // delivered twice: one flag
        assert!(!first.flag.is_cancelled());
        assert!(!first.synced, "nothing read yet");
        c.learn(note("a", 60_000));
        assert!(first.flag.is_cancelled() && second.flag.is_cancelled());
        drop((first, second));
        assert!(lock(&c.inner).running.is_empty(), "unregistered when done");
        assert!(
            c.enter("a").flag.is_cancelled(),
            "a later delivery is cancelled"
        );
        assert!(!c.enter("b").flag.is_cancelled());
    }

    #[test]
    fn a_resync_adds_what_the_channel_missed_and_drops_what_lapsed() {
        let c = Cancellations::default();
        let running = c.enter("missed");
        c.learn(note("lapsing", 0));
        c.synced(vec![("missed".into(), now_ms() + 60_000)]);
        assert!(
            running.flag.is_cancelled(),
            "a running call hears of it after a gap"
        );
        let later = c.enter("other");
        assert!(later.synced);
        assert!(!c.enter("lapsing").flag.is_cancelled(), "expired");
        c.unsynced();
        assert!(!c.enter("x").synced, "after a gap, until read again");
    }

    /// A note from a producer whose clock is behind (its `until` already past by this host's
    /// clock) holds for its `ttl_ms` from when it is learnt (it was ignored as lapsed).
    #[test]
    fn a_cancel_holds_for_its_ttl_whatever_the_producers_clock() {
        let c = Cancellations::default();
        let mut behind = CancelNote::lasting("a", Duration::from_secs(60));
        behind.until = now_ms() - 10_000;
        c.learn(behind);
        c.synced(Vec::new());
        assert_eq!(c.knows("a"), Some(true));
    }

    /// However many calls are cancelled, the set keeps at most `MOST_KNOWN`: beyond that it
    /// keeps none and says it is incomplete, so each call is asked about (it grew without
    /// bound); a re-read that finds fewer makes it complete again.
    #[test]
    fn the_set_is_bounded() {
        let c = Cancellations::default();
        c.synced(Vec::new());
        for i in 0..=MOST_KNOWN {
            c.learn(note(&format!("c{i}"), 60_000));
        }
        assert_eq!(c.knows("c1"), None, "incomplete past the bound");
        assert!(lock(&c.inner).live.len() <= MOST_KNOWN);
        c.synced(vec![("c1".into(), now_ms() + 60_000)]);
        assert_eq!(c.knows("c1"), Some(true));
        assert_eq!(c.knows("c2"), Some(false));
    }
}
