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
//! Each key may send calls (limited to some tasks with [`Keyring::allow_tasks`]) and results
//! (notifications, and outcomes passed on with a call); [`Keyring::allow_results`] takes the
//! latter away, for producers' keys, and [`Keyring::open_result`] opens a notification only
//! from a key that may send results. A message sent on in place of one received (a retry) is
//! sealed under the key that opened the original ([`Keyring::reseal_binary`]).
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
//! With the `legacy-ivy` feature (off by default), `Keyring::with_legacy_password` additionally
//! *reads* the original Ivy format: `$aes-256-cbc$` followed by standard base64 of the
//! ciphertext, as produced by Node's `crypto.createCipher('aes-256-cbc', password)` where
//! `password` is the raw 64-byte SHA-512 digest of the configured key string, and key and IV
//! both come from OpenSSL's `EVP_BytesToKey` (MD5, one round, no salt). That format has a fixed IV and no
//! authentication: a tampered legacy message can decrypt to garbage instead of failing. It is
//! therefore read only when explicitly enabled, never written, and its code (and the MD5 it
//! needs) is only built with the feature. Without the feature such a message is still recognised
//! by its prefix and refused with [`CryptoError::LegacyDisabled`].
//!
//! A message in either encrypted form is never handed on as plaintext: if it cannot be opened
//! (no keys, legacy not enabled) that is an error rather than a confusing decoding failure later.
//!
//! # Where things are
//!
//! `keyring.rs` holds the [`Keyring`], `opened.rs` what opening hands back ([`Opened`]),
//! `cipher.rs` the AES and HMAC types; `sealed.rs` the sealed format above;
//! `keys.rs` key ids, secrets, derived subkeys and task patterns; `legacy.rs` the reader of the
//! original Ivy format (feature `legacy-ivy`); `error.rs` [`CryptoError`]; `primitives.rs`
//! (tests only) checks raw AES-256-CBC and HMAC-SHA-256 against published vectors.

mod cipher;
mod error;
mod keyring;
mod keys;
#[cfg(feature = "legacy-ivy")]
mod legacy;
mod opened;
#[cfg(test)]
mod primitives;
mod sealed;

pub use error::CryptoError;

/// The secret of the unit tests and the worked example in the docs above.
#[cfg(test)]
const TEST_SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub use keyring::Keyring;
pub use opened::Opened;
