//! The typed builders: [`Step`] (a call missing its first argument, made by the macro's
//! `name::with(..)`), [`Chain`] (`first.then(step).then(step)`) and the hooks of a
//! [`Call`]. The type of a step's missing argument must be the previous call's `Output`: a
//! mismatch does not compile.

use std::marker::PhantomData;

use serde_json::{Map, Value};

use crate::envelope::{new_task_id, Flow, FlowStep, TaskId};
use crate::task::{Call, Task};

type Args = Result<Map<String, Value>, (&'static str, serde_json::Error)>;

/// A call of `T` with every argument but the first, which is filled by what comes before: the
/// previous step's result in a [`Chain`], the members' results in a chord. `In` is the type
/// of that argument. Made by `task_name::with(..)`.
#[must_use = "a step does nothing until it is chained to a call"]
pub struct Step<T: Task, In> {
    slot: &'static str,
    args: Args,
    queue: Option<String>,
    priority: Option<u8>,
    max_retries: Option<u32>,
    _types: PhantomData<fn(In) -> T>,
}

impl<T: Task, In> std::fmt::Debug for Step<T, In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments may be secret: they are not shown.
        f.debug_struct("Step")
            .field("task", &T::NAME)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl<T: Task, In> Step<T, In> {
    #[doc(hidden)]
    pub fn __new(slot: &'static str, args: Args) -> Self {
        Step {
            slot,
            args,
            queue: None,
            priority: None,
            max_retries: None,
            _types: PhantomData,
        }
    }

    /// Sends this step to `queue` instead of the task's own.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Priority 0..=9, higher first (clamped to 9).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority.min(9));
        self
    }

    /// Overrides the task's `max_retries` for this step.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// The step as it travels, with task id `id`.
    pub(crate) fn into_wire(
        self,
        id: TaskId,
    ) -> Result<FlowStep, (&'static str, serde_json::Error)> {
        Ok(FlowStep {
            id,
            task: T::NAME.to_owned(),
            args: self.args?,
            slot: Some(self.slot.to_owned()),
            queue: self.queue.unwrap_or_else(|| T::OPTIONS.queue.to_owned()),
            priority: self.priority.or(T::OPTIONS.priority),
            max_retries: self.max_retries,
        })
    }
}

/// A call of `F` followed by steps, the last of which is a call of `L`: what
/// [`Producer::chain`](crate::Producer::chain) sends. Its handle resolves to `L`'s result.
#[must_use = "a chain does nothing until it is given to a producer"]
pub struct Chain<F: Task, L: Task> {
    pub(crate) first: Call<F>,
    pub(crate) last_id: TaskId,
    _last: PhantomData<fn() -> L>,
}

impl<F: Task, L: Task> std::fmt::Debug for Chain<F, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("first", &F::NAME)
            .field("last", &L::NAME)
            .field("last_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

impl<F: Task, L: Task> Chain<F, L> {
    /// Runs `next` after the chain's last step, with that step's result as its first argument.
    pub fn then<U: Task>(self, next: Step<U, L::Output>) -> Chain<F, U> {
        let (first, last_id) = self.first.push_step(next);
        Chain {
            first,
            last_id,
            _last: PhantomData,
        }
    }

    /// The task id of the last step, which the chain's handle follows.
    pub fn id(&self) -> &str {
        &self.last_id
    }
}

impl<T: Task> Call<T> {
    /// Runs `next` after this call, with this call's result as its first argument. The worker
    /// that finishes this call publishes `next`; if this call fails for good, the chain ends
    /// and its handle gets the failure, naming the step.
    pub fn then<U: Task>(self, next: Step<U, T::Output>) -> Chain<T, U> {
        let (first, last_id) = self.push_step(next);
        Chain {
            first,
            last_id,
            _last: PhantomData,
        }
    }

    /// Publishes `hook` when this call succeeds (after its result is stored).
    pub fn on_success<H: Task>(mut self, hook: Call<H>) -> Self {
        match hook.into_wire(new_task_id()) {
            Ok(step) => self.flow_mut().on_success = Some(step),
            Err(e) => self.args = Err(e),
        }
        self
    }

    /// Publishes `hook` when this call fails for good (after its failure is stored).
    pub fn on_failure<H: Task>(mut self, hook: Call<H>) -> Self {
        match hook.into_wire(new_task_id()) {
            Ok(step) => self.flow_mut().on_failure = Some(step),
            Err(e) => self.args = Err(e),
        }
        self
    }

    pub(crate) fn flow_mut(&mut self) -> &mut Flow {
        self.flow.get_or_insert_with(Box::default)
    }

    /// Appends a step; returns the call and the step's id.
    fn push_step<U: Task, In>(mut self, next: Step<U, In>) -> (Self, TaskId) {
        let id = new_task_id();
        match next.into_wire(id.clone()) {
            Ok(step) => self.flow_mut().chain.push(step),
            Err(e) => self.args = Err(e),
        }
        (self, id)
    }

    /// The call as a step published by a worker (a hook: nothing is added to its arguments).
    /// Its own id is kept; what a hook cannot carry (a countdown, an expiry, `unique_for`,
    /// hooks of its own) is refused, so the call fails to send, instead of being dropped.
    pub(crate) fn into_wire(
        self,
        id: TaskId,
    ) -> Result<FlowStep, (&'static str, serde_json::Error)> {
        let cannot = if self.eta.is_some() {
            Some("a hook cannot have a countdown or eta: it is published when the call ends")
        } else if self.expires.is_some() {
            Some("a hook cannot have an expiry")
        } else if self.unique_for.is_some() {
            Some("a hook cannot be unique_for: it runs once per hooked call already")
        } else if self.flow.is_some() {
            Some("a hook cannot have hooks or steps of its own")
        } else {
            None
        };
        if let Some(why) = cannot {
            return Err(("hook", <serde_json::Error as serde::de::Error>::custom(why)));
        }
        Ok(FlowStep {
            id: self.id.unwrap_or(id),
            task: T::NAME.to_owned(),
            args: self.args?,
            slot: None,
            queue: self.queue.unwrap_or_else(|| T::OPTIONS.queue.to_owned()),
            priority: self.priority.or(T::OPTIONS.priority),
            max_retries: self.max_retries,
        })
    }
}
