//! Effectively once (issue 21), proven under faults: a chain, a hook and a chord run each of
//! their follow-ups exactly once whichever single operation of the worker's notifier or broker
//! fails (before it happens, or after it happened with its answer lost). Each scenario runs
//! once without faults to count the operations it uses, then once per (operation, call,
//! fault). The clock is paused: pauses, leases and redeliveries take no real time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::Worker;
use crate::broker::{Broker, Coordination};
use crate::envelope::{new_task_id, TaskFailure};
use crate::faults::{Fault, Faults, FaultyBroker, FaultyNotifier};
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{codegen, Call, Registry, Task, TaskOptions};
use crate::{Producer, Step};

/// The fault of the run under way, for failure messages.
static FAULT: Mutex<String> = Mutex::new(String::new());

fn fault() -> String {
    FAULT.lock().unwrap().clone()
}

/// Runs by key (each scenario run uses fresh keys).
static RUNS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn ran(key: &str) {
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(key.to_owned())
        .or_default() += 1;
}

fn runs(key: &str) -> u32 {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|r| r.get(key).copied())
        .unwrap_or(0)
}

/// `n + k`, counting its runs under `key`.
struct Add;
impl Task for Add {
    const NAME: &'static str = "ivy.once-test.add";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let n: u64 = codegen::decode_arg(&mut args, "n")?;
        let k: u64 = codegen::decode_arg(&mut args, "k")?;
        let key: String = codegen::decode_arg(&mut args, "key")?;
        ran(&key);
        codegen::encode_output(n + k)
    }
}

/// The sum of `values`, counting its runs under `key`.
struct Sum;
impl Task for Sum {
    const NAME: &'static str = "ivy.once-test.sum";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let values: Vec<u64> = codegen::decode_arg(&mut args, "values")?;
        let key: String = codegen::decode_arg(&mut args, "key")?;
        ran(&key);
        codegen::encode_output(values.iter().sum::<u64>())
    }
}

fn object(v: Value) -> Map<String, Value> {
    let Value::Object(map) = v else {
        unreachable!("an object")
    };
    map
}

fn add(n: u64, key: &str) -> Call<Add> {
    Call::__new(Ok(object(json!({ "n": n, "k": 0, "key": key }))))
}

fn then_add(k: u64, key: &str) -> Step<Add, u64> {
    Step::__new("n", Ok(object(json!({ "k": k, "key": key }))))
}

/// A worker running in the background: a sender that stops it, and its run.
type Spawned = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<crate::Result<super::WorkerReport>>,
);

/// Runs `worker` in the background until the sender is used (or dropped).
fn spawn<B: crate::broker::Broker, N: crate::broker::Notifier>(worker: Worker<B, N>) -> Spawned {
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, join)
}

/// What one scenario run left: the follow-ups' run counts, in a fixed order.
type Counts = Vec<(&'static str, u32)>;

/// A worker over the faulty broker and notifier; the producer uses the plain ones, so the
/// faults hit the worker only. Runs `scenario`, waits until the queue is empty, stops.
async fn with_worker<F, Fut>(faults: &Faults, scenario: F) -> Counts
where
    F: FnOnce(Producer<MemoryBroker, MemoryNotifier>) -> Fut,
    Fut: std::future::Future<Output = Counts>,
{
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let registry = Registry::new()
        .register::<Add>()
        .and_then(|r| r.register::<Sum>())
        .unwrap();
    let worker = Worker::with_registry(
        FaultyBroker::new(broker.clone(), faults.clone()),
        FaultyNotifier::new(notifier.clone(), faults.clone()),
        registry,
    )
    .queues(["q"])
    .concurrency(2)
    .announce_every(Duration::ZERO);
    let (stop, join) = spawn(worker);
    tokio::time::sleep(Duration::from_millis(100)).await;
    if join.is_finished() {
        panic!("the worker stopped: {:?}, {}", join.await, fault());
    }
    let counts = scenario(Producer::new(broker.clone(), notifier)).await;
    // Copies of follow-ups are recognised later (a copy of a call running elsewhere is
    // looked at again after a pause): wait until nothing is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let d = broker.depth("q");
        if d.ready + d.delayed + d.unacked == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never emptied: {d:?}, {}",
            fault()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    join.await.expect("joined").expect("the worker ran");
    // Counted after every copy was settled.
    counts
}

async fn chain(p: Producer<MemoryBroker, MemoryNotifier>) -> Counts {
    let (a, b, c) = (new_task_id(), new_task_id(), new_task_id());
    let chain = add(1, &a).then(then_add(10, &b)).then(then_add(100, &c));
    let mut h = p.chain(chain).await.expect("chain");
    let got = tokio::time::timeout(Duration::from_secs(3600), h.result()).await;
    assert_eq!(
        got.unwrap_or_else(|_| panic!("no result in time, {}", fault()))
            .expect("the chain's result"),
        111
    );
    vec![("step b", runs(&b)), ("step c", runs(&c))]
}

async fn hook(p: Producer<MemoryBroker, MemoryNotifier>) -> Counts {
    let (a, h) = (new_task_id(), new_task_id());
    let mut handle = p
        .delayed_call(add(1, &a).on_success(add(5, &h)))
        .await
        .expect("call");
    let got = tokio::time::timeout(Duration::from_secs(3600), handle.result()).await;
    assert_eq!(
        got.unwrap_or_else(|_| panic!("no result in time, {}", fault()))
            .expect("the call's result"),
        1
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    while runs(&h) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hook never ran, {}",
            fault()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vec![("hook", runs(&h))]
}

async fn chord(p: Producer<MemoryBroker, MemoryNotifier>) -> Counts {
    let (m, cb) = (new_task_id(), new_task_id());
    let callback = Step::<Sum, Vec<u64>>::__new("values", Ok(object(json!({ "key": cb }))));
    let mut h = p
        .chord((1..=3).map(|i| add(i, &m)).collect(), callback)
        .await
        .expect("chord");
    let got = tokio::time::timeout(Duration::from_secs(3600), h.result()).await;
    assert_eq!(
        got.unwrap_or_else(|_| panic!("no result in time, {}", fault()))
            .expect("the chord's result"),
        6
    );
    vec![("callback", runs(&cb))]
}

/// Runs `scenario` without faults, then under every single fault of every operation it used;
/// every follow-up runs exactly once each time.
async fn once_under_every_fault<F, Fut>(scenario: F)
where
    F: Fn(Producer<MemoryBroker, MemoryNotifier>) -> Fut + Copy,
    Fut: std::future::Future<Output = Counts>,
{
    let baseline = Faults::new();
    *FAULT.lock().unwrap() = "without faults".into();
    let counts = with_worker(&baseline, scenario).await;
    assert!(
        counts.iter().all(|(_, n)| *n == 1),
        "without faults: {counts:?}"
    );
    let used = baseline.counts();
    assert!(
        used.contains_key("claim") && used.contains_key("publish"),
        "{used:?}"
    );
    let mut runs = 0;
    // A worker that cannot consume when it starts says so to its caller: not a "once" matter.
    for (op, calls) in used.into_iter().filter(|(op, _)| *op != "consume") {
        for nth in 1..=calls {
            for fault in Fault::ALL {
                let faults = Faults::new();
                faults.inject(op, nth, fault);
                *FAULT.lock().unwrap() = format!("with call {nth} of `{op}` faulted ({fault:?})");
                let counts = with_worker(&faults, scenario).await;
                assert!(
                    counts.iter().all(|(_, n)| *n == 1),
                    "with call {nth} of `{op}` faulted ({fault:?}): {counts:?}"
                );
                runs += 1;
            }
        }
    }
    assert!(runs >= 10, "only {runs} faults tried");
}

#[tokio::test(start_paused = true)]
async fn a_chain_runs_each_step_once_under_every_single_fault() {
    once_under_every_fault(chain).await;
}

#[tokio::test(start_paused = true)]
async fn a_hook_runs_once_under_every_single_fault() {
    once_under_every_fault(hook).await;
}

#[tokio::test(start_paused = true)]
async fn a_chord_callback_runs_once_under_every_single_fault() {
    once_under_every_fault(chord).await;
}

static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts itself running while alive (also when its run is dropped).
struct Running;
impl Running {
    fn enter() -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = RUNNING.fetch_add(1, SeqCst) + 1;
        MOST.fetch_max(now, SeqCst);
        Running
    }
}
impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs 5 s, at most one at a time across workers.
struct Narrow;
impl Task for Narrow {
    const NAME: &'static str = "ivy.once-test.narrow";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_queue("q")
        .with_max_retries(0)
        .with_max_concurrency(1);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        let _running = Running::enter();
        tokio::time::sleep(Duration::from_secs(5)).await;
        codegen::encode_output(())
    }
}

/// `max_concurrency = 1` holds while a worker cannot renew its slot's lease: it stops the run
/// before the lease runs out and another worker takes the slot (it ran on, and the two ran at
/// once, while renewals failing were only logged).
#[tokio::test(start_paused = true)]
async fn a_run_whose_slot_lease_cannot_be_renewed_stops_so_the_limit_holds() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let faults = Faults::new();
    // The first slot is taken; every renewal after it fails.
    faults.fail_calls("acquire_slot", 2, u32::MAX);
    let spawn = |notifier| {
        let registry = Registry::new().register::<Narrow>().unwrap();
        let worker = Worker::with_registry(broker.clone(), notifier, registry)
            .queues(["q"])
            .concurrency(1)
            .slot_lease(Duration::from_millis(300))
            .announce_every(Duration::ZERO);
        spawn(worker)
    };
    let a = spawn(FaultyNotifier::new(notifier.clone(), faults.clone()));
    let producer = Producer::new(broker.clone(), notifier.clone());
    let mut first = producer
        .delayed_call(Call::<Narrow>::__new(Ok(Map::new())))
        .await
        .unwrap();
    // A takes the first call before B starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while faults.count("acquire_slot") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never took the call"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = spawn(FaultyNotifier::new(notifier.clone(), Faults::new()));
    let mut second = producer
        .delayed_call(Call::<Narrow>::__new(Ok(Map::new())))
        .await
        .unwrap();
    for h in [&mut first, &mut second] {
        let got = tokio::time::timeout(Duration::from_secs(3600), h.result()).await;
        got.expect("in time").expect("the call's result");
    }
    assert!(faults.count("acquire_slot") >= 2, "A tried to renew");
    assert_eq!(
        MOST.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "two ran at once"
    );
    for (stop, join) in [a, b] {
        let _ = stop.send(());
        join.await.unwrap().unwrap();
    }
}

/// Where held deliveries are safe (AMQP), a call waits in the worker for a concurrency slot,
/// but at most 5 min before it goes back to the broker: past RabbitMQ's `consumer_timeout` the
/// channel would close and requeue every delivery on it, running ones included (it waited
/// without bound).
#[tokio::test(start_paused = true)]
async fn a_call_waits_for_a_slot_in_the_worker_for_a_bounded_time() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    // Every slot is held, for longer than the test.
    let day = Duration::from_secs(86_400);
    assert!(notifier
        .acquire_slot(Narrow::NAME, "elsewhere", 1, day)
        .await
        .unwrap());
    let faults = Faults::new();
    let held_safe = broker.capabilities().with_prefetch_ahead(true);
    let registry = Registry::new().register::<Narrow>().unwrap();
    let worker = Worker::with_registry(
        FaultyBroker::new(broker.clone(), faults.clone()).with_capabilities(held_safe),
        notifier.clone(),
        registry,
    )
    .queues(["q"])
    .announce_every(Duration::ZERO);
    let (stop, join) = spawn(worker);
    let producer = Producer::new(broker.clone(), notifier.clone());
    producer
        .send(Call::<Narrow>::__new(Ok(Map::new())))
        .await
        .unwrap();
    let began = tokio::time::Instant::now();
    let deadline = began + Duration::from_secs(3600);
    while faults.count("retry") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never went back to the broker"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        began.elapsed() >= Duration::from_secs(5 * 60),
        "{:?}",
        began.elapsed()
    );
    let _ = stop.send(());
    let report = join.await.unwrap().unwrap();
    assert!(report.delayed >= 1, "{report:?}");
}

/// Counts its runs, and runs 5 s, at most one at a time across workers.
struct Narrow2;
impl Task for Narrow2 {
    const NAME: &'static str = "ivy.once-test.narrow2";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_queue("q")
        .with_max_retries(0)
        .with_max_concurrency(1);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        codegen::encode_output(())
    }
}

/// Runs 5 s, with no limit.
struct Hog;
impl Task for Hog {
    const NAME: &'static str = "ivy.once-test.hog";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        codegen::encode_output(())
    }
}

/// A call that won its cluster slot while its worker's only slot was busy keeps renewing the
/// cluster slot while it waits for the worker: nobody else can take it meanwhile (its lease
/// ran out while it waited, and another worker could run a second call at once).
#[tokio::test(start_paused = true)]
async fn a_slot_won_is_renewed_while_the_call_waits_for_its_worker() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let faults = Faults::new();
    let lease = Duration::from_millis(300);
    // Another worker holds the slot for 1 s.
    assert!(notifier
        .acquire_slot(Narrow2::NAME, "rival", 1, Duration::from_secs(1))
        .await
        .unwrap());
    let held_safe = broker.capabilities().with_prefetch_ahead(true);
    let registry = Registry::new()
        .register::<Narrow2>()
        .and_then(|r| r.register::<Hog>())
        .unwrap();
    let worker = Worker::with_registry(
        FaultyBroker::new(broker.clone(), Faults::new()).with_capabilities(held_safe),
        FaultyNotifier::new(notifier.clone(), faults.clone()),
        registry,
    )
    .queues(["q"])
    .concurrency(1)
    .slot_lease(lease)
    .announce_every(Duration::ZERO);
    let (stop, join) = spawn(worker);
    let producer = Producer::new(broker.clone(), notifier.clone());
    let began = tokio::time::Instant::now();
    // The limited call waits for the slot without the worker's only slot...
    producer
        .send(Call::<Narrow2>::__new(Ok(Map::new())))
        .await
        .unwrap();
    while faults.count("acquire_slot") < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ... which a long call takes meanwhile.
    producer
        .send(Call::<Hog>::__new(Ok(Map::new())))
        .await
        .unwrap();
    // The rival's lease runs out at 1 s; the waiting call wins the slot and waits for the
    // worker until the long call ends (5 s). At 3 s the slot must still be held.
    tokio::time::sleep_until(began + Duration::from_secs(3)).await;
    assert!(
        !notifier
            .acquire_slot(Narrow2::NAME, "another", 1, lease)
            .await
            .unwrap(),
        "the slot was free while the call that won it waited for its worker"
    );
    let _ = stop.send(());
    join.await.unwrap().unwrap();
}

/// At most one a second, one at a time.
struct RatedNarrow;
impl Task for RatedNarrow {
    const NAME: &'static str = "ivy.once-test.rated-narrow";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_queue("q")
        .with_max_retries(0)
        .with_max_concurrency(1)
        .with_rate_limit(1, Duration::from_secs(1));
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        codegen::encode_output(())
    }
}

/// Calls that bounce for a concurrency slot spend no rate-limit turns (they reserved one each
/// time before asking for the slot, so the turns ran far ahead of the runs).
#[tokio::test(start_paused = true)]
async fn calls_bouncing_for_a_slot_spend_no_rate_limit_turns() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let day = Duration::from_secs(86_400);
    assert!(notifier
        .acquire_slot(RatedNarrow::NAME, "elsewhere", 1, day)
        .await
        .unwrap());
    let faults = Faults::new();
    let registry = Registry::new().register::<RatedNarrow>().unwrap();
    let worker = Worker::with_registry(
        FaultyBroker::new(broker.clone(), faults.clone()),
        notifier.clone(),
        registry,
    )
    .queues(["q"])
    .announce_every(Duration::ZERO);
    let (stop, join) = spawn(worker);
    let producer = Producer::new(broker.clone(), notifier.clone());
    for _ in 0..5 {
        producer
            .send(Call::<RatedNarrow>::__new(Ok(Map::new())))
            .await
            .unwrap();
    }
    // Many bounces: each call went back to the broker several times.
    while faults.count("retry") < 30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    join.await.unwrap().unwrap();
    let turn = notifier
        .reserve_turn(
            RatedNarrow::NAME,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(
        turn,
        crate::Turn::Reserved(Duration::ZERO),
        "turns were spent"
    );
}
