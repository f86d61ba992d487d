//! The end-to-end checks: a producer and a worker on the backend under test (the other trait
//! from memory) keep the promises made to users: results, progress, retries, dead letters,
//! poison messages, a crashed worker and graceful shutdown.

use std::time::Duration;

use serde_json::{json, Value};

use super::helpers::{
    call, msg, spawn_configured, spawn_worker, step, unique, until_running, wait_dead_letters,
};
use super::tasks::{marked, registry, Add, Boom, Echo, Mark, Panics, Slow};
use crate::broker::{Broker, Notifier};
use crate::envelope::{new_task_id, Envelope, Status, TaskFailure, PROTOCOL_VERSION};
use crate::task::Task;
use crate::{Error, Producer, Worker};

pub(super) async fn end_to_end<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("e2e");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());

    // A typed result.
    let mut h = p
        .delayed_call(call::<Add>(&q, json!({"x": 2, "y": 40})))
        .await
        .expect("call");
    assert_eq!(step("add", h.result()).await.expect("result"), 42);
    assert_eq!(h.status(), Status::Done);

    // Many at once, each result to its own handle.
    let mut handles = Vec::new();
    for i in 0..50u64 {
        handles.push((
            i,
            p.delayed_call(call::<Add>(&q, json!({"x": i, "y": 1})))
                .await
                .expect("call"),
        ));
    }
    for (i, mut h) in handles {
        assert_eq!(step("batch", h.result()).await.expect("result"), i + 1);
    }

    // Progress, in order, then the result.
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 300})))
        .await
        .expect("call");
    let progress: Vec<Value> =
        step("progress", futures_util::StreamExt::collect(h.progress())).await;
    assert!(!progress.is_empty(), "no progress arrived");
    assert!(
        progress.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()),
        "{progress:?}"
    );
    assert_eq!(progress.last(), Some(&json!(3)));
    assert_eq!(step("slow", h.result()).await.expect("result"), "done");

    // A task error arrives structured, after its retry, and the call is dead-lettered.
    let mut h = p
        .delayed_call(call::<Boom>(&q, json!({"why": "testing"})))
        .await
        .expect("call");
    match step("boom", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, "conformance::Boom");
            assert_eq!(f.message, "boom");
            assert_eq!(f.chain, vec!["the fuse was lit".to_string()]);
        }
        other => panic!("expected the task's error, got {other:?}"),
    }
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert!(
        dead[0].reason.contains("failed after 2 attempt(s)"),
        "{}",
        dead[0].reason
    );
    // The retry carried the arguments along (the first attempt consumed its copy).
    let retried = Envelope::from_slice(&dead[0].body).expect("envelope");
    assert_eq!(retried.attempt, 1);
    assert_eq!(Value::Object(retried.args), json!({"why": "testing"}));

    // A panic is caught and reported.
    let mut h = p
        .delayed_call(call::<Panics>(&q, json!({})))
        .await
        .expect("call");
    match step("panic", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::PANIC);
            assert!(f.message.contains("lost its mind"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    wait_dead_letters(&b, &q, 1).await;

    // result_or and result_timeout.
    let v = p
        .delayed_call(call::<Boom>(&q, json!({})).max_retries(0))
        .await
        .expect("call")
        .result_or(())
        .await;
    assert_eq!(v, ());
    wait_dead_letters(&b, &q, 1).await;
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 3000})))
        .await
        .expect("call");
    assert!(matches!(
        h.result_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout(_))
    ));
    assert_eq!(
        step("slow after timeout", h.result())
            .await
            .expect("result"),
        "done"
    );

    // Fire and forget: the task runs, nothing is kept.
    let key = unique("mark");
    let id = p
        .send(call::<Mark>(&q, json!({ "key": key })))
        .await
        .expect("send");
    step("fire-and-forget call to run", async {
        while !marked(&key) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let report = worker.stop().await;
    assert_eq!(report.succeeded, 54, "{report:?}");
    assert_eq!(report.failed, 3, "{report:?}");
    assert_eq!(n.fetch(&id).await.expect("fetch"), None);
}

pub(super) async fn poison_messages<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("poison");
    // A worker limit below every broker's, so an oversized body can reach it.
    let worker = spawn_configured(
        Worker::with_registry(b.clone(), n.clone(), registry())
            .queues([q.clone()])
            .max_message_size(16 * 1024),
    );
    let envelope = |task: &str, args: Value| {
        json!({"v": PROTOCOL_VERSION, "id": new_task_id(), "task": task, "args": args,
               "queue": q, "attempt": 0, "max_retries": 3, "created_at": 0})
        .to_string()
        .into_bytes()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not an Ivy envelope"),
        (b"[1, 2, 3]".to_vec(), "not an Ivy envelope"),
        // A valid call's fields in order: a call is an object, never run from an array.
        (
            json!([PROTOCOL_VERSION, new_task_id(), Add::NAME, {"x": 1, "y": 2}, q, 0, 3, 0])
                .to_string()
                .into_bytes(),
            "expected a call envelope, a JSON object",
        ),
        (
            envelope("no.such.task", json!({})),
            "unknown task `no.such.task`",
        ),
        (
            envelope(Add::NAME, json!({"x": "two", "y": 1})),
            "argument `x`",
        ),
        (envelope(Add::NAME, json!({"x": 1})), "missing argument `y`"),
        (
            envelope(Echo::NAME, json!({"blob": "x".repeat(32 * 1024)})),
            "exceeds the worker's limit of 16384 bytes",
        ),
        (
            json!({"v": 99, "id": "x", "task": "t", "args": {}, "queue": q, "attempt": 0,
                   "max_retries": 0, "created_at": 0})
            .to_string()
            .into_bytes(),
            "protocol version 99",
        ),
    ];
    for (body, _) in &cases {
        b.publish(msg(&q, body)).await.expect("publish poison");
    }
    let mut dead = wait_dead_letters(&b, &q, cases.len()).await;
    for (body, reason) in &cases {
        let i = dead
            .iter()
            .position(|d| &d.body == body)
            .unwrap_or_else(|| {
                panic!(
                    "poison message not dead-lettered: {}",
                    String::from_utf8_lossy(body)
                )
            });
        let d = dead.remove(i);
        assert!(
            d.reason.contains(reason),
            "reason {:?} lacks {reason:?}",
            d.reason
        );
    }
    // The worker is still consuming.
    let p = Producer::new(b.clone(), n.clone());
    let mut h = p
        .delayed_call(call::<Add>(&q, json!({"x": 1, "y": 2})))
        .await
        .expect("call");
    assert_eq!(step("after poison", h.result()).await.expect("result"), 3);
    let report = worker.stop().await;
    assert_eq!(report.dead_lettered, cases.len() as u64, "{report:?}");
}

pub(super) async fn worker_killed_mid_task<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("killed");
    let first = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 1500})))
        .await
        .expect("call");
    until_running(&h, "task to start").await;
    // Kill: the worker future is dropped mid-task, as in a crash (no graceful shutdown).
    first.join.abort();
    let _ = first.join.await;
    let second = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    assert_eq!(
        step("redelivered task", h.result()).await.expect("result"),
        "done"
    );
    let report = second.stop().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
}

pub(super) async fn graceful_shutdown<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("graceful");
    let p = Producer::new(b.clone(), n.clone());
    // Finishes within the grace period.
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(10));
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 600})))
        .await
        .expect("call");
    until_running(&h, "start").await;
    let report = worker.stop().await;
    assert_eq!(
        report.succeeded, 1,
        "the running task did not finish: {report:?}"
    );
    assert_eq!(step("result", h.result()).await.expect("result"), "done");

    // Does not finish within the grace period: returned to the broker, completed later.
    let worker = spawn_worker(&b, &n, &q, Duration::from_millis(200));
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 3000})))
        .await
        .expect("call");
    until_running(&h, "start").await;
    let report = worker.stop().await;
    assert_eq!(report.returned, 1, "{report:?}");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(10));
    assert_eq!(
        step("result after return", h.result())
            .await
            .expect("result"),
        "done"
    );
    worker.stop().await;
}
