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

#[test]
fn event_and_worker_examples_round_trip() {
    let mut progress = 0;
    for ex in examples("event") {
        let e = ivy::events::TaskEvent::from_slice(ex.to_string().as_bytes())
            .expect("the code reads it");
        assert_eq!(serde_json::to_value(&e).unwrap(), ex);
        if e.event == ivy::events::EventKind::Progress {
            assert_eq!(e.progress.as_ref(), ex.get("progress"));
            progress += 1;
        }
    }
    assert_eq!(progress, 1, "one `progress` event example in §8");
    for ex in examples("worker") {
        let w = ivy::events::WorkerInfo::from_slice(ex.to_string().as_bytes())
            .expect("the code reads it");
        assert_eq!(serde_json::to_value(&w).unwrap(), ex);
    }
}

#[test]
fn cancel_examples_round_trip() {
    for ex in examples("cancel") {
        let c = ivy::cancel::CancelNote::from_slice(ex.to_string().as_bytes())
            .expect("the code reads it");
        assert_eq!(serde_json::to_value(&c).unwrap(), ex);
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

/// PROTOCOL.md §7's OpenSSL reproduction, run with POSIX `sh` (dash on Debian), prints the
/// documented ciphertext and tag.
#[test]
fn openssl_reproduction_runs_in_posix_sh() {
    let doc = include_str!("../PROTOCOL.md");
    let start = doc.find("```sh\n").expect("the OpenSSL block") + "```sh\n".len();
    let script = &doc[start..start + doc[start..].find("```").unwrap()];
    let example = &doc[doc.find("### Worked example").expect("§7's worked example")..];
    let value = |name: &str| -> &str {
        example
            .lines()
            .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
            .unwrap_or_else(|| panic!("`{name}` in the worked example"))
            .trim()
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh and openssl (apt-get install openssl xxd)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], value("ciphertext"));
    assert!(
        lines[1].ends_with(&format!("= {}", value("tag"))),
        "the HMAC printed by sh is {}, the document says {}",
        lines[1],
        value("tag")
    );
}

/// The default size limits in PROTOCOL.md §2's table.
fn documented_limit(row: &str) -> usize {
    let doc = include_str!("../PROTOCOL.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with(&format!("| {row} |")))
        .unwrap_or_else(|| panic!("no size-limit row `{row}`"));
    let cell = line.split('|').nth(2).unwrap().trim();
    let digits: String = cell
        .split_whitespace()
        .next()
        .unwrap()
        .chars()
        .filter(|c| *c != ',')
        .collect();
    digits.parse().expect("a number of bytes")
}

#[test]
fn default_size_limits_are_documented() {
    let worker = ivy::Worker::new(MemoryBroker::new(), MemoryNotifier::new()).unwrap();
    assert_eq!(
        worker.config().max_message_size,
        documented_limit("what a worker reads")
    );
    assert_eq!(
        MemoryBroker::new().capabilities().max_message_size,
        documented_limit("the memory broker")
    );
    assert_eq!(
        MemoryBroker::new().capabilities().default_message_limit(),
        documented_limit("what a producer sends")
    );
}

/// Whether `text` fits `template`, where each `{…}` stands for any non-empty text.
fn fits(template: &str, text: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        literals.push(&rest[..open]);
        rest = &rest[open + rest[open..].find('}').expect("closed placeholder") + 1..];
    }
    literals.push(rest);
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    let Some(mut text) = text.strip_prefix(first) else {
        return false;
    };
    if literals.len() == 1 {
        return text.is_empty();
    }
    for literal in &literals[1..literals.len() - 1] {
        // Each placeholder takes at least one character.
        match text.get(1..).and_then(|t| t.find(literal)) {
            Some(at) => text = &text[1 + at + literal.len()..],
            None => return false,
        }
    }
    text.len() > last.len() && text.ends_with(last)
}

#[ivy::task(name = "protocol.always_fails")]
async fn always_fails() -> Result<u64, std::io::Error> {
    Err(std::io::Error::other("out of luck"))
}

#[ivy::task(name = "protocol.refuses")]
async fn refuses() -> Result<u64, ivy::Permanent> {
    Err(ivy::Permanent::new("no such customer"))
}

/// Runs a worker on `broker` until it has dead-lettered `n` messages; returns their reasons.
async fn dead_letter_reasons(
    broker: MemoryBroker,
    keyring: Option<ivy::Keyring>,
    n: usize,
) -> Vec<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut worker = ivy::Worker::new(broker.clone(), MemoryNotifier::new())
        .unwrap()
        .max_message_size(1000);
    if let Some(ring) = keyring {
        worker = worker.keyring(ring);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let running = tokio::spawn(worker.run(async move {
        while !stopped.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut reasons = Vec::new();
    while reasons.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {reasons:?} dead-lettered"
        );
        let letters = broker.take_dead_letters("default", n).await.unwrap();
        reasons.extend(letters.into_iter().map(|l| l.reason));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    running.await.unwrap().unwrap();
    reasons
}

async fn send(broker: &MemoryBroker, body: impl Into<Vec<u8>>) {
    let msg = ivy::OutgoingMessage::new("reason-test", "default", body.into());
    broker.publish(msg).await.unwrap();
}

/// Every reason a worker writes fits one of PROTOCOL.md §6's templates, and every template
/// but the one that cannot happen is met.
#[tokio::test]
async fn dead_letter_reasons_are_the_documented_ones() {
    let doc = include_str!("../PROTOCOL.md");
    let start = doc.find("```text reasons\n").expect("§6's reasons") + "```text reasons\n".len();
    let templates: Vec<&str> = doc[start..start + doc[start..].find("```").unwrap()]
        .lines()
        .collect();
    let call = |task: &str, extra: &str| {
        format!(r#"{{"v":1,"id":"r1","task":"{task}","args":{{}},"created_at":0{extra}}}"#)
    };

    let plain = MemoryBroker::new();
    send(&plain, vec![b' '; 2000]).await;
    send(&plain, "not json").await;
    send(&plain, call("x", "").replace(r#""v":1"#, r#""v":2"#)).await;
    send(&plain, call("x", "").replace(r#""id":"r1""#, r#""id":"""#)).await;
    send(&plain, call("testpackage.factorial", r#","expires":1"#)).await;
    send(&plain, call("no.such.task", "")).await;
    send(&plain, call("testpackage.factorial", "")).await;
    send(&plain, call("protocol.always_fails", r#","max_retries":0"#)).await;
    send(&plain, call("protocol.refuses", "")).await;
    let mut reasons = dead_letter_reasons(plain, None, 9).await;

    let ring = ivy::Keyring::from_spec(
        "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    )
    .unwrap()
    .allow_tasks("k1", &["other.*"])
    .unwrap()
    .allow_results("k1", false)
    .unwrap();
    let sealed = MemoryBroker::new();
    send(&sealed, call("testpackage.factorial", "")).await;
    send(
        &sealed,
        ring.seal(call("testpackage.factorial", "").as_bytes()),
    )
    .await;
    let passed_on = call("testpackage.factorial", r#","outcome":{"ok":1}"#);
    send(&sealed, ring.seal(passed_on.as_bytes())).await;
    reasons.extend(dead_letter_reasons(sealed, Some(ring), 3).await);

    for reason in &reasons {
        assert!(
            templates.iter().any(|t| fits(t, reason)),
            "reason `{reason}` is not in PROTOCOL.md §6"
        );
    }
    for template in &templates[..templates.len() - 1] {
        assert!(
            reasons.iter().any(|r| fits(template, r)),
            "no reason fits `{template}`: {reasons:#?}"
        );
    }
    assert!(templates.last().unwrap().starts_with("could not re-read"));
}

#[test]
fn templates_fit_what_they_should() {
    assert!(fits("unknown task `{task}`", "unknown task `a.b`"));
    assert!(!fits("unknown task `{task}`", "unknown task ``"));
    assert!(!fits("unknown task `{task}`", "unknown task `a` and more"));
    assert!(fits("task {t} ({id}) expired", "task a (1) expired"));
    assert!(!fits("task {t} ({id}) expired", "task a expired"));
    assert!(fits("plain", "plain"));
    assert!(!fits("plain", "plain!"));
}
