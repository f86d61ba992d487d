//! Calls that run once (envelope field `once`, PROTOCOL.md §13): what a worker publishes
//! after a call (chain steps, hooks, chord callbacks), a schedule's ticks, and calls sent with
//! `Call::once`. Any of them may be published twice (a publish whose confirm was lost is sent
//! again; a call delivered again after a crash publishes what follows it again), so the worker
//! that receives one recognises a copy by its id:
//!
//! 1. it claims `run:<id>` for its own token with a lease (a fenced claim: asking again after
//!    a lost answer is safe), renewed while the call runs; a copy finding the claim held by
//!    another token is put back and looked at again later;
//! 2. holding the claim, it reads the call's stored result: a call that has one ran already,
//!    and the copy only finishes what follows it (publishes its flow again, which is as safe)
//!    and is acked;
//! 3. otherwise it runs the call, and the result is stored (even without a reply channel)
//!    before the message is acked and the claim given back.
//!
//! A run whose lease cannot be renewed (lost to another token, or the notifier unreachable
//! until the lease would lapse) is stopped: it could no longer say it is the only one.

use std::time::Duration;

use tracing::{debug, warn};

use super::flows::RECHECK_AFTER;
use super::settle::Settlement;
use super::{Settle, Shared};
use crate::broker::{Broker, Claim, Notifier};
use crate::envelope::{Envelope, Outcome};

/// Tries of a claim before the call is put back: asking again is safe for the claim's owner.
const CLAIM_TRIES: u32 = 3;

/// The claim on a call's run, given back (compare-and-delete) when dropped, whatever path the
/// call took: its result is stored by then, or it did not run.
pub(super) struct RunClaim<N: Notifier> {
    notifier: N,
    pub(super) key: String,
    pub(super) owner: String,
}

impl<N: Notifier> Drop for RunClaim<N> {
    fn drop(&mut self) {
        let (notifier, key, owner) = (
            self.notifier.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = notifier.release(&key, &owner).await {
                    debug!(error = %e, %key, "could not give a run claim back; it lapses with its lease");
                }
            });
        }
    }
}

/// What the claim of a call that runs once came to.
pub(super) enum Guard<N: Notifier> {
    /// Run it, holding the claim.
    Run(RunClaim<N>),
    /// It ran already: its stored outcome (`None`: stored but unreadable here, or marked done).
    Finished(Option<Outcome>),
    /// Running elsewhere, or the notifier could not be asked: look again after this pause.
    Later(Duration),
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Claims the run of `env` (which runs once) for this delivery.
    pub(super) async fn guard(&self, env: &Envelope) -> Guard<N> {
        let token: u64 = rand::random();
        let claim = RunClaim {
            notifier: self.notifier.clone(),
            key: format!("run:{}", env.id),
            owner: format!("{}:{token:016x}", self.telemetry.worker_id),
        };
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            match self
                .notifier
                .claim(&claim.key, &claim.owner, self.limits.lease)
                .await
            {
                Ok(answer) => break answer,
                Err(e) if tries < CLAIM_TRIES => {
                    debug!(error = %e, task_id = %env.id, "claiming the run failed; asking again");
                    tokio::time::sleep(Duration::from_millis(50) * tries).await;
                }
                Err(e) => {
                    warn!(error = %e, task_id = %env.id, "could not claim the run of a call that runs once; it is looked at again shortly");
                    return Guard::Later(RECHECK_AFTER);
                }
            }
        };
        match answer {
            Claim::Won => {}
            Claim::Held => {
                debug!(task_id = %env.id, "a copy of this call is running elsewhere; looking again shortly");
                return Guard::Later(RECHECK_AFTER);
            }
            _ => return Guard::Finished(None),
        }
        match self.notifier.fetch(&env.id).await {
            Ok(None) => Guard::Run(claim),
            Ok(Some(payload)) => match self.read_outcome(&payload) {
                Ok(outcome) => Guard::Finished(Some(outcome)),
                Err(e) => {
                    warn!(error = %e, task_id = %env.id, "a copy of a call whose result is stored but cannot be read here; not running it again");
                    Guard::Finished(None)
                }
            },
            Err(e) => {
                warn!(error = %e, task_id = %env.id, "could not read whether a call that runs once ran already; it is looked at again shortly");
                Guard::Later(RECHECK_AFTER)
            }
        }
    }

    /// A copy of a call that ran already: what follows it is published again (the original
    /// may have stopped before it could), then the copy is acked, never run.
    pub(super) async fn settle_copy(
        &self,
        env: &Envelope,
        outcome: Option<Outcome>,
        key_id: Option<&str>,
    ) -> Settlement {
        if let Some(outcome) = outcome {
            match self.advance(env, &outcome, key_id).await {
                super::flows::Advance::Done | super::flows::Advance::Broken(_) => {}
                super::flows::Advance::NotYet(pause) => return Settlement::PutBack(pause),
            }
        }
        debug!(task = %env.task, task_id = %env.id, "a copy of a call that ran already; not running it again");
        Settlement::Ack(Settle::Duplicate)
    }
}
