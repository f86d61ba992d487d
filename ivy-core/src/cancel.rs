//! Cancellation that lasts: what a cancel says on the wire ([`CancelNote`], on
//! [`CANCEL_CHANNEL`]), what recording one returns ([`CancelOutcome`]), and the flag a running
//! call watches (`CancelFlag`).
//!
//! A cancellation is recorded by the notifier with a time to live ([`Coordination::cancel`]), so it
//! holds while no worker runs and across worker restarts; workers keep the live ones in memory
//! (read at start and after a gap in their subscription, then learnt from the channel), so
//! checking a call costs no round trip. The producer and worker sides are in `producer/cancel.rs`
//! and `worker/cancel.rs`.
//!
//! [`Coordination::cancel`]: crate::Coordination::cancel

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::envelope::{TaskId, PROTOCOL_VERSION};
use crate::error::{Error, Result};

/// The notifier channel on which a recorded cancellation is announced to workers
/// (a [`CancelNote`] per cancellation; PROTOCOL.md §11).
pub const CANCEL_CHANNEL: &str = "ivy:cancel";

/// How long a cancellation is kept unless the caller says otherwise
/// ([`Producer::cancel_for`](crate::Producer::cancel_for)): one day, as long as results.
pub const DEFAULT_CANCEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// What recording a cancellation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// Recorded: a worker drops the call before it runs, or stops it if it is running, and its
    /// final result is the error `ivy.cancelled`.
    Cancelled,
    /// A cancellation of this call was recorded already and is still in force: nothing changed.
    AlreadyCancelled,
    /// The call has finished (its final result is stored): nothing was recorded.
    AlreadyFinished,
}

impl std::fmt::Display for CancelOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CancelOutcome::Cancelled => "cancelled",
            CancelOutcome::AlreadyCancelled => "already cancelled",
            CancelOutcome::AlreadyFinished => "already finished",
        })
    }
}

/// A cancellation as published on [`CANCEL_CHANNEL`] and stored by the notifier:
/// `{"v":1,"id":"<task id>","until":<expiry, ms since the epoch>,"nonce":"<16 hex>"}`. The
/// nonce tells a cancel asked again after a lost answer (the same note: it counts as
/// recorded) from a second cancel (`AlreadyCancelled`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CancelNote {
    /// Protocol version.
    pub v: u32,
    /// The cancelled call.
    pub id: TaskId,
    /// Until when the cancellation holds (ms since the Unix epoch).
    pub until: u64,
    /// Random, per cancel request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// How long the cancellation holds from when it was recorded, in ms: a worker counts it
    /// from when it learns of it, by its own clock (`until` is the producer's clock, which
    /// may differ). Absent: `until` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl CancelNote {
    /// The cancellation of `id`, holding until `until` (ms since the epoch).
    pub fn new(id: impl Into<TaskId>, until: u64) -> Self {
        CancelNote {
            v: PROTOCOL_VERSION,
            id: id.into(),
            until,
            nonce: format!("{:016x}", rand::random::<u64>()),
            ttl_ms: None,
        }
    }

    /// The cancellation of `id` for `ttl` from now.
    pub fn lasting(id: impl Into<TaskId>, ttl: std::time::Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut note = Self::new(id, crate::envelope::now_ms().saturating_add(ttl_ms));
        note.ttl_ms = Some(ttl_ms);
        note
    }

    /// Until when the cancellation holds by this host's clock, learnt now: `ttl_ms` from now
    /// when the note has it, else `until`.
    pub fn until_here(&self) -> u64 {
        match self.ttl_ms {
            Some(ttl) => crate::envelope::now_ms().saturating_add(ttl),
            None => self.until,
        }
    }

    /// The JSON bytes that travel.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cancel note always serializes")
    }

    /// Decodes and checks a note.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let note: CancelNote = serde_json::from_slice(bytes)
            .map_err(|e| Error::Malformed(format!("not an Ivy cancellation: {e}")))?;
        if note.v != PROTOCOL_VERSION || note.id.is_empty() {
            return Err(Error::Malformed(format!(
                "cancellation of version {} or with an empty id",
                note.v
            )));
        }
        Ok(note)
    }
}

/// The cancellation signal of one running call: set once, seen from async code
/// ([`cancelled`](CancelFlag::cancelled)) and from blocking code
/// ([`is_cancelled`](CancelFlag::is_cancelled)).
#[derive(Clone, Debug, Default)]
pub(crate) struct CancelFlag(Arc<FlagInner>);

#[derive(Debug, Default)]
struct FlagInner {
    set: AtomicBool,
    notify: Notify,
}

impl CancelFlag {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter.
    pub(crate) fn cancel(&self) {
        self.0.set.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// Completes once the flag is set.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a `cancel` in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_are_checked() {
        let mut note = CancelNote::new("abc", 42);
        assert_eq!(note.nonce.len(), 16);
        assert_ne!(
            CancelNote::new("abc", 42),
            note,
            "each request has its own nonce"
        );
        note.nonce = "00ff".into();
        assert_eq!(
            note.to_bytes(),
            br#"{"v":1,"id":"abc","until":42,"nonce":"00ff"}"#
        );
        assert!(CancelNote::from_slice(br#"{"v":1,"id":"a","until":1}"#).is_ok());
        assert_eq!(CancelNote::from_slice(&note.to_bytes()).unwrap(), note);
        assert!(CancelNote::from_slice(br#"{"v":2,"id":"a","until":1}"#).is_err());
        assert!(CancelNote::from_slice(br#"{"v":1,"id":"","until":1}"#).is_err());
        assert!(CancelNote::from_slice(b"abc").is_err());
    }

    #[tokio::test]
    async fn a_flag_wakes_its_waiters() {
        let flag = CancelFlag::new();
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.cancelled().await }
        });
        tokio::task::yield_now().await;
        assert!(!flag.is_cancelled());
        flag.cancel();
        waiter.await.unwrap();
        assert!(flag.is_cancelled());
        flag.cancelled().await; // already set: returns at once
    }
}
