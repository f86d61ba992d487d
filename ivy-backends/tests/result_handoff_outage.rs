//! A task that finished while Redis was down runs once: the worker holds its RabbitMQ delivery
//! and keeps trying to store the result until Redis is back, then the producer gets it; a
//! worker stopped meanwhile passes the call on with its outcome, and the next one delivers it.
//!
//! Uses the shared RabbitMQ and a Redis of its own on port 6392, which it stops and starts
//! again (never the shared one): the tests take turns. Needs `redis-server` and `redis-cli` on
//! the PATH.
#![cfg(all(feature = "amqp", feature = "redis"))]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivy_backends::redis::RedisNotifier;
use ivy_core::__private::{Map, Value};
use ivy_core::conformance::unique;
use ivy_core::{Call, Notifier, Producer, Registry, Task, TaskFailure, TaskOptions, Worker};

mod common;
use common::amqp_broker;

const PORT: &str = "6392";
const URL: &str = "redis://127.0.0.1:6392";

fn ping() -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", PORT, "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_redis() {
    let dir = std::env::temp_dir().join(format!("ivy-test-redis-{PORT}"));
    std::fs::create_dir_all(&dir).expect("a directory for the test Redis");
    let status = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", PORT, "--daemonize", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .status()
        .expect("run redis-server");
    assert!(status.success(), "redis-server failed: {status}");
    wait_until("the test Redis answering", Duration::from_secs(15), ping);
}

fn stop_redis() {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", PORT, "shutdown", "nosave"])
        .output()
        .expect("run redis-cli");
    // A successful shutdown closes the connection without a reply.
    assert!(
        out.stdout.is_empty(),
        "shutdown answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("the test Redis stopped", Duration::from_secs(10), || {
        !ping()
    });
}

/// Stops the test Redis when dropped, also while unwinding from a failed assertion.
struct StopRedis;

impl Drop for StopRedis {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", PORT, "shutdown", "nosave"])
            .output();
    }
}

/// One test at a time owns the test Redis.
static REDIS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// The worker's notifier: Redis, counting the final results it could not store.
#[derive(Clone, Debug)]
struct Counting {
    inner: RedisNotifier,
    failed: Arc<AtomicU32>,
}

impl Notifier for Counting {
    type Subscription = <RedisNotifier as Notifier>::Subscription;

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> ivy_core::Result<()> {
        self.inner.publish(channel, payload).await
    }

    async fn publish_final(
        &self,
        channel: &str,
        task_id: &str,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> ivy_core::Result<()> {
        let stored = self
            .inner
            .publish_final(channel, task_id, payload, ttl)
            .await;
        if stored.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        stored
    }

    async fn fetch(&self, task_id: &str) -> ivy_core::Result<Option<Vec<u8>>> {
        self.inner.fetch(task_id).await
    }

    async fn subscribe(&self, channel: &str) -> ivy_core::Result<Self::Subscription> {
        self.inner.subscribe(channel).await
    }
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finished_during_a_redis_outage_runs_once_and_its_result_arrives() {
    let _turn = REDIS.lock().await;
    start_redis();
    let _stop = StopRedis;
    let broker = amqp_broker("").await;
    let queue = unique("handoff-outage");
    let failed = Arc::new(AtomicU32::new(0));
    let worker_notifier = Counting {
        inner: RedisNotifier::connect(URL).await.expect("the test Redis"),
        failed: failed.clone(),
    };
    let (stop, worker) = spawn_worker(
        &broker,
        worker_notifier,
        Registry::new().register::<Gated>().unwrap(),
        &queue,
    );

    let producer = Producer::new(
        broker.clone(),
        RedisNotifier::connect(URL).await.expect("the test Redis"),
    );
    let mut handle = producer
        .delayed_call(Call::<Gated>::__new(Ok(Map::new())).queue(queue.as_str()))
        .await
        .expect("call");
    until("the task to start", Duration::from_secs(30), || {
        RUNS.load(Ordering::SeqCst) == 1
    })
    .await;

    stop_redis();
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

    start_redis();
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
    let _turn = REDIS.lock().await;
    start_redis();
    let _stop = StopRedis;
    let broker = amqp_broker("").await;
    let queue = unique("handoff-pass-on");
    let registry = || Registry::new().register::<PassedOn>().unwrap();
    let failed = Arc::new(AtomicU32::new(0));
    let counting = Counting {
        inner: RedisNotifier::connect(URL).await.expect("the test Redis"),
        failed: failed.clone(),
    };
    let (stop, first) = spawn_worker(&broker, counting, registry(), &queue);
    let producer = Producer::new(
        broker.clone(),
        RedisNotifier::connect(URL).await.expect("the test Redis"),
    );
    let mut handle = producer
        .delayed_call(Call::<PassedOn>::__new(Ok(Map::new())).queue(queue.as_str()))
        .await
        .expect("call");
    until("the task to start", Duration::from_secs(30), || {
        PASSED_ON_RUNS.load(Ordering::SeqCst) == 1
    })
    .await;
    stop_redis();
    PASSED_ON_GATE.store(true, Ordering::SeqCst);
    until("2 failed hand-offs", Duration::from_secs(60), || {
        failed.load(Ordering::SeqCst) >= 2
    })
    .await;
    let _ = stop.send(());
    let report = first.await.expect("worker joined").expect("worker ran");
    assert_eq!(report.returned, 1, "{report:?}");
    assert_eq!(report.succeeded, 0, "{report:?}");

    start_redis();
    let notifier = RedisNotifier::connect(URL).await.expect("the test Redis");
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
