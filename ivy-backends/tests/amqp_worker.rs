//! A worker on RabbitMQ: what its retries look like on the broker (properties kept, a retry
//! that cannot be scheduled backs off instead of looping).
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
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

mod common;
use common::{amqp_url, next_within};

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

static STUCK_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Always fails, with many retries 1 s apart: its retries go through `<queue>.delay.1000`.
struct Stuck;
impl Task for Stuck {
    const NAME: &'static str = "test.amqp.stuck";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(1_000)
        .with_retry_backoff(Duration::from_secs(1))
        .with_retry_backoff_max(Duration::from_secs(1));
    type Output = ();
    async fn run(
        _: Map<String, ivy_core::__private::Value>,
    ) -> Result<ivy_core::__private::Value, TaskFailure> {
        STUCK_RUNS.fetch_add(1, Ordering::SeqCst);
        Err(TaskFailure::new("test::Stuck", "fails on purpose"))
    }
}

fn registry() -> Registry {
    Registry::new()
        .register::<SlowRetry>()
        .and_then(|r| r.register::<Stuck>())
        .expect("distinct names")
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

/// Item 5 of issue 11: when the delay queue a retry needs exists with other arguments,
/// RabbitMQ refuses it (PRECONDITION_FAILED) every time. The worker must not run the call
/// again and again as fast as RabbitMQ gives it back; the error names the queue and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_cannot_be_scheduled_backs_off() {
    let b = broker().await;
    let n = MemoryNotifier::new();
    let q = unique("amqp-worker-stuck");
    let delay_queue = format!("{q}.delay.1000");
    // Someone declared the delay queue by hand, without Ivy's arguments.
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    channel
        .queue_declare(
            delay_queue.as_str().into(),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();

    // The retry's publish fails as the worker's does, with an error that says what to do.
    b.publish(common::msg(&q, "first")).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let d = next_within(&mut c, STEP).await;
    let e = d
        .retry(b"retry".to_vec(), Duration::from_secs(1))
        .await
        .expect_err("the delay queue cannot be declared");
    let text = common::chain(&e);
    assert!(text.contains(&format!("`{delay_queue}`")), "{text}");
    assert!(text.contains("other arguments"), "{text}");
    assert!(text.contains("delete"), "{text}");
    assert!(!text.contains("guest:guest"), "{text}");
    // The message went back to its queue: take it away.
    next_within(&mut c, STEP).await.ack().await.unwrap();
    drop(c);

    // A worker runs the call, fails, cannot schedule the retry, and gets the call back.
    let p = Producer::new(b.clone(), n.clone());
    p.delayed_call(call::<Stuck>(&q)).await.expect("call");
    let worker = spawn_worker(&b, &n, &q);
    until("the first attempt ran", || {
        STUCK_RUNS.load(Ordering::SeqCst) >= 1
    })
    .await;
    let first = Instant::now();
    // Give a hot loop (thousands of runs a second) room to show; a backoff runs it only a
    // few times here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = STUCK_RUNS.load(Ordering::SeqCst);
    let window = first.elapsed();
    worker.stop().await;
    assert!(
        runs <= 6,
        "the call ran {runs} times in {window:?} while its retry could not be scheduled"
    );
    channel
        .queue_delete(delay_queue.as_str().into(), Default::default())
        .await
        .unwrap();
}
