//! A worker on RabbitMQ: what its retries look like on the broker.
#![cfg(feature = "amqp")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ivy_backends::amqp::AmqpBroker;
use ivy_core::__private::Map;
use ivy_core::conformance::unique;
use ivy_core::memory::MemoryNotifier;
use ivy_core::{
    Broker, Call, Delivery, Envelope, Producer, Registry, Task, TaskFailure, TaskOptions, Worker,
};

mod common;
use common::next_within;

const STEP: Duration = Duration::from_secs(30);

static SLOW_RETRY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Always fails; its one retry comes 2 s later, long enough to stop the worker first.
struct SlowRetry;
impl Task for SlowRetry {
    const NAME: &'static str = "test.amqp.slow_retry";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(1)
        .with_retry_backoff(Duration::from_secs(2));
    type Output = ();
    async fn run(
        _: Map<String, ivy_core::__private::Value>,
    ) -> Result<ivy_core::__private::Value, TaskFailure> {
        SLOW_RETRY_RUNS.fetch_add(1, Ordering::SeqCst);
        Err(TaskFailure::new("test::SlowRetry", "fails on purpose"))
    }
}

fn registry() -> Registry {
    Registry::new().register::<SlowRetry>().expect("one task")
}

async fn broker() -> AmqpBroker {
    common::amqp_broker("").await
}

fn call<T: Task>(queue: &str) -> Call<T> {
    Call::<T>::__new(Ok(Map::new())).queue(queue)
}

/// Polls `done` until it holds, failing the test after [`STEP`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<ivy_core::Result<ivy_core::WorkerReport>>,
}

fn spawn_worker(b: &AmqpBroker, n: &MemoryNotifier, q: &str) -> Running {
    let worker = Worker::with_registry(b.clone(), n.clone(), registry())
        .queues([q.to_owned()])
        .concurrency(2)
        .grace_period(Duration::from_secs(10));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running { stop, join }
}

impl Running {
    async fn stop(self) -> ivy_core::WorkerReport {
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.join)
            .await
            .expect("worker stops")
            .expect("worker task")
            .expect("worker run")
    }
}

/// Item 9 of issue 11: the worker's retry of a priority-3 call is published with priority 3
/// and the call's id as its AMQP `message_id`, as the first delivery was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_the_calls_priority_and_message_id() {
    let b = broker().await;
    let n = MemoryNotifier::new();
    let q = unique("amqp-worker-retry-props");
    let p = Producer::new(b.clone(), n.clone());
    let h = p
        .delayed_call(call::<SlowRetry>(&q).priority(3))
        .await
        .expect("call");
    let worker = spawn_worker(&b, &n, &q);
    until("the first attempt ran", || {
        SLOW_RETRY_RUNS.load(Ordering::SeqCst) >= 1
    })
    .await;
    // A graceful stop waits for the failed attempt to be settled, i.e. its retry published.
    let report = worker.stop().await;
    assert_eq!(SLOW_RETRY_RUNS.load(Ordering::SeqCst), 1, "{report:?}");

    let mut c = b.consume(&[q], 1).await.unwrap();
    let d = next_within(&mut c, STEP).await;
    let env = Envelope::from_slice(d.body()).expect("an envelope");
    assert_eq!(env.attempt, 1, "this is the retry");
    assert_eq!(d.message_id(), Some(h.id()));
    assert_eq!(d.priority(), Some(3));
    d.ack().await.unwrap();
}
