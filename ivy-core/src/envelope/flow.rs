//! The envelope's optional `flow` field (workflows, issue 14): what follows a call, carried
//! with it so that the worker that finishes the call publishes what comes next (PROTOCOL.md
//! §12). The typed builders are in `crate::flow`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::TaskId;

/// What follows a call: the rest of its chain, the chord it is a member of, its hooks. Every
/// part is optional; an empty flow is not written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Flow {
    /// The steps that follow, in order: when the call succeeds, the first is published with
    /// the result in its `slot` and the others as its own `chain`. When the call fails for
    /// good, the last step's id gets the final failure and nothing else runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<FlowStep>,
    /// The chord this call is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chord: Option<ChordRef>,
    /// Published when the call succeeds (its `slot`, if any, gets the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<FlowStep>,
    /// Published when the call fails for good (its `slot`, if any, gets the failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FlowStep>,
}

impl Flow {
    /// Whether nothing follows.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
            && self.chord.is_none()
            && self.on_success.is_none()
            && self.on_failure.is_none()
    }
}

/// A call decided by the producer and published later by a worker: a chain's step, a chord's
/// callback, a hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlowStep {
    /// Its task id, decided up front (the producer's handle waits on it).
    pub id: TaskId,
    /// The task name.
    pub task: String,
    /// The arguments known up front, by parameter name.
    #[serde(deserialize_with = "crate::task::args_by_name")]
    pub args: Map<String, Value>,
    /// The parameter that receives what comes before (the previous result, the chord's
    /// results, the failure); `None`: nothing is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The queue to publish it to.
    pub queue: String,
    /// Its priority, 0..=9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// A `max_retries` override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Membership of a chord: `size` calls whose ids are `<id>.<index>` (index from 0), and the
/// callback, whose id is the chord's `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChordRef {
    /// The chord id, which is the callback's task id.
    pub id: TaskId,
    /// How many members the chord has.
    pub size: u32,
    /// The callback, its `slot` filled with the members' results in member order.
    pub callback: FlowStep,
    /// Whether the callback gets failures too (`[{"Ok": v} | {"Err": failure}, …]`) instead
    /// of the chord failing with the first failed member's error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_failures: bool,
}

impl ChordRef {
    /// The task id of member `index`.
    pub fn member_id(chord: &str, index: u32) -> TaskId {
        format!("{chord}.{index}")
    }

    /// Every member's task id, in order.
    pub fn member_ids(&self) -> Vec<TaskId> {
        (0..self.size)
            .map(|i| Self::member_id(&self.id, i))
            .collect()
    }
}
