//! Three scheduler replicas, each a process of its own (this test binary again), against real
//! RabbitMQ and Redis: each tick is published once, and when one replica is killed with
//! SIGKILL the others go on without a tick missing.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use ivy::backends::{broker_from_url, notifier_from_url};
use ivy::{Schedule, Scheduler, Worker};
use tokio::time::Instant;

static TICKS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
static TOCKS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[ivy::task(name = "schedule_test.tick")]
async fn tick() {
    TICKS.lock().unwrap().push(Instant::now());
}

#[ivy::task(name = "schedule_test.tock")]
async fn tock() {
    TOCKS.lock().unwrap().push(Instant::now());
}

/// A replica process, killed when dropped (also when the test fails).
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test on its own: the scheduler replica that the test below starts three times (this
/// binary with `IVY_SCHEDULE_CHILD=<queue>`). It says `ready` once connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of three_replicas_publish_each_tick_once_and_survive_a_sigkill"]
async fn scheduler_replica_child() {
    let Ok(queue) = std::env::var("IVY_SCHEDULE_CHILD") else {
        return;
    };
    let broker = broker_from_url(&processes::amqp_url()).await.unwrap();
    let notifier = notifier_from_url(&processes::redis_url()).await.unwrap();
    let scheduler = Scheduler::new(broker, notifier)
        .add(
            format!("every-second-{queue}"),
            Schedule::every(Duration::from_secs(1)).unwrap(),
            tick::call().queue(queue.clone()),
        )
        .unwrap()
        .add(
            format!("cron-two-seconds-{queue}"),
            Schedule::cron("*/2 * * * * *").unwrap(),
            tock::call().queue(queue.clone()),
        )
        .unwrap();
    println!("ready");
    scheduler.run(std::future::pending()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_publish_each_tick_once_and_survive_a_sigkill() {
    let queue = processes::queue("schedule");
    let broker = broker_from_url(&processes::amqp_url()).await.unwrap();
    let notifier = notifier_from_url(&processes::redis_url()).await.unwrap();
    let worker = Worker::new(broker, notifier)
        .unwrap()
        .queues([queue.clone()]);
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));

    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| {
            let child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "scheduler_replica_child",
                    "--ignored",
                    "--nocapture",
                    "--quiet",
                ])
                .env("IVY_SCHEDULE_CHILD", &queue)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Replica(child)
        })
        .collect();
    for r in &mut replicas {
        let out = r.0.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "ready")
        });
        let ready = tokio::time::timeout(Duration::from_secs(60), ready).await;
        assert!(matches!(ready, Ok(Ok(true))), "a replica did not start");
    }
    // From here, every replica runs: a 20 s window holds 20 ticks of 1 s and 10 of 2 s.
    let start = Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(10)).await;
    drop(replicas.remove(0)); // SIGKILL
    tokio::time::sleep_until(start + Duration::from_secs(21)).await;
    drop(replicas);

    // The calls published reach the worker: the counts stop changing.
    let counts = || (TICKS.lock().unwrap().len(), TOCKS.lock().unwrap().len());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (counts(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "calls kept arriving");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if counts() != last.0 {
            last = (counts(), Instant::now());
        }
    }
    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();

    let end = start + Duration::from_secs(20);
    let within = |runs: &Mutex<Vec<Instant>>| {
        let runs = runs.lock().unwrap();
        runs.iter().filter(|&&t| t >= start && t < end).count()
    };
    let (ticks, tocks) = (within(&TICKS), within(&TOCKS));
    println!("in 20 s: {ticks} calls on a 1 s interval, {tocks} on a 2 s cron (one replica of three killed after 10 s)");
    assert!(
        (19..=21).contains(&ticks),
        "{ticks} calls in 20 s on a 1 s interval"
    );
    assert!(
        (9..=11).contains(&tocks),
        "{tocks} calls in 20 s on a 2 s cron"
    );
    // A tick published twice runs twice within milliseconds; ticks of their own run a whole
    // period apart. So the count above is not one missed tick made up by one duplicate.
    let closest = |runs: &Mutex<Vec<Instant>>| {
        let mut runs = runs.lock().unwrap().clone();
        runs.sort();
        runs.windows(2).map(|w| w[1] - w[0]).min().unwrap()
    };
    let (tick_gap, tock_gap) = (closest(&TICKS), closest(&TOCKS));
    assert!(
        tick_gap >= Duration::from_millis(500),
        "two calls of the 1 s interval ran {tick_gap:?} apart: a tick was published twice"
    );
    assert!(
        tock_gap >= Duration::from_secs(1),
        "two calls of the 2 s cron ran {tock_gap:?} apart: a tick was published twice"
    );
}
