//! The sealed format, version 1 (specified in the [module docs](super)): writing the text
//! (`ivy1.`) and binary (`ivy1:`) forms, and checking and opening them. Which key seals and
//! which keys may open is the keyring's business, not this module's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::Mac;

use super::cipher::{Aes256CbcDec, Aes256CbcEnc, BLOCK_LEN};
use super::keys::{validate_key_id, Key, MAX_KEY_ID_LEN};
use super::opened::Opened;
use super::CryptoError;

/// The version prefix of the sealed format; also the first bytes of the MAC input.
pub(super) const PREFIX: &str = "ivy1.";
/// The prefix of the binary form: the same bytes as the text form after its base64 decoding.
pub(super) const BINARY_PREFIX: &[u8] = b"ivy1:";
const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;

/// Seals `plaintext` under `key` in the text form, with a fresh random IV.
pub(super) fn seal_text(key: &Key, plaintext: &[u8]) -> Vec<u8> {
    text_form(&seal_after(b"", key, &fresh_iv(), plaintext))
}

/// Seals `plaintext` under `key` in the binary form, with a fresh random IV.
pub(super) fn seal_binary(key: &Key, plaintext: &[u8]) -> Vec<u8> {
    seal_after(BINARY_PREFIX, key, &fresh_iv(), plaintext)
}

/// The bytes after `ivy1.`, base64url-decoded: `body || tag`.
pub(super) fn decode_text(encoded: &[u8]) -> Result<Vec<u8>, CryptoError> {
    URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| CryptoError::Malformed("not valid unpadded base64url"))
}

/// Opens `body || tag`, the bytes both forms carry; `find` looks the message's key id up.
pub(super) fn open<'k>(
    data: &[u8],
    find: impl FnOnce(&str) -> Option<&'k Key>,
) -> Result<Opened, CryptoError> {
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
    let key = find(id).ok_or_else(|| CryptoError::UnknownKeyId(id.to_owned()))?;
    if rest.len() < IV_LEN + BLOCK_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("truncated"));
    }
    let ciphertext_len = rest.len() - IV_LEN - TAG_LEN;
    if !ciphertext_len.is_multiple_of(BLOCK_LEN) {
        return Err(CryptoError::Malformed(
            "ciphertext is not a whole number of blocks",
        ));
    }
    let (signed, tag) = data.split_at(data.len() - TAG_LEN);
    let mut mac = key.mac();
    mac.update(PREFIX.as_bytes());
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

/// A fresh IV. rand's thread RNG is a CSPRNG (ChaCha12) seeded and reseeded from the OS; CBC
/// needs IVs that an attacker cannot predict, which it provides.
fn fresh_iv() -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    rand::fill(&mut iv[..]);
    iv
}

/// The text form with a given IV, so tests and the documented example are deterministic.
/// Production code always goes through [`Keyring::seal`](super::Keyring::seal) and a random IV.
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
    mac.update(PREFIX.as_bytes());
    mac.update(&out[body..]);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;

    use crate::crypto::TEST_SECRET_HEX as SECRET_HEX;

    #[test]
    fn worked_example_matches_docs() {
        let ring = Keyring::new().with_key("k1", SECRET_HEX).unwrap();
        let key = &ring.keys[0];
        assert_eq!(
            hex::encode(key.enc),
            "7ff58dbd7d9ee76f84f85c51b14f06a484fa94d3ba36811085b3a7a3728a18cd"
        );
        assert_eq!(
            hex::encode(key.mac),
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
            hex::encode(&signed[1 + 2 + 16..]),
            "3748c695fd2058c20089abbced8f9a1536c003f19fad86057495d7350c537371"
        );
        assert_eq!(
            hex::encode(tag),
            "d93c264b3e99f1ed27eea8ec23bd7246c9955f1893bd2b400134ba05b113a62c"
        );

        let opened = ring.open(&sealed).unwrap();
        assert_eq!(opened.plaintext, plaintext);
        assert_eq!(opened.key_id.as_deref(), Some("k1"));
    }
}
