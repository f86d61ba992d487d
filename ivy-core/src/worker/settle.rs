//! How a delivery is settled: one decision type, [`Settlement`], chosen where the worker
//! decides what happens to a call, and carried out in one place, [`Shared::settle`]. Every
//! way a message leaves the worker is a variant here, with what it is counted as.

use std::time::Duration;

use tracing::{error, warn};

use super::{Settle, Shared};
use crate::broker::{Broker, Delivery, Notifier};
use crate::envelope::Outcome;

/// What becomes of a delivery.
#[must_use]
pub(super) enum Settlement {
    /// Done: acked, counted as the given outcome (succeeded, cancelled, a duplicate).
    Ack(Settle),
    /// Moved to the dead letters with the reason.
    DeadLetter(String, Dead),
    /// Replaced by the next attempt's body, delivered after the backoff.
    Retry(Vec<u8>, Duration),
    /// Put back unchanged (not a retry: same attempt), delivered again after the pause: an
    /// early call, a call waiting for a limit, a copy of a call running elsewhere, a run that
    /// lost its lease.
    PutBack(Duration),
    /// Replaced by the call carrying its outcome (envelope field `outcome`), delivered again
    /// after the pause, for a worker to deliver without running the task again.
    PassOn(Outcome, Duration),
    /// Returned to its queue unchanged now (a call that did not run whose failure could not
    /// be stored): the next worker decides again.
    Requeue,
}

/// Why a message is dead-lettered, which is how it is counted.
pub(super) enum Dead {
    /// The call failed for good.
    Failed,
    /// It cannot be used: unreadable, unknown task, arguments that do not fit, expired, too
    /// large, what follows it can never be published.
    Unusable,
    /// The keyring (or a key's role) refuses it.
    Refused,
}

impl<B: Broker, N: Notifier> Shared<B, N> {
    /// Carries out `settlement` for the delivery of call `task_id` (empty when unknown).
    pub(super) async fn settle(
        &self,
        delivery: B::Delivery,
        task_id: &str,
        settlement: Settlement,
    ) -> Settle {
        match settlement {
            Settlement::Ack(settle) => match delivery.ack().await {
                Ok(()) => settle,
                Err(e) => {
                    // The broker will redeliver (a call that ran runs again: at least once).
                    error!(error = %e, task_id, "ack failed; the broker will redeliver");
                    Settle::Returned
                }
            },
            Settlement::DeadLetter(reason, dead) => {
                error!(queue = %delivery.queue(), task_id, %reason, "dead-lettering a message");
                match delivery.dead_letter(reason.clone()).await {
                    Ok(()) => match dead {
                        Dead::Failed => Settle::Failed,
                        Dead::Unusable => Settle::DeadLettered(reason),
                        Dead::Refused => Settle::Refused(reason),
                    },
                    Err(e) => {
                        error!(error = %e, task_id, "dead-lettering failed; the broker will redeliver");
                        Settle::Returned
                    }
                }
            }
            Settlement::Retry(body, delay) => match delivery.retry(body, delay).await {
                Ok(()) => Settle::Retried,
                Err(e) => {
                    error!(error = %e, task_id, "could not schedule the retry; the broker will redeliver");
                    Settle::Returned
                }
            },
            Settlement::PutBack(delay) => {
                let body = delivery.body().to_vec();
                match delivery.retry(body, delay).await {
                    Ok(()) => Settle::Delayed,
                    Err(e) => {
                        warn!(error = %e, task_id, "could not put a call back; the broker will redeliver it");
                        Settle::Returned
                    }
                }
            }
            Settlement::PassOn(outcome, delay) => {
                let (mut next, key_id) = match self.reread(delivery.body()) {
                    Ok(read) => read,
                    // It was read once already, so this cannot happen.
                    Err(e) => {
                        error!(error = %e, task_id, "could not re-read the call to pass it on with its outcome; the broker will redeliver it and the task will run again");
                        return Settle::Returned;
                    }
                };
                if !self.keyring.may_send_results(key_id.as_deref()) {
                    // Sealed under this worker's key below: the sender's key goes along.
                    next.sent_with.clone_from(&key_id);
                }
                let body =
                    self.seal_passed_on(key_id.as_deref(), next.with_outcome(outcome).to_bytes());
                match delivery.retry(body, delay).await {
                    Ok(()) => {
                        warn!(
                            task_id,
                            "passed the call on with its outcome, for the next worker to deliver"
                        );
                        Settle::Returned
                    }
                    Err(e) => {
                        error!(error = %e, task_id, "could not pass the call on with its outcome; the broker will redeliver it and the task will run again");
                        Settle::Returned
                    }
                }
            }
            Settlement::Requeue => {
                warn!(task_id, "returning the call, which did not run, to the broker: its final error could not be stored");
                if let Err(e) = delivery.requeue().await {
                    error!(error = %e, task_id, "requeue failed; the broker will redeliver");
                }
                Settle::Returned
            }
        }
    }
}
