//! The primitives the formats are built from: AES-256-CBC and HMAC-SHA-256, and the cipher's
//! block size. Nothing here knows a key, a prefix or a message layout.

use aes::Aes256;
use hmac::Hmac;
use sha2::Sha256;

pub(super) type Aes256CbcEnc = cbc::Encryptor<Aes256>;
pub(super) type Aes256CbcDec = cbc::Decryptor<Aes256>;
pub(super) type HmacSha256 = Hmac<Sha256>;

/// AES's block size: CBC bodies are whole blocks.
pub(super) const BLOCK_LEN: usize = 16;
