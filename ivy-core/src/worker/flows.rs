//! Workflows (issue 14), the worker's side: once a call has ended and its outcome is stored,
//! and before its message is settled, publish what follows it: the next step of its chain (or
//! the chain's final failure), its hooks, and, when it is the last member of a chord to
//! arrive, the chord's callback.
//!
//! Everything here may be done twice (a call delivered again after its worker died before
//! acking, a publish whose confirm was lost and is sent again): what follows is published with
//! an id chosen up front and the envelope's `once` flag, so the worker that receives a second
//! copy recognises it and does not run it again (`worker/once.rs`, PROTOCOL.md §13). There is
//! no claim on the publishing side: it would not make a lost confirm or a crash after the
//! publish safe, and the consuming side does. Nothing here holds state between calls.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::{debug, error, warn};

use super::Shared;
use crate::broker::{Broker, Notifier, OutgoingMessage};
use crate::envelope::{now_ms, Envelope, Notification, Outcome};
use crate::envelope::{ChordRef, Flow, FlowStep};
use crate::error::{Error, Result};
use crate::failure::TaskFailure;

/// How long a call whose follow-up could not be published waits before it is looked at again.
pub(super) const RECHECK_AFTER: Duration = Duration::from_secs(2);
/// The channel a result is stored with when a call has no reply channel: chords read their
/// members' stored results, and a call that runs once is recognised by its stored result, so
/// those store it even when sent fire-and-forget.
pub(super) const NO_CHANNEL: &str = "ivy.reply.none";
/// The failure kind of a chord whose member's stored result is gone (expired).
pub const MISSING_RESULT: &str = "ivy.missing_result";
/// The failure kind of a flow whose next call can never be published (too large for the
/// broker, or built from a result this worker cannot open).
pub const UNPUBLISHABLE: &str = "ivy.unpublishable";

/// What advancing a call's flow came to.
#[must_use]
pub(super) enum Advance {
    /// Everything that follows is published (or nothing follows).
    Done,
    /// Something could not be published now (a transient failure): the call is passed on
    /// with its outcome and looked at again after the pause.
    NotYet(Duration),
    /// Something can never be published: the flow was ended with a failure its handle gets,
    /// and the call is dead-lettered with this reason.
    Broken(String),
}

/// Why advancing stopped.
enum Stop {
    /// Try again later.
    Later(Error),
    /// Never: the flow ended with a stored failure; the reason.
    Broken(String),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Later(e)
    }
}

/// Whether publishing again can never succeed: the message itself is at fault, not the broker.
fn is_permanent(e: &Error) -> bool {
    matches!(
        e,
        Error::MessageTooLarge { .. }
            | Error::Crypto(_)
            | Error::Malformed(_)
            | Error::Codec { .. }
            | Error::Url { .. }
            | Error::Config(_)
    )
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Publishes what follows `env`, which ended with `outcome` (already stored). `key_id` is
    /// the key that opened the call: what follows is sealed under it, so it keeps the rights
    /// it came with.
    pub(super) async fn advance(
        &self,
        env: &Envelope,
        outcome: &Outcome,
        key_id: Option<&str>,
    ) -> Advance {
        let Some(flow) = env.flow.as_deref() else {
            return Advance::Done;
        };
        match self.advance_flow(env, flow, outcome, key_id).await {
            Ok(()) => Advance::Done,
            Err(Stop::Later(e)) => {
                warn!(error = %e, task_id = %env.id, "could not publish what follows the call; it is looked at again shortly");
                Advance::NotYet(RECHECK_AFTER)
            }
            Err(Stop::Broken(reason)) => {
                error!(task_id = %env.id, %reason, "what follows the call can never be published; its flow ended with a failure");
                Advance::Broken(reason)
            }
        }
    }

    async fn advance_flow(
        &self,
        env: &Envelope,
        flow: &Flow,
        outcome: &Outcome,
        key_id: Option<&str>,
    ) -> std::result::Result<(), Stop> {
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
                        self.publish_step(env, next, e, key_id, Some(&last.id))
                            .await?;
                    }
                }
                if let Some(hook) = &flow.on_success {
                    let e = self.step_envelope(env, hook, Some(value.clone()), Flow::default());
                    self.publish_step(env, hook, e, key_id, None).await?;
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
                    self.publish_step(env, hook, e, key_id, None).await?;
                }
            }
        }
        if let Some(chord) = &flow.chord {
            return self.arrive(env, chord, key_id).await;
        }
        Ok(())
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
        // Published again whenever this call is looked at again: the copies run once.
        next.once = true;
        next
    }

    /// Publishes `next` (the call of `step`), broker-confirmed. A publish that can never
    /// succeed ends the flow: the handle waiting on `handle_id` (a chain's last step) gets the
    /// failure.
    async fn publish_step(
        &self,
        env: &Envelope,
        step: &FlowStep,
        next: Envelope,
        key_id: Option<&str>,
        handle_id: Option<&str>,
    ) -> std::result::Result<(), Stop> {
        let body = self.reseal(key_id, next.to_bytes());
        let queue = self.queue_of(&step.queue).to_owned();
        let mut msg = OutgoingMessage::new(step.id.clone(), queue, body);
        msg.priority = step.priority;
        match Box::pin(self.broker.publish(msg)).await {
            Ok(()) => {
                debug!(task = %step.task, task_id = %step.id, "published the next call");
                Ok(())
            }
            Err(e) if is_permanent(&e) => {
                let reason = format!(
                    "could not publish `{}` ({}), which follows task `{}` ({}): {e}",
                    step.task, step.id, env.task, env.id
                );
                if let Some(id) = handle_id {
                    let f = TaskFailure::new(UNPUBLISHABLE, reason.clone());
                    self.store_final(env, id, f).await?;
                }
                Err(Stop::Broken(reason))
            }
            Err(e) => Err(Stop::Later(e)),
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

    /// Counts `env` as arrived in `chord`; a member that finds it complete publishes the
    /// callback (or stores the chord's failure). Several may (a member delivered again): the
    /// callback runs once all the same.
    async fn arrive(
        &self,
        env: &Envelope,
        chord: &ChordRef,
        key_id: Option<&str>,
    ) -> std::result::Result<(), Stop> {
        let set = format!("chord:{}", chord.id);
        let arrived = self
            .notifier
            .count_member(&set, &env.id, self.config.result_ttl)
            .await?;
        if arrived < u64::from(chord.size) {
            debug!(chord = %chord.id, arrived, size = chord.size, "chord member arrived");
            return Ok(());
        }
        let ids = chord.member_ids();
        let stored = self.notifier.fetch_many(&ids).await?;
        let mut results = Vec::with_capacity(ids.len());
        let mut failed = None;
        let callback = &chord.callback;
        for (index, (id, payload)) in ids.iter().zip(stored).enumerate() {
            let outcome = match payload.map(|p| self.read_outcome(&p)).transpose() {
                Ok(Some(outcome)) => outcome,
                Ok(None) => Outcome::Err(TaskFailure::new(
                    MISSING_RESULT,
                    format!("the result of chord member {index} ({id}) is not stored (expired?)"),
                )),
                Err(e) => {
                    // Stored by a worker whose key this one does not have: it never will.
                    let reason = format!(
                        "could not read the result of chord member {index} ({id}), so the callback `{}` cannot run: {e}",
                        callback.task
                    );
                    let f = TaskFailure::new(UNPUBLISHABLE, reason.clone());
                    self.store_final(env, &chord.id, f).await?;
                    return Err(Stop::Broken(reason));
                }
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
                self.publish_step(env, callback, next, key_id, Some(&chord.id))
                    .await?;
                debug!(chord = %chord.id, "published the chord's callback");
            }
        }
        Ok(())
    }

    /// The outcome in a stored final notification (sealed as this worker seals results).
    pub(super) fn read_outcome(&self, payload: &[u8]) -> Result<Outcome> {
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
