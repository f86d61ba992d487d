//! The original Ivy format: vectors produced by Node, so the read-only legacy path (feature
//! `legacy-ivy`) is checked against the real thing rather than against our own reading of it,
//! and the refusal of such messages when legacy decryption is not enabled. The published vectors
//! of the raw primitives (NIST SP 800-38A, RFC 4231) are unit tests in `src/crypto/primitives.rs`.

use ivy_core::crypto::{CryptoError, Keyring};

// The original Ivy format, produced by Node v20.20.2 with:
//
// node -e '
// const c=require("crypto");const pw=c.createHash("sha512").update("correct horse battery staple").digest();
// for (const pt of ["{\"task\":\"add\",\"args\":[2,3]}", "héllo, legacy ivy — a longer message that spans several AES blocks."]) {
// const ci=c.createCipher("aes-256-cbc",pw); console.log("$aes-256-cbc$"+Buffer.concat([ci.update(pt,"utf8"),ci.final()]).toString("base64"));}'
#[cfg(feature = "legacy-ivy")]
const LEGACY_PASSWORD: &str = "correct horse battery staple";
const LEGACY_VECTORS: [(&str, &str); 2] = [
    (
        "$aes-256-cbc$8jUvT+1PR8oDG+0JzLfqMDtjwh2/5NRhHauq9dMo4TI=",
        r#"{"task":"add","args":[2,3]}"#,
    ),
    (
        "$aes-256-cbc$2fMVjxiYfCdHFhlciNHD39Y9vijnrnu/e5sIptXLjgMykGMe4OkTSEPe0MaG5TjMF77q2tUogLlT8mWPWodJWtn+BvMvsKKq+arUq1MKKyk=",
        "héllo, legacy ivy — a longer message that spans several AES blocks.",
    ),
];
const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[cfg(feature = "legacy-ivy")]
#[test]
fn legacy_node_vectors_open_with_the_legacy_password() {
    for ring in [
        Keyring::new().with_legacy_password(LEGACY_PASSWORD),
        Keyring::new()
            .with_key("k1", SECRET)
            .unwrap()
            .with_legacy_password(LEGACY_PASSWORD),
    ] {
        for (message, plaintext) in LEGACY_VECTORS {
            let opened = ring.open(message.as_bytes()).unwrap();
            assert_eq!(opened.plaintext, plaintext.as_bytes());
            assert_eq!(opened.key_id, None, "legacy messages are not authenticated");
        }
    }
}

#[test]
fn legacy_format_is_refused_without_opt_in() {
    for ring in [
        Keyring::new(),
        Keyring::new().with_key("k1", SECRET).unwrap(),
    ] {
        for (message, _) in LEGACY_VECTORS {
            let err = ring.open(message.as_bytes()).unwrap_err();
            assert!(matches!(err, CryptoError::LegacyDisabled), "{err:?}");
        }
    }
    // Allowing plaintext is not an opt-in to the legacy cipher either.
    let ring = Keyring::new()
        .with_key("k1", SECRET)
        .unwrap()
        .allow_plaintext(true);
    let err = ring.open(LEGACY_VECTORS[0].0.as_bytes()).unwrap_err();
    assert!(matches!(err, CryptoError::LegacyDisabled), "{err:?}");
}

#[cfg(not(feature = "legacy-ivy"))]
#[test]
fn without_the_feature_the_refusal_says_what_is_missing() {
    let err = Keyring::new()
        .open(LEGACY_VECTORS[0].0.as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("`legacy-ivy` feature"), "{err}");
}

#[cfg(feature = "legacy-ivy")]
#[test]
fn legacy_with_wrong_password_or_garbage_is_an_error() {
    let ring = Keyring::new().with_legacy_password("not the password");
    for (message, plaintext) in LEGACY_VECTORS {
        // Without authentication a wrong password usually fails the padding check; when it
        // does not, the output is garbage, never the real plaintext.
        if let Ok(opened) = ring.open(message.as_bytes()) {
            assert_ne!(opened.plaintext, plaintext.as_bytes());
        }
    }
    let ring = Keyring::new().with_legacy_password(LEGACY_PASSWORD);
    for bad in [
        "$aes-256-cbc$",
        "$aes-256-cbc$!!!",
        "$aes-256-cbc$AAAA",
        "$aes-256-cbc$8jUvT+1PR8oDG+0J",
    ] {
        assert!(ring.open(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[cfg(feature = "legacy-ivy")]
#[test]
fn seal_never_produces_the_legacy_format() {
    let ring = Keyring::new()
        .with_key("k1", SECRET)
        .unwrap()
        .with_legacy_password(LEGACY_PASSWORD);
    let sealed = ring.seal(b"hello");
    assert!(sealed.starts_with(b"ivy1."));
    // And without keys a legacy password alone does not encrypt.
    let ring = Keyring::new().with_legacy_password(LEGACY_PASSWORD);
    assert!(!ring.is_enabled());
    assert_eq!(ring.seal(b"hello"), b"hello");
}
