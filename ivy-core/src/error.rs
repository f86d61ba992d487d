//! The one error type of `ivy-core`.

use std::fmt;
use std::time::Duration;

use crate::failure::TaskFailure;

/// Everything that can go wrong in Ivy's runtime.
///
/// `Display` tells the whole story in one line: what failed, where (URLs with their password
/// redacted) and why, down the cause chain (`redis: could not connect to Redis at
/// redis://:***@host:6379: Connection refused (os error 111)`), because logs print errors with
/// `%e` and people read `Display`. [`std::error::Error::source`] still returns the cause, for
/// code that inspects it; a reporter that prints every source as well repeats the causes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task ran and returned an error (after its retries were used up), panicked or timed out.
    #[error("task failed: {0}")]
    Task(TaskFailure),
    /// Waiting for a result took longer than the caller allowed.
    #[error("no result after {0:?}")]
    Timeout(Duration),
    /// The message is larger than the producer's limit (by default the broker's, at most
    /// 16 MiB, as the worker's) or than the broker accepts; nothing was sent.
    #[error("message of {size} bytes exceeds the size limit of {limit} bytes")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// Arguments or a result could not be turned into JSON, or back.
    #[error("could not encode or decode {what}: {}", Chain(.source))]
    Codec {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An argument of a call could not be turned into JSON.
    #[error("could not encode argument `{name}`: {}", Chain(.source))]
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
    /// A caller-chosen task id (`Call::id`) that cannot be one.
    #[error("invalid task id {id:?}: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Two tasks registered under one name.
    #[error("task name `{0}` is registered twice")]
    DuplicateTask(String),
    /// A worker was configured with nothing to do or conflicting settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A schedule could not be built: a bad cron expression or time zone, a zero interval, two
    /// schedules with one name.
    #[error("invalid schedule `{schedule}`: {reason}")]
    Schedule {
        /// The schedule's expression (or name), as given.
        schedule: String,
        /// Why it was refused.
        reason: String,
    },
    /// A payload could not be sealed or opened, or a key could not be read.
    #[error("payload encryption failed: {}", Chain(.0))]
    Crypto(#[from] crate::crypto::CryptoError),
    /// The broker or notifier failed; the source says how.
    #[error("{backend}: {}", Chain(.source.as_ref()))]
    Backend {
        /// Which backend (`amqp`, `sqs`, `redis`, `memory`).
        backend: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A publish was sent, but the broker never said whether it took the message (no
    /// confirm in time, or the connection went while waiting for one): the broker may have
    /// it, and the call may run. Publishing it again may run it twice.
    #[error(
        "outcome unknown: {backend} may or may not have the message{} for queue `{queue}`, so \
         publishing it again may duplicate it: {}",
        OfCall(.id.as_deref()),
        Chain(.source.as_ref())
    )]
    PublishOutcomeUnknown {
        /// Which backend (`amqp`, `sqs`).
        backend: &'static str,
        /// The task id of the call the message holds, when the publisher knew it.
        id: Option<crate::envelope::TaskId>,
        /// The queue the message was for.
        queue: String,
        /// Why the outcome is unknown.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The broker or notifier was closed or its connection is gone for good.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// No result within the caller's limit, and the last attempt to read the result store
    /// failed: the result may exist but be out of reach. The call goes on.
    #[error(
        "no result after {waited:?}: the result store was unreachable: {}",
        Chain(.source.as_ref())
    )]
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

/// An error and its causes in one line, `outer: cause: root cause`. A cause whose text the line
/// already holds (clients often quote their cause) is not written twice.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = self.0.to_string();
        f.write_str(&written)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !written.contains(&text) {
                write!(f, ": {text}")?;
                written = text;
            }
            source = cause.source();
        }
        Ok(())
    }
}

/// ` of call `<id>``, or nothing.
struct OfCall<'a>(Option<&'a str>);

impl fmt::Display for OfCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " of call `{id}`"),
            None => Ok(()),
        }
    }
}

/// `Result` with Ivy's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause, as client errors are.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn json_error() -> serde_json::Error {
        serde_json::from_str::<u8>("\"x\"").unwrap_err()
    }

    #[test]
    fn backend_errors_show_their_whole_chain_in_one_line() {
        let root = Layer("Connection refused (os error 111)", None);
        let io = Layer("I/O error", Some(Box::new(root)));
        let ours = Layer(
            "could not connect to Redis at redis://:***@127.0.0.1:1",
            Some(Box::new(io)),
        );
        let e = Error::backend("redis", ours);
        assert_eq!(
            e.to_string(),
            "redis: could not connect to Redis at redis://:***@127.0.0.1:1: I/O error: \
             Connection refused (os error 111)"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the cause stays inspectable"
        );
    }

    #[test]
    fn errors_about_unknown_outcomes_and_unreachable_stores_say_why() {
        let refused = Layer("Connection refused (os error 111)", None);
        let e = Error::PublishOutcomeUnknown {
            backend: "amqp",
            id: Some("order-42".into()),
            queue: "q".into(),
            source: Box::new(Layer("no confirm from amqp://guest:***@h/ in 5s", None)),
        };
        assert!(
            e.to_string()
                .ends_with("may duplicate it: no confirm from amqp://guest:***@h/ in 5s"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("may not have the message of call `order-42` for queue `q`"),
            "{e}"
        );
        let e = Error::ResultStoreUnreachable {
            waited: Duration::from_secs(8),
            source: std::sync::Arc::new(Error::backend("redis", refused)),
        };
        assert_eq!(
            e.to_string(),
            "no result after 8s: the result store was unreachable: redis: Connection refused \
             (os error 111)"
        );
    }

    #[test]
    fn a_cause_the_line_already_quotes_is_not_repeated() {
        let root = Layer("connection reset", None);
        let client = Layer("IO error: connection reset", Some(Box::new(root)));
        let e = Error::backend("amqp", client);
        assert_eq!(e.to_string(), "amqp: IO error: connection reset");
    }

    #[test]
    fn codec_and_argument_errors_say_why() {
        let why = json_error().to_string();
        let codec = Error::Codec {
            what: "the result",
            source: json_error(),
        };
        assert_eq!(
            codec.to_string(),
            format!("could not encode or decode the result: {why}")
        );
        let arg = Error::Argument {
            name: "n",
            source: json_error(),
        };
        assert_eq!(
            arg.to_string(),
            format!("could not encode argument `n`: {why}")
        );
    }

    #[test]
    fn crypto_errors_say_why() {
        let e = Error::from(crate::crypto::CryptoError::EmptySpec);
        assert_eq!(
            e.to_string(),
            "payload encryption failed: key list is empty"
        );
    }
}
