//! The read-only reader of the original Ivy format, `$aes-256-cbc$` and base64: the key and IV
//! derivation of Node's `createCipher` (`EVP_BytesToKey` with MD5) and the decryption. Ivy never
//! writes this format.

use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use md5::Md5;
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use super::cipher::{Aes256CbcDec, BLOCK_LEN};
use super::opened::Opened;
use super::CryptoError;

/// Key and IV of the original Ivy format, from `EVP_BytesToKey`.
#[derive(Clone)]
pub(super) struct LegacyKey {
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
    pub(super) fn derive(password: &str) -> LegacyKey {
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

    pub(super) fn open(&self, encoded: &[u8]) -> Result<Opened, CryptoError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
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
}
