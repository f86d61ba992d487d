//! PROTOCOL.md's examples are what the code reads and writes, field for field.

use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Broker, Consumer, Delivery, Envelope, Notification, TaskFailure};
use serde_json::Value;

fn examples(kind: &str) -> Vec<Value> {
    let doc = include_str!("../PROTOCOL.md");
    let fence = format!("```json {kind}\n");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("closed code block");
        out.push(serde_json::from_str(&body[..end]).expect("example is JSON"));
        rest = &body[end..];
    }
    assert!(!out.is_empty(), "no `{kind}` examples in PROTOCOL.md");
    out
}

#[test]
fn envelope_examples_round_trip() {
    for ex in examples("envelope") {
        let env = Envelope::from_slice(ex.to_string().as_bytes()).expect("the code reads it");
        assert_eq!(
            serde_json::to_value(&env).unwrap(),
            ex,
            "the code writes it differently"
        );
    }
}

#[test]
fn notification_examples_round_trip() {
    for ex in examples("notification") {
        let n = Notification::from_slice(ex.to_string().as_bytes()).expect("the code reads it");
        assert_eq!(serde_json::to_value(&n).unwrap(), ex);
    }
}

#[test]
fn failure_examples_round_trip() {
    for ex in examples("failure") {
        let f: TaskFailure = serde_json::from_value(ex.clone()).expect("the code reads it");
        assert_eq!(serde_json::to_value(&f).unwrap(), ex);
    }
}

#[ivy::task(name = "testpackage.factorial")]
async fn factorial(n: u64) -> u64 {
    (1..=n).product()
}

/// What a real producer puts on the wire has exactly the documented fields.
#[tokio::test]
async fn producer_writes_the_documented_envelope() {
    let broker = MemoryBroker::new();
    let producer = ivy::Producer::new(broker.clone(), MemoryNotifier::new());
    let handle = producer.delayed_call(factorial::call(10)).await.unwrap();
    let mut c = broker.consume(&["default".into()], 1).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let written: Value = serde_json::from_slice(d.body()).unwrap();
    let documented = &examples("envelope")[0];
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&written), keys(documented));
    assert_eq!(written["id"], Value::String(handle.id().to_string()));
    assert_eq!(written["task"], "testpackage.factorial");
    assert_eq!(written["args"], serde_json::json!({"n": 10}));
    assert_eq!(
        written["reply_to"],
        Value::String(producer.channel().to_string())
    );
    d.ack().await.unwrap();
}

/// The sealed example in PROTOCOL.md §7 opens with the documented secret to the documented
/// plaintext, and is refused with one character changed.
#[test]
fn encryption_worked_example_opens() {
    let doc = include_str!("../PROTOCOL.md");
    let start = doc.find("```text sealed\n").expect("sealed example") + "```text sealed\n".len();
    let sealed = doc[start..].lines().next().unwrap().trim();
    let ring = ivy::Keyring::from_spec(
        "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    )
    .unwrap();
    let opened = ring.open(sealed.as_bytes()).expect("opens");
    assert_eq!(opened.plaintext, br#"{"task":"add","args":[2,3]}"#);
    assert_eq!(opened.key_id.as_deref(), Some("k1"));
    let mut tampered = sealed.as_bytes().to_vec();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert!(ring.open(&tampered).is_err());

    // The binary form of the same message opens to the same plaintext.
    let marker = "```text sealed-binary-hex\n";
    let start = doc.find(marker).expect("binary example") + marker.len();
    let hex: String = doc[start..]
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let binary: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert!(binary.starts_with(b"ivy1:"));
    let opened = ring.open(&binary).expect("binary form opens");
    assert_eq!(opened.plaintext, br#"{"task":"add","args":[2,3]}"#);
}
