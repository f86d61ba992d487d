//! The error the broker backends report: a message of ours and, where there is one, the
//! client's error as its source. Wrapped in [`ivy_core::Error::Backend`].

use std::fmt;

use ivy_core::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

/// A failure of `backend` described by `message` alone.
pub(crate) fn error(backend: &'static str, message: impl Into<String>) -> Error {
    Error::backend(
        backend,
        Failure {
            message: message.into(),
            source: None,
        },
    )
}

/// A failure of `backend` described by `message`, caused by the client's `source`.
pub(crate) fn caused(
    backend: &'static str,
    message: impl Into<String>,
    source: impl Into<BoxError>,
) -> Error {
    Error::backend(
        backend,
        Failure {
            message: message.into(),
            source: Some(source.into()),
        },
    )
}
