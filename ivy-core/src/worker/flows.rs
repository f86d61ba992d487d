//! Workflows (issue 14), the worker's side: once a call has ended and its outcome is stored,
//! and before its message is settled, publish what follows it: the next step of its chain (or
//! the chain's final failure), its hooks, and, when it is the last member of a chord to
//! arrive, the chord's callback.
//!
//! Everything is published at most once per id, by a claim in the notifier: a call delivered
//! again after its worker died re-checks and publishes only what was not marked published.
//! Nothing here holds state between calls.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::{debug, warn};

use super::Shared;
use crate::broker::{Broker, Claim, Notifier, OutgoingMessage};
use crate::envelope::{now_ms, Envelope, Notification, Outcome};
use crate::envelope::{ChordRef, Flow, FlowStep};
use crate::error::{Error, Result};
use crate::failure::TaskFailure;

/// How long a claim to publish something holds before another worker may take it over: far
/// longer than a confirmed publish takes, so that a worker that died holding it delays what
/// follows by at most this much.
pub(super) const CLAIM_LEASE: Duration = Duration::from_secs(15);
/// How long a call whose follow-up could not be published (or is being published by another
/// worker) waits before it is looked at again.
pub(super) const RECHECK_AFTER: Duration = Duration::from_secs(2);
/// How often a claim held by another worker is asked for again.
const CLAIM_POLL: Duration = Duration::from_millis(100);
/// The channel a result is stored with when a chord member has no reply channel: chords read
/// their members' stored results, so members store them even when sent fire-and-forget.
pub(super) const NO_CHANNEL: &str = "ivy.reply.none";
/// The failure kind of a chord whose member's stored result is gone (expired).
pub const MISSING_RESULT: &str = "ivy.missing_result";

/// Why what follows a call could not be published now: the call is passed on with its outcome
/// and looked at again after the pause.
pub(super) struct NotYet(pub(super) Duration);

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Publishes what follows `env`, which ended with `outcome` (already stored). `key_id` is
    /// the key that opened the call: what follows is sealed under it, so it keeps the rights
    /// it came with.
    pub(super) async fn advance(
        &self,
        env: &Envelope,
        outcome: &Outcome,
        key_id: Option<&str>,
    ) -> std::result::Result<(), NotYet> {
        let Some(flow) = env.flow.as_deref() else {
            return Ok(());
        };
        let done = self.advance_flow(env, flow, outcome, key_id).await;
        done.map_err(|e| {
            warn!(error = %e, task_id = %env.id, "could not publish what follows the call; it is looked at again shortly");
            NotYet(RECHECK_AFTER)
        })?
    }

    async fn advance_flow(
        &self,
        env: &Envelope,
        flow: &Flow,
        outcome: &Outcome,
        key_id: Option<&str>,
    ) -> Result<std::result::Result<(), NotYet>> {
        match outcome {
            Outcome::Ok(value) => {
                if let Some((next, rest)) = flow.chain.split_first() {
                    // The chain's handle follows its last step: a cancel of that id stops the
                    // chain here, before the next step is published.
                    let last = &flow.chain[flow.chain.len() - 1];
                    // From the worker's set of live cancellations: no round trip per step
                    // unless that set is incomplete.
                    let cancelled = match self.cancels.knows(&last.id) {
                        Some(known) => known,
                        None => self.notifier.is_cancelled(&last.id).await?,
                    };
                    if cancelled {
                        let f = TaskFailure::new(
                            TaskFailure::CANCELLED,
                            format!(
                                "the chain was cancelled; it stopped after step `{}` ({})",
                                env.task, env.id
                            ),
                        );
                        self.store_final(env, &last.id, f).await?;
                    } else {
                        let rest = Flow {
                            chain: rest.to_vec(),
                            ..Flow::default()
                        };
                        let e = self.step_envelope(env, next, Some(value.clone()), rest);
                        if let Err(wait) = self.publish_once(next, e, key_id).await? {
                            return Ok(Err(wait));
                        }
                    }
                }
                if let Some(hook) = &flow.on_success {
                    let e = self.step_envelope(env, hook, Some(value.clone()), Flow::default());
                    if let Err(wait) = self.publish_once(hook, e, key_id).await? {
                        return Ok(Err(wait));
                    }
                }
            }
            Outcome::Err(failure) => {
                if let Some(last) = flow.chain.last() {
                    let later = flow.chain.len();
                    // The step's failure, its kind kept (`ivy.cancelled` stays cancelled),
                    // its message saying which step it was.
                    let f = TaskFailure {
                        message: format!(
                            "chain step `{}` ({}) failed, so its {later} later step(s) did not run: {}",
                            env.task, env.id, failure.message
                        ),
                        ..failure.clone()
                    };
                    self.store_final(env, &last.id, f).await?;
                }
                if let Some(hook) = &flow.on_failure {
                    let failure = serde_json::to_value(failure).unwrap_or(Value::Null);
                    let e = self.step_envelope(env, hook, Some(failure), Flow::default());
                    if let Err(wait) = self.publish_once(hook, e, key_id).await? {
                        return Ok(Err(wait));
                    }
                }
            }
        }
        if let Some(chord) = &flow.chord {
            return self.arrive(env, chord, key_id).await;
        }
        Ok(Ok(()))
    }

    /// The envelope of `step`, published after `env`: its slot gets `input`; it answers on
    /// `env`'s channel and continues its trace.
    fn step_envelope(
        &self,
        env: &Envelope,
        step: &FlowStep,
        input: Option<Value>,
        flow: Flow,
    ) -> Envelope {
        let mut args = step.args.clone();
        if let (Some(slot), Some(input)) = (&step.slot, input) {
            args.insert(slot.clone(), input);
        }
        let mut next =
            Envelope::new(step.id.clone(), step.task.clone(), args, now_ms()).with_flow(flow);
        next.reply_to.clone_from(&env.reply_to);
        next.priority = step.priority;
        next.max_retries = step.max_retries;
        next.traceparent.clone_from(&env.traceparent);
        next
    }

    /// Publishes `next` (the call of `step`) unless it was published already: claim, publish
    /// (confirmed), mark. `Ok(Err(_))`: another worker holds the claim.
    async fn publish_once(
        &self,
        step: &FlowStep,
        next: Envelope,
        key_id: Option<&str>,
    ) -> Result<std::result::Result<(), NotYet>> {
        let key = format!("call:{}", step.id);
        match self.claim_patiently(&key).await? {
            Claim::Published => {
                debug!(task_id = %step.id, "published already");
                return Ok(Ok(()));
            }
            Claim::Held => return Ok(Err(NotYet(RECHECK_AFTER))),
            Claim::Won => {}
        }
        let body = self.reseal(key_id, next.to_bytes());
        let mut msg = OutgoingMessage::new(step.id.clone(), step.queue.clone(), body);
        msg.priority = step.priority;
        Box::pin(self.broker.publish(msg)).await?;
        self.notifier
            .mark_published(&key, self.config.result_ttl)
            .await?;
        debug!(task = %step.task, task_id = %step.id, "published the next call");
        Ok(Ok(()))
    }

    /// Claims `key`; while another worker holds it (a duplicate of this call is finishing at
    /// the same time), waits for that one to mark it published, for at most a lease: a
    /// holder that died is taken over once its lease ran out. Still held then: `Held`, and
    /// the call is looked at again later.
    async fn claim_patiently(&self, key: &str) -> Result<Claim> {
        let until = tokio::time::Instant::now() + CLAIM_LEASE + CLAIM_POLL;
        loop {
            match self.notifier.claim_publication(key, CLAIM_LEASE).await? {
                Claim::Held if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(CLAIM_POLL).await;
                }
                other => return Ok(other),
            }
        }
    }

    /// Stores the final failure of call `id` (which will not run), on `env`'s channel.
    async fn store_final(&self, env: &Envelope, id: &str, failure: TaskFailure) -> Result<()> {
        let note = Notification::result(id.to_owned(), 0, Outcome::Err(failure));
        let channel = env.reply_to.as_deref().unwrap_or(NO_CHANNEL);
        self.notifier
            .publish_final(
                channel,
                id,
                self.seal(note.to_bytes()),
                self.config.result_ttl,
            )
            .await
    }

    /// Counts `env` as arrived in `chord`; the member that completes it publishes the
    /// callback (or the chord's failure), once.
    async fn arrive(
        &self,
        env: &Envelope,
        chord: &ChordRef,
        key_id: Option<&str>,
    ) -> Result<std::result::Result<(), NotYet>> {
        let set = format!("chord:{}", chord.id);
        let arrived = self
            .notifier
            .count_member(&set, &env.id, self.config.result_ttl)
            .await?;
        if arrived < u64::from(chord.size) {
            debug!(chord = %chord.id, arrived, size = chord.size, "chord member arrived");
            return Ok(Ok(()));
        }
        let key = format!("call:{}", chord.id);
        match self.claim_patiently(&key).await? {
            Claim::Published => return Ok(Ok(())),
            Claim::Held => return Ok(Err(NotYet(RECHECK_AFTER))),
            Claim::Won => {}
        }
        let ids = chord.member_ids();
        let stored = self.notifier.fetch_many(&ids).await?;
        let mut results = Vec::with_capacity(ids.len());
        let mut failed = None;
        for (index, (id, payload)) in ids.iter().zip(stored).enumerate() {
            let outcome = match payload.map(|p| self.read_outcome(&p)).transpose()? {
                Some(outcome) => outcome,
                None => Outcome::Err(TaskFailure::new(
                    MISSING_RESULT,
                    format!("the result of chord member {index} ({id}) is not stored (expired?)"),
                )),
            };
            match outcome {
                Outcome::Ok(v) => results.push(json!({ "Ok": v })),
                Outcome::Err(f) => {
                    if failed.is_none() {
                        failed = Some((index, id, f.clone()));
                    }
                    results.push(json!({ "Err": f }));
                }
            }
        }
        let callback = &chord.callback;
        match failed {
            Some((index, id, f)) if !chord.pass_failures => {
                let size = chord.size;
                let f = TaskFailure {
                    message: format!(
                        "chord member {index} of {size} ({id}) failed, so the callback `{}` did not run: {}",
                        callback.task, f.message
                    ),
                    ..f
                };
                self.store_final(env, &chord.id, f).await?;
            }
            _ => {
                let input = if chord.pass_failures {
                    Value::Array(results)
                } else {
                    results
                        .into_iter()
                        .map(|mut r| r.get_mut("Ok").map(Value::take).unwrap_or_default())
                        .collect()
                };
                let next = self.step_envelope(env, callback, Some(input), Flow::default());
                let body = self.reseal(key_id, next.to_bytes());
                let mut msg =
                    OutgoingMessage::new(callback.id.clone(), callback.queue.clone(), body);
                msg.priority = callback.priority;
                Box::pin(self.broker.publish(msg)).await?;
            }
        }
        self.notifier
            .mark_published(&key, self.config.result_ttl)
            .await?;
        debug!(chord = %chord.id, "published the chord's callback");
        Ok(Ok(()))
    }

    /// The outcome in a stored final notification (sealed as this worker seals results).
    fn read_outcome(&self, payload: &[u8]) -> Result<Outcome> {
        let note = if self.keyring.is_enabled() {
            Notification::from_slice(&self.keyring.open_result(payload)?.plaintext)?
        } else {
            Notification::from_slice(payload)?
        };
        match note {
            Notification::Result { outcome, .. } => Ok(outcome),
            _ => Err(Error::Malformed(
                "a stored result that is not a result notification".into(),
            )),
        }
    }
}
