//! The worker with a keyring of several keys over the in-memory broker: which key a call sent
//! on (a retry, a call passed on with its outcome) is sealed under, and whose outcomes a worker
//! accepts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tests::{call, start_with_keys};
use crate::broker::{Broker, OutgoingMessage, Results};
use crate::crypto::Keyring;
use crate::envelope::{Envelope, Outcome, TaskFailure};
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{Registry, Task, TaskOptions};

/// The worker's own key (current, so notifications are sealed with it).
const W: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// A producer's key.
const P: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

/// How many times [`FailsOnce`] ran.
static FAILS_ONCE_RUNS: AtomicU32 = AtomicU32::new(0);

/// Fails its first run, succeeds from then on; retried once after 10 ms.
struct FailsOnce;
impl Task for FailsOnce {
    const NAME: &'static str = "ivy.key-test.fails-once";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(1)
        .with_retry_backoff(Duration::from_millis(10));
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        if FAILS_ONCE_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(TaskFailure::new("test::FailsOnce", "first run"));
        }
        Ok(json!("second time lucky"))
    }
}

/// The worker's keyring: its own key `w` (current) may call only `other.*`; `p` is a
/// producer's key that may call anything.
fn worker_ring() -> Keyring {
    Keyring::from_spec(&format!("w:{W},p:{P}"))
        .unwrap()
        .allow_tasks("w", &["other.*"])
        .unwrap()
}

/// Publishes `env` sealed under the key `key_id` of `ring`.
async fn publish_sealed(broker: &MemoryBroker, ring: &Keyring, key_id: &str, env: &Envelope) {
    let body = ring.reseal_binary(Some(key_id), &env.to_bytes());
    broker
        .publish(OutgoingMessage::new(env.id.clone(), "q", body))
        .await
        .expect("publish");
}

/// A call sent under the producer's key `p` fails once: its retry is sealed under `p` again,
/// not under the worker's current key `w`, which may not call the task. (Sealed under `w`, the
/// retry was refused as `ivy.forbidden`.)
#[tokio::test]
async fn a_retry_is_sealed_under_the_key_that_sent_the_call() {
    let broker = MemoryBroker::new();
    let ring = worker_ring();
    let worker = start_with_keys(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<FailsOnce>().unwrap(),
        ring.clone(),
    );
    let env = call(FailsOnce::NAME);
    publish_sealed(&broker, &ring, "p", &env).await;
    let result = worker.stored_result(&env.id).await;
    assert_eq!(result, Outcome::Ok(json!("second time lucky")));
    let report = worker.report().await;
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    assert_eq!(FAILS_ONCE_RUNS.load(Ordering::SeqCst), 2);
}

/// Counts its runs; must not run in these tests.
static NOT_RUN_RUNS: AtomicU32 = AtomicU32::new(0);

struct NotRun;
impl Task for NotRun {
    const NAME: &'static str = "ivy.key-test.not-run";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        NOT_RUN_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(json!("ran"))
    }
}

/// Waits until `queue` holds `n` dead letters (at most 30 s).
async fn dead_letters(broker: &MemoryBroker, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.depth("q").dead < n {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An outcome passed on with a call is a result: from a key that may not send results (a
/// producer's) it is refused and dead-lettered, nothing is stored and the task does not run.
/// From a key that may, it is delivered even though that key may not call the task. (Before,
/// any key that might call the task could have its outcome delivered as the worker's result.)
#[tokio::test]
async fn an_outcome_is_accepted_only_from_a_key_that_may_send_results() {
    let broker = MemoryBroker::new();
    let ring = worker_ring().allow_results("p", false).unwrap();
    let worker = start_with_keys(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<NotRun>().unwrap(),
        ring.clone(),
    );
    let forged = call(NotRun::NAME).with_outcome(Outcome::Ok(json!("forged")));
    publish_sealed(&broker, &ring, "p", &forged).await;
    dead_letters(&broker, 1).await;
    assert!(
        worker.notifier.fetch(&forged.id).await.unwrap().is_none(),
        "no result stored"
    );
    let passed_on = call(NotRun::NAME).with_outcome(Outcome::Ok(json!("passed on")));
    publish_sealed(&broker, &ring, "w", &passed_on).await;
    let result = worker.stored_result(&passed_on.id).await;
    assert_eq!(result, Outcome::Ok(json!("passed on")));
    let report = worker.report().await;
    assert_eq!(report.refused, 1, "{report:?}");
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(
        NOT_RUN_RUNS.load(Ordering::SeqCst),
        0,
        "the task did not run"
    );
}

/// A call passed on with its outcome is sealed under the key that sent it when that key may
/// send results, under the worker's current key otherwise (so the next worker accepts it).
#[test]
fn a_call_passed_on_is_sealed_under_a_key_that_may_send_results() {
    let ring = worker_ring().allow_results("p", false).unwrap();
    let shared = super::Shared::new(
        MemoryBroker::new(),
        MemoryNotifier::new(),
        Registry::new(),
        ring.clone(),
    );
    let key_of = |body: Vec<u8>| ring.open(&body).unwrap().key_id;
    assert_eq!(
        key_of(shared.seal_passed_on(Some("p"), b"{}".to_vec())).as_deref(),
        Some("w")
    );
    let ring_p_results = worker_ring();
    let shared = super::Shared {
        keyring: std::sync::Arc::new(ring_p_results),
        ..shared
    };
    assert_eq!(
        key_of(shared.seal_passed_on(Some("p"), b"{}".to_vec())).as_deref(),
        Some("p")
    );
}
