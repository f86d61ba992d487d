//! Raw AES-256-CBC and HMAC-SHA-256, exposed only so `tests/crypto_vectors.rs` can check them
//! against published test vectors (NIST SP 800-38A, RFC 4231). Not part of the API.

use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::Mac;

use super::keys::hmac_sha256_init;
use super::sealed::BLOCK_LEN;
use super::{Aes256CbcDec, Aes256CbcEnc};

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
    let mut mac = hmac_sha256_init(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a full 32-byte HMAC-SHA-256 tag, as
/// [`Keyring::open`](super::Keyring::open) does.
pub fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let mut mac = hmac_sha256_init(key);
    mac.update(data);
    mac.verify_slice(tag).is_ok()
}
