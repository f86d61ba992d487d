//! The worker over the in-memory broker: what it does with a finished task's outcome when the
//! notifier cannot take it, and what its report counts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Worker, WorkerReport};
use crate::broker::{Broker, Notifier, OutgoingMessage, Results};
use crate::crypto::Keyring;
use crate::envelope::{new_task_id, now_ms, Envelope, Notification, Outcome, TaskFailure};
use crate::error::Result;
use crate::faults::{Faults, FaultyNotifier};
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{Registry, Task, TaskOptions};

/// A notifier whose first `failures` final publishes fail; its faults count them all.
pub(super) type Flaky = FaultyNotifier<MemoryNotifier>;

pub(super) fn flaky(failures: u32) -> Flaky {
    let faults = Faults::new();
    faults.fail_first("publish_final", failures);
    FaultyNotifier::new(MemoryNotifier::new(), faults)
}

/// How many times [`Counted`] ran.
static COUNTED_RUNS: AtomicU32 = AtomicU32::new(0);

/// Counts its runs (a side effect that must not repeat) and returns `"done"`.
struct Counted;
impl Task for Counted {
    const NAME: &'static str = "ivy.worker-test.counted";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        COUNTED_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(json!("done"))
    }
}

/// Returns `"ok"`.
pub(super) struct Fine;
impl Task for Fine {
    const NAME: &'static str = "ivy.worker-test.fine";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        Ok(json!("ok"))
    }
}

/// Always fails; retried once after 10 ms.
pub(super) struct Fails;
impl Task for Fails {
    const NAME: &'static str = "ivy.worker-test.fails";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(1)
        .with_retry_backoff(Duration::from_millis(10));
    type Output = ();
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        Err(TaskFailure::new("test::Fails", "always"))
    }
}

/// A worker running in the background over the memory broker, on queue `q`.
pub(super) struct Running<N> {
    stop: oneshot::Sender<()>,
    join: JoinHandle<Result<WorkerReport>>,
    pub(super) notifier: N,
    /// Opens what the worker stored (an empty ring passes plaintext through).
    ring: Keyring,
}

impl<N: Notifier> Running<N> {
    pub(super) async fn report(self) -> WorkerReport {
        let _ = self.stop.send(());
        self.join.await.expect("worker joined").expect("worker ran")
    }

    /// Polls the stored outcome of `id` until it is there (at most 10 min, virtual time in
    /// the tests that pause the clock).
    pub(super) async fn stored_result(&self, id: &str) -> Outcome {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(bytes) = self.notifier.fetch(id).await.expect("fetch") {
                let opened = self
                    .ring
                    .open(&bytes)
                    .expect("a result sealed by the worker");
                match Notification::from_slice(&opened.plaintext).expect("a notification") {
                    Notification::Result { outcome, .. } => return outcome,
                    other => panic!("not a result: {other:?}"),
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no result stored for {id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn start<N: Notifier>(broker: &MemoryBroker, notifier: N, registry: Registry) -> Running<N> {
    start_with_keys(broker, notifier, registry, Keyring::new())
}

/// [`start`] with payload encryption under `ring`.
pub(super) fn start_with_keys<N: Notifier>(
    broker: &MemoryBroker,
    notifier: N,
    registry: Registry,
    ring: Keyring,
) -> Running<N> {
    let (stop, stopped) = oneshot::channel();
    let worker = Worker::with_registry(broker.clone(), notifier.clone(), registry)
        .keyring(ring.clone())
        .queues(["q"])
        .concurrency(2);
    let join = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running {
        stop,
        join,
        notifier,
        ring,
    }
}

pub(super) async fn publish(broker: &MemoryBroker, env: &Envelope) {
    broker
        .publish(OutgoingMessage::new(env.id.clone(), "q", env.to_bytes()))
        .await
        .expect("publish");
}

pub(super) fn call(task: &str) -> Envelope {
    Envelope::new(new_task_id(), task, Map::new(), now_ms())
        .with_queue("q")
        .with_reply_to("ivy.reply.test")
}

/// A notifier down for far longer than the old 2 s of patience: the task still runs once, its
/// delivery is held meanwhile, and the result is stored when the notifier is back. A worker
/// that acked without storing would leave no result; one that returned the call would run the
/// task again.
#[tokio::test(start_paused = true)]
async fn a_finished_task_runs_once_while_its_result_cannot_be_stored() {
    let broker = MemoryBroker::new();
    let notifier = flaky(12);
    let calls = notifier.faults.clone();
    let worker = start(
        &broker,
        notifier,
        Registry::new().register::<Counted>().unwrap(),
    );
    let env = call(Counted::NAME);
    publish(&broker, &env).await;

    let result = worker.stored_result(&env.id).await;
    assert_eq!(result, Outcome::Ok(json!("done")));
    assert_eq!(
        calls.count("publish_final"),
        13,
        "12 failed hand-offs, then one stored"
    );
    assert_eq!(COUNTED_RUNS.load(Ordering::SeqCst), 1, "the task ran once");
    let report = worker.report().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(report.returned, 0, "{report:?}");
    let depth = broker.depth("q");
    assert_eq!(depth.ready + depth.delayed + depth.unacked, 0, "{depth:?}");
}

/// How many times [`PassedOn`] ran.
static PASSED_ON_RUNS: AtomicU32 = AtomicU32::new(0);

/// Counts its runs and returns `"done"`.
struct PassedOn;
impl Task for PassedOn {
    const NAME: &'static str = "ivy.worker-test.passed-on";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        PASSED_ON_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(json!("done"))
    }
}

/// A worker stopped while its notifier refuses a finished task's result passes the call on
/// with the outcome: the next worker delivers the result without running the task again.
#[tokio::test(start_paused = true)]
async fn a_worker_stopping_with_a_result_not_stored_passes_the_outcome_on() {
    let broker = MemoryBroker::new();
    let registry = || Registry::new().register::<PassedOn>().unwrap();
    let down = flaky(u32::MAX);
    let (calls, store) = (down.faults.clone(), down.inner.clone());
    let first = start(&broker, down, registry());
    let env = call(PassedOn::NAME);
    publish(&broker, &env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while calls.count("publish_final") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no hand-off tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = first.report().await;
    assert_eq!(report.returned, 1, "{report:?}");
    assert_eq!(report.succeeded, 0, "{report:?}");
    assert_eq!(broker.depth("q").ready, 1, "the call is passed on");

    let second = start(&broker, store, registry());
    assert_eq!(
        second.stored_result(&env.id).await,
        Outcome::Ok(json!("done"))
    );
    let report = second.report().await;
    assert_eq!(
        PASSED_ON_RUNS.load(Ordering::SeqCst),
        1,
        "the task ran once"
    );
    assert_eq!(report.succeeded, 1, "{report:?}");
    let depth = broker.depth("q");
    assert_eq!(depth.ready + depth.delayed + depth.unacked, 0, "{depth:?}");
}

/// How many times [`LongOutage`] ran.
static LONG_OUTAGE_RUNS: AtomicU32 = AtomicU32::new(0);

/// Counts its runs and returns `"done"`.
struct LongOutage;
impl Task for LongOutage {
    const NAME: &'static str = "ivy.worker-test.long-outage";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        LONG_OUTAGE_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(json!("done"))
    }
}

/// A notifier down for longer than a broker lets a delivery stay unsettled (RabbitMQ's
/// `consumer_timeout`, 30 min by default): the worker does not hold the call for that long but
/// passes it on with its outcome, so the task still runs once.
#[tokio::test(start_paused = true)]
async fn a_call_held_too_long_is_passed_on_with_its_outcome() {
    let broker = MemoryBroker::new();
    // 200 failed tries: more than half an hour with pauses of 10 to 20 s.
    let worker = start(
        &broker,
        flaky(200),
        Registry::new().register::<LongOutage>().unwrap(),
    );
    let env = call(LongOutage::NAME);
    publish(&broker, &env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4 * 3600);
    let result = loop {
        if let Some(bytes) = worker.notifier.fetch(&env.id).await.unwrap() {
            break Notification::from_slice(&bytes).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no result stored");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        matches!(
            result,
            Notification::Result {
                outcome: Outcome::Ok(_),
                ..
            }
        ),
        "{result:?}"
    );
    let report = worker.report().await;
    assert_eq!(
        LONG_OUTAGE_RUNS.load(Ordering::SeqCst),
        1,
        "the task ran once"
    );
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert!(report.returned >= 1, "the call was passed on: {report:?}");
}

/// A call passed on with the final error of a task that failed for good: the worker delivers
/// the error and dead-letters the call, without running (or retrying) the task.
#[tokio::test]
async fn a_call_passed_on_with_a_final_error_is_delivered_and_dead_lettered() {
    let broker = MemoryBroker::new();
    let worker = start(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<Fails>().unwrap(),
    );
    let failure = TaskFailure::new("test::Fails", "always");
    let env = call(Fails::NAME).with_outcome(Outcome::Err(failure.clone()));
    publish(&broker, &env).await;
    assert_eq!(worker.stored_result(&env.id).await, Outcome::Err(failure));
    let report = worker.report().await;
    assert_eq!(report.retried, 0, "the task did not run: {report:?}");
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(broker.depth("q").dead, 1);
}

/// A call that arrives before its eta is put back until then: that is not a retry.
#[tokio::test]
async fn an_early_call_put_back_until_its_eta_is_not_a_retry() {
    let broker = MemoryBroker::new();
    let worker = start(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<Fine>().unwrap(),
    );
    let env = call(Fine::NAME).with_eta(now_ms() + 300);
    publish(&broker, &env).await;
    let result = worker.stored_result(&env.id).await;
    assert_eq!(result, Outcome::Ok(json!("ok")));
    let report = worker.report().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(report.retried, 0, "{report:?}");
    assert_eq!(report.delayed, 1, "{report:?}");
}

/// A call that failed for good is dead-lettered, and counted as such as well as failed.
#[tokio::test]
async fn a_call_that_failed_for_good_counts_as_failed_and_dead_lettered() {
    let broker = MemoryBroker::new();
    let worker = start(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<Fails>().unwrap(),
    );
    let env = call(Fails::NAME);
    publish(&broker, &env).await;
    let result = worker.stored_result(&env.id).await;
    assert!(matches!(result, Outcome::Err(_)), "{result:?}");
    let report = worker.report().await;
    assert_eq!(broker.depth("q").dead, 1);
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.dead_lettered, 1, "{report:?}");
}

/// A call whose retry no longer fits the queue (here, a body at the broker's limit, to which
/// the retry adds `"attempt":1`) ends with a final failure its caller gets, and is
/// dead-lettered with the reason; it is not counted as retried (it was returned to the broker
/// and ran again and again).
#[tokio::test(start_paused = true)]
async fn a_retry_that_does_not_fit_ends_the_call() {
    let env = call(Fails::NAME);
    let broker = MemoryBroker::with_max_message_size(env.to_bytes().len());
    let worker = start(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<Fails>().unwrap(),
    );
    publish(&broker, &env).await;
    match worker.stored_result(&env.id).await {
        Outcome::Err(f) => {
            assert_eq!(f.kind, TaskFailure::TOO_LARGE, "{f:?}");
            assert!(f.message.contains("always"), "the attempt's error: {f:?}");
        }
        other => panic!("{other:?}"),
    }
    let report = worker.report().await;
    assert_eq!((report.retried, report.failed), (0, 1), "{report:?}");
    let dead = broker.take_dead_letters("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("more than the queue takes"),
        "{}",
        dead[0].reason
    );
}

/// A call whose wire `attempt` is `u32::MAX` (nothing stops a sender writing it) fails for good
/// without overflowing the attempt count (a panic in debug builds, redelivered again and again).
#[tokio::test(start_paused = true)]
async fn an_attempt_of_u32_max_does_not_overflow() {
    let broker = MemoryBroker::new();
    let worker = start(
        &broker,
        MemoryNotifier::new(),
        Registry::new().register::<Fails>().unwrap(),
    );
    let env = call(Fails::NAME)
        .with_attempt(u32::MAX)
        .with_max_retries(u32::MAX);
    publish(&broker, &env).await;
    match worker.stored_result(&env.id).await {
        Outcome::Err(f) => assert!(f.message.contains("always"), "{f:?}"),
        other => panic!("{other:?}"),
    }
    let report = worker.report().await;
    assert_eq!(report.failed, 1, "{report:?}");
}

/// Reports progress 10 times, then returns `"done"`.
struct Reporting;
impl Task for Reporting {
    const NAME: &'static str = "ivy.worker-test.reporting";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        for i in 0..10 {
            // Best effort: an error here says the report was dropped.
            let _ = crate::progress(&i).await;
        }
        Ok(json!("done"))
    }
}

/// A notifier whose `publish` (progress and status notifications) never answers, as a Redis
/// that hangs: the task reports progress 10 times and its call still ends within seconds, its
/// result stored (each report waited on the outage: 10 reports took 10.6 s on a Redis down).
#[tokio::test(start_paused = true)]
async fn progress_and_statuses_do_not_hold_a_task_on_a_hanging_notifier() {
    let broker = MemoryBroker::new();
    let faults = Faults::new();
    faults.hang_from("publish", 1);
    let worker = start(
        &broker,
        FaultyNotifier::new(MemoryNotifier::new(), faults.clone()),
        Registry::new().register::<Reporting>().unwrap(),
    );
    let env = call(Reporting::NAME);
    let began = tokio::time::Instant::now();
    publish(&broker, &env).await;
    assert_eq!(
        worker.stored_result(&env.id).await,
        Outcome::Ok(json!("done"))
    );
    assert!(faults.count("publish") >= 10, "{:?}", faults.counts());
    // 10 reports and a status at 1 s each at most, not an outage's length each.
    assert!(
        began.elapsed() <= Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    worker.report().await;
}
