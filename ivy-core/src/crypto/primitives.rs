//! Known-answer tests of the primitives the sealed format is built on: raw AES-256-CBC and
//! HMAC-SHA-256, used the way the sealed format uses them, checked against published test
//! vectors (NIST SP 800-38A, RFC 4231). Compiled for tests only.

use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::Mac;

use super::cipher::{Aes256CbcDec, Aes256CbcEnc, BLOCK_LEN};
use super::keys::hmac_sha256_init;

/// AES-256-CBC encryption without padding; `None` unless `data` is whole blocks.
fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
    data.len().is_multiple_of(BLOCK_LEN).then(|| {
        Aes256CbcEnc::new(&(*key).into(), &(*iv).into()).encrypt_padded_vec::<NoPadding>(data)
    })
}

/// AES-256-CBC decryption without padding; `None` unless `data` is whole blocks.
fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
    if !data.len().is_multiple_of(BLOCK_LEN) {
        return None;
    }
    Aes256CbcDec::new(&(*key).into(), &(*iv).into())
        .decrypt_padded_vec::<NoPadding>(data)
        .ok()
}

/// HMAC-SHA-256 of `data` under `key` (any length).
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = hmac_sha256_init(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a full 32-byte HMAC-SHA-256 tag, as
/// [`Keyring::open`](super::Keyring::open) does.
fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let mut mac = hmac_sha256_init(key);
    mac.update(data);
    mac.verify_slice(tag).is_ok()
}

mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    fn array<const N: usize>(s: &str) -> [u8; N] {
        unhex(s).try_into().expect("test vector length")
    }

    // NIST SP 800-38A, appendix F.2.5 (CBC-AES256.Encrypt) and F.2.6 (CBC-AES256.Decrypt).
    const NIST_KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const NIST_IV: &str = "000102030405060708090a0b0c0d0e0f";
    const NIST_PLAINTEXT: &str = "6bc1bee22e409f96e93d7e117393172a
                                  ae2d8a571e03ac9c9eb76fac45af8e51
                                  30c81c46a35ce411e5fbc1191a0a52ef
                                  f69f2445df4f9b17ad2b417be66c3710";
    const NIST_CIPHERTEXT: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd6
                                   9cfc4e967edb808d679f777bc6702c7d
                                   39f23369a9d9bacfa530e26304231461
                                   b2eb05e2c39be9fcda6c19078c6a9d1b";

    #[test]
    fn nist_sp800_38a_f_2_5_cbc_aes256_encrypt() {
        let key = array::<32>(NIST_KEY);
        let iv = array::<16>(NIST_IV);
        let out = aes256_cbc_encrypt(&key, &iv, &unhex(NIST_PLAINTEXT)).unwrap();
        assert_eq!(out, unhex(NIST_CIPHERTEXT));
    }

    #[test]
    fn nist_sp800_38a_f_2_6_cbc_aes256_decrypt() {
        let key = array::<32>(NIST_KEY);
        let iv = array::<16>(NIST_IV);
        let out = aes256_cbc_decrypt(&key, &iv, &unhex(NIST_CIPHERTEXT)).unwrap();
        assert_eq!(out, unhex(NIST_PLAINTEXT));
    }

    #[test]
    fn raw_cbc_refuses_partial_blocks() {
        let key = array::<32>(NIST_KEY);
        let iv = array::<16>(NIST_IV);
        assert!(aes256_cbc_encrypt(&key, &iv, &[0; 15]).is_none());
        assert!(aes256_cbc_decrypt(&key, &iv, &[0; 17]).is_none());
    }

    /// RFC 4231 section 4: (key, data, HMAC-SHA-256). Test case 5's output is truncated to 128 bits
    /// in the RFC and compared as such.
    fn rfc4231_cases() -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        vec![
            // Test case 1
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            ),
            // Test case 2: a key shorter than the output
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ),
            // Test case 3
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                unhex("773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            ),
            // Test case 4
            (
                (1..=25).collect(),
                vec![0xcd; 50],
                unhex("82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            ),
            // Test case 5: truncated to 128 bits
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                unhex("a3b6167473100ee06e0c796c2955552b"),
            ),
            // Test case 6: a key larger than the block size
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            ),
            // Test case 7: key and data larger than the block size
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size \
                  data. The key needs to be hashed before being used by the HMAC algorithm."
                    .to_vec(),
                unhex("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
            ),
        ]
    }

    #[test]
    fn rfc4231_hmac_sha256_test_cases_1_to_7() {
        for (number, (key, data, expected)) in rfc4231_cases().into_iter().enumerate() {
            let tag = hmac_sha256(&key, &data);
            assert_eq!(
                &tag[..expected.len()],
                &expected[..],
                "RFC 4231 test case {}",
                number + 1
            );
            if expected.len() == 32 {
                assert!(
                    hmac_sha256_verify(&key, &data, &expected),
                    "test case {}",
                    number + 1
                );
                let mut wrong = expected.clone();
                wrong[31] ^= 1;
                assert!(
                    !hmac_sha256_verify(&key, &data, &wrong),
                    "test case {}",
                    number + 1
                );
            }
        }
    }
}
