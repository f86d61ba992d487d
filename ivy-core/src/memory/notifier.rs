//! The in-memory notifier: channels, final results with expiry, and live workers'
//! announcements with expiry. Clones share state; `memory://name` names a shared one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::parse_url;
use crate::broker::{Claim, Coordination, Incoming, Presence, Results, Subscription, Turn};
use crate::cancel::{CancelOutcome, CANCEL_CHANNEL};
use crate::envelope::{now_ms, TaskId};
use crate::error::Result;
use crate::sync::lock;

#[derive(Debug, Default)]
struct NotifierState {
    channels: HashMap<String, Vec<mpsc::UnboundedSender<Vec<u8>>>>,
    results: HashMap<String, (Vec<u8>, Instant)>,
    stores_since_purge: usize,
    /// Live workers' announcements by worker id, with their expiry.
    workers: HashMap<String, (Vec<u8>, Instant)>,
    /// Workflows (issue 14): sets of chord members, with expiry.
    sets: HashMap<String, (HashSet<String>, Instant)>,
    /// Fenced claims (issue 21): who holds each (or that it is done), and until when.
    claims: HashMap<String, (Holder, Instant)>,
    /// Cancellations by task id: their expiry, as an instant and in ms since the epoch.
    cancels: HashMap<String, (Instant, u64, Vec<u8>)>,
    /// Deduplication claims by key: the task id holding it, the request's token, and the
    /// claim's expiry.
    unique: HashMap<String, (TaskId, String, Instant)>,
    /// Tick claims, rate limits and concurrency slots.
    limits: super::limits::Limits,
}

/// Who holds a fenced claim.
#[derive(Debug)]
enum Holder {
    Owner(String),
    Done,
}

/// The in-memory notifier: channels and a result store with expiry. Clones share state.
#[derive(Clone, Debug, Default)]
pub struct MemoryNotifier {
    state: Arc<Mutex<NotifierState>>,
}

impl MemoryNotifier {
    /// A new, private notifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// The notifier named by `memory://name`, shared within the process like
    /// [`MemoryBroker::from_url`](super::MemoryBroker::from_url).
    pub fn from_url(url: &str) -> Result<Self> {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryNotifier>>> = OnceLock::new();
        let (name, _) = parse_url(url)?;
        let mut named = lock(NAMED.get_or_init(Default::default));
        Ok(named.entry(name).or_default().clone())
    }

    /// The payload stored under `task_id`, unless it expired by `now`.
    fn stored(state: &NotifierState, task_id: &str, now: Instant) -> Option<Vec<u8>> {
        state
            .results
            .get(task_id)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(p, _)| p.clone())
    }

    fn send(state: &mut NotifierState, channel: &str, payload: Vec<u8>) {
        if let Some(subs) = state.channels.get_mut(channel) {
            subs.retain(|s| s.send(payload.clone()).is_ok());
            if subs.is_empty() {
                state.channels.remove(channel);
            }
        }
    }
}

impl Results for MemoryNotifier {
    type Subscription = MemorySubscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        Self::send(&mut lock(&self.state), channel, payload);
        Ok(())
    }

    async fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        state.stores_since_purge += 1;
        if state.stores_since_purge >= 1024 {
            state.stores_since_purge = 0;
            state.results.retain(|_, (_, expiry)| *expiry > now);
            state.sets.retain(|_, (_, expiry)| *expiry > now);
            state.claims.retain(|_, (_, expiry)| *expiry > now);
            state.cancels.retain(|_, (expiry, _, _)| *expiry > now);
            state.unique.retain(|_, (_, _, expiry)| *expiry > now);
        }
        state
            .results
            .insert(task_id.to_string(), (payload.clone(), now + ttl));
        Self::send(&mut state, channel, payload);
        Ok(())
    }

    async fn fetch(&self, task_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(Self::stored(&lock(&self.state), task_id, Instant::now()))
    }

    async fn fetch_many(&self, task_ids: &[TaskId]) -> Result<Vec<Option<Vec<u8>>>> {
        let state = lock(&self.state);
        let now = Instant::now();
        Ok(task_ids
            .iter()
            .map(|id| Self::stored(&state, id, now))
            .collect())
    }

    async fn subscribe(&self, channel: &str) -> Result<MemorySubscription> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.state)
            .channels
            .entry(channel.to_string())
            .or_default()
            .push(tx);
        Ok(MemorySubscription { rx })
    }
}

impl Presence for MemoryNotifier {
    async fn announce(&self, worker_id: &str, payload: Vec<u8>, ttl: Duration) -> Result<()> {
        let expiry = Instant::now() + ttl;
        lock(&self.state)
            .workers
            .insert(worker_id.to_string(), (payload, expiry));
        Ok(())
    }

    async fn withdraw(&self, worker_id: &str) -> Result<()> {
        lock(&self.state).workers.remove(worker_id);
        Ok(())
    }

    async fn announcements(&self) -> Result<Vec<Vec<u8>>> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        state.workers.retain(|_, (_, expiry)| *expiry > now);
        Ok(state.workers.values().map(|(p, _)| p.clone()).collect())
    }
}

impl Coordination for MemoryNotifier {
    // Workflows (issue 14)

    async fn count_member(&self, set: &str, member: &str, ttl: Duration) -> Result<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let entry = state
            .sets
            .entry(set.to_string())
            .or_insert_with(|| (HashSet::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.insert(member.to_string());
        entry.1 = now + ttl;
        Ok(entry.0.len() as u64)
    }

    // Fenced claims (issue 21)

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.claims.get(key).filter(|(_, expiry)| *expiry > now) {
            Some((Holder::Done, _)) => return Ok(Claim::Done),
            Some((Holder::Owner(held), _)) if held != owner => return Ok(Claim::Held),
            _ => {}
        }
        state.claims.insert(
            key.to_owned(),
            (Holder::Owner(owner.to_owned()), now + lease),
        );
        Ok(Claim::Won)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        let mut state = lock(&self.state);
        if matches!(state.claims.get(key), Some((Holder::Owner(held), _)) if held == owner) {
            state.claims.remove(key);
        }
        Ok(())
    }

    async fn mark_done(&self, key: &str, ttl: Duration) -> Result<()> {
        let expiry = Instant::now() + ttl;
        lock(&self.state)
            .claims
            .insert(key.to_owned(), (Holder::Done, expiry));
        Ok(())
    }

    // Cancellation and deduplication (issue 14)

    async fn cancel(&self, task_id: &str, note: Vec<u8>, ttl: Duration) -> Result<CancelOutcome> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if Self::stored(&state, task_id, now).is_some() {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        // Only this key's expiry: lapsed entries go in `publish_final`'s periodic purge.
        if let Some((_, _, kept)) = state
            .cancels
            .get(task_id)
            .filter(|(expiry, _, _)| *expiry > now)
        {
            // The same note again is this cancel asked for again (an answer lost).
            return Ok(if *kept == note {
                CancelOutcome::Cancelled
            } else {
                CancelOutcome::AlreadyCancelled
            });
        }
        let until = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        state
            .cancels
            .insert(task_id.to_owned(), (now + ttl, until, note.clone()));
        Self::send(&mut state, CANCEL_CHANNEL, note);
        Ok(CancelOutcome::Cancelled)
    }

    async fn is_cancelled(&self, task_id: &str) -> Result<bool> {
        let state = lock(&self.state);
        let now = Instant::now();
        Ok(state
            .cancels
            .get(task_id)
            .is_some_and(|(expiry, _, _)| *expiry > now))
    }

    async fn cancellations(&self) -> Result<Vec<(TaskId, u64)>> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        state.cancels.retain(|_, (expiry, _, _)| *expiry > now);
        Ok(state
            .cancels
            .iter()
            .map(|(id, (_, until, _))| (id.clone(), *until))
            .collect())
    }

    async fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<TaskId>> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if let Some((holder, held_by, _)) = state.unique.get(key).filter(|(_, _, exp)| *exp > now) {
            // This request's own claim, asked for again: still its own.
            return Ok((held_by != token).then(|| holder.clone()));
        }
        state.unique.insert(
            key.to_owned(),
            (task_id.to_owned(), token.to_owned(), now + ttl),
        );
        Ok(None)
    }

    async fn release_unique(&self, key: &str, task_id: &str, token: &str) -> Result<()> {
        let mut state = lock(&self.state);
        if state
            .unique
            .get(key)
            .is_some_and(|(holder, held_by, _)| holder == task_id && held_by == token)
        {
            state.unique.remove(key);
        }
        Ok(())
    }

    // Schedules and limits (issue 15)

    async fn reserve_turn(
        &self,
        task: &str,
        interval: Duration,
        horizon: Duration,
    ) -> Result<Turn> {
        Ok(lock(&self.state)
            .limits
            .reserve_turn(task, interval, horizon))
    }

    async fn acquire_slot(
        &self,
        task: &str,
        holder: &str,
        max: u32,
        lease: Duration,
    ) -> Result<bool> {
        Ok(lock(&self.state)
            .limits
            .acquire_slot(task, holder, max, lease))
    }

    async fn release_slot(&self, task: &str, holder: &str) -> Result<()> {
        lock(&self.state).limits.release_slot(task, holder);
        Ok(())
    }
}

/// A subscription to an in-memory channel. Unbounded, so it never has gaps.
#[derive(Debug)]
pub struct MemorySubscription {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Result<Incoming>> {
        self.rx.recv().await.map(|p| Ok(Incoming::Message(p)))
    }
}
