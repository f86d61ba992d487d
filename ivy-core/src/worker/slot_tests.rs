//! `max_concurrency` slots handed on (`freed.rs`): a slot given back goes at once to a call
//! waiting for it in another worker, and the limit holds whichever operation of the slot's way
//! fails (taking, giving back, announcing, subscribing). The clock is paused: pauses, leases
//! and runs take no real time, and nothing here is timed; "at once" is in the paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Worker;
use crate::broker::Broker;
use crate::envelope::TaskFailure;
use crate::faults::{Fault, Faults, FaultyBroker, FaultyNotifier};
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{codegen, Call, Registry, Task, TaskOptions};
use crate::Producer;

type Spawned = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<crate::Result<super::WorkerReport>>,
);

fn spawn<B: Broker, N: crate::broker::Notifier>(worker: Worker<B, N>) -> Spawned {
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, join)
}

/// When each run of `Baton` started and ended.
static BATON: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

/// Runs 5 s, one at a time across workers.
struct Baton;
impl Task for Baton {
    const NAME: &'static str = "ivy.slot-test.baton";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(0)
        .with_max_concurrency(1);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        BATON.lock().unwrap().push(("start", Instant::now()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        BATON.lock().unwrap().push(("end", Instant::now()));
        codegen::encode_output(())
    }
}

/// A broker that keeps held deliveries safe (as AMQP), where calls wait in the worker.
fn held_safe(broker: &MemoryBroker) -> FaultyBroker<MemoryBroker> {
    let caps = broker.capabilities().with_prefetch_ahead(true);
    FaultyBroker::new(broker.clone(), Faults::new()).with_capabilities(caps)
}

/// A call waiting in worker B for the slot that worker A's call holds starts when A's call
/// gives it back, not at its next try (an hour away here): it waited up to 500 ms by
/// default, and 12 calls of 400 ms with `max_concurrency = 2` took 4 s instead of 2.4 s.
#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_at_once_to_a_call_waiting_in_another_worker() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = |queue: &str| {
        let registry = Registry::new().register::<Baton>().unwrap();
        Worker::with_registry(held_safe(&broker), notifier.clone(), registry)
            .queues([queue])
            .concurrency(1)
            .slot_poll(Duration::from_secs(3600))
            .announce_every(Duration::ZERO)
    };
    let (a, b) = (spawn(worker("qa")), spawn(worker("qb")));
    let producer = Producer::new(broker.clone(), notifier.clone());
    let mut first = producer
        .delayed_call(Call::<Baton>::__new(Ok(Map::new())).queue("qa"))
        .await
        .unwrap();
    while BATON.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = producer
        .delayed_call(Call::<Baton>::__new(Ok(Map::new())).queue("qb"))
        .await
        .unwrap();
    for h in [&mut first, &mut second] {
        let got = tokio::time::timeout(Duration::from_secs(36_000), h.result()).await;
        got.expect("in time").expect("the call's result");
    }
    let events = BATON.lock().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["start", "end", "start", "end"], "one at a time");
    let handed_on = events[2].1 - events[1].1;
    assert!(
        handed_on < Duration::from_secs(1),
        "the waiting call started {handed_on:?} after the slot was given back"
    );
    for (stop, join) in [a, b] {
        let _ = stop.send(());
        join.await.unwrap().unwrap();
    }
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

/// Runs 1 s, at most two at once across workers.
struct Pair;
impl Task for Pair {
    const NAME: &'static str = "ivy.slot-test.pair";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(0)
        .with_max_concurrency(2);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        codegen::encode_output(())
    }
}

/// 8 calls of `Pair` over two workers of concurrency 3 (slot lease 3 s), worker A's notifier
/// faulted by `plan`: every call finishes, and at most two ran at once.
async fn pair_under(what: &str, plan: impl Fn(&Faults)) {
    RUNNING.store(0, Ordering::SeqCst);
    MOST.store(0, Ordering::SeqCst);
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let faults = Faults::new();
    plan(&faults);
    let worker = |faults: Faults| {
        let registry = Registry::new().register::<Pair>().unwrap();
        Worker::with_registry(
            held_safe(&broker),
            FaultyNotifier::new(notifier.clone(), faults),
            registry,
        )
        .concurrency(3)
        .slot_lease(Duration::from_secs(3))
        .announce_every(Duration::ZERO)
    };
    let (a, b) = (spawn(worker(faults.clone())), spawn(worker(Faults::new())));
    let producer = Producer::new(broker.clone(), notifier.clone());
    let mut handles = Vec::new();
    for _ in 0..8 {
        let call = Call::<Pair>::__new(Ok(Map::new()));
        handles.push(producer.delayed_call(call).await.unwrap());
    }
    for h in &mut handles {
        let got = tokio::time::timeout(Duration::from_secs(36_000), h.result()).await;
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

/// Never more than `max_concurrency` at once, and no call stuck, when giving a slot back
/// fails (the slot comes back by lease expiry) or its answer is lost, when a slot is taken
/// but the answer lost, when no freed-slot notice goes out, and when the worker cannot
/// subscribe to them: a notice only makes a call ask again.
#[tokio::test(start_paused = true)]
async fn the_limit_holds_when_slot_operations_fail() {
    pair_under("every release fails", |f| {
        f.fail_calls("release_slot", 1, u32::MAX)
    })
    .await;
    pair_under("releases' answers lost", |f| {
        for n in 1..=4 {
            f.inject("release_slot", n, Fault::LoseAnswer);
        }
    })
    .await;
    pair_under("takes' answers lost", |f| {
        for n in 1..=3 {
            f.inject("acquire_slot", n, Fault::LoseAnswer);
        }
    })
    .await;
    pair_under("takes fail", |f| f.fail_calls("acquire_slot", 2, 6)).await;
    pair_under("no notice goes out", |f| {
        f.fail_calls("publish", 1, u32::MAX)
    })
    .await;
    pair_under("notices hang", |f| f.hang_from("publish", 1)).await;
    pair_under("no subscription", |f| {
        f.fail_calls("subscribe", 1, u32::MAX)
    })
    .await;
}
