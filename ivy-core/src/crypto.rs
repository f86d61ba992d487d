//! Payload encryption: the [`Keyring`] that seals call payloads and notifications before they
//! reach a broker, and opens them again on the other side.
//!
//! This module owns the cryptography and the sealed wire format, nothing else: it knows no
//! broker, never logs, and never puts key material or plaintext into `Debug` output or error
//! texts. The producer and the worker decide *what* to seal; this module decides *how*.
//!
//! # Scheme
//!
//! - **Cipher:** AES-256-CBC, PKCS#7 padding, a fresh random 16-byte IV per message.
//! - **Authentication:** HMAC-SHA-256 over the version prefix, key id, IV and ciphertext
//!   (encrypt-then-MAC). The tag is checked in constant time *before* anything is decrypted,
//!   so a tampered message never reaches the cipher (no padding oracle).
//! - **Keys:** each configured 32-byte secret is expanded with HKDF-SHA-256 (RFC 5869) into
//!   two independent 32-byte keys, so the cipher and the MAC never share a key:
//!   - salt: none (HKDF then uses 32 zero bytes, as RFC 5869 §2.2 prescribes),
//!   - `info` = `ivy-v1 enc` (ASCII, 10 bytes) for the AES key,
//!   - `info` = `ivy-v1 mac` (ASCII, 10 bytes) for the HMAC key.
//! - **No negotiation:** the algorithm is fixed by the version prefix this code knows; nothing in
//!   a message can select a different cipher, MAC or key derivation.
//!
//! # Sealed format, version 1
//!
//! A sealed message is ASCII text, so it travels unchanged in JSON, SQS bodies and Redis:
//!
//! ```text
//! sealed = "ivy1." || base64url_nopad( body || tag )
//! body   = key_id_len (1 byte, 1..=64) || key_id (ASCII) || iv (16 bytes) || ciphertext
//! tag    = HMAC-SHA-256( mac_key, "ivy1." || body )            (32 bytes)
//! ```
//!
//! - `base64url_nopad` is RFC 4648 §5 (`-` and `_`), without `=` padding; decoding is strict
//!   (no padding, no whitespace, no non-zero trailing bits).
//! - `key_id` is 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
//! - `ciphertext` is AES-256-CBC(enc_key, iv, PKCS#7(plaintext)): a non-empty multiple of 16
//!   bytes. The smallest valid body+tag is therefore 1 + 1 + 16 + 16 + 32 = 66 bytes.
//! - The MAC input is the 5 ASCII bytes `ivy1.` followed by `body` exactly as transmitted
//!   (after base64 decoding), i.e. everything except the tag.
//!
//! The **binary form** carries the same `body || tag` unencoded, after a 5-byte prefix with a
//! colon: `sealed_bin = "ivy1:" || body || tag`, the tag computed exactly as above (its input
//! still starts with `ivy1.`), so one form converts to the other without the key. It is a
//! third smaller and cheaper to make and open; Ivy's producers and workers write it
//! ([`Keyring::seal_binary`]), since every broker and notifier carries bytes.
//!
//! A reader opens a message by: stripping `ivy1.` and decoding base64url (or stripping
//! `ivy1:`); reading the key id; looking the key up (an unknown id is an error); checking the
//! lengths; verifying the tag in constant time; only then decrypting and removing the padding.
//!
//! ## Worked example
//!
//! ```text
//! secret (hex)   000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//! secret (b64)   AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
//! key id         k1
//! enc_key        7ff58dbd7d9ee76f84f85c51b14f06a484fa94d3ba36811085b3a7a3728a18cd
//! mac_key        9f3993b7e7a0a0246c6eded1a88bf55772dc2e8c4d22067e041c4150eafa23f2
//! iv             a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
//! plaintext      {"task":"add","args":[2,3]}                       (27 bytes)
//! padded         7b227461736b223a22616464222c2261726773223a5b322c335d7d0505050505
//! ciphertext     3748c695fd2058c20089abbced8f9a1536c003f19fad86057495d7350c537371
//! MAC input      697679312e 02 6b31 a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
//!                3748c695fd2058c20089abbced8f9a1536c003f19fad86057495d7350c537371
//! tag            d93c264b3e99f1ed27eea8ec23bd7246c9955f1893bd2b400134ba05b113a62c
//! sealed         ivy1.AmsxoKGio6SlpqeoqaqrrK2urzdIxpX9IFjCAImrvO2PmhU2wAPxn62GBXSV1zUMU3Nx2TwmSz6Z8e0n7qjsI71yRsmVXxiTvStAATS6BbETpiw
//! ```
//!
//! The same numbers with the OpenSSL 3 command line:
//!
//! ```text
//! S=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//! IV=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
//! ENC=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:$S -kdfopt info:"ivy-v1 enc" HKDF | tr -d :)
//! MAC=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:$S -kdfopt info:"ivy-v1 mac" HKDF | tr -d :)
//! printf '%s' '{"task":"add","args":[2,3]}' | openssl enc -aes-256-cbc -K $ENC -iv $IV | xxd -p -c 64
//! { printf 'ivy1.\x02k1'; printf $IV | xxd -r -p
//!   printf '%s' '{"task":"add","args":[2,3]}' | openssl enc -aes-256-cbc -K $ENC -iv $IV; } \
//!   | openssl dgst -sha256 -mac HMAC -macopt hexkey:$MAC
//! ```
//!
//! # Keys and rotation
//!
//! A [`Keyring`] holds several keys, each with an id. New messages are sealed with the *current*
//! key; every key in the ring still opens messages sealed under it, until it is removed. Rotate
//! by adding the new key to every worker first, then making it current on the producers, then
//! removing the old key once no message sealed under it can still be in flight.
//!
//! Keys are given as 64 hex digits or as base64 (standard or URL-safe alphabet, with or without
//! padding) of exactly 32 bytes, e.g. from the environment:
//!
//! ```
//! use ivy_core::crypto::Keyring;
//!
//! # fn main() -> Result<(), ivy_core::crypto::CryptoError> {
//! // The first entry is the current key; `k1` still opens older messages.
//! let ring = Keyring::from_spec(
//!     "k2:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f,\
//!      k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
//! )?
//! .allow_tasks("k2", &["billing.*", "mail.send"])?;
//!
//! let sealed = ring.seal(br#"{"task":"billing.charge"}"#);
//! assert!(sealed.starts_with(b"ivy1."));
//! let opened = ring.open(&sealed)?;
//! assert_eq!(opened.plaintext, br#"{"task":"billing.charge"}"#);
//! assert_eq!(opened.key_id.as_deref(), Some("k2"));
//! assert!(ring.may_call(opened.key_id.as_deref(), "billing.charge"));
//! assert!(!ring.may_call(opened.key_id.as_deref(), "admin.wipe"));
//! # Ok(())
//! # }
//! ```
//!
//! # Plaintext and the legacy format
//!
//! A keyring without keys seals nothing and hands unencrypted messages through. With keys, an
//! unencrypted message is refused unless [`Keyring::allow_plaintext`] is on (for migrations;
//! such messages are not authenticated and carry no key id).
//!
//! [`Keyring::with_legacy_password`] additionally *reads* the original Ivy format:
//! `$aes-256-cbc$` followed by standard base64 of the ciphertext, as produced by Node's
//! `crypto.createCipher('aes-256-cbc', password)` where `password` is the raw 64-byte SHA-512
//! digest of the configured key string, and key and IV both come from OpenSSL's
//! `EVP_BytesToKey` (MD5, one round, no salt). That format has a fixed IV and no
//! authentication: a tampered legacy message can decrypt to garbage instead of failing. It is
//! therefore read only when explicitly enabled and never written.
//!
//! A message in either encrypted form is never handed on as plaintext: if it cannot be opened
//! (no keys, legacy not enabled) that is an error rather than a confusing decoding failure later.

use std::fmt;

use aes::Aes256;
use base64::engine::general_purpose::{
    STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD, URL_SAFE_PAD_INDIFFERENT,
};
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroize;

type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// The version prefix of the sealed format; also the first bytes of the MAC input.
const PREFIX: &str = "ivy1.";
/// The prefix of the binary form: the same bytes as the text form after its base64 decoding.
const BINARY_PREFIX: &[u8] = b"ivy1:";
/// The prefix of the original Ivy format (read-only).
const LEGACY_PREFIX: &str = "$aes-256-cbc$";
/// HKDF `info` for the AES key. Changing it changes every derived key: it is part of the format.
const ENC_INFO: &[u8] = b"ivy-v1 enc";
/// HKDF `info` for the HMAC key.
const MAC_INFO: &[u8] = b"ivy-v1 mac";
const SECRET_LEN: usize = 32;
const BLOCK_LEN: usize = 16;
const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;
const MAX_KEY_ID_LEN: usize = 64;

/// What can go wrong while building a [`Keyring`] or opening a message.
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
    /// A task pattern given to [`Keyring::allow_tasks`] is not an exact name or `prefix*`.
    #[error("invalid task pattern `{pattern}` for key `{key_id}`: {reason}")]
    InvalidPattern {
        /// The key id.
        key_id: String,
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
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
    /// A message in the original Ivy format arrived and legacy decryption is not enabled.
    #[error("legacy `$aes-256-cbc$` message refused: legacy decryption is not enabled")]
    LegacyDisabled,
    /// A legacy message did not decrypt (wrong legacy password or corrupted message).
    #[error("legacy message could not be decrypted")]
    LegacyDecryptionFailed,
}

/// Which tasks a key may call.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TaskPattern {
    Exact(String),
    Prefix(String),
}

impl TaskPattern {
    fn matches(&self, task: &str) -> bool {
        match self {
            TaskPattern::Exact(name) => name == task,
            TaskPattern::Prefix(prefix) => task.starts_with(prefix.as_str()),
        }
    }
}

/// One configured key with its derived subkeys.
#[derive(Clone)]
struct Key {
    id: String,
    enc: [u8; 32],
    mac: [u8; 32],
    /// `None`: may call any task.
    allowed: Option<Vec<TaskPattern>>,
}

impl Key {
    fn derive(id: &str, secret: &[u8; SECRET_LEN]) -> Key {
        let hkdf = Hkdf::<Sha256>::new(None, secret);
        let mut enc = [0u8; 32];
        let mut mac = [0u8; 32];
        // 32 bytes is far below HKDF-SHA-256's limit of 255 * 32, so expand cannot fail.
        hkdf.expand(ENC_INFO, &mut enc)
            .expect("32 bytes is a valid HKDF length");
        hkdf.expand(MAC_INFO, &mut mac)
            .expect("32 bytes is a valid HKDF length");
        Key {
            id: id.to_owned(),
            enc,
            mac,
            allowed: None,
        }
    }

    fn mac(&self) -> HmacSha256 {
        let mut mac = hmac_sha256_init(&self.mac);
        mac.update(PREFIX.as_bytes());
        mac
    }
}

// Derived keys are wiped when the last copy goes away, so they do not linger in freed memory.
impl Drop for Key {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.mac.zeroize();
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// Key and IV of the original Ivy format, from `EVP_BytesToKey`.
#[derive(Clone)]
struct LegacyKey {
    key: [u8; 32],
    iv: [u8; 16],
}

impl Drop for LegacyKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl LegacyKey {
    /// Node's `createCipher(alg, password)` runs OpenSSL's `EVP_BytesToKey(MD5, no salt, 1
    /// round)`: D1 = MD5(pw), Di = MD5(Di-1 || pw); key = D1 || D2, iv = D3. The original Ivy
    /// passed the SHA-512 digest of the configured key string as `pw`.
    fn derive(password: &str) -> LegacyKey {
        let pw = Sha512::digest(password.as_bytes());
        let d1 = Md5::digest(pw);
        let d2 = Md5::new().chain_update(d1).chain_update(pw).finalize();
        let d3 = Md5::new().chain_update(d2).chain_update(pw).finalize();
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&d1);
        key[16..].copy_from_slice(&d2);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&d3);
        LegacyKey { key, iv }
    }

    fn open(&self, encoded: &[u8]) -> Result<Opened, CryptoError> {
        let ciphertext = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed("legacy message is not valid base64"))?;
        if ciphertext.is_empty() || ciphertext.len() % BLOCK_LEN != 0 {
            return Err(CryptoError::Malformed(
                "legacy ciphertext is not a whole number of blocks",
            ));
        }
        let plaintext = Aes256CbcDec::new(&self.key.into(), &self.iv.into())
            .decrypt_padded_vec::<Pkcs7>(&ciphertext)
            .map_err(|_| CryptoError::LegacyDecryptionFailed)?;
        Ok(Opened {
            plaintext,
            key_id: None,
        })
    }
}

/// The keys that seal and open messages, and what each key may call.
///
/// Cheap to clone (a few small vectors). `Debug` shows key ids and settings, never key bytes.
/// See the [module docs](self) for the format and the rotation procedure.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
    /// Index into `keys` of the key that seals; `None` exactly when `keys` is empty.
    current: Option<usize>,
    plaintext_allowed: bool,
    legacy: Option<LegacyKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Ids<'a>(&'a [Key]);
        impl fmt::Debug for Ids<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().map(|k| &k.id))
                    .finish()
            }
        }
        f.debug_struct("Keyring")
            .field("key_ids", &Ids(&self.keys))
            .field("current", &self.current.map(|i| &self.keys[i].id))
            .field("allow_plaintext", &self.plaintext_allowed)
            .field("legacy", &self.legacy.is_some())
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

    /// Accepts unencrypted messages although keys are configured (for migrating to encryption).
    /// Such messages are not authenticated: anyone who can publish can call any task.
    pub fn allow_plaintext(mut self, yes: bool) -> Self {
        self.plaintext_allowed = yes;
        self
    }

    /// Also reads messages in the original Ivy `$aes-256-cbc$` format, decrypted with the key
    /// string `key` as configured in the original Ivy. Never used for sealing.
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
            Some(index) => text_form(&seal_after(b"", &self.keys[index], &fresh_iv(), plaintext)),
        }
    }

    /// Seals like [`seal`](Keyring::seal), in the binary form: `ivy1:` followed by the bytes
    /// that the text form base64-encodes. A third smaller and cheaper to make and open; what
    /// Ivy's producers and workers write, since every broker and notifier carries bytes (SQS
    /// base64-encodes non-text bodies itself). [`open`](Keyring::open) reads both forms.
    pub fn seal_binary(&self, plaintext: &[u8]) -> Vec<u8> {
        match self.current {
            None => plaintext.to_vec(),
            Some(index) => seal_after(BINARY_PREFIX, &self.keys[index], &fresh_iv(), plaintext),
        }
    }

    /// Opens a message: authenticates and decrypts a sealed one, or applies the plaintext and
    /// legacy rules described in the [module docs](self).
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
            return match &self.legacy {
                Some(legacy) => legacy.open(encoded),
                None => Err(CryptoError::LegacyDisabled),
            };
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
            None => self.keys.is_empty() || self.plaintext_allowed || self.legacy.is_some(),
            Some(id) => match self.find(id) {
                None => false,
                Some(index) => match &self.keys[index].allowed {
                    None => true,
                    Some(patterns) => patterns.iter().any(|p| p.matches(task)),
                },
            },
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    fn open_sealed(&self, encoded: &[u8]) -> Result<Opened, CryptoError> {
        if self.keys.is_empty() {
            return Err(CryptoError::NoKeyConfigured);
        }
        let data = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed("not valid unpadded base64url"))?;
        self.open_data(&data)
    }

    /// Opens `body || tag`, the bytes both forms carry.
    fn open_data(&self, data: &[u8]) -> Result<Opened, CryptoError> {
        if self.keys.is_empty() {
            return Err(CryptoError::NoKeyConfigured);
        }
        let (&id_len, rest) = data.split_first().ok_or(CryptoError::Malformed("empty"))?;
        let id_len = usize::from(id_len);
        if id_len == 0 || id_len > MAX_KEY_ID_LEN {
            return Err(CryptoError::Malformed("key id length out of range"));
        }
        if rest.len() < id_len {
            return Err(CryptoError::Malformed("truncated"));
        }
        let (id, rest) = rest.split_at(id_len);
        // Validated before use so an attacker-chosen id is safe to put in an error or a log.
        let id = std::str::from_utf8(id)
            .ok()
            .filter(|id| validate_key_id(id).is_ok())
            .ok_or(CryptoError::Malformed("invalid key id"))?;
        let key = &self.keys[self
            .find(id)
            .ok_or_else(|| CryptoError::UnknownKeyId(id.to_owned()))?];
        if rest.len() < IV_LEN + BLOCK_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("truncated"));
        }
        let ciphertext_len = rest.len() - IV_LEN - TAG_LEN;
        if ciphertext_len % BLOCK_LEN != 0 {
            return Err(CryptoError::Malformed(
                "ciphertext is not a whole number of blocks",
            ));
        }
        let (signed, tag) = data.split_at(data.len() - TAG_LEN);
        let mut mac = key.mac();
        mac.update(signed);
        // Constant-time comparison, and nothing is decrypted unless it succeeds.
        mac.verify_slice(tag)
            .map_err(|_| CryptoError::AuthenticationFailed)?;

        let (iv, rest) = rest.split_at(IV_LEN);
        let ciphertext = &rest[..ciphertext_len];
        let plaintext = Aes256CbcDec::new_from_slices(&key.enc, iv)
            .map_err(|_| CryptoError::Malformed("bad IV length"))?
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            // Only reachable if an authentic sender produced bad padding.
            .map_err(|_| CryptoError::Malformed("bad padding"))?;
        Ok(Opened {
            plaintext,
            key_id: Some(id.to_owned()),
        })
    }
}

/// A message after [`Keyring::open`].
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

/// A fresh IV. rand's thread RNG is a CSPRNG (ChaCha12) seeded and reseeded from the OS; CBC
/// needs IVs that an attacker cannot predict, which it provides.
fn fresh_iv() -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    rand::fill(&mut iv[..]);
    iv
}

/// The text form with a given IV, so tests and the documented example are deterministic.
/// Production code always goes through [`Keyring::seal`] and a random IV.
#[cfg(test)]
fn seal_with_iv(key: &Key, iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
    text_form(&seal_after(b"", key, iv, plaintext))
}

/// The text form of `body || tag`: `ivy1.` and base64url.
fn text_form(data: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(PREFIX.len() + data.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(data, &mut out);
    out.into_bytes()
}

/// `prefix || body || tag`, built in one buffer: the plaintext is copied once and encrypted
/// where it lies.
fn seal_after(prefix: &[u8], key: &Key, iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
    // PKCS#7 always adds 1 to 16 bytes.
    let padded = (plaintext.len() / BLOCK_LEN + 1) * BLOCK_LEN;
    let mut out = Vec::with_capacity(prefix.len() + 1 + key.id.len() + IV_LEN + padded + TAG_LEN);
    out.extend_from_slice(prefix);
    let body = out.len();
    // Key ids are validated to at most 64 bytes, so the length fits one byte.
    out.push(key.id.len() as u8);
    out.extend_from_slice(key.id.as_bytes());
    out.extend_from_slice(iv);
    let ciphertext = out.len();
    out.extend_from_slice(plaintext);
    out.resize(ciphertext + padded, 0);
    Aes256CbcEnc::new(&key.enc.into(), &(*iv).into())
        .encrypt_padded::<Pkcs7>(&mut out[ciphertext..], plaintext.len())
        .expect("the buffer has room for the padding");
    let mut mac = key.mac();
    mac.update(&out[body..]);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag);
    out
}

fn hmac_sha256_init(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn validate_key_id(id: &str) -> Result<(), CryptoError> {
    if id.is_empty() {
        return Err(CryptoError::InvalidKeyId("empty"));
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err(CryptoError::InvalidKeyId("longer than 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(CryptoError::InvalidKeyId(
            "only A-Z a-z 0-9 . _ - are allowed",
        ));
    }
    Ok(())
}

/// Decodes a configured secret. Errors say what is wrong without quoting the secret.
fn parse_secret(id: &str, secret: &str) -> Result<[u8; SECRET_LEN], CryptoError> {
    let secret = secret.trim();
    let encoding = |reason: String| CryptoError::KeyEncoding {
        key_id: id.to_owned(),
        reason,
    };
    if secret.is_empty() {
        return Err(encoding("the secret is empty".to_owned()));
    }
    // Base64 of 32 bytes is 43 or 44 characters, so a 64-character secret can only be hex, and
    // an even-length all-hex string is taken as hex (base64 of 32 bytes never looks like that).
    let all_hex = secret.bytes().all(|b| b.is_ascii_hexdigit());
    let bytes = if secret.len() == 2 * SECRET_LEN || (all_hex && secret.len() % 2 == 0) {
        decode_hex(secret).map_err(|position| {
            encoding(format!(
                "64 characters must be hex, but character {position} is not a hex digit"
            ))
        })?
    } else {
        STANDARD_PAD_INDIFFERENT
            .decode(secret)
            .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(secret))
            .map_err(|_| encoding("neither 64 hex digits nor valid base64".to_owned()))?
    };
    let bytes = zeroize::Zeroizing::new(bytes);
    <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| CryptoError::KeyLength {
        key_id: id.to_owned(),
        len: bytes.len(),
    })
}

/// Hex to bytes; the error is the 1-based position of the first bad character.
fn decode_hex(hex: &str) -> Result<Vec<u8>, usize> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if let Some(position) = bytes.iter().position(|&b| nibble(b).is_none()) {
        return Err(position + 1);
    }
    if bytes.len() % 2 != 0 {
        return Err(bytes.len());
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|pair| (nibble(pair[0]).unwrap_or(0) << 4) | nibble(pair[1]).unwrap_or(0))
        .collect())
}

/// Raw primitives, exposed only so `tests/crypto_vectors.rs` can check them against published
/// test vectors (NIST SP 800-38A, RFC 4231). Not part of the API.
#[doc(hidden)]
pub mod primitives {
    use super::{Aes256CbcDec, Aes256CbcEnc, BLOCK_LEN};
    use cbc::cipher::block_padding::NoPadding;
    use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
    use hmac::Mac;

    /// AES-256-CBC encryption without padding; `None` unless `data` is whole blocks.
    pub fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
        (data.len() % BLOCK_LEN == 0).then(|| {
            Aes256CbcEnc::new(&(*key).into(), &(*iv).into()).encrypt_padded_vec::<NoPadding>(data)
        })
    }

    /// AES-256-CBC decryption without padding; `None` unless `data` is whole blocks.
    pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
        if data.len() % BLOCK_LEN != 0 {
            return None;
        }
        Aes256CbcDec::new(&(*key).into(), &(*iv).into())
            .decrypt_padded_vec::<NoPadding>(data)
            .ok()
    }

    /// HMAC-SHA-256 of `data` under `key` (any length).
    pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = super::hmac_sha256_init(key);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a full 32-byte HMAC-SHA-256 tag, as [`super::Keyring::open`] does.
    pub fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let mut mac = super::hmac_sha256_init(key);
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn worked_example_matches_docs() {
        let ring = Keyring::new().with_key("k1", SECRET_HEX).unwrap();
        let key = &ring.keys[0];
        assert_eq!(
            hex(&key.enc),
            "7ff58dbd7d9ee76f84f85c51b14f06a484fa94d3ba36811085b3a7a3728a18cd"
        );
        assert_eq!(
            hex(&key.mac),
            "9f3993b7e7a0a0246c6eded1a88bf55772dc2e8c4d22067e041c4150eafa23f2"
        );
        let iv: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let plaintext = br#"{"task":"add","args":[2,3]}"#;
        let sealed = seal_with_iv(key, &iv, plaintext);
        assert_eq!(
            std::str::from_utf8(&sealed).unwrap(),
            "ivy1.AmsxoKGio6SlpqeoqaqrrK2urzdIxpX9IFjCAImrvO2PmhU2wAPxn62GBXSV1zUMU3Nx\
             2TwmSz6Z8e0n7qjsI71yRsmVXxiTvStAATS6BbETpiw"
        );

        let data = URL_SAFE_NO_PAD.decode(&sealed[PREFIX.len()..]).unwrap();
        let (signed, tag) = data.split_at(data.len() - TAG_LEN);
        assert_eq!(
            hex(&signed[1 + 2 + 16..]),
            "3748c695fd2058c20089abbced8f9a1536c003f19fad86057495d7350c537371"
        );
        assert_eq!(
            hex(tag),
            "d93c264b3e99f1ed27eea8ec23bd7246c9955f1893bd2b400134ba05b113a62c"
        );

        let opened = ring.open(&sealed).unwrap();
        assert_eq!(opened.plaintext, plaintext);
        assert_eq!(opened.key_id.as_deref(), Some("k1"));
    }

    #[test]
    fn hex_and_base64_forms_of_one_secret_derive_the_same_keys() {
        let forms = [
            SECRET_HEX.to_owned(),
            SECRET_HEX.to_uppercase(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".to_owned(),
            format!("  {SECRET_HEX}\n"),
        ];
        for form in forms {
            let ring = Keyring::new().with_key("k", &form).unwrap();
            assert_eq!(hex(&ring.keys[0].enc)[..8], *"7ff58dbd", "{form:?}");
        }
    }

    #[test]
    fn legacy_key_derivation_matches_evp_bytes_to_key() {
        // Computed independently in Python: pw = sha512(key); d1 = md5(pw);
        // d2 = md5(d1 + pw); d3 = md5(d2 + pw); key = d1 + d2; iv = d3.
        let legacy = LegacyKey::derive("correct horse battery staple");
        assert_eq!(
            hex(&legacy.key),
            "ee5460937dfd8124c88c1e9ece42261a0e536626b669d29a16f5cbb0f1bd1a98"
        );
        assert_eq!(hex(&legacy.iv), "7a4b308e690bf1749b845fd21f518100");
    }

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
}
