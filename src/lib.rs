//! Ivy: typed delayed calls for Rust.
//!
//! Annotate an `async fn` with [`#[task]`](task); call it through a [`Producer`] with
//! [`delayed_call`](Producer::delayed_call); a [`Worker`] built from the same code consumes the
//! queue, runs it and sends the result back. Brokers: the embedded in-memory one, RabbitMQ
//! (feature `amqp`), Amazon SQS (feature `sqs`); results over Redis (feature `redis`).
//! Reading (never writing) the original Ivy's `$aes-256-cbc$` messages needs feature `legacy-ivy`.
//!
//! ```
//! use std::time::Duration;
//!
//! #[ivy::task(name = "doc.add")]
//! async fn add(x: u64, y: u64) -> u64 {
//!     x + y
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ivy::Result<()> {
//! let broker = ivy::memory::MemoryBroker::new();
//! let notifier = ivy::memory::MemoryNotifier::new();
//! let worker = ivy::Worker::new(broker.clone(), notifier.clone())?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(worker.run(async { let _ = stopped.await; }));
//!
//! let producer = ivy::Producer::new(broker, notifier);
//! let mut handle = producer.delayed_call(add::call(2, 3)).await?;
//! assert_eq!(handle.result_timeout(Duration::from_secs(5)).await?, 5);
//! assert_eq!(add(2, 3).await, 5); // still a plain function
//!
//! let _ = stop.send(());
//! running.await.unwrap()?;
//! # Ok(())
//! # }
//! ```
#![doc = include_str!("../docs/options.md")]

pub use ivy_core::{
    broker, crypto, current_task, envelope, events, memory, progress, shutdown_signal, Broker,
    Call, Capabilities, Consumer, Coordination, CryptoError, DeadLetter, Delivery, Envelope, Error,
    Incoming, Keyring, Missed, Notification, Notifier, Outcome, OutgoingMessage, Presence,
    Producer, RateLimit, Registry, Result, Results, Schedule, Scheduler, Status, Subscription,
    Task, TaskEntry, TaskFailure, TaskHandle, TaskId, TaskInfo, TaskOptions, Turn, Worker,
    WorkerConfig, WorkerReport, DEFAULT_PREFETCH_MULTIPLIER, DEFAULT_RESULT_TTL,
};
// Workflows (issue 14).
pub use ivy_core::{flow, Chain, Claim, GroupHandle, Step};
// Cancellation, task context, shared state, permanent errors (issue 14).
pub use ivy_core::{
    cancel, cancelled, is_cancelled, CancelOutcome, Permanent, State, DEFAULT_CANCEL_TTL,
};
pub use ivy_macros::task;

/// Backends chosen by URL at run time: `memory://`, `amqp://`, `sqs://`, `redis://`.
pub mod backends {
    pub use ivy_backends::*;
}

/// The guide in `docs/` and the README, compiled (and, where no live broker is needed, run) as
/// doctests. Not part of the API: `cfg(doctest)` keeps them out of the build and of `cargo doc`.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    #[doc = include_str!("../docs/tasks.md")]
    pub struct Tasks;
    #[doc = include_str!("../docs/producers-and-handles.md")]
    pub struct ProducersAndHandles;
    #[doc = include_str!("../docs/workers.md")]
    pub struct Workers;
    #[doc = include_str!("../docs/workflows.md")]
    pub struct Workflows;
    #[doc = include_str!("../docs/cancel-and-state.md")]
    pub struct CancelAndState;
    #[doc = include_str!("../docs/schedules-and-limits.md")]
    pub struct SchedulesAndLimits;
    #[doc = include_str!("../docs/brokers-and-urls.md")]
    pub struct BrokersAndUrls;
    #[doc = include_str!("../docs/clusters.md")]
    pub struct Clusters;
    #[doc = include_str!("../docs/encryption.md")]
    pub struct Encryption;
    #[doc = include_str!("../docs/cli-and-dashboard.md")]
    pub struct CliAndDashboard;
    #[doc = include_str!("../docs/operations-and-metrics.md")]
    pub struct OperationsAndMetrics;
    #[doc = include_str!("../docs/benchmarks.md")]
    pub struct Benchmarks;
    #[doc = include_str!("../docs/chaos.md")]
    pub struct Chaos;
    #[doc = include_str!("../docs/layout.md")]
    pub struct Layout;
    #[doc = include_str!("../docs/README.md")]
    pub struct Contents;
}

#[doc(hidden)]
pub mod __private {
    pub use ivy_core::__private::*;
}
