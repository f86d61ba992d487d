//! What opening a message hands back: the plaintext and the key that authenticated it.

use std::fmt;

/// A message after [`Keyring::open`](super::Keyring::open).
///
/// `Debug` shows the plaintext's length, never its content.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The decrypted (or passed-through) bytes.
    pub plaintext: Vec<u8>,
    /// The key that authenticated the message; `None` for plaintext and legacy messages, which
    /// are not authenticated.
    pub key_id: Option<String>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted(usize);
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "<{} bytes redacted>", self.0)
            }
        }
        f.debug_struct("Opened")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key_id", &self.key_id)
            .finish()
    }
}
