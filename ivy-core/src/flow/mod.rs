//! Workflows (issue 14): chains, groups, chords and hooks.
//!
//! What travels is the envelope's optional `flow` field ([`Flow`], in `envelope/flow.rs`),
//! which carries what happens after the call ends, so that the worker that finishes a call
//! publishes what comes next before it acks, with no coordinator (PROTOCOL.md §12). This module
//! holds the typed builders (`Step`, `Chain`, hooks on `Call`, in `typed.rs`); the producer's
//! side (`Producer::chain`, `group`, `chord`, the `GroupHandle`) is in `producer/`, the
//! worker's in `worker/flows.rs`.

mod typed;

pub use crate::envelope::{ChordRef, Flow, FlowStep};
pub use typed::{Chain, Step};
