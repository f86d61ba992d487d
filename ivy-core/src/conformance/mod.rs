//! The backend conformance suite: what every [`Broker`](crate::Broker) and
//! [`Notifier`](crate::Notifier) must do for the producer and worker to keep their promises. A
//! backend crate runs all of it with one line:
//!
//! ```text
//! ivy_core::broker_conformance!(make_broker);     // async fn make_broker() -> impl Broker
//! ivy_core::notifier_conformance!(make_notifier); // async fn make_notifier() -> impl Notifier
//! ```
//!
//! Each check uses fresh queue and channel names, so checks may run in parallel against one
//! server. Checks wait with generous time limits and never judge speed. The end-to-end checks
//! pair the backend under test with the memory implementation of the other trait.
//!
//! The checks are in [`broker`] and [`notifier`]; `end_to_end.rs` holds the end-to-end checks
//! both run, `encryption.rs` the end-to-end check with encryption on (run by [`broker`]),
//! [`lasting`] the checks of cancellation, state, permanent errors and unique calls (run by
//! both, and on a broker and notifier pair by crates that have both), `workflows.rs` the checks
//! of chains, groups and chords, `tasks.rs` the tasks those call, `helpers.rs` what the checks
//! share, and `macros.rs` the
//! macros above.

pub mod broker;
mod bulk;
mod encryption;
mod end_to_end;
mod helpers;
pub mod lasting;
pub mod limits;
mod macros;
pub mod notifier;
mod tasks;
mod workflows;

pub use helpers::{unique, wait_dead_letters, STEP};
pub use tasks::{
    Add, Boom, Echo, Failures, Mark, Panics, Probe, Refuses, Sleepy, Slow, Spin, Stateful, Sum,
    Tick,
};
