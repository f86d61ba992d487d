//! The missed-tick policy on the in-memory backend: `Missed::RunOnce` publishes the last tick
//! no replica published when a scheduler starts, once across replicas; `Missed::Skip` waits
//! for the next tick.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Missed, Schedule, Scheduler, Worker};

static HOURLY: AtomicU32 = AtomicU32::new(0);

#[ivy::task(name = "missed_test.hourly")]
async fn hourly(policy: String) {
    assert_eq!(policy, "run once", "a skipped tick ran");
    HOURLY.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_publishes_the_missed_tick_once_and_skip_does_not() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(broker.clone(), notifier.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let hour = Duration::from_secs(3600);
    let replica = || {
        Scheduler::new(broker.clone(), notifier.clone())
            .add(
                "hourly, run once",
                Schedule::every(hour).unwrap().missed(Missed::RunOnce),
                hourly::call("run once".into()),
            )
            .unwrap()
            .add(
                "hourly, skip",
                Schedule::every(hour).unwrap(),
                hourly::call("skip".into()),
            )
            .unwrap()
    };
    let replicas: Vec<_> = (0..3)
        .map(|_| tokio::spawn(replica().run(std::future::pending())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while HOURLY.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the missed tick was not published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A late replica finds the tick claimed.
    let late = tokio::spawn(replica().run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in replicas.iter().chain([&late]) {
        r.abort();
    }
    let _ = stop.send(());
    let report = worker.await.unwrap().unwrap();
    assert_eq!(HOURLY.load(Ordering::SeqCst), 1, "{report}");
    assert_eq!(report.succeeded, 1, "{report}");
}
