//! A task that finished while Redis was down runs once: the worker holds its RabbitMQ delivery
//! and keeps trying to store the result until Redis is back, then the producer gets it; a
//! worker stopped meanwhile passes the call on with its outcome, and the next one delivers it.
//!
//! Uses the shared RabbitMQ and a Redis of its own on port 6392, which it stops and starts
//! again (never the shared one): the tests take turns. Needs `redis-server` and `redis-cli` on
//! the PATH.
#![cfg(all(feature = "amqp", feature = "redis"))]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ivy_backends::redis::RedisNotifier;
use ivy_core::__private::{Map, Value};
use ivy_core::conformance::unique;
use ivy_core::{Call, Notifier, Producer, Registry, Task, TaskFailure, TaskOptions, Worker};

mod common;
use common::amqp_broker;
use common::own_redis::{Counting, OwnRedis};

static REDIS: OwnRedis = OwnRedis::new(6392, None);

/// One test at a time owns the test Redis.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A task that counts its runs (the side effect that must not repeat), waits for its gate to
/// open and returns "done".
macro_rules! gated_task {
    ($task:ident, $runs:ident, $gate:ident) => {
        static $runs: AtomicU32 = AtomicU32::new(0);
        static $gate: AtomicBool = AtomicBool::new(false);
        struct $task;
        impl Task for $task {
            const NAME: &'static str = concat!("ivy.test.handoff-outage.", stringify!($task));
            const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
            type Output = String;
            async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
                $runs.fetch_add(1, Ordering::SeqCst);
                while !$gate.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Value::from("done"))
            }
        }
    };
}

gated_task!(Gated, RUNS, GATE);
gated_task!(PassedOn, PASSED_ON_RUNS, PASSED_ON_GATE);

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finished_during_a_redis_outage_runs_once_and_its_result_arrives() {
    let _turn = TURN.lock().await;
    REDIS.start();
    let _stop = REDIS.stop_at_end();
    let broker = amqp_broker("").await;
    let queue = unique("handoff-outage");
    let worker_notifier = Counting::connect(&REDIS.url()).await;
    let failed = worker_notifier.failed_stores.clone();
    let (stop, worker) = spawn_worker(
        &broker,
        worker_notifier,
        Registry::new().register::<Gated>().unwrap(),
        &queue,
    );

    let producer = Producer::new(
        broker.clone(),
        RedisNotifier::connect(&REDIS.url())
            .await
            .expect("the test Redis"),
    );
    let mut handle = producer
        .delayed_call(Call::<Gated>::__new(Ok(Map::new())).queue(queue.as_str()))
        .await
        .expect("call");
    until("the task to start", Duration::from_secs(30), || {
        RUNS.load(Ordering::SeqCst) == 1
    })
    .await;

    REDIS.stop();
    GATE.store(true, Ordering::SeqCst);
    // More failed hand-offs than the old worker's 4 tries before it returned the call.
    until("6 failed hand-offs", Duration::from_secs(60), || {
        failed.load(Ordering::SeqCst) >= 6
    })
    .await;
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "the task ran again while Redis was down"
    );

    REDIS.start();
    let result = tokio::time::timeout(Duration::from_secs(60), handle.result())
        .await
        .expect("the result within 60 s of Redis coming back")
        .expect("the result");
    assert_eq!(result, "done");
    assert_eq!(RUNS.load(Ordering::SeqCst), 1, "the task ran once");

    let _ = stop.send(());
    let report = worker.await.expect("worker joined").expect("worker ran");
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(report.returned, 0, "{report:?}");
}

/// Starts a worker for `queue` with `notifier` and `registry`: (stop, the run's join handle).
fn spawn_worker<N: Notifier>(
    broker: &ivy_backends::amqp::AmqpBroker,
    notifier: N,
    registry: Registry,
    queue: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<ivy_core::Result<ivy_core::WorkerReport>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::with_registry(broker.clone(), notifier, registry)
        .queues([queue.to_owned()])
        .concurrency(1)
        .grace_period(Duration::from_secs(3));
    let join = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, join)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_during_a_redis_outage_passes_the_outcome_on_and_the_task_runs_once() {
    let _turn = TURN.lock().await;
    REDIS.start();
    let _stop = REDIS.stop_at_end();
    let broker = amqp_broker("").await;
    let queue = unique("handoff-pass-on");
    let registry = || Registry::new().register::<PassedOn>().unwrap();
    let counting = Counting::connect(&REDIS.url()).await;
    let failed = counting.failed_stores.clone();
    let (stop, first) = spawn_worker(&broker, counting, registry(), &queue);
    let producer = Producer::new(
        broker.clone(),
        RedisNotifier::connect(&REDIS.url())
            .await
            .expect("the test Redis"),
    );
    let mut handle = producer
        .delayed_call(Call::<PassedOn>::__new(Ok(Map::new())).queue(queue.as_str()))
        .await
        .expect("call");
    until("the task to start", Duration::from_secs(30), || {
        PASSED_ON_RUNS.load(Ordering::SeqCst) == 1
    })
    .await;
    REDIS.stop();
    PASSED_ON_GATE.store(true, Ordering::SeqCst);
    until("2 failed hand-offs", Duration::from_secs(60), || {
        failed.load(Ordering::SeqCst) >= 2
    })
    .await;
    let _ = stop.send(());
    let report = first.await.expect("worker joined").expect("worker ran");
    assert_eq!(report.returned, 1, "{report:?}");
    assert_eq!(report.succeeded, 0, "{report:?}");

    REDIS.start();
    let notifier = RedisNotifier::connect(&REDIS.url())
        .await
        .expect("the test Redis");
    let (stop, second) = spawn_worker(&broker, notifier, registry(), &queue);
    let result = tokio::time::timeout(Duration::from_secs(60), handle.result())
        .await
        .expect("the result within 60 s of Redis coming back")
        .expect("the result");
    assert_eq!(result, "done");
    let _ = stop.send(());
    let report = second.await.expect("worker joined").expect("worker ran");
    assert_eq!(
        PASSED_ON_RUNS.load(Ordering::SeqCst),
        1,
        "the task ran once"
    );
    assert_eq!(report.succeeded, 1, "{report:?}");
}
