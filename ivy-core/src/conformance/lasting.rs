//! The end-to-end checks of issue 14 (cancellation that lasts, shared state, permanent errors,
//! unique calls), on a broker and a notifier together. [`broker`](super::broker) runs them with
//! the memory notifier, [`notifier`](super::notifier) with the memory broker; a crate with
//! both a broker and a notifier can run them on the pair.

use std::time::Duration;

use serde_json::json;

use super::helpers::{call, echo, spawn_configured, spawn_worker, step, unique};
use super::tasks::{marks, registry, until_marked, Probe, Refuses, Sleepy, Spin, Stateful};
use crate::broker::{Broker, Notifier};
use crate::cancel::CancelOutcome;
use crate::envelope::{new_task_id, TaskFailure};
use crate::task::Task;
use crate::{Error, Producer, TaskHandle, Worker};

/// The handle's result is the final error `ivy.cancelled`.
async fn assert_cancelled<T: Task>(h: &mut TaskHandle<T>, what: &str) {
    match step(what, h.result()).await {
        Err(Error::Task(f)) if f.kind == TaskFailure::CANCELLED => {}
        Err(e) => panic!("{what}: expected ivy.cancelled, got {e}"),
        Ok(_) => panic!("{what}: expected ivy.cancelled, got a result"),
    }
}

fn sleepy(q: &str, key: &str, ms: u64) -> crate::Call<Sleepy> {
    call::<Sleepy>(q, json!({ "key": key, "ms": ms }))
}

/// A call cancelled before a worker takes it is never run; its result is `ivy.cancelled`; it
/// is acked, not dead-lettered. Cancelling it again says so.
pub async fn cancel_before_start<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("cancel-early");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let key = unique("early");
    // Due in 2 s: the worker, running, learns of the cancel before the call is due.
    let mut h = p
        .delayed_call(sleepy(&q, &key, 10).countdown(Duration::from_secs(2)))
        .await
        .expect("call");
    assert_eq!(h.cancel().await.expect("cancel"), CancelOutcome::Cancelled);
    assert_eq!(
        p.cancel(h.id()).await.expect("cancel again"),
        CancelOutcome::AlreadyCancelled
    );
    assert_cancelled(&mut h, "cancelled before it started").await;
    // The handle resolved at once (the countdown had not run out); the worker's own verdict,
    // when the call comes due, is stored for anyone who asks by id.
    let mut later = Producer::new(b.clone(), n.clone())
        .handle::<Sleepy>(h.id().to_owned())
        .await
        .expect("a handle by id");
    assert_cancelled(&mut later, "dropped by the worker when due").await;
    assert_eq!(marks(&format!("started:{key}")), 0, "the call ran");
    let report = worker.stop().await;
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(b.take_dead_letters(&q, 10).await.expect("dead").is_empty());
}

/// Cancelling a call whose countdown has not run out resolves its handle at once (no worker
/// can have started it), not when the countdown ends.
pub async fn cancel_during_countdown<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("cancel-countdown");
    let p = Producer::new(b.clone(), n.clone());
    let key = unique("countdown");
    // Due in 10 minutes: far past the test's step limit.
    let mut h = p
        .delayed_call(sleepy(&q, &key, 10).countdown(Duration::from_secs(600)))
        .await
        .expect("call");
    assert_eq!(h.cancel().await.expect("cancel"), CancelOutcome::Cancelled);
    assert_cancelled(&mut h, "cancelled during its countdown").await;
    assert_eq!(
        p.cancel(h.id()).await.expect("cancel again"),
        CancelOutcome::AlreadyCancelled,
        "the cancellation is recorded for the worker that takes it later"
    );
}

/// A running async task is dropped within a second of the cancel; a running `blocking` task
/// sees the flag. Both end with `ivy.cancelled`.
pub async fn cancel_while_running<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("cancel-running");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());

    let key = unique("async");
    let mut h = p
        .delayed_call(sleepy(&q, &key, 60_000))
        .await
        .expect("call");
    until_marked(&format!("started:{key}"), 1, super::STEP, "the start").await;
    assert_eq!(h.cancel().await.expect("cancel"), CancelOutcome::Cancelled);
    let dropped = format!("dropped:{key}");
    until_marked(&dropped, 1, Duration::from_secs(1), "the future dropped").await;
    assert_cancelled(&mut h, "cancelled while running").await;
    assert_eq!(marks(&format!("finished:{key}")), 0);

    let key = unique("blocking");
    let mut h = p
        .delayed_call(call::<Spin>(&q, json!({ "key": key })))
        .await
        .expect("call");
    until_marked(&format!("started:{key}"), 1, super::STEP, "the start").await;
    assert_eq!(h.cancel().await.expect("cancel"), CancelOutcome::Cancelled);
    let saw = format!("saw-cancel:{key}");
    until_marked(&saw, 1, super::STEP, "the blocking task seeing the flag").await;
    assert_cancelled(&mut h, "blocking task cancelled").await;

    let report = worker.stop().await;
    assert_eq!(report.cancelled, 2, "{report:?}");
    assert_eq!(report.succeeded, 0, "{report:?}");
}

/// A call cancelled while no worker runs is dropped by the next worker to start: the
/// cancellation was kept by the notifier, not by a worker.
pub async fn cancel_while_no_worker<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("cancel-idle");
    let p = Producer::new(b.clone(), n.clone());
    let key = unique("idle");
    let mut h = p.delayed_call(sleepy(&q, &key, 10)).await.expect("call");
    let other = Producer::new(b.clone(), n.clone());
    assert_eq!(
        other.cancel(h.id()).await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    assert_cancelled(&mut h, "cancelled while no worker ran").await;
    // A call after it still runs.
    let mut after = p.delayed_call(echo(&q, json!(1))).await.expect("call");
    step("a call after it", after.result())
        .await
        .expect("result");
    let report = worker.stop().await;
    assert_eq!(marks(&format!("started:{key}")), 0, "the call ran");
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(report.succeeded, 1, "{report:?}");
}

/// Cancelling a call that finished records nothing and says so.
pub async fn cancel_finished<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("cancel-done");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let mut h = p.delayed_call(echo(&q, json!(1))).await.expect("call");
    step("result", h.result()).await.expect("result");
    assert_eq!(
        h.cancel().await.expect("cancel"),
        CancelOutcome::AlreadyFinished
    );
    // Asked of the notifier, by a producer that never saw the result.
    let other = Producer::new(b.clone(), n.clone());
    assert_eq!(
        other.cancel(h.id()).await.expect("cancel"),
        CancelOutcome::AlreadyFinished
    );
    assert!(!n.is_cancelled(h.id()).await.expect("is_cancelled"));
    // An id no call has (yet): recorded, for whatever call comes with it.
    let id = new_task_id();
    assert_eq!(other.cancel(&id).await.unwrap(), CancelOutcome::Cancelled);
    assert!(n.is_cancelled(&id).await.expect("is_cancelled"));
    let listed = n.cancellations().await.expect("cancellations");
    assert!(listed.iter().any(|(c, _)| *c == id), "{listed:?}");
    worker.stop().await;
}

/// A task's `State<T>` comes from the worker; a worker without it fails the call at once with
/// `ivy.missing_state`, dead-lettered without retries.
pub async fn state_injection<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("state");
    let worker = spawn_configured(
        Worker::with_registry(b.clone(), n.clone(), registry())
            .queues([q.clone()])
            .state(7u32)
            .state(Probe("from the worker".into())),
    );
    let p = Producer::new(b.clone(), n.clone());
    let mut h = p
        .delayed_call(call::<Stateful>(&q, json!({})))
        .await
        .expect("call");
    assert_eq!(
        step("state", h.result()).await.expect("result"),
        "from the worker"
    );
    worker.stop().await;

    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let mut h = p
        .delayed_call(call::<Stateful>(&q, json!({})))
        .await
        .expect("call");
    match step("no state", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::MISSING_STATE, "{f}");
            assert!(f.message.contains("Probe"), "{f}");
        }
        other => panic!("expected ivy.missing_state, got {other:?}"),
    }
    let dead = super::wait_dead_letters(&b, &q, 1).await;
    assert!(
        dead[0].reason.contains("missing_state"),
        "{}",
        dead[0].reason
    );
    let report = worker.stop().await;
    assert_eq!(report.retried, 0, "{report:?}");
    assert_eq!(report.failed, 1, "{report:?}");
}

/// A permanent error fails the call at once, though retries are left, and the call is
/// dead-lettered with the reason.
pub async fn permanent_errors<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("permanent");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let key = unique("refused");
    let mut h = p
        .delayed_call(call::<Refuses>(&q, json!({ "key": key })))
        .await
        .expect("call");
    match step("permanent", h.result()).await {
        Err(Error::Task(f)) => {
            assert!(f.permanent, "{f:?}");
            assert_eq!(f.message, "no such customer");
        }
        other => panic!("expected the permanent failure, got {other:?}"),
    }
    let dead = super::wait_dead_letters(&b, &q, 1).await;
    assert!(
        dead[0].reason.contains("failed permanently")
            && dead[0].reason.contains("no such customer"),
        "{}",
        dead[0].reason
    );
    let report = worker.stop().await;
    assert_eq!(marks(&key), 1, "run once");
    assert_eq!(report.retried, 0, "{report:?}");
    assert_eq!(report.failed, 1, "{report:?}");
}

/// A second call with the key of one made within its `unique_for` window is not published:
/// its handle is the first call's, and resolves to its result. The key is the caller's id,
/// or the task and its arguments.
pub async fn unique_calls<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("unique");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let window = Duration::from_secs(60);

    // By task and arguments, from this producer and from another one.
    let key = unique("once");
    let mut first = p
        .delayed_call(sleepy(&q, &key, 300).unique_for(window))
        .await
        .expect("call");
    let mut second = p
        .delayed_call(sleepy(&q, &key, 300).unique_for(window))
        .await
        .expect("duplicate");
    let other = Producer::new(b.clone(), n.clone());
    let mut third = other
        .delayed_call(sleepy(&q, &key, 300).unique_for(window))
        .await
        .expect("duplicate");
    assert_eq!(second.id(), first.id());
    assert_eq!(third.id(), first.id());
    let fired = other
        .send(sleepy(&q, &key, 300).unique_for(window))
        .await
        .expect("send");
    assert_eq!(fired, first.id());
    for h in [&mut first, &mut second, &mut third] {
        assert_eq!(
            step("unique", h.result()).await.expect("result"),
            "finished"
        );
    }

    // By the caller's id.
    let id = unique("order");
    let mut a = p
        .delayed_call(echo(&q, json!(1)).id(&id).unique_for(window))
        .await
        .expect("call");
    let mut dup = p
        .delayed_call(echo(&q, json!(2)).id(&id).unique_for(window))
        .await
        .expect("duplicate");
    assert_eq!((a.id(), dup.id()), (id.as_str(), id.as_str()));
    assert_eq!(
        step("by id", a.result()).await.expect("result"),
        json!({"value": 1})
    );
    assert_eq!(
        step("by id, duplicate", dup.result())
            .await
            .expect("result"),
        json!({"value": 1})
    );

    let report = worker.stop().await;
    assert_eq!(marks(&format!("started:{key}")), 1, "published once");
    assert_eq!(report.succeeded, 2, "one message per key: {report:?}");
}
