//! The one error type of `ivy-core`.

use std::time::Duration;

use crate::failure::TaskFailure;

/// Everything that can go wrong in Ivy's runtime.
///
/// Display texts never repeat their source; walk [`std::error::Error::source`] for the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task ran and returned an error (after its retries were used up), panicked or timed out.
    #[error("task failed: {0}")]
    Task(TaskFailure),
    /// Waiting for a result took longer than the caller allowed.
    #[error("no result after {0:?}")]
    Timeout(Duration),
    /// The message is larger than the broker accepts; nothing was sent.
    #[error("message of {size} bytes exceeds the broker's limit of {limit} bytes")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// Arguments or a result could not be turned into JSON, or back.
    #[error("could not encode or decode {what}")]
    Codec {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An argument of a call could not be turned into JSON.
    #[error("could not encode argument `{name}`")]
    Argument {
        /// The parameter name.
        name: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A message on the wire is not a valid Ivy message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A URL names a scheme no compiled-in backend handles, or is otherwise unusable.
    #[error("unsupported broker or notifier URL `{url}`: {reason}")]
    Url {
        /// The URL as given (passwords are not included).
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Two tasks registered under one name.
    #[error("task name `{0}` is registered twice")]
    DuplicateTask(String),
    /// A worker was configured with nothing to do or conflicting settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A payload could not be sealed or opened, or a key could not be read.
    #[error("payload encryption failed")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// The broker or notifier failed; the source says how.
    #[error("{backend} error")]
    Backend {
        /// Which backend (`amqp`, `sqs`, `redis`, `memory`).
        backend: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The broker or notifier was closed or its connection is gone for good.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// No result within the caller's limit, and the last attempt to read the result store
    /// failed: the result may exist but be out of reach. The call goes on.
    #[error("no result after {waited:?}: the result store was unreachable")]
    ResultStoreUnreachable {
        /// How long the caller waited.
        waited: Duration,
        /// The last failed read of the store.
        #[source]
        source: std::sync::Arc<Error>,
    },
}

impl Error {
    /// Wraps a backend client error.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// The task's own failure, when this error is one.
    pub fn task_failure(&self) -> Option<&TaskFailure> {
        match self {
            Error::Task(f) => Some(f),
            _ => None,
        }
    }
}

/// `Result` with Ivy's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
