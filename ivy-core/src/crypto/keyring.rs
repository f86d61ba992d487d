//! The [`Keyring`]: which keys seal and open, the plaintext and legacy rules, per-key task
//! permissions, and what [`Keyring::open`] hands back ([`Opened`]).

use std::fmt;

use zeroize::Zeroize;

use super::keys::{parse_secret, validate_key_id, Key, TaskPattern};
#[cfg(feature = "legacy-ivy")]
use super::legacy::LegacyKey;
use super::opened::Opened;
use super::sealed::{self, BINARY_PREFIX, PREFIX};
use super::CryptoError;

/// The prefix of the original Ivy format. Recognised even without the `legacy-ivy` feature, so
/// such a message is refused as what it is instead of being taken for plaintext.
const LEGACY_PREFIX: &str = "$aes-256-cbc$";

/// The keys that seal and open messages, and what each key may call.
///
/// Cheap to clone (a few small vectors). `Debug` shows key ids and settings, never key bytes.
/// See the [module docs](crate::crypto) for the format and the rotation procedure.
#[derive(Clone, Default)]
pub struct Keyring {
    pub(super) keys: Vec<Key>,
    /// Index into `keys` of the key that seals; `None` exactly when `keys` is empty.
    pub(super) current: Option<usize>,
    plaintext_allowed: bool,
    #[cfg(feature = "legacy-ivy")]
    legacy: Option<LegacyKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// The ids of the keys that pass the filter.
        struct Ids<'a>(&'a [Key], fn(&Key) -> bool);
        impl fmt::Debug for Ids<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().filter(|k| (self.1)(k)).map(|k| &k.id))
                    .finish()
            }
        }
        f.debug_struct("Keyring")
            .field("key_ids", &Ids(&self.keys, |_| true))
            .field("current", &self.current.map(|i| &self.keys[i].id))
            .field("no_results_from", &Ids(&self.keys, |k| !k.sends_results))
            .field("allow_plaintext", &self.plaintext_allowed)
            .field("legacy", &self.legacy_enabled())
            .finish()
    }
}

impl Keyring {
    /// An empty keyring: nothing is encrypted and every message is taken as plaintext.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key and makes it the current one.
    ///
    /// `secret` is 32 bytes as 64 hex digits, or as base64 (standard or URL-safe alphabet, with
    /// or without padding); surrounding whitespace is ignored. Key ids are 1 to 64 characters
    /// from `A-Z a-z 0-9 . _ -` and must be unique.
    pub fn with_key(mut self, id: &str, secret: &str) -> Result<Self, CryptoError> {
        validate_key_id(id)?;
        if self.find(id).is_some() {
            return Err(CryptoError::DuplicateKeyId(id.to_owned()));
        }
        let mut secret = parse_secret(id, secret)?;
        self.keys.push(Key::derive(id, &secret));
        secret.zeroize();
        self.current = Some(self.keys.len() - 1);
        Ok(self)
    }

    /// Builds a keyring from the key list in environment variable `var`; see [`from_spec`].
    ///
    /// [`from_spec`]: Keyring::from_spec
    pub fn from_env(var: &str) -> Result<Self, CryptoError> {
        match std::env::var(var) {
            Ok(spec) => Self::from_spec(&spec),
            Err(std::env::VarError::NotPresent) => Err(CryptoError::Env {
                var: var.to_owned(),
                reason: "is not set",
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(CryptoError::Env {
                var: var.to_owned(),
                reason: "is not valid Unicode",
            }),
        }
    }

    /// Builds a keyring from a list `id:secret,id:secret,…`; the first entry is current.
    ///
    /// Whitespace around entries, ids and secrets is ignored, as is a trailing comma. Secrets
    /// are encoded as for [`with_key`](Keyring::with_key). An empty list is an error: a
    /// misconfigured variable must not silently turn encryption off.
    pub fn from_spec(spec: &str) -> Result<Self, CryptoError> {
        let mut ring = Keyring::new();
        for (index, entry) in spec.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            // The reason never quotes the entry: it may be a bare secret.
            let (id, secret) = entry.split_once(':').ok_or(CryptoError::Spec {
                entry: index + 1,
                reason: "expected `id:secret`",
            })?;
            let id = id.trim();
            if id.is_empty() {
                return Err(CryptoError::Spec {
                    entry: index + 1,
                    reason: "missing key id",
                });
            }
            ring = ring.with_key(id, secret)?;
        }
        if ring.keys.is_empty() {
            return Err(CryptoError::EmptySpec);
        }
        ring.current = Some(0);
        Ok(ring)
    }

    /// Makes the key `id` the one new messages are sealed with.
    pub fn current(mut self, id: &str) -> Result<Self, CryptoError> {
        let index = self
            .find(id)
            .ok_or_else(|| CryptoError::UnknownKeyId(id.to_owned()))?;
        self.current = Some(index);
        Ok(self)
    }

    /// Removes the key `id`; messages sealed under it no longer open. Unknown ids are ignored.
    ///
    /// If it was the current key, the most recently added remaining key becomes current; if it
    /// was the last key, the keyring seals nothing any more ([`is_enabled`](Keyring::is_enabled)
    /// turns false).
    pub fn remove_key(mut self, id: &str) -> Self {
        let current_id = self.current.map(|i| self.keys[i].id.clone());
        self.keys.retain(|k| k.id != id);
        self.current = current_id
            .and_then(|cid| self.find(&cid))
            .or_else(|| self.keys.len().checked_sub(1));
        self
    }

    /// Limits the tasks messages sealed with `key_id` may call (per-producer identities).
    ///
    /// A pattern is an exact task name, or a prefix ending in `*` (`billing.*`; a lone `*`
    /// allows everything). The list replaces any earlier one; an empty list allows no task.
    /// A key that never had a list may call any task.
    pub fn allow_tasks(mut self, key_id: &str, patterns: &[&str]) -> Result<Self, CryptoError> {
        let index = self
            .find(key_id)
            .ok_or_else(|| CryptoError::UnknownKeyId(key_id.to_owned()))?;
        let invalid = |pattern: &str, reason| CryptoError::InvalidPattern {
            key_id: key_id.to_owned(),
            pattern: pattern.to_owned(),
            reason,
        };
        let mut parsed = Vec::with_capacity(patterns.len());
        for &pattern in patterns {
            if pattern.is_empty() {
                return Err(invalid(pattern, "empty pattern"));
            }
            match pattern.find('*') {
                None => parsed.push(TaskPattern::Exact(pattern.to_owned())),
                Some(star) if star == pattern.len() - 1 => {
                    parsed.push(TaskPattern::Prefix(pattern[..star].to_owned()));
                }
                Some(_) => return Err(invalid(pattern, "`*` is only allowed at the end")),
            }
        }
        self.keys[index].allowed = Some(parsed);
        Ok(self)
    }

    /// Sets whether messages sealed with `key_id` are accepted as results: the notifications
    /// a producer reads (results, statuses, progress), and the outcome a worker delivers for a
    /// call passed on with it. Every key may send results until this turns it off.
    ///
    /// Turn it off for the keys of producers, so a producer (whose key may be limited to some
    /// tasks with [`allow_tasks`](Keyring::allow_tasks)) cannot forge the results of other
    /// producers' calls; keep it on for the keys workers seal with.
    pub fn allow_results(mut self, key_id: &str, yes: bool) -> Result<Self, CryptoError> {
        let index = self
            .find(key_id)
            .ok_or_else(|| CryptoError::UnknownKeyId(key_id.to_owned()))?;
        self.keys[index].sends_results = yes;
        Ok(self)
    }

    /// Accepts unencrypted messages although keys are configured (for migrating to encryption).
    /// Such messages are not authenticated: anyone who can publish can call any task.
    pub fn allow_plaintext(mut self, yes: bool) -> Self {
        self.plaintext_allowed = yes;
        self
    }

    /// Also reads messages in the original Ivy `$aes-256-cbc$` format, decrypted with the key
    /// string `key` as configured in the original Ivy. Never used for sealing.
    ///
    /// Only with the `legacy-ivy` feature; without it such messages are refused with
    /// [`CryptoError::LegacyDisabled`].
    #[cfg(feature = "legacy-ivy")]
    pub fn with_legacy_password(mut self, key: &str) -> Self {
        self.legacy = Some(LegacyKey::derive(key));
        self
    }

    /// Whether any key is configured, i.e. whether [`seal`](Keyring::seal) encrypts.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Seals `plaintext` with the current key and a fresh random IV; returns ASCII bytes
    /// (`ivy1.` and base64url), for transports that only carry text.
    /// Without keys, returns `plaintext` unchanged.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        match self.current {
            None => plaintext.to_vec(),
            Some(index) => sealed::seal_text(&self.keys[index], plaintext),
        }
    }

    /// Seals like [`seal`](Keyring::seal), in the binary form: `ivy1:` followed by the bytes
    /// that the text form base64-encodes. A third smaller and cheaper to make and open; what
    /// Ivy's producers and workers write, since every broker and notifier carries bytes (SQS
    /// base64-encodes non-text bodies itself). [`open`](Keyring::open) reads both forms.
    pub fn seal_binary(&self, plaintext: &[u8]) -> Vec<u8> {
        match self.current {
            None => plaintext.to_vec(),
            Some(index) => sealed::seal_binary(&self.keys[index], plaintext),
        }
    }

    /// Seals, in the binary form, a message sent on in place of one that opened with
    /// `key_id` (from [`Opened::key_id`]), so it is accepted exactly as the original was: a
    /// retry must not lose the rights of the key that sent the call.
    ///
    /// - `Some(id)`: sealed under the key `id`, not the current one (a key this ring does not
    ///   hold falls back to the current key).
    /// - `None` (the original was plaintext or legacy): left unencrypted when this ring accepts
    ///   plaintext (or has no keys), since that is how it came; otherwise (a legacy message,
    ///   which is never written) sealed under the current key.
    pub fn reseal_binary(&self, key_id: Option<&str>, plaintext: &[u8]) -> Vec<u8> {
        match key_id.and_then(|id| self.find(id)) {
            Some(index) => sealed::seal_binary(&self.keys[index], plaintext),
            None if key_id.is_none() && self.plaintext_allowed => plaintext.to_vec(),
            None => self.seal_binary(plaintext),
        }
    }

    /// Opens a message: authenticates and decrypts a sealed one, or applies the plaintext and
    /// legacy rules described in the [module docs](crate::crypto).
    ///
    /// Never panics on any input; every altered or truncated sealed message is an error.
    pub fn open(&self, message: &[u8]) -> Result<Opened, CryptoError> {
        if let Some(encoded) = message.strip_prefix(PREFIX.as_bytes()) {
            return self.open_sealed(encoded);
        }
        if let Some(data) = message.strip_prefix(BINARY_PREFIX) {
            return self.open_data(data);
        }
        if let Some(encoded) = message.strip_prefix(LEGACY_PREFIX.as_bytes()) {
            return self.open_legacy(encoded);
        }
        if self.keys.is_empty() || self.plaintext_allowed {
            Ok(Opened {
                plaintext: message.to_vec(),
                key_id: None,
            })
        } else {
            Err(CryptoError::UnencryptedRefused)
        }
    }

    /// Whether a message opened with `key_id` (from [`Opened::key_id`]) may call `task`.
    ///
    /// `None` (a plaintext or legacy message) is allowed only when such messages can be
    /// accepted at all: no keys, plaintext allowed, or legacy enabled. An unknown key id is
    /// never allowed.
    pub fn may_call(&self, key_id: Option<&str>, task: &str) -> bool {
        match key_id {
            None => self.keys.is_empty() || self.plaintext_allowed || self.legacy_enabled(),
            Some(id) => match self.find(id) {
                None => false,
                Some(index) => match &self.keys[index].allowed {
                    None => true,
                    Some(patterns) => patterns.iter().any(|p| p.matches(task)),
                },
            },
        }
    }

    /// Whether a message opened with `key_id` (from [`Opened::key_id`]) may be taken as a
    /// result (see [`allow_results`](Keyring::allow_results)).
    ///
    /// `None` (a plaintext or legacy message) follows the rule of
    /// [`may_call`](Keyring::may_call). An unknown key id is never allowed.
    pub fn may_send_results(&self, key_id: Option<&str>) -> bool {
        match key_id {
            None => self.keys.is_empty() || self.plaintext_allowed || self.legacy_enabled(),
            Some(id) => self
                .find(id)
                .is_some_and(|index| self.keys[index].sends_results),
        }
    }

    /// Opens a notification (a result, status or progress report): like
    /// [`open`](Keyring::open), and refused with [`CryptoError::ResultsNotAllowed`] when it was
    /// sealed with a key that may not send results.
    pub fn open_result(&self, message: &[u8]) -> Result<Opened, CryptoError> {
        let opened = self.open(message)?;
        if self.may_send_results(opened.key_id.as_deref()) {
            Ok(opened)
        } else {
            Err(CryptoError::ResultsNotAllowed(
                opened.key_id.unwrap_or_default(),
            ))
        }
    }

    fn legacy_enabled(&self) -> bool {
        #[cfg(feature = "legacy-ivy")]
        return self.legacy.is_some();
        #[cfg(not(feature = "legacy-ivy"))]
        false
    }

    #[cfg(feature = "legacy-ivy")]
    fn open_legacy(&self, encoded: &[u8]) -> Result<Opened, CryptoError> {
        match &self.legacy {
            Some(legacy) => legacy.open(encoded),
            None => Err(CryptoError::LegacyDisabled),
        }
    }

    #[cfg(not(feature = "legacy-ivy"))]
    fn open_legacy(&self, _encoded: &[u8]) -> Result<Opened, CryptoError> {
        Err(CryptoError::LegacyDisabled)
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    fn open_sealed(&self, encoded: &[u8]) -> Result<Opened, CryptoError> {
        if self.keys.is_empty() {
            return Err(CryptoError::NoKeyConfigured);
        }
        let data = sealed::decode_text(encoded)?;
        self.open_data(&data)
    }

    /// Opens `body || tag`, the bytes both forms carry.
    fn open_data(&self, data: &[u8]) -> Result<Opened, CryptoError> {
        if self.keys.is_empty() {
            return Err(CryptoError::NoKeyConfigured);
        }
        sealed::open(data, |id| self.find(id).map(|index| &self.keys[index]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::TEST_SECRET_HEX as SECRET_HEX;

    #[test]
    fn remove_current_key_falls_back_to_latest_remaining() {
        let ring = Keyring::new()
            .with_key("a", SECRET_HEX)
            .unwrap()
            .with_key("b", &SECRET_HEX.replace("00", "ff"))
            .unwrap()
            .current("a")
            .unwrap()
            .remove_key("a");
        assert_eq!(ring.current.map(|i| ring.keys[i].id.as_str()), Some("b"));
        let ring = ring.remove_key("b");
        assert!(!ring.is_enabled());
        assert_eq!(ring.seal(b"x"), b"x");
    }

    #[test]
    fn every_key_sends_results_until_told_otherwise() {
        let ring = Keyring::new()
            .with_key("w", SECRET_HEX)
            .unwrap()
            .with_key("p", &SECRET_HEX.replace("00", "ff"))
            .unwrap();
        assert!(ring.may_send_results(Some("w")) && ring.may_send_results(Some("p")));
        assert!(!ring.may_send_results(Some("x")), "an unknown key");
        assert!(!ring.may_send_results(None), "plaintext is not allowed");
        let ring = ring.allow_results("p", false).unwrap();
        assert!(ring.may_send_results(Some("w")));
        assert!(!ring.may_send_results(Some("p")));
        assert!(ring.may_call(Some("p"), "any"), "p still sends calls");
        let from_p = ring.reseal_binary(Some("p"), b"note");
        assert!(matches!(
            ring.open_result(&from_p),
            Err(CryptoError::ResultsNotAllowed(id)) if id == "p"
        ));
        assert_eq!(ring.open(&from_p).unwrap().key_id.as_deref(), Some("p"));
        let from_w = ring.reseal_binary(Some("w"), b"note");
        assert_eq!(ring.open_result(&from_w).unwrap().plaintext, b"note");
        assert!(matches!(
            ring.clone().allow_results("x", false),
            Err(CryptoError::UnknownKeyId(_))
        ));
        assert!(format!("{ring:?}").contains(r#"no_results_from: ["p"]"#));
        assert!(ring.allow_plaintext(true).may_send_results(None));
    }

    #[test]
    fn reseal_keeps_the_key_that_opened_the_original() {
        let ring = Keyring::new()
            .with_key("p", &SECRET_HEX.replace("00", "ff"))
            .unwrap()
            .with_key("w", SECRET_HEX)
            .unwrap();
        let opened = ring.open(&ring.reseal_binary(Some("p"), b"call")).unwrap();
        assert_eq!(opened.key_id.as_deref(), Some("p"));
        let current = ring
            .open(&ring.reseal_binary(Some("gone"), b"call"))
            .unwrap();
        assert_eq!(
            current.key_id.as_deref(),
            Some("w"),
            "unknown: the current key"
        );
        let legacy = ring.open(&ring.reseal_binary(None, b"call")).unwrap();
        assert_eq!(
            legacy.key_id.as_deref(),
            Some("w"),
            "plaintext not accepted"
        );
        let ring = ring.allow_plaintext(true);
        assert_eq!(
            ring.reseal_binary(None, b"call"),
            b"call",
            "came as plaintext"
        );
    }
}
