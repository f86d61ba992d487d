//! A worker on RabbitMQ prefetches concurrency × `prefetch_multiplier` deliveries, and none
//! of those it holds ahead is lost when it stops: the running ones go back after the grace
//! period, the ones it never started go back when its consumer closes.
#![cfg(feature = "amqp")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ivy_core::__private::Map;
use ivy_core::conformance::unique;
use ivy_core::memory::MemoryNotifier;
use ivy_core::{Call, Producer, Registry, Task, TaskFailure, TaskOptions, Worker};
use lapin::options::QueueDeclareOptions;
use lapin::{Connection, ConnectionProperties};

mod common;
use common::amqp_url;

const STEP: Duration = Duration::from_secs(30);

static STARTED: AtomicUsize = AtomicUsize::new(0);
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Runs until [`RELEASED`] is set.
struct Hold;
impl Task for Hold {
    const NAME: &'static str = "test.amqp.hold";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = ();
    async fn run(
        _: Map<String, ivy_core::__private::Value>,
    ) -> Result<ivy_core::__private::Value, TaskFailure> {
        STARTED.fetch_add(1, Ordering::SeqCst);
        while !RELEASED.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        FINISHED.fetch_add(1, Ordering::SeqCst);
        Ok(ivy_core::__private::Value::Null)
    }
}

/// Polls `done` until it holds, failing the test after [`STEP`].
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages of `queue` ready for delivery (not held by a consumer), as RabbitMQ counts
/// them.
async fn ready(conn: &Connection, queue: &str) -> u32 {
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .expect("the queue exists");
    let _ = channel.close(200, "done".into()).await;
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_concurrency_times_the_multiplier_and_nothing_held_is_lost() {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ (run scripts/services)");
    let q = unique("amqp-prefetch");
    let broker = common::amqp_broker("").await;
    let notifier = MemoryNotifier::new();
    let producer = Producer::new(broker.clone(), notifier.clone());
    for _ in 0..10 {
        producer
            .send(Call::<Hold>::__new(Ok(Map::new())).queue(&q))
            .await
            .unwrap();
    }
    let registry = || Registry::new().register::<Hold>().expect("one task");
    let worker = Worker::with_registry(broker.clone(), notifier.clone(), registry())
        .queues([q.clone()])
        .concurrency(2)
        .prefetch_multiplier(3)
        .grace_period(Duration::from_millis(200));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    // Two run, four wait in the worker: 6 = 2 × 3 held, 4 left ready.
    until("two calls running and six held", async || {
        STARTED.load(Ordering::SeqCst) == 2 && ready(&conn, &q).await == 4
    })
    .await;
    let _ = stop.send(());
    let report = tokio::time::timeout(STEP, running)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(report.returned, 2, "{report:?}");
    assert_eq!(report.succeeded, 0, "{report:?}");
    until("every call back in the queue", async || {
        ready(&conn, &q).await == 10
    })
    .await;
    assert_eq!(
        STARTED.load(Ordering::SeqCst),
        2,
        "none held ahead was started"
    );

    // A multiplier of 1 holds only what runs; released, every call runs once more.
    let worker = Worker::with_registry(broker, notifier, registry())
        .queues([q.clone()])
        .concurrency(2)
        .prefetch_multiplier(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    until("two more running, eight ready", async || {
        STARTED.load(Ordering::SeqCst) == 4 && ready(&conn, &q).await == 8
    })
    .await;
    RELEASED.store(true, Ordering::SeqCst);
    until("all ten finished", async || {
        FINISHED.load(Ordering::SeqCst) == 10
    })
    .await;
    let _ = stop.send(());
    let report = tokio::time::timeout(STEP, running)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(report.succeeded, 10, "{report:?}");
    assert_eq!(ready(&conn, &q).await, 0);
}
