//! [`TaskFailure`], the shape of a task's failure on the wire, and the ways to make one (from
//! an error's source chain, from a panic payload). Kept apart from the envelope and the error
//! type so that both, the task glue and the worker can use it without importing each other.

use std::any::Any;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A task's failure as it reaches the producer: what kind, what it said, and what caused it.
///
/// `kind` is the Rust type name of the task's error, or one of Ivy's own kinds, all prefixed
/// `ivy.`: see [`TaskFailure::PANIC`] and its siblings.
///
/// Made with [`TaskFailure::new`] or [`TaskFailure::from_error`], so that a new optional field
/// is not a breaking change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskFailure {
    /// The error's type name, or an `ivy.*` kind.
    pub kind: String,
    /// The error's own message (its `Display`).
    pub message: String,
    /// The messages of its source chain, outermost first. Not written when empty; read as
    /// empty when absent or `null`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub chain: Vec<String>,
    /// The task said no retry can fix this ([`Permanent`]): the call failed at once, without
    /// its retries. Not written when false; read as false when absent or `null`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub permanent: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// Reads an optional wire field whose `null` means absent (PROTOCOL.md accepts both) as its
/// default. Here rather than in `envelope`, which uses it too, because `envelope` uses this
/// module.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl TaskFailure {
    /// The task panicked.
    pub const PANIC: &'static str = "ivy.panic";
    /// An attempt ran longer than the task's `timeout`.
    pub const TIMEOUT: &'static str = "ivy.timeout";
    /// No task of that name is registered in the worker.
    pub const UNKNOWN_TASK: &'static str = "ivy.unknown_task";
    /// The arguments do not match the task's parameters.
    pub const BAD_ARGUMENTS: &'static str = "ivy.bad_arguments";
    /// The call's `expires` time had passed when a worker got it.
    pub const EXPIRED: &'static str = "ivy.expired";
    /// The call was signed with a key that may not call this task.
    pub const FORBIDDEN: &'static str = "ivy.forbidden";
    /// The result could not be serialized.
    pub const BAD_RESULT: &'static str = "ivy.bad_result";
    /// The call's body exceeded the worker's `max_message_size`: it was dead-lettered unread.
    pub const TOO_LARGE: &'static str = "ivy.too_large";
    /// The call was cancelled (`TaskHandle::cancel`, `Producer::cancel`): dropped before it
    /// ran, or stopped while it ran.
    pub const CANCELLED: &'static str = "ivy.cancelled";
    /// The task takes an `ivy::State<T>` the worker was not given (`Worker::state`).
    pub const MISSING_STATE: &'static str = "ivy.missing_state";

    /// A failure of one of Ivy's own kinds.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        TaskFailure {
            kind: kind.into(),
            message: message.into(),
            chain: Vec::new(),
            permanent: false,
        }
    }

    /// Marks the failure permanent: the worker does not retry it.
    pub fn with_permanent(mut self, permanent: bool) -> Self {
        self.permanent = permanent;
        self
    }

    /// Whether this is the failure of a cancelled call ([`TaskFailure::CANCELLED`]).
    pub fn is_cancelled(&self) -> bool {
        self.kind == Self::CANCELLED
    }

    /// Sets the messages of the source chain, outermost first.
    pub fn with_chain<I, S>(mut self, chain: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.chain = chain.into_iter().map(Into::into).collect();
        self
    }

    /// Builds a failure from any error, walking its source chain.
    pub fn from_error<E: std::error::Error + ?Sized>(kind: impl Into<String>, err: &E) -> Self {
        let mut chain = Vec::new();
        let mut source = err.source();
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        TaskFailure {
            kind: kind.into(),
            message: err.to_string(),
            chain,
            permanent: false,
        }
    }

    /// Describes a panic payload (what `catch_unwind` or a `JoinError` hands back) as a failure.
    pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the task panicked".to_string());
        TaskFailure::new(TaskFailure::PANIC, message)
    }
}

/// An error the task declares permanent: the call fails at once and is dead-lettered, without
/// using its retries (bad input that no retry can fix).
///
/// Return it as the task's error (`Result<T, ivy::Permanent>`), or anywhere in the source
/// chain of the task's error (a boxed error, an `anyhow::Error`, a variant of your own error
/// type with `#[source] ivy::Permanent`). The failure the producer gets describes the wrapped
/// error, with `permanent: true`.
///
/// ```
/// # use ivy_core::Permanent;
/// fn parse(order: &str) -> Result<u64, Permanent> {
///     order.parse().map_err(Permanent::new)
/// }
/// assert!(parse("x").is_err());
/// ```
pub struct Permanent(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Permanent {
    /// Wraps an error (or a message: `Permanent::new("no such customer")`).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Permanent(error.into())
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }

    /// Whether `err` or one of its sources is a [`Permanent`].
    pub fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(err);
        while let Some(e) = next {
            if e.is::<Permanent>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl fmt::Debug for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Permanent").field(&self.0).finish()
    }
}

/// The wrapped error's own text: the failure reads as the error, not as its wrapper.
impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        for cause in &self.chain {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_walks_the_source_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("memory error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(std::io::Error::other("disk full"));
        let f = TaskFailure::from_error("x", &outer);
        assert_eq!(f.message, "memory error");
        assert_eq!(f.chain, vec!["disk full".to_string()]);
        assert_eq!(f.to_string(), "x: memory error: disk full");
    }

    #[test]
    fn with_chain_sets_the_causes() {
        let f = TaskFailure::new("k", "m").with_chain(["a", "b"]);
        assert_eq!(f.chain, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(f.to_string(), "k: m: a: b");
    }

    #[test]
    fn panic_payloads_give_their_message() {
        let f = TaskFailure::from_panic(Box::new("boom"));
        assert_eq!(
            (f.kind.as_str(), f.message.as_str()),
            (TaskFailure::PANIC, "boom")
        );
        let f = TaskFailure::from_panic(Box::new(String::from("owned")));
        assert_eq!(f.message, "owned");
        let f = TaskFailure::from_panic(Box::new(7u8));
        assert_eq!(f.message, "the task panicked");
    }
}
