//! Behaviour of `ivy_core::crypto::Keyring`: tampering is always an error (never a panic, never
//! a wrong plaintext), round trips, rotation, key parsing, permissions, the plaintext and legacy
//! rules, and that secrets stay out of `Debug` and error texts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ivy_core::crypto::{CryptoError, Keyring};
use proptest::prelude::*;

const K1_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K1_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2_HEX: &str = "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283";
const SAMPLE: &[u8] = br#"{"id":"0190b7a4","task":"billing.charge","args":{"amount":42}}"#;

fn ring_k1() -> Keyring {
    Keyring::new().with_key("k1", K1_HEX).unwrap()
}

fn ring_k1_k2() -> Keyring {
    // k1 current, k2 present: a message whose key id is switched to k2 finds a real key.
    Keyring::from_spec(&format!("k1:{K1_HEX},k2:{K2_HEX}")).unwrap()
}

/// The decoded bytes after `ivy1.`.
fn decode(sealed: &[u8]) -> Vec<u8> {
    assert!(sealed.starts_with(b"ivy1."));
    URL_SAFE_NO_PAD.decode(&sealed[5..]).unwrap()
}

fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = b"ivy1.".to_vec();
    out.extend_from_slice(URL_SAFE_NO_PAD.encode(data).as_bytes());
    out
}

/// Every way of opening a bad message must be an `Err`; in particular never the plaintext.
fn assert_rejected(ring: &Keyring, message: &[u8], what: &str) {
    match ring.open(message) {
        Err(_) => {}
        Ok(opened) => panic!("{what}: accepted, key_id {:?}", opened.key_id),
    }
}

#[test]
fn every_single_bit_flip_of_the_sealed_text_is_rejected() {
    let ring = ring_k1_k2();
    let sealed = ring.seal(SAMPLE);
    assert_eq!(ring.open(&sealed).unwrap().plaintext, SAMPLE);
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut bad = sealed.clone();
            bad[i] ^= 1 << bit;
            assert_rejected(&ring, &bad, &format!("text byte {i} bit {bit}"));
        }
    }
}

#[test]
fn every_single_bit_flip_of_the_decoded_bytes_is_rejected() {
    let ring = ring_k1_k2();
    let data = decode(&ring.seal(SAMPLE));
    for i in 0..data.len() {
        for bit in 0..8 {
            let mut bad = data.clone();
            bad[i] ^= 1 << bit;
            assert_rejected(&ring, &encode(&bad), &format!("byte {i} bit {bit}"));
        }
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let ring = ring_k1_k2();
    let sealed = ring.seal(SAMPLE);
    for len in 0..sealed.len() {
        assert_rejected(&ring, &sealed[..len], &format!("text cut at {len}"));
    }
    let data = decode(&sealed);
    for len in 0..data.len() {
        assert_rejected(&ring, &encode(&data[..len]), &format!("bytes cut at {len}"));
        // Dropping bytes from the front shifts every field.
        assert_rejected(
            &ring,
            &encode(&data[len + 1..]),
            &format!("bytes from {}", len + 1),
        );
    }
    for extra in [&b"A"[..], b"AA", b"AAAA", b"=", b"\n", b" "] {
        let mut longer = sealed.clone();
        longer.extend_from_slice(extra);
        assert_rejected(&ring, &longer, "extended text");
    }
    let mut longer = data.clone();
    longer.extend_from_slice(&[0; 16]);
    assert_rejected(&ring, &encode(&longer), "extra block");
}

#[test]
fn changing_the_key_id_is_rejected() {
    let ring = ring_k1_k2();
    let data = decode(&ring.seal(SAMPLE));
    assert_eq!(&data[..3], b"\x02k1");

    // Another key the ring holds: its MAC key does not match.
    let mut other = data.clone();
    other[1..3].copy_from_slice(b"k2");
    let err = ring.open(&encode(&other)).unwrap_err();
    assert!(matches!(err, CryptoError::AuthenticationFailed), "{err:?}");

    // A key the ring does not hold.
    let mut unknown = data.clone();
    unknown[1..3].copy_from_slice(b"k3");
    let err = ring.open(&encode(&unknown)).unwrap_err();
    assert!(
        matches!(&err, CryptoError::UnknownKeyId(id) if id == "k3"),
        "{err:?}"
    );

    // A longer id spliced in front of the same IV, ciphertext and tag.
    let mut longer = vec![3];
    longer.extend_from_slice(b"k22");
    longer.extend_from_slice(&data[3..]);
    assert_rejected(&ring, &encode(&longer), "longer id");

    // Ids outside the allowed alphabet never reach a lookup or an error text verbatim.
    let mut weird = data.clone();
    weird[1..3].copy_from_slice(b"k\n");
    let err = ring.open(&encode(&weird)).unwrap_err();
    assert!(matches!(err, CryptoError::Malformed(_)), "{err:?}");
}

#[test]
fn a_message_sealed_under_another_secret_is_rejected() {
    let sealed = ring_k1().seal(SAMPLE);
    let imposter = Keyring::new().with_key("k1", K2_HEX).unwrap();
    let err = imposter.open(&sealed).unwrap_err();
    assert!(matches!(err, CryptoError::AuthenticationFailed), "{err:?}");
}

#[test]
fn sealed_messages_are_ascii_and_use_a_fresh_iv() {
    let ring = ring_k1();
    let a = ring.seal(SAMPLE);
    let b = ring.seal(SAMPLE);
    assert_ne!(a, b, "same plaintext, same key: the IV must differ");
    for sealed in [&a, &b] {
        assert!(sealed.starts_with(b"ivy1."));
        assert!(sealed[5..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
        assert_eq!(ring.open(sealed).unwrap().plaintext, SAMPLE);
    }
    // Empty plaintexts still get a full padding block.
    assert_eq!(ring.open(&ring.seal(b"")).unwrap().plaintext, b"");
}

#[test]
fn rotation_old_keys_open_until_removed() {
    let old = ring_k1().seal(b"sealed under k1");

    let rotated = ring_k1().with_key("k2", K2_HEX).unwrap();
    let opened = rotated.open(&old).unwrap();
    assert_eq!(opened.plaintext, b"sealed under k1");
    assert_eq!(opened.key_id.as_deref(), Some("k1"));
    let new = rotated.seal(b"sealed under k2");
    assert_eq!(rotated.open(&new).unwrap().key_id.as_deref(), Some("k2"));

    let retired = rotated.remove_key("k1");
    let err = retired.open(&old).unwrap_err();
    assert!(
        matches!(&err, CryptoError::UnknownKeyId(id) if id == "k1"),
        "{err:?}"
    );
    assert_eq!(retired.open(&new).unwrap().plaintext, b"sealed under k2");

    // `current` picks the sealing key explicitly.
    let back = ring_k1()
        .with_key("k2", K2_HEX)
        .unwrap()
        .current("k1")
        .unwrap();
    assert_eq!(
        back.open(&back.seal(b"x")).unwrap().key_id.as_deref(),
        Some("k1")
    );
    let err = back.current("nope").unwrap_err();
    assert!(matches!(err, CryptoError::UnknownKeyId(_)), "{err:?}");
}

#[test]
fn hex_and_base64_encodings_of_a_secret_are_interchangeable() {
    // 0xfb 0xff repeated: its base64 uses `+` and `/`, its URL-safe base64 `-` and `_`.
    let hex = "fbff".repeat(16);
    let forms = [
        hex.clone(),
        hex.to_uppercase(),
        "+//7//v/+//7//v/+//7//v/+//7//v/+//7//v/+/8=".to_owned(),
        "+//7//v/+//7//v/+//7//v/+//7//v/+//7//v/+/8".to_owned(),
        "-__7__v_-__7__v_-__7__v_-__7__v_-__7__v_-_8".to_owned(),
        "-__7__v_-__7__v_-__7__v_-__7__v_-__7__v_-_8=".to_owned(),
        format!(" {hex}\n"),
    ];
    let sealed = Keyring::new()
        .with_key("k", &forms[0])
        .unwrap()
        .seal(SAMPLE);
    for form in &forms {
        let ring = Keyring::new().with_key("k", form).unwrap();
        assert_eq!(ring.open(&sealed).unwrap().plaintext, SAMPLE, "{form:?}");
    }
    let ring = Keyring::new().with_key("k1", K1_B64).unwrap();
    assert_eq!(
        ring.open(&ring_k1().seal(SAMPLE)).unwrap().plaintext,
        SAMPLE
    );
}

#[test]
fn bad_secrets_are_clear_errors_without_the_secret() {
    type Check = fn(&CryptoError) -> bool;
    let cases: [(&str, Check); 9] = [
        // 31 and 33 bytes, as hex and as base64
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e",
            |e| matches!(e, CryptoError::KeyLength { len: 31, .. }),
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
            |e| matches!(e, CryptoError::KeyLength { len: 33, .. }),
        ),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", |e| {
            matches!(e, CryptoError::KeyLength { len: 31, .. })
        }),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", |e| {
            matches!(e, CryptoError::KeyLength { len: 33, .. })
        }),
        // 64 characters that are not all hex
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g",
            |e| matches!(e, CryptoError::KeyEncoding { reason, .. } if reason.contains("hex digit")),
        ),
        ("not base64 at all!", |e| {
            matches!(e, CryptoError::KeyEncoding { .. })
        }),
        // Mixed alphabets are neither standard nor URL-safe base64.
        ("+//7//v/+//7//v/+//7//v/-__7__v_-__7__v_-_8", |e| {
            matches!(e, CryptoError::KeyEncoding { .. })
        }),
        ("", |e| matches!(e, CryptoError::KeyEncoding { .. })),
        ("   ", |e| matches!(e, CryptoError::KeyEncoding { .. })),
    ];
    for (secret, expected) in cases {
        let err = Keyring::new().with_key("prod-1", secret).unwrap_err();
        assert!(expected(&err), "{secret:?}: {err:?}");
        let text = format!("{err} {err:?}");
        assert!(text.contains("prod-1"), "names the key: {text}");
        if secret.trim().len() > 3 {
            assert!(!text.contains(secret.trim()), "leaks the secret: {text}");
        }
    }
}

#[test]
fn key_ids_are_validated_and_unique() {
    for id in ["", "has space", "a:b", "a,b", "é", &"x".repeat(65)] {
        let err = Keyring::new().with_key(id, K1_HEX).unwrap_err();
        assert!(
            matches!(err, CryptoError::InvalidKeyId(_)),
            "{id:?}: {err:?}"
        );
    }
    assert!(Keyring::new().with_key(&"x".repeat(64), K1_HEX).is_ok());
    assert!(Keyring::new().with_key("Prod_2024-11.a", K1_HEX).is_ok());
    let err = ring_k1().with_key("k1", K2_HEX).unwrap_err();
    assert!(
        matches!(&err, CryptoError::DuplicateKeyId(id) if id == "k1"),
        "{err:?}"
    );
}

#[test]
fn from_spec_parses_lists_and_the_first_entry_is_current() {
    let ring = Keyring::from_spec(&format!(" k2 : {K2_HEX} , k1:{K1_B64} ,")).unwrap();
    let sealed = ring.seal(SAMPLE);
    assert_eq!(ring.open(&sealed).unwrap().key_id.as_deref(), Some("k2"));
    assert_eq!(
        ring.open(&ring_k1().seal(SAMPLE))
            .unwrap()
            .key_id
            .as_deref(),
        Some("k1")
    );
    assert_eq!(format!("{ring:?}").matches("k1").count(), 1);
}

#[test]
fn from_spec_errors() {
    let err = Keyring::from_spec("").unwrap_err();
    assert!(matches!(err, CryptoError::EmptySpec), "{err:?}");
    let err = Keyring::from_spec(" , ,").unwrap_err();
    assert!(matches!(err, CryptoError::EmptySpec), "{err:?}");

    // A bare secret without an id: the error points at the entry, not at its content.
    let err = Keyring::from_spec(&format!("k1:{K1_HEX},{K2_HEX}")).unwrap_err();
    assert!(matches!(err, CryptoError::Spec { entry: 2, .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(K2_HEX));

    let err = Keyring::from_spec(&format!(":{K1_HEX}")).unwrap_err();
    assert!(matches!(err, CryptoError::Spec { entry: 1, .. }), "{err:?}");
    let err = Keyring::from_spec(&format!("k1:{K1_HEX},k1:{K2_HEX}")).unwrap_err();
    assert!(matches!(err, CryptoError::DuplicateKeyId(_)), "{err:?}");
    let err = Keyring::from_spec("k1:abcd").unwrap_err();
    assert!(
        matches!(err, CryptoError::KeyLength { len: 2, .. }),
        "{err:?}"
    );
    let err = Keyring::from_spec(&format!("bad id:{K1_HEX}")).unwrap_err();
    assert!(matches!(err, CryptoError::InvalidKeyId(_)), "{err:?}");
}

#[test]
fn from_env_reads_the_variable() {
    // std serialises its own environment access, and nothing in this test binary reads the
    // environment through libc directly, so setting a variable here is safe.
    let var = "IVY_CRYPTO_PROPS_TEST_KEYS";
    std::env::set_var(var, format!("k2:{K2_HEX},k1:{K1_B64}"));
    let ring = Keyring::from_env(var).unwrap();
    assert_eq!(
        ring.open(&ring.seal(b"x")).unwrap().key_id.as_deref(),
        Some("k2")
    );
    std::env::remove_var(var);

    let err = Keyring::from_env(var).unwrap_err();
    assert!(
        matches!(&err, CryptoError::Env { var: v, .. } if v == var),
        "{err:?}"
    );
    assert!(err.to_string().contains("not set"), "{err}");
}

#[test]
fn may_call_with_exact_and_prefix_patterns() {
    let ring = ring_k1_k2()
        .with_key("k3", &"ab".repeat(32))
        .unwrap()
        .with_key("k4", &"cd".repeat(32))
        .unwrap()
        .allow_tasks("k1", &["billing.*", "mail.send"])
        .unwrap()
        .allow_tasks("k3", &["*"])
        .unwrap()
        .allow_tasks("k4", &[])
        .unwrap();
    let k1 = Some("k1");
    assert!(ring.may_call(k1, "billing.charge"));
    assert!(ring.may_call(k1, "billing.refund.partial"));
    assert!(!ring.may_call(k1, "billing"), "`billing.*` needs the dot");
    assert!(!ring.may_call(k1, "billingx.charge"));
    assert!(ring.may_call(k1, "mail.send"));
    assert!(!ring.may_call(k1, "mail.send_all"), "exact names are exact");
    assert!(!ring.may_call(k1, "mail"));
    assert!(!ring.may_call(k1, "admin.wipe"));
    // No list: anything.
    assert!(ring.may_call(Some("k2"), "admin.wipe"));
    // `*`: anything; empty list: nothing.
    assert!(ring.may_call(Some("k3"), "admin.wipe"));
    assert!(!ring.may_call(Some("k4"), "billing.charge"));
    // Unknown keys may call nothing.
    assert!(!ring.may_call(Some("k9"), "billing.charge"));

    // A later list replaces the earlier one.
    let ring = ring.allow_tasks("k1", &["admin.*"]).unwrap();
    assert!(ring.may_call(k1, "admin.wipe"));
    assert!(!ring.may_call(k1, "billing.charge"));
}

#[test]
fn may_call_without_key_id_follows_the_plaintext_rules() {
    assert!(Keyring::new().may_call(None, "any"));
    assert!(!ring_k1().may_call(None, "any"));
    assert!(ring_k1().allow_plaintext(true).may_call(None, "any"));
    #[cfg(feature = "legacy-ivy")]
    assert!(ring_k1().with_legacy_password("pw").may_call(None, "any"));
}

#[test]
fn allow_tasks_errors() {
    let err = ring_k1().allow_tasks("k9", &["a"]).unwrap_err();
    assert!(matches!(err, CryptoError::UnknownKeyId(_)), "{err:?}");
    for bad in ["", "a*b", "*a", "a**"] {
        let err = ring_k1().allow_tasks("k1", &["ok", bad]).unwrap_err();
        assert!(
            matches!(err, CryptoError::InvalidPattern { .. }),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn plaintext_rules() {
    let plain = br#"{"task":"add"}"#;

    // No keys: pass-through both ways.
    let none = Keyring::new();
    assert!(!none.is_enabled());
    assert_eq!(none.seal(plain), plain);
    let opened = none.open(plain).unwrap();
    assert_eq!(
        (opened.plaintext.as_slice(), opened.key_id),
        (&plain[..], None)
    );
    // ... but a sealed message is never handed on as if it were plaintext.
    let err = none.open(&ring_k1().seal(plain)).unwrap_err();
    assert!(matches!(err, CryptoError::NoKeyConfigured), "{err:?}");

    // Keys: plaintext refused unless allowed.
    let err = ring_k1().open(plain).unwrap_err();
    assert!(matches!(err, CryptoError::UnencryptedRefused), "{err:?}");
    assert_eq!(err.to_string(), "unencrypted message refused");
    let migrating = ring_k1().allow_plaintext(true);
    assert!(migrating.is_enabled());
    let opened = migrating.open(plain).unwrap();
    assert_eq!(
        (opened.plaintext.as_slice(), opened.key_id),
        (&plain[..], None)
    );
    assert!(migrating.seal(plain).starts_with(b"ivy1."), "still seals");

    // Allowing plaintext must not turn a broken sealed message into "plaintext".
    let data = decode(&migrating.seal(plain));
    let mut bad = data.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_rejected(
        &migrating,
        &encode(&bad),
        "tampered tag with plaintext allowed",
    );
    assert_rejected(&migrating, b"ivy1.", "bare prefix with plaintext allowed");
    assert_rejected(&migrating, b"ivy1.!!!", "bad base64 with plaintext allowed");
}

#[test]
fn debug_and_errors_never_show_key_bytes_or_plaintext() {
    let ring = Keyring::from_spec(&format!("k2:{K2_HEX},k1:{K1_B64}"))
        .unwrap()
        .allow_tasks("k2", &["billing.*"])
        .unwrap();
    #[cfg(feature = "legacy-ivy")]
    let ring = ring.with_legacy_password("legacy-secret-string");
    let debug = format!("{ring:?} {ring:#?}");
    assert!(debug.contains("k1") && debug.contains("k2"), "{debug}");
    for secret in [
        K1_HEX,
        K1_B64,
        K2_HEX,
        "legacy-secret-string",
        "0001020304",
        "AAECAwQF",
    ] {
        assert!(!debug.contains(secret), "leaks {secret}: {debug}");
    }
    // Derived keys would show up as long runs of numbers or hex.
    assert!(!debug.contains("[0") && !debug.contains(", 1"), "{debug}");
    assert!(format!("{ring:?}").len() < 120, "{debug}");

    let opened = ring.open(&ring.seal(b"top secret payload")).unwrap();
    let debug = format!("{opened:?} {opened:#?}");
    assert!(!debug.contains("top secret"), "{debug}");
    assert!(!debug.contains("116, 111, 112"), "plaintext bytes: {debug}");
    assert!(debug.contains("18 bytes"), "{debug}");
    assert!(debug.contains("k2"), "{debug}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let ring = ring_k1_k2();
        let sealed = ring.seal(&payload);
        prop_assert!(sealed.is_ascii());
        let opened = ring.open(&sealed).unwrap();
        prop_assert_eq!(opened.plaintext, payload);
        prop_assert_eq!(opened.key_id.as_deref(), Some("k1"));
    }

    #[test]
    fn arbitrary_bytes_never_panic(message in proptest::collection::vec(any::<u8>(), 0..512)) {
        #[allow(unused_mut)] // Only the `legacy-ivy` feature adds a ring.
        let mut rings = vec![Keyring::new(), ring_k1_k2(), ring_k1().allow_plaintext(true)];
        #[cfg(feature = "legacy-ivy")]
        rings.push(ring_k1().with_legacy_password("pw"));
        for ring in rings {
            let _ = ring.open(&message);
        }
        // Keys, no plaintext, no legacy: nothing arbitrary may be accepted.
        prop_assert!(ring_k1_k2().open(&message).is_err());
    }

    #[test]
    fn arbitrary_sealed_looking_messages_are_rejected(
        text in "[A-Za-z0-9_-]{0,300}",
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let ring = ring_k1_k2();
        let mut message = b"ivy1.".to_vec();
        message.extend_from_slice(text.as_bytes());
        prop_assert!(ring.open(&message).is_err());
        // Past the key lookup: a valid id followed by random IV, ciphertext and tag.
        let mut data = b"\x02k1".to_vec();
        data.extend_from_slice(&body);
        prop_assert!(ring.open(&encode(&data)).is_err());
        let mut legacy = b"$aes-256-cbc$".to_vec();
        legacy.extend_from_slice(text.as_bytes());
        prop_assert!(ring_k1().open(&legacy).is_err());
        #[cfg(feature = "legacy-ivy")]
        let _ = ring_k1().with_legacy_password("pw").open(&legacy);
    }
}

#[test]
fn the_binary_form_carries_the_text_forms_bytes() {
    let ring = ring_k1_k2();
    let binary = ring.seal_binary(SAMPLE);
    assert!(binary.starts_with(b"ivy1:"));
    assert_eq!(ring.open(&binary).unwrap().plaintext, SAMPLE);
    assert_eq!(ring.open(&binary).unwrap().key_id.as_deref(), Some("k1"));
    // Converted to the text form without any key, it still opens: same bytes, same tag.
    let text = encode(&binary[5..]);
    assert_eq!(ring.open(&text).unwrap().plaintext, SAMPLE);
    // And the other way round.
    let text = ring.seal(SAMPLE);
    let mut converted = b"ivy1:".to_vec();
    converted.extend_from_slice(&decode(&text));
    assert_eq!(ring.open(&converted).unwrap().plaintext, SAMPLE);
    // About three quarters of the text form's size.
    assert_eq!(binary.len() - 5, decode(&text).len());
    // Without keys it seals nothing, as `seal`.
    assert_eq!(Keyring::new().seal_binary(SAMPLE), SAMPLE);
}

#[test]
fn every_single_bit_flip_of_the_binary_form_is_rejected() {
    let ring = ring_k1_k2();
    let sealed = ring.seal_binary(SAMPLE);
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut bad = sealed.clone();
            bad[i] ^= 1 << bit;
            assert_rejected(&ring, &bad, &format!("binary byte {i} bit {bit}"));
        }
    }
    for len in 0..sealed.len() {
        assert_rejected(&ring, &sealed[..len], &format!("binary truncated to {len}"));
    }
}

proptest! {
    #[test]
    fn arbitrary_binary_messages_are_rejected(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut message = b"ivy1:".to_vec();
        message.extend_from_slice(&body);
        prop_assert!(ring_k1_k2().open(&message).is_err());
        let mut keyed = b"ivy1:\x02k1".to_vec();
        keyed.extend_from_slice(&body);
        prop_assert!(ring_k1_k2().open(&keyed).is_err());
        // Plaintext allowed does not make a broken binary message plaintext.
        prop_assert!(ring_k1_k2().allow_plaintext(true).open(&message).is_err());
    }
}
