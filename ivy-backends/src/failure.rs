//! The errors the backends report, in one shape for all of them: [`Failures`] names the
//! backend once, and each error is a message of ours and, where there is one, the client's
//! error as its source, wrapped in [`ivy_core::Error::Backend`], which displays them in one
//! line: ``amqp: could not publish to `q`: connection reset``.

// Each backend uses a part of this; a build with only some backends leaves the rest unused.
#![cfg_attr(
    not(all(feature = "amqp", feature = "sqs", feature = "redis")),
    allow(dead_code)
)]

use std::fmt;

use ivy_core::Error;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The failures of one backend: `const FAILURE: Failures = Failures::of("amqp");`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Failures(&'static str);

impl Failures {
    pub(crate) const fn of(backend: &'static str) -> Self {
        Failures(backend)
    }

    /// A failure described by `message` alone.
    pub(crate) fn error(self, message: impl Into<String>) -> Error {
        self.wrap(message.into(), None)
    }

    /// A failure described by `message`, caused by the client's `source`.
    pub(crate) fn caused(self, message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        self.wrap(message.into(), Some(source.into()))
    }

    /// The client's error as it is, when it says enough by itself.
    pub(crate) fn client(self, source: impl Into<BoxError>) -> Error {
        Error::backend(self.0, source)
    }

    fn wrap(self, message: String, source: Option<BoxError>) -> Error {
        Error::backend(self.0, Failure { message, source })
    }
}

#[derive(Debug)]
struct Failure {
    message: String,
    source: Option<BoxError>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILURE: Failures = Failures::of("amqp");

    #[test]
    fn failures_display_backend_message_and_cause_in_one_line() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = FAILURE.caused("could not publish to `q`", refused);
        assert_eq!(e.to_string(), "amqp: could not publish to `q`: refused");
        let e = FAILURE.error("queue `q` is missing");
        assert_eq!(e.to_string(), "amqp: queue `q` is missing");
        let e = FAILURE.client(std::io::Error::other("broken pipe"));
        assert_eq!(e.to_string(), "amqp: broken pipe");
    }
}
