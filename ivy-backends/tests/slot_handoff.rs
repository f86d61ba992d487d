//! `max_concurrency` slots handed on across workers on real RabbitMQ and Redis (PROTOCOL.md
//! §10, freed slots): a slot given back by one worker goes at once to a call waiting in
//! another, over Redis pub/sub; and the limit holds when Redis operations of the slot's way
//! fail or lose their answer. Nothing here is timed: "at once" means long before the waiting
//! call's next try, which is set an hour away.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ivy_backends::amqp::AmqpBroker;
use ivy_backends::redis::RedisNotifier;
use ivy_core::__private::{Map, Value};
use ivy_core::conformance::unique;
use ivy_core::faults::{Fault, Faults, FaultyNotifier};
use ivy_core::{Call, Coordination, Producer, Registry, Task, TaskFailure, TaskOptions, Worker};

mod gate {
    use super::*;
    pub static OPEN: AtomicBool = AtomicBool::new(false);
    pub static STARTED: AtomicUsize = AtomicUsize::new(0);
}

/// Runs until the test opens the gate, one at a time across workers.
struct Baton;
impl Task for Baton {
    const NAME: &'static str = "test.slot_handoff.baton";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(0)
        .with_max_concurrency(1);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        gate::STARTED.fetch_add(1, Ordering::SeqCst);
        while !gate::OPEN.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ivy_core::__private::encode_output(())
    }
}

type Spawned = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<ivy_core::Result<ivy_core::WorkerReport>>,
);

fn spawn<N: ivy_core::Notifier>(worker: Worker<AmqpBroker, N>) -> Spawned {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, join)
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nobody holds a slot of `task` (one left by an earlier run of this test
/// expires with its lease).
async fn slot_free(notifier: &RedisNotifier, task: &str, max: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = format!("probe-{}", unique("p"));
        let lease = Duration::from_secs(5);
        let mut held = Vec::new();
        for i in 0..max {
            let holder = format!("{probe}-{i}");
            if notifier
                .acquire_slot(task, &holder, max, lease)
                .await
                .unwrap()
            {
                held.push(holder);
            }
        }
        for holder in &held {
            notifier.release_slot(task, holder).await.unwrap();
        }
        if held.len() == max as usize {
            return;
        }
        assert!(Instant::now() < deadline, "the slots of {task} stay taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A call waiting in worker B for the slot that worker A's call holds starts as soon as A's
/// call gives it back, through Redis, not at B's next try an hour later (it waited for that
/// try: up to 500 ms by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_slot_goes_at_once_to_a_call_waiting_on_another_worker() {
    let notifier = common::redis_notifier().await;
    slot_free(&notifier, Baton::NAME, 1).await;
    let (qa, qb) = (unique("handoff-a"), unique("handoff-b"));
    let b_faults = Faults::new();
    let worker = |queue: String, faults: Faults| async move {
        let registry = Registry::new().register::<Baton>().unwrap();
        let notifier = FaultyNotifier::new(common::redis_notifier().await, faults);
        Worker::with_registry(common::amqp_broker("").await, notifier, registry)
            .queues([queue])
            .concurrency(1)
            .slot_poll(Duration::from_secs(3600))
            .slot_lease(Duration::from_secs(5))
    };
    let a = spawn(worker(qa.clone(), Faults::new()).await);
    let b = spawn(worker(qb.clone(), b_faults.clone()).await);
    let producer = Producer::new(common::amqp_broker("").await, notifier.clone());
    let first = producer
        .delayed_call(Call::<Baton>::__new(Ok(Map::new())).queue(qa))
        .await
        .unwrap();
    wait_for("A's call to start", || {
        gate::STARTED.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = producer
        .delayed_call(Call::<Baton>::__new(Ok(Map::new())).queue(qb))
        .await
        .unwrap();
    // B asked while A's call held the slot: refused, its next try is ~144 s away.
    wait_for("B to ask for the slot", || {
        b_faults.count("acquire_slot") >= 1
    })
    .await;
    assert_eq!(gate::STARTED.load(Ordering::SeqCst), 1, "one at a time");
    gate::OPEN.store(true, Ordering::SeqCst);
    wait_for("B's call to start after A's gave the slot back", || {
        gate::STARTED.load(Ordering::SeqCst) == 2
    })
    .await;
    for mut h in [first, second] {
        let got = tokio::time::timeout(Duration::from_secs(30), h.result()).await;
        got.expect("in time").expect("the call's result");
    }
    for (stop, join) in [a, b] {
        let _ = stop.send(());
        join.await.unwrap().unwrap();
    }
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

/// Runs 300 ms, at most two at once across workers.
struct Pair;
impl Task for Pair {
    const NAME: &'static str = "test.slot_handoff.pair";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(0)
        .with_max_concurrency(2);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        ivy_core::__private::encode_output(())
    }
}

/// 6 calls of `Pair` over two workers of concurrency 3 (slot lease 2 s), worker A's Redis
/// notifier faulted by `plan`: every call finishes, and at most two ran at once.
async fn pair_under(what: &str, plan: impl Fn(&Faults)) {
    RUNNING.store(0, Ordering::SeqCst);
    MOST.store(0, Ordering::SeqCst);
    let notifier = common::redis_notifier().await;
    slot_free(&notifier, Pair::NAME, 2).await;
    let queue = unique("pair");
    let faults = Faults::new();
    plan(&faults);
    let worker = |faults: Faults| {
        let queue = queue.clone();
        async move {
            let registry = Registry::new().register::<Pair>().unwrap();
            let notifier = FaultyNotifier::new(common::redis_notifier().await, faults);
            Worker::with_registry(common::amqp_broker("").await, notifier, registry)
                .queues([queue])
                .concurrency(3)
                .slot_lease(Duration::from_secs(2))
        }
    };
    let a = spawn(worker(faults.clone()).await);
    let b = spawn(worker(Faults::new()).await);
    let producer = Producer::new(common::amqp_broker("").await, notifier);
    let mut handles = Vec::new();
    for _ in 0..6 {
        let call = Call::<Pair>::__new(Ok(Map::new())).queue(queue.clone());
        handles.push(producer.delayed_call(call).await.unwrap());
    }
    for h in &mut handles {
        let got = tokio::time::timeout(Duration::from_secs(60), h.result()).await;
        got.unwrap_or_else(|_| panic!("{what}: a call never finished"))
            .unwrap_or_else(|e| panic!("{what}: a call failed: {e}"));
    }
    assert!(faults.fired() > 0, "{what}: no fault fired");
    let most = MOST.load(Ordering::SeqCst);
    assert!(most <= 2, "{what}: {most} ran at once");
    for (stop, join) in [a, b] {
        let _ = stop.send(());
        join.await.unwrap().unwrap();
    }
}

/// Never more than `max_concurrency` at once on Redis, and no call stuck, when giving a slot
/// back fails (it comes back by lease expiry) or loses its answer, when taking one loses its
/// answer (taken, but the call goes back to the queue), when no freed-slot notice goes out,
/// and when a worker cannot subscribe to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_when_redis_slot_operations_fail() {
    pair_under("every release fails", |f| {
        f.fail_calls("release_slot", 1, u32::MAX)
    })
    .await;
    pair_under("releases' answers lost", |f| {
        for n in 1..=3 {
            f.inject("release_slot", n, Fault::LoseAnswer);
        }
    })
    .await;
    pair_under("takes' answers lost", |f| {
        for n in 1..=2 {
            f.inject("acquire_slot", n, Fault::LoseAnswer);
        }
    })
    .await;
    pair_under("no notice goes out", |f| {
        f.fail_calls("publish", 1, u32::MAX)
    })
    .await;
    pair_under("no subscription", |f| {
        f.fail_calls("subscribe", 1, u32::MAX)
    })
    .await;
}
