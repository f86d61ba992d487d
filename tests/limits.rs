//! `rate_limit` and `max_concurrency` held across three workers on real RabbitMQ and Redis,
//! and a concurrency slot coming back after its lease when the worker holding it is killed
//! with SIGKILL (a child process).
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ivy::backends::{broker_from_url, notifier_from_url, AnyBroker, AnyNotifier};
use ivy::{Coordination, Producer, Worker};

static STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
static RETRIED: AtomicUsize = AtomicUsize::new(0);
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);
static NARROW_DONE: AtomicUsize = AtomicUsize::new(0);

#[ivy::task(name = "limits_test.rated", rate_limit = "20/s")]
async fn rated() {
    STARTS.lock().unwrap().push(Instant::now());
    if ivy::current_task().is_some_and(|t| t.attempt > 0) {
        RETRIED.fetch_add(1, Ordering::SeqCst);
    }
}

#[ivy::task(name = "limits_test.narrow", max_concurrency = 2)]
async fn narrow() {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    NARROW_DONE.fetch_add(1, Ordering::SeqCst);
}

static ORDER: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

#[ivy::task(name = "limits_test.paced", rate_limit = "1/s")]
async fn paced() {
    ORDER.lock().unwrap().push("paced");
}

#[ivy::task(name = "limits_test.free")]
async fn free() {
    ORDER.lock().unwrap().push("free");
}

const HOLD: &str = "limits_test.hold";

#[ivy::task(name = "limits_test.hold", max_concurrency = 1)]
async fn hold() {
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// A child process that a failing test does not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn backends() -> (AnyBroker, AnyNotifier) {
    let broker = broker_from_url(&processes::amqp_url()).await.unwrap();
    let notifier = notifier_from_url(&processes::redis_url()).await.unwrap();
    (broker, notifier)
}

/// Three workers of concurrency 8 on `queue`, each with its own connections.
async fn three_workers(
    queue: &str,
) -> Vec<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<ivy::Result<ivy::WorkerReport>>,
)> {
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (broker, notifier) = backends().await;
        let worker = Worker::new(broker, notifier)
            .unwrap()
            .queues([queue])
            .concurrency(8);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        workers.push((
            stop,
            tokio::spawn(worker.run(async {
                let _ = stopped.await;
            })),
        ));
    }
    workers
}

async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            ORDER.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_across_three_workers() {
    let queue = processes::queue("rate");
    let (broker, notifier) = backends().await;
    let producer = Producer::new(broker, notifier);
    for _ in 0..500 {
        producer
            .send(rated::call().queue(queue.clone()))
            .await
            .unwrap();
    }
    let workers = three_workers(&queue).await;
    wait_for("500 runs", Duration::from_secs(120), || {
        STARTS.lock().unwrap().len() == 500
    })
    .await;
    for (stop, worker) in workers {
        let _ = stop.send(());
        worker.await.unwrap().unwrap();
    }

    let mut starts = STARTS.lock().unwrap().clone();
    starts.sort();
    let window = Duration::from_secs(5);
    let most = (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|s| s.duration_since(starts[i]) < window)
                .count()
        })
        .max()
        .unwrap();
    let took = starts[499].duration_since(starts[0]);
    println!(
        "500 runs in {took:?} ({:.1}/s); at most {most} in a 5 s window ({:.1}/s)",
        499.0 / took.as_secs_f64(),
        most as f64 / 5.0
    );
    assert!(most <= 110, "{most} runs within 5 s: over 20/s + 10 %");
    assert_eq!(
        RETRIED.load(Ordering::SeqCst),
        0,
        "waiting for a turn is not a retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_across_three_workers() {
    let queue = processes::queue("narrow");
    let (broker, notifier) = backends().await;
    let producer = Producer::new(broker, notifier);
    for _ in 0..24 {
        producer
            .send(narrow::call().queue(queue.clone()))
            .await
            .unwrap();
    }
    let workers = three_workers(&queue).await;
    wait_for("24 runs", Duration::from_secs(60), || {
        NARROW_DONE.load(Ordering::SeqCst) == 24
    })
    .await;
    for (stop, worker) in workers {
        let _ = stop.send(());
        worker.await.unwrap().unwrap();
    }
    assert_eq!(
        MOST.load(Ordering::SeqCst),
        2,
        "at most 2 runs at once, and the limit is used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_its_turn_holds_no_worker_slot() {
    let queue = processes::queue("paced");
    let (broker, notifier) = backends().await;
    let producer = Producer::new(broker.clone(), notifier.clone());
    for _ in 0..3 {
        producer
            .send(paced::call().queue(queue.clone()))
            .await
            .unwrap();
    }
    producer
        .send(free::call().queue(queue.clone()))
        .await
        .unwrap();
    // One slot: the paced calls waiting for their turns (1 s apart) must leave it to `free`.
    let worker = Worker::new(broker, notifier)
        .unwrap()
        .queues([queue])
        .concurrency(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    wait_for("4 runs", Duration::from_secs(60), || {
        ORDER.lock().unwrap().len() == 4
    })
    .await;
    let _ = stop.send(());
    let report = worker.await.unwrap().unwrap();
    let order = ORDER.lock().unwrap().clone();
    assert_eq!(
        order.last(),
        Some(&"paced"),
        "{order:?}: `free` waited for the paced calls"
    );
    assert_eq!(report.retried, 0, "{report}");
}

/// Not a test on its own: the worker process that `a_killed_workers_slot_comes_back_after_its_lease`
/// starts (this test binary again, with `IVY_LIMITS_CHILD_QUEUE` set) and kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of a_killed_workers_slot_comes_back_after_its_lease"]
async fn child_worker_holding_a_slot() {
    let Ok(queue) = std::env::var("IVY_LIMITS_CHILD_QUEUE") else {
        return;
    };
    let (broker, notifier) = backends().await;
    let worker = Worker::new(broker, notifier)
        .unwrap()
        .queues([queue])
        .slot_lease(Duration::from_secs(2));
    worker.run(std::future::pending()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_slot_comes_back_after_its_lease() {
    let (broker, notifier) = backends().await;
    let probe = || async {
        let free = notifier
            .acquire_slot(HOLD, "probe", 1, Duration::from_secs(5))
            .await
            .unwrap();
        if free {
            notifier.release_slot(HOLD, "probe").await.unwrap();
        }
        free
    };
    // A slot left by an earlier run has expired before this one starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe().await {
        assert!(Instant::now() < deadline, "the slot stays taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queue = processes::queue("hold");
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_worker_holding_a_slot",
                "--ignored",
                "--nocapture",
            ])
            .env("IVY_LIMITS_CHILD_QUEUE", &queue)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    Producer::new(broker, notifier.clone())
        .send(hold::call().queue(queue))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe().await {
        assert!(Instant::now() < deadline, "the child never took the slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let killed = Instant::now();
    assert!(!probe().await, "the slot is held until its lease runs out");
    let deadline = killed + Duration::from_secs(10);
    while !probe().await {
        assert!(
            Instant::now() < deadline,
            "the killed worker's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the slot came back {:?} after the kill (lease 2 s)",
        killed.elapsed()
    );
}
