//! The configured keys: key ids, secrets as configured (hex or base64), the HKDF subkeys derived
//! from them, and the task patterns that limit what a key may call. Parsing here never quotes a
//! secret in an error.

use std::fmt;

use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use base64::Engine as _;
use hkdf::Hkdf;
use hmac::KeyInit;
use sha2::Sha256;
use zeroize::Zeroize;

use super::cipher::HmacSha256;
use super::CryptoError;

/// HKDF `info` for the AES key. Changing it changes every derived key: it is part of the format.
const ENC_INFO: &[u8] = b"ivy-v1 enc";
/// HKDF `info` for the HMAC key.
const MAC_INFO: &[u8] = b"ivy-v1 mac";
pub(super) const SECRET_LEN: usize = 32;
pub(super) const MAX_KEY_ID_LEN: usize = 64;

/// Which tasks a key may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TaskPattern {
    Exact(String),
    Prefix(String),
}

impl TaskPattern {
    pub(super) fn matches(&self, task: &str) -> bool {
        match self {
            TaskPattern::Exact(name) => name == task,
            TaskPattern::Prefix(prefix) => task.starts_with(prefix.as_str()),
        }
    }
}

/// One configured key with its derived subkeys.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) id: String,
    pub(super) enc: [u8; 32],
    pub(super) mac: [u8; 32],
    /// `None`: may call any task.
    pub(super) allowed: Option<Vec<TaskPattern>>,
    /// Whether messages sealed with this key are taken as notifications (results, statuses,
    /// progress) and as outcomes passed on with a call.
    pub(super) sends_results: bool,
}

impl Key {
    pub(super) fn derive(id: &str, secret: &[u8; SECRET_LEN]) -> Key {
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
            sends_results: true,
        }
    }

    pub(super) fn mac(&self) -> HmacSha256 {
        hmac_sha256_init(&self.mac)
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

pub(super) fn hmac_sha256_init(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

pub(super) fn validate_key_id(id: &str) -> Result<(), CryptoError> {
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
pub(super) fn parse_secret(id: &str, secret: &str) -> Result<[u8; SECRET_LEN], CryptoError> {
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
    let bytes = if secret.len() == 2 * SECRET_LEN || (all_hex && secret.len().is_multiple_of(2)) {
        hex::decode(secret).map_err(|error| {
            encoding(match error {
                // The position only: the character itself is part of the secret.
                hex::FromHexError::InvalidHexCharacter { index, .. } => format!(
                    "64 characters must be hex, but character {} is not a hex digit",
                    index + 1
                ),
                other => other.to_string(),
            })
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

#[cfg(test)]
mod tests {
    use super::parse_secret;
    use crate::crypto::Keyring;

    use crate::crypto::TEST_SECRET_HEX as SECRET_HEX;

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
            assert_eq!(hex::encode(&ring.keys[0].enc)[..8], *"7ff58dbd", "{form:?}");
        }
    }

    #[test]
    fn a_bad_hex_digit_is_named_by_its_position_not_its_value() {
        let mut secret = SECRET_HEX.to_owned();
        secret.replace_range(9..10, "g");
        let err = parse_secret("k", &secret).unwrap_err().to_string();
        assert_eq!(
            err,
            "key `k`: 64 characters must be hex, but character 10 is not a hex digit"
        );
        // The first bad character counts, in either half of a byte.
        secret.replace_range(4..5, "z");
        let err = parse_secret("k", &secret).unwrap_err().to_string();
        assert!(err.contains("character 5 is"), "{err}");
    }
}
