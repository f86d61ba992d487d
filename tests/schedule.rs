//! Three scheduler replicas against real RabbitMQ and Redis publish each tick once, and go on
//! without a tick missing when one of them is killed (its task aborted: nothing of it runs or
//! cleans up any more).
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ivy::backends::{broker_from_url, notifier_from_url};
use ivy::{Schedule, Scheduler, Worker};

static TICKS: AtomicU32 = AtomicU32::new(0);
static TOCKS: AtomicU32 = AtomicU32::new(0);

#[ivy::task(name = "schedule_test.tick")]
async fn tick() {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

#[ivy::task(name = "schedule_test.tock")]
async fn tock() {
    TOCKS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_publish_each_tick_once_and_survive_a_kill() {
    let queue = processes::queue("schedule");
    let run = queue.clone();
    let broker = broker_from_url(&processes::amqp_url()).await.unwrap();
    let notifier = notifier_from_url(&processes::redis_url()).await.unwrap();
    let worker = Worker::new(broker, notifier)
        .unwrap()
        .queues([queue.clone()]);
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));

    // Each replica has its own connections, as separate processes would.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let broker = broker_from_url(&processes::amqp_url()).await.unwrap();
        let notifier = notifier_from_url(&processes::redis_url()).await.unwrap();
        let scheduler = Scheduler::new(broker, notifier)
            .add(
                format!("every-second-{run}"),
                Schedule::every(Duration::from_secs(1)).unwrap(),
                tick::call().queue(queue.clone()),
            )
            .unwrap()
            .add(
                format!("cron-two-seconds-{run}"),
                Schedule::cron("*/2 * * * * *").unwrap(),
                tock::call().queue(queue.clone()),
            )
            .unwrap();
        replicas.push(tokio::spawn(scheduler.run(std::future::pending())));
    }
    let start = tokio::time::Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(10)).await;
    replicas[0].abort();
    tokio::time::sleep_until(start + Duration::from_secs(20)).await;
    let ran_for = start.elapsed();
    for r in &replicas {
        r.abort();
    }
    // What was published reaches the worker: the counts stop changing (for longer than a
    // tick would take to arrive).
    let counts = || (TICKS.load(Ordering::SeqCst), TOCKS.load(Ordering::SeqCst));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = (counts(), std::time::Instant::now());
    while last.1.elapsed() < Duration::from_millis(1500) {
        assert!(std::time::Instant::now() < deadline, "calls kept arriving");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if counts() != last.0 {
            last = (counts(), std::time::Instant::now());
        }
    }
    let (ticks, tocks) = counts();
    println!("{ran_for:?}: {ticks} ticks of 1 s, {tocks} of the cron every 2 s");
    assert!(
        (19..=21).contains(&ticks),
        "{ticks} calls in {ran_for:?} on a 1 s interval"
    );
    assert!(
        (9..=11).contains(&tocks),
        "{tocks} calls in {ran_for:?} on a 2 s cron"
    );
    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();
}
