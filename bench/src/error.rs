//! The bench's own error type.

/// Errors of the bench itself: it reports them, it does not recover from them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
