//! The runtime of Ivy: the [`Task`] trait that `#[task]` implements, the wire [`envelope`], the
//! [`Producer`] with `delayed_call`, the [`Worker`], the [`Scheduler`] of periodic calls, the
//! [`Broker`] and [`Notifier`] traits that backends implement, and the in-memory backend in
//! [`memory`].
//!
//! Calls compose ([`flow`]): `first.then(step)` makes a [`Chain`] for [`Producer::chain`];
//! [`Producer::group`] and [`Producer::chord`] send many calls at once. The worker that ends a
//! call publishes what follows, once, before it acks.
//!
//! This crate knows no broker client; RabbitMQ, SQS and Redis live in `ivy-backends`. Most users
//! depend on the `ivy` facade crate instead of this one.
//!
//! ```
//! use ivy_core::memory::{MemoryBroker, MemoryNotifier};
//! use ivy_core::{Producer, Worker};
//!
//! # async fn demo() -> ivy_core::Result<()> {
//! let broker = MemoryBroker::new();
//! let notifier = MemoryNotifier::new();
//! let producer = Producer::new(broker.clone(), notifier.clone());
//! let worker = Worker::new(broker, notifier)?.queues(["default"]).concurrency(4);
//! # let _ = (producer, worker);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `conformance`: the backend conformance suite (`conformance`, `broker_conformance!`,
//!   `notifier_conformance!`), for backend crates' tests.
//! - `legacy-ivy`: [`Keyring`] also reads (never writes) messages in the original Ivy's
//!   `$aes-256-cbc$` format, with `Keyring::with_legacy_password`. Off by default: that format is
//!   unauthenticated and needs MD5. Without it such messages are refused with
//!   [`CryptoError::LegacyDisabled`], never taken for plaintext. The `ivy` crate forwards it.

pub mod broker;
pub mod cancel;
mod context;
pub mod crypto;
pub mod envelope;
mod error;
pub mod events;
mod failure;
pub mod flow;
pub mod memory;
mod producer;
pub mod schedule;
mod state;
pub mod task;
mod trace;
mod worker;

#[doc(hidden)]
pub mod backoff;
#[doc(hidden)]
pub mod sync;
#[doc(hidden)]
pub mod url;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod faults;

pub use broker::{
    Broker, Capabilities, Claim, Consumer, Coordination, DeadLetter, Delivery, Incoming, Notifier,
    OutgoingMessage, Presence, Results, Subscription, Turn,
};
pub use cancel::{CancelOutcome, DEFAULT_CANCEL_TTL};
pub use context::{cancelled, current_task, is_cancelled, progress, TaskInfo};
pub use crypto::{CryptoError, Keyring, Opened};
pub use envelope::{Envelope, Notification, Outcome, Status, TaskFailure, TaskId};
pub use error::{Error, Result};
pub use failure::Permanent;
pub use flow::{Chain, Step};
pub use producer::{GroupHandle, Producer, TaskHandle};
pub use schedule::{Missed, Schedule, Scheduler};
pub use state::State;
pub use task::{Call, RateLimit, Registry, Task, TaskEntry, TaskOptions};
pub use worker::{
    shutdown_signal, Worker, WorkerConfig, WorkerReport, DEFAULT_ANNOUNCE_EVERY,
    DEFAULT_PREFETCH_MULTIPLIER, DEFAULT_RESULT_TTL, DEFAULT_RUNNING_STATUS_AFTER,
    DEFAULT_SLOT_LEASE, SLOT_FREED_CHANNEL,
};

#[doc(hidden)]
pub mod __private {
    pub use crate::context::spawn_blocking_in_context;
    pub use crate::context::FromWorker;
    pub use crate::task::codegen::*;
    pub use crate::{Call, State, Step, Task, TaskEntry, TaskFailure, TaskOptions};
    pub use core::time::Duration;
    pub use inventory;
    pub use serde;
    pub use serde_json;
    pub use serde_json::{Map, Value};
    pub use tokio::task::spawn_blocking;
}
