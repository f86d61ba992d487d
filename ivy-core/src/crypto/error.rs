//! [`CryptoError`]: everything that can go wrong while building a keyring or opening a message.
//! Its texts name key ids, entry numbers and lengths, never key material or plaintext.

/// What can go wrong while building a [`Keyring`](super::Keyring) or opening a message.
///
/// Texts name key ids, entry numbers and lengths, never key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key id is empty, too long or uses characters outside `A-Z a-z 0-9 . _ -`.
    #[error("invalid key id: {0}")]
    InvalidKeyId(&'static str),
    /// The same key id was configured twice.
    #[error("key id `{0}` is configured twice")]
    DuplicateKeyId(String),
    /// A secret is neither hex nor base64.
    #[error("key `{key_id}`: {reason}")]
    KeyEncoding {
        /// The key id the secret belongs to.
        key_id: String,
        /// Why it could not be decoded (without the secret).
        reason: String,
    },
    /// A secret decoded to the wrong number of bytes.
    #[error(
        "key `{key_id}` is {len} bytes long; expected 32 bytes \
         (64 hex digits or 43/44 base64 characters)"
    )]
    KeyLength {
        /// The key id the secret belongs to.
        key_id: String,
        /// The decoded length in bytes.
        len: usize,
    },
    /// An entry of a key list (`id:secret,id:secret`) is not of the form `id:secret`.
    #[error("key list entry {entry}: {reason}")]
    Spec {
        /// 1-based position of the entry.
        entry: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key list names no key.
    #[error("key list is empty")]
    EmptySpec,
    /// The environment variable holding the key list is missing or not Unicode.
    #[error("environment variable `{var}` {reason}")]
    Env {
        /// The variable name.
        var: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key id that this keyring does not hold (in configuration, or in a received message).
    #[error("unknown key id `{0}`")]
    UnknownKeyId(String),
    /// A task pattern given to [`Keyring::allow_tasks`](super::Keyring::allow_tasks) is not an
    /// exact name or `prefix*`.
    #[error("invalid task pattern `{pattern}` for key `{key_id}`: {reason}")]
    InvalidPattern {
        /// The key id.
        key_id: String,
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A notification (or an outcome passed on with a call) was sealed with a key that may not
    /// send results (see [`Keyring::allow_results`](super::Keyring::allow_results)).
    #[error("key `{0}` may not send results")]
    ResultsNotAllowed(String),
    /// The message's tag does not match: it was altered, or sealed with a different secret.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The message starts like a sealed message but its structure is broken.
    #[error("malformed encrypted message: {0}")]
    Malformed(&'static str),
    /// Keys are configured, the message is not encrypted and plaintext is not allowed.
    #[error("unencrypted message refused")]
    UnencryptedRefused,
    /// A sealed message arrived but the keyring holds no key.
    #[error("encrypted message received but no key is configured")]
    NoKeyConfigured,
    /// A message in the original Ivy format arrived and legacy decryption is not enabled (no
    /// legacy password, or ivy-core built without the `legacy-ivy` feature).
    #[cfg_attr(
        feature = "legacy-ivy",
        error("legacy `$aes-256-cbc$` message refused: legacy decryption is not enabled")
    )]
    #[cfg_attr(
        not(feature = "legacy-ivy"),
        error(
            "legacy `$aes-256-cbc$` message refused: legacy decryption is not enabled \
             (it needs the `legacy-ivy` feature)"
        )
    )]
    LegacyDisabled,
    /// A legacy message did not decrypt (wrong legacy password or corrupted message). Only with
    /// the `legacy-ivy` feature.
    #[error("legacy message could not be decrypted")]
    LegacyDecryptionFailed,
}
