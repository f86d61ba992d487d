//! A task's `rate_limit` and `max_concurrency`, held across every worker sharing the notifier
//! (issue 15). A call waiting for its turn or for a cluster slot gives its worker slot back
//! meanwhile, so other calls run; it is never counted as a retry.
//!
//! Rate limits reserve a turn ([`Coordination::reserve_turn`](crate::Coordination::reserve_turn)): one round trip per call, then a
//! plain sleep until the turn, so waiting calls do not spin. A turn further away than the
//! horizon is not reserved: the call goes back to the broker, delayed until about then.
//! Concurrency limits hold a leased slot ([`Coordination::acquire_slot`](crate::Coordination::acquire_slot)), renewed while the task
//! runs and given back after it, so a killed worker's slot comes back after one lease. A call
//! waiting for a slot asks again when one is given back anywhere (`freed.rs`), else after a
//! pause (20 ms doubling to 500 ms).
//! Where the broker hands a worker only as many calls as it runs at once (SQS, memory), a
//! call that finds every cluster slot taken goes back to the broker for 250–750 ms instead of
//! waiting in the worker, and a rate-limit turn is waited for in the worker only up to 1 s.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::freed::Freed;
use super::once::RunClaim;
use super::settle::Settlement;
use super::Shared;
use crate::broker::{Broker, Claim, Notifier, Turn};
use crate::envelope::Envelope;
use crate::task::TaskEntry;

/// Default lease of a concurrency slot; renewed every third of it while the task runs.
pub const DEFAULT_SLOT_LEASE: Duration = Duration::from_secs(30);
/// How far ahead a rate-limit turn is waited for in the worker where the broker keeps held
/// messages safe; further turns wait in the broker.
const HORIZON_HELD: Duration = Duration::from_secs(30);
/// The same where held messages are few (SQS, memory: as many as the concurrency).
const HORIZON_FEW: Duration = Duration::from_secs(1);
/// When the notifier cannot be asked, the call goes back to the broker for this long.
const NOTIFIER_DOWN_DELAY: Duration = Duration::from_secs(1);
/// Longest pause between two tries for a concurrency slot (the first is a 25th of it) when no
/// slot is heard of coming free; the default of `Worker::slot_poll`.
pub(super) const SLOT_POLL_MAX: Duration = Duration::from_millis(500);
/// The longest a call waits in the worker for a concurrency slot before it goes back to the
/// broker: far within RabbitMQ's `consumer_timeout` (30 min by default), past which the
/// channel closes and every delivery on it, running ones included, is requeued.
const SLOT_WAIT_AT_MOST: Duration = Duration::from_secs(5 * 60);

tokio::task_local! {
    /// The worker slot of the job running on this task, which it gives back while it waits.
    pub(super) static SLOT: RefCell<Option<OwnedSemaphorePermit>>;
}

/// The worker's slots: as many permits as its concurrency.
#[derive(Debug)]
pub(super) struct Limits {
    pub(super) slots: Arc<Semaphore>,
    pub(super) lease: Duration,
    /// The longest pause between two tries for a cluster slot.
    pub(super) poll: Duration,
    /// Waiting calls' wake-ups when a slot is given back.
    pub(super) freed: Freed,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            slots: Arc::new(Semaphore::new(0)),
            lease: DEFAULT_SLOT_LEASE,
            poll: SLOT_POLL_MAX,
            freed: Freed::default(),
        }
    }
}

/// What admitting a call gave: go on (holding the cluster slot, if any; `true`: the worker
/// slot was given back while waiting and must be taken again before the run), or how to
/// settle it instead.
pub(super) enum Admit {
    Run(Option<SlotGuard>, bool),
    Settled(Settlement),
}

/// How a wait for a cluster slot ended.
enum SlotWait {
    /// A slot was given back: ask again now.
    Freed,
    /// The pause ran out.
    Elapsed,
    /// The worker is stopping.
    Stopping,
}

/// A held cluster slot: its holder name, for renewing and releasing it.
pub(super) struct SlotGuard {
    holder: String,
}

/// Up to `d`, at random.
fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::random::<u64>() % ms)
}

fn give_back_worker_slot() {
    let _ = SLOT.try_with(|s| s.borrow_mut().take());
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Waits for the call's cluster slot, then its rate-limit turn, without a worker slot
    /// meanwhile.
    pub(super) async fn admit(&self, entry: &TaskEntry, env: &Envelope) -> Admit {
        let opts = &entry.options;
        if opts.rate_limit.is_none() && opts.max_concurrency.is_none() {
            return Admit::Run(None, false);
        }
        let mut gave_back = false;
        let held_safe = self.broker.capabilities().prefetch_ahead;
        // The slot first: a call that bounces for a slot has then spent no rate-limit turn.
        let mut guard = None;
        if let Some(max) = opts.max_concurrency {
            let holder = format!("{}:{}:{}", self.telemetry.worker_id, env.id, env.attempt);
            // Before the first try: a slot given back from then on wakes this call.
            let mut freed = self.limits.freed.watch(entry.name);
            let mut pause = self.limits.poll / 25;
            let give_up = tokio::time::Instant::now() + SLOT_WAIT_AT_MOST;
            loop {
                match self
                    .notifier
                    .acquire_slot(entry.name, &holder, max, self.limits.lease)
                    .await
                {
                    Ok(true) => break,
                    Ok(false) if !held_safe => {
                        // The broker hands out only as many calls as run at once: waiting
                        // here would block the others, so the call waits in the broker.
                        let delay = SLOT_POLL_MAX / 2 + jitter(SLOT_POLL_MAX);
                        return Admit::Settled(Settlement::PutBack(delay));
                    }
                    Ok(false) if tokio::time::Instant::now() >= give_up => {
                        debug!(task = entry.name, task_id = %env.id, "waited long for a concurrency slot; back to the broker");
                        return Admit::Settled(Settlement::PutBack(jitter(SLOT_POLL_MAX)));
                    }
                    Ok(false) => {
                        if !gave_back {
                            debug!(task = entry.name, task_id = %env.id, max, "waiting for a concurrency slot");
                            give_back_worker_slot();
                            gave_back = true;
                        }
                        // Jittered, so waiting workers do not ask in step.
                        match self.wait_for_slot(pause + jitter(pause), &mut freed).await {
                            SlotWait::Freed => {}
                            SlotWait::Elapsed => pause = (pause * 2).min(self.limits.poll),
                            SlotWait::Stopping => {
                                return Admit::Settled(Settlement::PutBack(Duration::ZERO))
                            }
                        }
                    }
                    Err(e) => {
                        warn!(task = entry.name, task_id = %env.id, error = %e, "could not take a concurrency slot; the call goes back to the broker");
                        return Admit::Settled(Settlement::PutBack(NOTIFIER_DOWN_DELAY));
                    }
                }
            }
            guard = Some(SlotGuard { holder });
        }
        if let Some(rate) = opts.rate_limit {
            let horizon = if held_safe { HORIZON_HELD } else { HORIZON_FEW };
            match self
                .notifier
                .reserve_turn(entry.name, rate.interval(), horizon)
                .await
            {
                Ok(Turn::Reserved(wait)) if wait.is_zero() => {}
                Ok(Turn::Reserved(wait)) => {
                    debug!(task = entry.name, task_id = %env.id, ?wait, "waiting for a rate-limit turn");
                    give_back_worker_slot();
                    gave_back = true;
                    if !self.sleep_unless_stopping(wait).await {
                        self.give_slot_back(entry, guard.as_ref()).await;
                        return Admit::Settled(Settlement::PutBack(Duration::ZERO));
                    }
                    // The slot was not renewed while waiting: renew it now, or bow out.
                    if let (Some(held), Some(max)) = (&guard, opts.max_concurrency) {
                        let renewed = self
                            .notifier
                            .acquire_slot(entry.name, &held.holder, max, self.limits.lease)
                            .await;
                        if !matches!(renewed, Ok(true)) {
                            debug!(task = entry.name, task_id = %env.id, "lost the concurrency slot while waiting for a rate-limit turn; back to the broker");
                            return Admit::Settled(Settlement::PutBack(Duration::ZERO));
                        }
                    }
                }
                Ok(Turn::Busy(wait)) => {
                    // Back when its turn is likely within the horizon; not a retry.
                    let delay = wait.saturating_sub(horizon / 2);
                    debug!(task = entry.name, task_id = %env.id, ?delay, "rate limit: the next turn is far; back to the broker");
                    self.give_slot_back(entry, guard.as_ref()).await;
                    return Admit::Settled(Settlement::PutBack(delay));
                }
                Err(e) => {
                    warn!(task = entry.name, task_id = %env.id, error = %e, "could not reserve a rate-limit turn; the call goes back to the broker");
                    self.give_slot_back(entry, guard.as_ref()).await;
                    return Admit::Settled(Settlement::PutBack(NOTIFIER_DOWN_DELAY));
                }
            }
        }
        Admit::Run(guard, gave_back)
    }

    /// Gives a cluster slot back when the call will not run after all (nothing if none).
    async fn give_slot_back(&self, entry: &TaskEntry, guard: Option<&SlotGuard>) {
        if let Some(held) = guard {
            self.release_slot(entry, held).await;
        }
    }

    /// Gives a held cluster slot back and says so to the calls waiting for one.
    async fn release_slot(&self, entry: &TaskEntry, held: &SlotGuard) {
        if let Err(e) = self.notifier.release_slot(entry.name, &held.holder).await {
            warn!(task = entry.name, error = %e, "could not give a concurrency slot back; it frees when its lease runs out");
        }
        self.announce_freed_slot(entry.name);
    }

    /// Takes a worker slot again after waiting without one.
    async fn regain_worker_slot(&self) {
        if let Ok(permit) = self.limits.slots.clone().acquire_owned().await {
            let _ = SLOT.try_with(|s| *s.borrow_mut() = Some(permit));
        }
    }

    /// Runs `run` while renewing the leases it holds (the cluster slot of `slot`, the run
    /// claim of a call that runs once), then gives the slot back; first takes a worker slot
    /// again when `regain` (the leases are renewed meanwhile: a slot won is not left to lapse
    /// while the call waits for the worker). A lease that cannot be renewed stops the run:
    /// `Err` says why, and the call did not finish.
    pub(super) async fn holding_leases<F: std::future::Future>(
        &self,
        entry: &TaskEntry,
        slot: Option<SlotGuard>,
        claim: Option<&RunClaim<N>>,
        regain: bool,
        run: F,
    ) -> Result<F::Output, String> {
        let run = async {
            if regain {
                self.regain_worker_slot().await;
            }
            run.await
        };
        let max = entry.options.max_concurrency;
        let slot = slot.zip(max);
        if slot.is_none() && claim.is_none() {
            return Ok(run.await);
        }
        let lease = self.limits.lease;
        let renew = async {
            // A lease runs from when its renewal was sent: the last one that was answered.
            let mut renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(lease / 3).await;
                let sent = tokio::time::Instant::now();
                let mut failed = None;
                if let Some((guard, max)) = &slot {
                    match self
                        .notifier
                        .acquire_slot(entry.name, &guard.holder, *max, lease)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => return "its concurrency slot's lease ran out and was taken by another call".to_owned(),
                        Err(e) => failed = Some(e),
                    }
                }
                if let Some(claim) = claim {
                    match self.notifier.claim(&claim.key, &claim.owner, lease).await {
                        Ok(Claim::Won) => {}
                        Ok(_) => return "its run claim's lease ran out and was taken by a copy of the call".to_owned(),
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    None => renewed = sent,
                    Some(e) if renewed.elapsed() + lease / 3 >= lease => {
                        return format!("its lease could not be renewed before it ran out ({e})");
                    }
                    Some(e) => {
                        warn!(task = entry.name, error = %e, "could not renew a lease; trying again")
                    }
                }
            }
        };
        let out = tokio::select! {
            out = run => Ok(out),
            why = renew => Err(why),
        };
        if let Some((guard, _)) = slot {
            self.release_slot(entry, &guard).await;
        }
        out
    }

    /// Waits `d` for a slot, or less if one is given back meanwhile (`freed` changes).
    async fn wait_for_slot(&self, d: Duration, freed: &mut watch::Receiver<u64>) -> SlotWait {
        let mut stopping = self.stopping.subscribe();
        let notice = async {
            if freed.changed().await.is_err() {
                // Never: the sender is kept. Were it gone, the pause alone would do.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = notice => SlotWait::Freed,
            () = tokio::time::sleep(d) => SlotWait::Elapsed,
            _ = stopping.wait_for(|s| *s) => SlotWait::Stopping,
        }
    }

    /// Sleeps `d`; `false` if the worker started stopping meanwhile.
    async fn sleep_unless_stopping(&self, d: Duration) -> bool {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            _ = stopping.wait_for(|s| *s) => false,
        }
    }
}
