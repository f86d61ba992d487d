//! `rate_limit` and `max_concurrency` on the in-memory backend, enforced inside the process:
//! starts stay within the rate, runs never exceed the limit, and waiting is not a retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Worker};

static STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);
static RETRIED: AtomicUsize = AtomicUsize::new(0);

#[ivy::task(name = "limits.rated", rate_limit = "10/s")]
async fn rated() {
    STARTS.lock().unwrap().push(Instant::now());
    if ivy::current_task().is_some_and(|t| t.attempt > 0) {
        RETRIED.fetch_add(1, Ordering::SeqCst);
    }
}

#[ivy::task(name = "limits.narrow", max_concurrency = 2)]
async fn narrow() {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    if ivy::current_task().is_some_and(|t| t.attempt > 0) {
        RETRIED.fetch_add(1, Ordering::SeqCst);
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_inside_the_process() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(broker.clone(), notifier.clone())
        .unwrap()
        .concurrency(8);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let producer = Producer::new(broker, notifier);

    for _ in 0..20 {
        producer.send(rated::call()).await.unwrap();
    }
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(producer.delayed_call(narrow::call()).await.unwrap());
    }
    for h in &mut handles {
        h.result_timeout(Duration::from_secs(30)).await.unwrap();
    }
    wait_for("20 rated runs", || STARTS.lock().unwrap().len() == 20).await;

    assert_eq!(
        MOST.load(Ordering::SeqCst),
        2,
        "at most 2 narrow runs at once"
    );
    // 10/s, no burst: turns 100 ms apart, so a second holds 10 of them, 11 when one run
    // started late (a busy machine) and the next on time; all at once without the limit.
    let starts = STARTS.lock().unwrap().clone();
    for (i, first) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .filter(|s| s.duration_since(*first) < Duration::from_secs(1))
            .count();
        assert!(within <= 11, "{within} starts within a second of start {i}");
    }
    assert_eq!(RETRIED.load(Ordering::SeqCst), 0, "waiting is not a retry");

    let _ = stop.send(());
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.succeeded, 32, "{report}");
}

static SLOW_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[ivy::task(name = "limits.slow", rate_limit = "2/s")]
async fn slow() {
    SLOW_STARTS.lock().unwrap().push(Instant::now());
    if ivy::current_task().is_some_and(|t| t.attempt > 0) {
        RETRIED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Turns more than the worker's horizon away (1 s where the broker hands out only what runs)
/// are not reserved: those calls go back to the broker, delayed, and still run at the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_turns_wait_in_the_broker_and_keep_the_rate() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(broker.clone(), notifier.clone())
        .unwrap()
        .concurrency(8);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let producer = Producer::new(broker, notifier);
    for _ in 0..8 {
        producer.send(slow::call()).await.unwrap();
    }
    wait_for("8 slow runs", || SLOW_STARTS.lock().unwrap().len() == 8).await;
    let _ = stop.send(());
    let report = running.await.unwrap().unwrap();

    let mut starts = SLOW_STARTS.lock().unwrap().clone();
    starts.sort();
    // 2/s: 8 starts span at least 3.5 s (7 intervals of 500 ms), a few ms of timer slack.
    let span = starts[7].duration_since(starts[0]);
    assert!(
        span >= Duration::from_millis(3400),
        "8 starts within {span:?}"
    );
    assert!(
        report.delayed > 0,
        "no call went back to the broker: {report}"
    );
    assert_eq!(report.retried, 0, "{report}");
}
