//! One delivery's way through the worker: size and keyring checks, decoding, permissions,
//! expiry and eta, running the task (with its time limit, panics caught, the `running` status
//! sent alongside) and choosing how the message is settled.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;
use tracing::{debug, error, info_span, warn, Instrument};

use super::flows::RECHECK_AFTER;
use super::limits::Admit;
use super::once::{Guard, RunClaim};
use super::settle::{Dead, Settlement};
use super::telemetry::{settled_event, RunNote};
use super::{Settle, Shared};
use crate::broker::{Broker, Delivery, Notifier};
use crate::cancel::CancelFlag;
use crate::context::{TaskContext, TaskInfo, CURRENT};
use crate::envelope::{now_ms, Envelope, Outcome, Status};
use crate::error::Result;
use crate::events::{EventKind, TaskEvent};
use crate::failure::TaskFailure;

impl<B: Broker, N: Notifier> Shared<B, N> {
    pub(super) async fn process(self: &Arc<Self>, delivery: B::Delivery) -> Settle {
        let size = delivery.body().len();
        if size > self.config.max_message_size {
            let limit = self.config.max_message_size;
            let reason =
                format!("message of {size} bytes exceeds the worker's limit of {limit} bytes");
            if let Some(env) = self.head_of(delivery.body()) {
                let f = TaskFailure::new(
                    TaskFailure::TOO_LARGE,
                    format!("the call of {size} bytes exceeds the worker's limit of {limit} bytes"),
                );
                // Dead-lettered whatever the hand-off does: a call that cannot be read cannot
                // be passed on with its outcome either.
                let _ = self.finish(&env, Outcome::Err(f)).await;
            }
            return self.unread(delivery, reason, false).await;
        }
        if !self.keyring.is_enabled() && !looks_sealed(delivery.body()) {
            // No keys and a plain body: nothing to open, no copy.
            return match Envelope::from_slice(delivery.body()) {
                Ok(env) => self.run_call(delivery, env, None).await,
                Err(e) => self.unread(delivery, e.to_string(), false).await,
            };
        }
        let (env, key_id) = match self.keyring.open(delivery.body()) {
            Ok(opened) => match Envelope::from_slice(&opened.plaintext) {
                Ok(env) => (env, opened.key_id),
                Err(e) => return self.unread(delivery, e.to_string(), false).await,
            },
            Err(e) => {
                let reason = format!("refused by the keyring: {e}");
                return self.unread(delivery, reason, true).await;
            }
        };
        self.run_call(delivery, env, key_id).await
    }

    /// Runs a decoded call inside the `task` span (`task`, `id`, `attempt`, `queue`), so every
    /// log line of the run, the task's own included, names the call.
    async fn run_call(
        self: &Arc<Self>,
        delivery: B::Delivery,
        env: Envelope,
        key_id: Option<String>,
    ) -> Settle {
        let span = info_span!(
            "task",
            task = %env.task,
            id = %env.id,
            attempt = env.attempt,
            queue = %delivery.queue(),
        );
        crate::trace::continue_trace(&span, env.traceparent.as_deref());
        let received = self.telemetry.events_on().then(|| {
            let mut e = TaskEvent::new(
                EventKind::Received,
                &self.telemetry.worker_id,
                delivery.queue(),
            )
            .call(&env.task, &env.id, env.attempt);
            e.wait_ms = Some(e.at.saturating_sub(env.created_at));
            if self.config.event_args {
                e.args = Some(serde_json::Value::Object(env.args.clone()));
            }
            e
        });
        if let Some(e) = &received {
            self.emit(e.clone());
        }
        let mut note = RunNote::default();
        let settle = self
            .run_call_in_span(delivery, env, key_id, received.as_ref(), &mut note)
            .instrument(span)
            .await;
        if let Some(e) = received {
            self.emit(settled_event(e, &settle, note));
        }
        settle
    }

    /// Runs a decoded call: decides what becomes of it ([`decide`](Self::decide)), then
    /// settles its message in one place.
    async fn run_call_in_span(
        self: &Arc<Self>,
        mut delivery: B::Delivery,
        mut env: Envelope,
        key_id: Option<String>,
        received: Option<&TaskEvent>,
        note: &mut RunNote,
    ) -> Settle {
        // The run claim of a call that runs once is given back after the message is settled.
        let mut run_claim = None;
        let settlement = self
            .decide(
                &mut delivery,
                &mut env,
                key_id,
                received,
                note,
                &mut run_claim,
            )
            .await;
        self.settle(delivery, &env.id, settlement).await
    }

    /// Permissions, the run claim, cancellation, expiry, eta, limits, the task and its
    /// outcome: what becomes of the call's message.
    async fn decide(
        self: &Arc<Self>,
        // `&mut`: a delivery is `Send` but need not be `Sync`.
        delivery: &mut B::Delivery,
        // Borrowed: the caller settles under its id (no copy of it per message).
        env: &mut Envelope,
        key_id: Option<String>,
        received: Option<&TaskEvent>,
        note: &mut RunNote,
        run_claim: &mut Option<RunClaim<N>>,
    ) -> Settlement {
        let key = key_id.as_deref();
        if let Some(outcome) = env.outcome.take() {
            // Delivering an outcome is sending a result: the key must be allowed to send
            // results (whether it may call the task does not matter, the task does not run).
            if !self.keyring.may_send_results(key) {
                let who = key.unwrap_or("(unencrypted)");
                let reason = format!(
                    "key `{who}` may not send the outcome of task `{}`",
                    env.task
                );
                warn!(task = %env.task, task_id = %env.id, key_id = who, "refusing an outcome passed on with a call from a key that may not send results");
                return Settlement::DeadLetter(reason, Dead::Refused);
            }
            debug!(task = %env.task, task_id = %env.id, "delivering the outcome of a call that ran already");
            // What follows is sealed under the key that sent the call, not the one this
            // message was passed on under.
            let flow_key = env.sent_with.take().or(key_id);
            return self.conclude(env, outcome, flow_key.as_deref()).await;
        }
        if !self.keyring.may_call(key, &env.task) {
            let who = key.unwrap_or("(unencrypted)");
            let f = TaskFailure::new(
                TaskFailure::FORBIDDEN,
                format!("key `{who}` may not call task `{}`", env.task),
            );
            let refused = Settlement::DeadLetter(f.message.clone(), Dead::Refused);
            return self.fail_unrun(env, f, key, refused).await;
        }
        // A call that runs once: claimed before anything is decided about it, so a copy of it
        // neither runs nor ends it a second time.
        if env.once {
            match self.guard(env).await {
                Guard::Run(claim) => *run_claim = Some(claim),
                Guard::Finished(outcome) => return self.settle_copy(env, outcome, key).await,
                Guard::Later(pause) => return Settlement::PutBack(pause),
            }
        }
        // Registered before the check, so a cancel that arrives from now on reaches the run.
        let in_progress = self.cancels.enter(&env.id);
        if self.is_cancelled(&in_progress).await {
            return self.drop_cancelled(env, false, key).await;
        }
        let now = now_ms();
        if env.expires.is_some_and(|exp| exp <= now) {
            let f = TaskFailure::new(TaskFailure::EXPIRED, "the call expired before it could run");
            let reason = format!("task {} ({}) expired", env.task, env.id);
            let dead = Settlement::DeadLetter(reason, Dead::Unusable);
            return self.fail_unrun(env, f, key, dead).await;
        }
        if let Some(wait) = env.delay_until_eta(now) {
            // A broker without delays, or a clock ahead of ours: wait out the eta. The body
            // goes back as it came, still sealed under the key that sent it.
            return Settlement::PutBack(wait);
        }
        let Some(entry) = self.registry.get(&env.task).copied() else {
            let f = TaskFailure::new(
                TaskFailure::UNKNOWN_TASK,
                format!("no task named `{}` in this worker", env.task),
            );
            let reason = format!("unknown task `{}`", env.task);
            let dead = Settlement::DeadLetter(reason, Dead::Unusable);
            return self.fail_unrun(env, f, key, dead).await;
        };

        // Schedules and limits (issue 15): the task's rate limit and concurrency limit.
        let (slot, regain) = match self.admit(&entry, env).await {
            Admit::Run(slot, regain) => (slot, regain),
            Admit::Settled(settlement) => return settlement,
        };
        debug!(task = %env.task, task_id = %env.id, attempt = env.attempt, "running");
        // The task takes the arguments; a retry re-reads them from the delivery.
        let args = std::mem::take(&mut env.args);
        if let Some(e) = received {
            let mut started = e.clone();
            started.event = EventKind::Started;
            started.at = now_ms();
            started.wait_ms = None;
            self.emit(started);
        }
        let start = std::time::Instant::now();
        // Progress events need the queue; only a worker that publishes events carries it.
        let events_queue = received
            .filter(|_| self.telemetry.publishes_events())
            .map(|e| e.queue.clone());
        let run = self.run_reporting_status(&entry, env, args, &in_progress.flag, events_queue);
        let held = self
            .holding_leases(&entry, slot, run_claim.as_ref(), regain, run)
            .await;
        note.ran = Some(start.elapsed());
        let outcome = match held {
            Ok(outcome) => outcome,
            Err(why) => {
                // Another worker may run it now: this run must not finish it too.
                warn!(task = %env.task, task_id = %env.id, %why, "stopped the run: it no longer holds its lease; the call goes back to the broker");
                return Settlement::PutBack(RECHECK_AFTER);
            }
        };
        if let Err(failure) = &outcome {
            note.failed(received, failure);
        }

        match outcome {
            Ok(value) => self.conclude(env, Outcome::Ok(value), key).await,
            Err(failure) if failure.is_cancelled() && in_progress.flag.is_cancelled() => {
                self.drop_cancelled(env, true, key).await
            }
            Err(failure) if failure.permanent => {
                error!(task = %env.task, task_id = %env.id, attempt = env.attempt, error = %failure, "task failed permanently; no retry");
                self.conclude(env, Outcome::Err(failure), key).await
            }
            Err(failure) if failure.kind == TaskFailure::BAD_ARGUMENTS => {
                error!(task = %env.task, task_id = %env.id, error = %failure, "arguments do not match the task");
                let reason = format!("task {}: {}", env.task, failure.message);
                let dead = Settlement::DeadLetter(reason, Dead::Unusable);
                self.fail_unrun(env, failure, key, dead).await
            }
            Err(failure) if env.attempt < env.max_retries.unwrap_or(entry.options.max_retries) => {
                self.retry(delivery, env, &entry, failure).await
            }
            Err(failure) => {
                error!(task = %env.task, task_id = %env.id, attempts = env.attempt.saturating_add(1), error = %failure, "task failed for good");
                self.conclude(env, Outcome::Err(failure), key).await
            }
        }
    }

    /// The next attempt of a call whose attempt failed: its body re-read (the task took the
    /// arguments) with `attempt + 1`, sealed under the key that sent it (the current one may
    /// not call this task), after the task's backoff. A retry the queue cannot take ends the
    /// call instead (a call from a producer that left no room for `attempt`): its caller told,
    /// dead-lettered.
    async fn retry(
        &self,
        delivery: &mut B::Delivery,
        env: &Envelope,
        entry: &crate::task::TaskEntry,
        failure: TaskFailure,
    ) -> Settlement {
        let retry = env.attempt.saturating_add(1);
        let delay = entry.options.backoff(retry);
        warn!(task = %env.task, task_id = %env.id, attempt = env.attempt, ?delay, error = %failure, "attempt failed; retrying");
        self.notify(env, Status::Errored, Some(failure.clone()))
            .await;
        let (mut next, key_id) = match self.reread(delivery.body()) {
            Ok(read) => read,
            // It was read once already, so this cannot happen; if it did, the call must not
            // vanish.
            Err(e) => {
                let reason = format!("could not re-read the call to retry it: {e}");
                return Settlement::DeadLetter(reason, Dead::Unusable);
            }
        };
        next.attempt = retry;
        let body = self.reseal(key_id.as_deref(), next.to_bytes());
        if delivery.fits(&body).await {
            return Settlement::Retry(body, delay);
        }
        let f = TaskFailure::new(
            TaskFailure::TOO_LARGE,
            format!(
                "its retry of {} bytes is more than the queue takes; the last attempt failed: {failure}",
                body.len()
            ),
        );
        error!(task = %env.task, task_id = %env.id, error = %f, "the retry cannot be sent; the call fails");
        self.conclude(env, Outcome::Err(f), key_id.as_deref()).await
    }

    /// Runs the task, sending `running` once it has run `running_status_after`. The status goes
    /// out alongside the run, never before it: the task does not wait a round trip to start.
    async fn run_reporting_status(
        self: &Arc<Self>,
        entry: &crate::task::TaskEntry,
        env: &Envelope,
        args: serde_json::Map<String, Value>,
        cancel: &CancelFlag,
        events_queue: Option<String>,
    ) -> std::result::Result<Value, TaskFailure> {
        let after = self.config.running_status_after;
        let run = self.run_task(entry, env, args, cancel, events_queue);
        if env.reply_to.is_none() {
            return run.await;
        }
        if after.is_zero() {
            let ((), outcome) = tokio::join!(self.notify(env, Status::Running, None), run);
            return outcome;
        }
        tokio::pin!(run);
        tokio::select! {
            biased;
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(after) => {
                let ((), outcome) =
                    tokio::join!(self.notify(env, Status::Running, None), &mut run);
                outcome
            }
        }
    }

    /// The envelope of a plain (unsealed) JSON body without its arguments, which are skipped
    /// unread: enough to send the final error of a call too large to run. `None` for a sealed
    /// body (whose reply must be authenticated by opening it whole), a fire-and-forget call,
    /// or one that is not an envelope.
    fn head_of(&self, body: &[u8]) -> Option<Envelope> {
        #[derive(serde::Deserialize)]
        struct Head {
            v: u32,
            id: String,
            task: String,
            #[serde(default)]
            attempt: Option<u32>,
            #[serde(default)]
            reply_to: Option<String>,
        }
        if self.keyring.is_enabled() || looks_sealed(body) {
            return None;
        }
        let head: Head = serde_json::from_slice(body).ok()?;
        if head.v != crate::envelope::PROTOCOL_VERSION || head.id.is_empty() {
            return None;
        }
        let reply_to = head.reply_to?;
        let mut env = Envelope::new(head.id, head.task, serde_json::Map::new(), 0);
        env.attempt = head.attempt.unwrap_or(0);
        env.reply_to = Some(reply_to);
        Some(env)
    }

    /// Opens and decodes a delivery's body again (for a retry, which needs the arguments the
    /// task consumed), with the key that opened it (`None`: unencrypted or legacy).
    pub(super) fn reread(&self, body: &[u8]) -> Result<(Envelope, Option<String>)> {
        if !self.keyring.is_enabled() && !looks_sealed(body) {
            Ok((Envelope::from_slice(body)?, None))
        } else {
            let opened = self.keyring.open(body)?;
            Ok((Envelope::from_slice(&opened.plaintext)?, opened.key_id))
        }
    }

    async fn run_task(
        self: &Arc<Self>,
        entry: &crate::task::TaskEntry,
        env: &Envelope,
        args: serde_json::Map<String, Value>,
        cancel: &CancelFlag,
        events_queue: Option<String>,
    ) -> std::result::Result<Value, TaskFailure> {
        let ctx = TaskContext {
            info: TaskInfo {
                id: env.id.clone(),
                name: env.task.clone(),
                attempt: env.attempt,
                max_retries: env.max_retries.unwrap_or(entry.options.max_retries),
                deadline: env
                    .expires
                    .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
            },
            reply_to: env.reply_to.clone(),
            events_queue,
            sink: self.clone(),
            cancel: cancel.clone(),
            states: self.states.clone(),
        };
        let run = CURRENT.scope(ctx, AssertUnwindSafe(entry.run(args)).catch_unwind());
        let cancelled = || {
            TaskFailure::new(
                TaskFailure::CANCELLED,
                "the call was cancelled while it ran",
            )
        };
        let run = async {
            if entry.options.blocking {
                // Its thread cannot be stopped: it sees the flag, and its result is dropped.
                let caught = run.await;
                return if cancel.is_cancelled() {
                    Ok(Err(cancelled()))
                } else {
                    caught
                };
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => Ok(Err(cancelled())),
                caught = run => caught,
            }
        };
        let caught = match entry.options.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(caught) => caught,
                Err(_) => {
                    return Err(TaskFailure::new(
                        TaskFailure::TIMEOUT,
                        format!("the run took longer than its time limit of {limit:?}"),
                    ))
                }
            },
            None => run.await,
        };
        caught.unwrap_or_else(|payload| Err(TaskFailure::from_panic(payload)))
    }
}

/// Whether a body is in one of the encrypted forms (which a keyring must open or refuse).
fn looks_sealed(body: &[u8]) -> bool {
    body.starts_with(b"ivy1.") || body.starts_with(b"ivy1:") || body.starts_with(b"$aes-256-cbc$")
}
