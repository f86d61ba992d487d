//! The end-to-end check with encryption on: sealed calls and results, rotation, per-key task
//! permissions, and refusal of plain, foreign-key and tampered calls.

use std::time::Duration;

use serde_json::{json, Value};

use super::helpers::{call, echo, msg, next, step, unique, wait_dead_letters, Running};
use super::tasks::{marked, registry, Add, Boom, Echo, Mark, Slow};
use crate::broker::{Broker, Delivery, Notifier};
use crate::envelope::{new_task_id, Envelope, TaskFailure, PROTOCOL_VERSION};
use crate::task::Task;
use crate::{Error, Producer, Worker};

const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
const K3: &str = "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
const K9: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfefff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

pub(super) async fn encryption<B: Broker, N: Notifier>(b: B, n: N) {
    use crate::crypto::Keyring;
    let q = unique("crypt");
    let ring = |spec: &str| Keyring::from_spec(spec).expect("test keys");
    // The worker: k2 is current, k1 still opens; k3 may only call `add`.
    let worker_ring = ring(&format!("k2:{K2},k1:{K1},k3:{K3}"))
        .allow_tasks("k3", &[Add::NAME])
        .expect("pattern");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let w = Worker::with_registry(b.clone(), n.clone(), registry())
        .queues([q.clone()])
        .keyring(worker_ring);
    let worker = Running {
        stop,
        join: tokio::spawn(w.run(async {
            let _ = stopped.await;
        })),
    };

    // Results, progress and errors arrive through sealed messages.
    let p = Producer::new(b.clone(), n.clone()).with_keyring(ring(&format!("k2:{K2}")));
    let mut h = p
        .delayed_call(call::<Add>(&q, json!({"x": 20, "y": 22})))
        .await
        .expect("call");
    assert_eq!(step("sealed add", h.result()).await.expect("result"), 42);
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 90})))
        .await
        .expect("call");
    let progress: Vec<Value> = step(
        "sealed progress",
        futures_util::StreamExt::collect(h.progress()),
    )
    .await;
    assert_eq!(progress.last(), Some(&json!(3)));
    assert_eq!(
        step("sealed slow", h.result()).await.expect("result"),
        "done"
    );

    // What travels is sealed: a call parked on a queue nobody consumes shows no plaintext.
    let parked = unique("parked");
    p.send(call::<Echo>(&parked, json!({"value": "top secret"})))
        .await
        .expect("send");
    let mut c = b
        .consume(std::slice::from_ref(&parked), 1)
        .await
        .expect("consume");
    let d = next(&mut c, "parked call").await;
    assert!(
        d.body().starts_with(b"ivy1:"),
        "not sealed: {:?}",
        String::from_utf8_lossy(d.body())
    );
    assert!(!String::from_utf8_lossy(d.body()).contains("top secret"));
    d.ack().await.expect("ack");
    drop(c);

    // Rotation: a producer that only knows the old key k1 is still served.
    let old = Producer::new(b.clone(), n.clone()).with_keyring(ring(&format!("k1:{K1}")));
    let key = unique("rotated");
    old.send(call::<Mark>(&q, json!({ "key": key })))
        .await
        .expect("send under k1");
    step("call under the old key", async {
        while !marked(&key) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A retry is sealed too, and keeps its arguments.
    let mut h = p
        .delayed_call(call::<Boom>(&q, json!({"why": "sealed"})))
        .await
        .expect("call");
    assert!(matches!(
        step("sealed boom", h.result()).await,
        Err(Error::Task(_))
    ));
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert!(dead[0].body.starts_with(b"ivy1:"), "dead letter not sealed");
    let opened = ring(&format!("k2:{K2}"))
        .open(&dead[0].body)
        .expect("opens");
    let retried = Envelope::from_slice(&opened.plaintext).expect("envelope");
    assert_eq!(retried.attempt, 1);
    assert_eq!(Value::Object(retried.args), json!({"why": "sealed"}));

    // Permissions: k3 may call `add` but not `echo`.
    let limited =
        Producer::new(b.clone(), n.clone()).with_keyring(ring(&format!("k3:{K3},k2:{K2}")));
    let mut h = limited
        .delayed_call(call::<Add>(&q, json!({"x": 1, "y": 1})))
        .await
        .expect("call");
    assert_eq!(step("permitted", h.result()).await.expect("result"), 2);
    let mut h = limited
        .delayed_call(echo(&q, json!(1)))
        .await
        .expect("call");
    match step("forbidden", h.result()).await {
        Err(Error::Task(f)) => assert_eq!(f.kind, TaskFailure::FORBIDDEN, "{f}"),
        other => panic!("expected ivy.forbidden, got {other:?}"),
    }

    // Refused to the dead letters: a plain call published by hand, a call under an unknown key,
    // and a sealed call with one bit flipped.
    let plain = json!({"v": PROTOCOL_VERSION, "id": new_task_id(), "task": Add::NAME,
                       "args": {"x": 1, "y": 2}, "queue": q, "attempt": 0, "max_retries": 0,
                       "created_at": 0})
    .to_string()
    .into_bytes();
    let foreign = ring(&format!("k9:{K9}")).seal(&plain);
    let mut flipped = ring(&format!("k2:{K2}")).seal(&plain);
    let last = flipped.len() - 3;
    flipped[last] ^= 0x01;
    for body in [&plain, &foreign, &flipped] {
        b.publish(msg(&q, body)).await.expect("publish");
    }
    let dead = wait_dead_letters(&b, &q, 4).await; // 3 refused + the forbidden echo
    for body in [&plain, &foreign, &flipped] {
        let d = dead
            .iter()
            .find(|d| &d.body == body)
            .expect("refused message in the dead letters");
        assert!(
            d.reason.starts_with("refused by the keyring"),
            "{}",
            d.reason
        );
    }
    assert!(dead.iter().any(|d| d.reason.contains("may not call task")));
    let report = worker.stop().await;
    assert_eq!(report.refused, 4, "{report:?}");
}
