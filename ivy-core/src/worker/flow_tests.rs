//! Workflows (issue 14) in the worker, over the in-memory backend: the next step of a chain is
//! sealed like the call before it, and the run claim of a chord's callback left by a worker
//! that died is taken over once its lease runs out.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tests::start_with_keys;
use super::DEFAULT_SLOT_LEASE;
use crate::broker::{Broker, Claim, Coordination, Results};
use crate::crypto::Keyring;
use crate::envelope::TaskFailure;
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{codegen, Call, Registry, Task, TaskOptions};
use crate::{Producer, Step};

const W: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const P: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

/// Returns `n`.
struct Num;
impl Task for Num {
    const NAME: &'static str = "ivy.flow-test.num";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let n: u64 = codegen::decode_arg(&mut args, "n")?;
        codegen::encode_output(n)
    }
}

static TOTAL_RUNS: AtomicU32 = AtomicU32::new(0);

/// Sums `values`, counting its runs.
struct Total;
impl Task for Total {
    const NAME: &'static str = "ivy.flow-test.total";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let values: Vec<u64> = codegen::decode_arg(&mut args, "values")?;
        TOTAL_RUNS.fetch_add(1, Ordering::SeqCst);
        codegen::encode_output(values.iter().sum::<u64>())
    }
}

/// Multiplies `values`.
struct Product;
impl Task for Product {
    const NAME: &'static str = "ivy.flow-test.product";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let values: Vec<u64> = codegen::decode_arg(&mut args, "values")?;
        codegen::encode_output(values.iter().product::<u64>())
    }
}

fn registry() -> Registry {
    Registry::new()
        .register::<Num>()
        .and_then(|r| r.register::<Total>())
        .and_then(|r| r.register::<Product>())
        .unwrap()
}

fn num(n: u64) -> Call<Num> {
    let Value::Object(args) = json!({ "n": n }) else {
        unreachable!()
    };
    Call::__new(Ok(args))
}

/// A chain sent under the producer's key `p`: the worker publishes the next step sealed under
/// `p` too, not under its own current key `w`, which may call only `other.*` (sealed under
/// `w`, the step would fail as `ivy.forbidden`).
#[tokio::test]
async fn a_chain_step_is_sealed_under_the_key_that_sent_the_call() {
    let worker_ring = Keyring::from_spec(&format!("w:{W},p:{P}"))
        .unwrap()
        .allow_tasks("w", &["other.*"])
        .unwrap();
    let broker = MemoryBroker::new();
    let notifier = MemoryNotifier::new();
    let running = start_with_keys(&broker, notifier.clone(), registry(), worker_ring.clone());
    let producer =
        Producer::new(broker.clone(), notifier).with_keyring(worker_ring.current("p").unwrap());
    let step = Step::<Num, u64>::__new("n", Ok(Map::new()));
    let chain = num(7).then(step);
    let mut h = producer.chain(chain).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), h.result()).await;
    assert_eq!(got.expect("in time").expect("the chain's result"), 7);
    running.report().await;
}

/// A sealed chord: the members' results are stored sealed, the last member opens them to
/// build the callback's arguments, and the callback is sealed under the key that sent the
/// members (`p`; the worker's own key `w` may not call it).
#[tokio::test]
async fn a_sealed_chord_reads_sealed_results_and_seals_its_callback() {
    let worker_ring = Keyring::from_spec(&format!("w:{W},p:{P}"))
        .unwrap()
        .allow_tasks("w", &["other.*"])
        .unwrap();
    let broker = MemoryBroker::new();
    let notifier = MemoryNotifier::new();
    let running = start_with_keys(&broker, notifier.clone(), registry(), worker_ring.clone());
    let producer = Producer::new(broker.clone(), notifier.clone())
        .with_keyring(worker_ring.current("p").unwrap());
    let callback = Step::<Product, Vec<u64>>::__new("values", Ok(Map::new()));
    let mut h = producer
        .chord((1..=5).map(num).collect(), callback)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), h.result()).await;
    assert_eq!(got.expect("in time").expect("the chord's result"), 120);
    let stored = notifier.fetch(&format!("{}.0", h.id())).await.unwrap();
    assert!(
        stored.is_some_and(|p| p.starts_with(b"ivy1")),
        "member results are stored sealed"
    );
    running.report().await;
}

/// A worker claimed the run of the chord's callback and died: the callback waits for the
/// claim's lease to run out, then runs, once.
#[tokio::test(start_paused = true)]
async fn a_run_claim_left_by_a_dead_worker_is_taken_over_after_its_lease() {
    let broker = MemoryBroker::new();
    let notifier = MemoryNotifier::new();
    let producer = Producer::new(broker.clone(), notifier.clone());
    let callback = Step::<Total, Vec<u64>>::__new("values", Ok(Map::new()));
    let mut h = producer
        .chord(vec![num(1), num(2), num(3)], callback)
        .await
        .unwrap();
    let key = format!("run:{}", h.id());
    assert_eq!(
        notifier
            .claim(&key, "a-dead-worker", DEFAULT_SLOT_LEASE)
            .await
            .unwrap(),
        Claim::Won
    );
    let claimed_at = tokio::time::Instant::now();
    let running = start_with_keys(&broker, notifier.clone(), registry(), Keyring::new());
    assert_eq!(h.result().await.unwrap(), 6);
    assert!(
        claimed_at.elapsed() >= DEFAULT_SLOT_LEASE,
        "{:?}",
        claimed_at.elapsed()
    );
    assert_eq!(TOTAL_RUNS.load(Ordering::SeqCst), 1);
    running.report().await;
}

/// A chain step that did not run (here: it expired) while its chain's failure cannot be stored
/// is passed on with its outcome and looked at again after a pause, not returned to the broker
/// and redelivered at once, again and again (it was, before `finish_unrun` paused).
#[tokio::test]
async fn an_unrun_step_whose_chain_cannot_end_yet_is_looked_at_again_after_a_pause() {
    use crate::envelope::{now_ms, Envelope, Flow, FlowStep};
    use crate::worker::flows::RECHECK_AFTER;
    use crate::worker::tests::{flaky, publish};

    let broker = MemoryBroker::new();
    let notifier = flaky(u32::MAX); // every final store fails
    let last = FlowStep {
        id: "last-step".into(),
        task: Num::NAME.into(),
        args: Map::new(),
        slot: Some("n".into()),
        queue: "q".into(),
        priority: None,
        max_retries: None,
    };
    let flow = Flow {
        chain: vec![last],
        ..Flow::default()
    };
    let mut env = Envelope::new("expired-step", Num::NAME, Map::new(), now_ms()).with_flow(flow);
    env.expires = Some(now_ms() - 1_000);
    let running = start_with_keys(&broker, notifier.clone(), registry(), Keyring::new());
    let began = std::time::Instant::now();
    publish(&broker, &env).await;
    // Each look at the call tries to store the chain's failure once.
    while notifier.faults.count("publish_final") < 3 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the call was not looked at again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        began.elapsed() >= 2 * RECHECK_AFTER,
        "three tries in {:?}: the call came back without a pause",
        began.elapsed()
    );
    running.report().await;
}

/// Returns a string of `n` characters.
struct Pad;
impl Task for Pad {
    const NAME: &'static str = "ivy.flow-test.pad";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = String;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let n: usize = codegen::decode_arg(&mut args, "n")?;
        codegen::encode_output("x".repeat(n))
    }
}

/// The total length of `values`.
struct Len;
impl Task for Len {
    const NAME: &'static str = "ivy.flow-test.len";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_queue("q").with_max_retries(0);
    type Output = usize;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let values: Vec<String> = codegen::decode_arg(&mut args, "values")?;
        codegen::encode_output(values.iter().map(String::len).sum::<usize>())
    }
}

/// A chord whose callback can never be published (its members' results together are larger
/// than the broker takes) ends with a failure its handle gets, and the member that found it
/// complete is dead-lettered with the reason: it is not looked at again every 2 s forever (it
/// was, before publish errors were told apart).
#[tokio::test(start_paused = true)]
async fn a_chord_whose_callback_can_never_be_published_fails_and_dead_letters() {
    let broker = MemoryBroker::with_max_message_size(4096);
    let notifier = MemoryNotifier::new();
    let registry = Registry::new()
        .register::<Pad>()
        .and_then(|r| r.register::<Len>())
        .unwrap();
    let running = start_with_keys(&broker, notifier.clone(), registry, Keyring::new());
    let producer = Producer::new(broker.clone(), notifier);
    let pad = |n: u64| {
        let Value::Object(args) = json!({ "n": n }) else {
            unreachable!()
        };
        Call::<Pad>::__new(Ok(args))
    };
    let callback = Step::<Len, Vec<String>>::__new("values", Ok(Map::new()));
    let mut h = producer
        .chord(vec![pad(2000), pad(2000), pad(2000)], callback)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(600), h.result())
        .await
        .expect("the chord ends");
    let failure = match got {
        Err(crate::Error::Task(f)) => f,
        other => panic!("expected the chord to fail: {other:?}"),
    };
    assert_eq!(failure.kind, super::flows::UNPUBLISHABLE, "{failure:?}");
    assert!(
        failure.message.contains("exceeds the size limit"),
        "{}",
        failure.message
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let dead = loop {
        let dead = broker.take_dead_letters("q", 10).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("could not publish"),
        "{}",
        dead[0].reason
    );
    let report = running.report().await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let depth = broker.depth("q");
    assert_eq!(depth.ready + depth.delayed + depth.unacked, 0, "{depth:?}");
}

/// A chain step sent under key `p` (which may not send results) whose result could not be
/// stored before its worker stopped is passed on sealed under the worker's key `w`; the next
/// worker still seals the chain's next step under `p`, the key that sent the chain (under `w`,
/// which may call only `other.*`, it failed as `ivy.forbidden`).
#[tokio::test(start_paused = true)]
async fn a_passed_on_chain_step_keeps_the_senders_key_for_the_next_step() {
    use crate::worker::tests::flaky;

    let worker_ring = Keyring::from_spec(&format!("w:{W},p:{P}"))
        .unwrap()
        .current("w")
        .unwrap()
        .allow_tasks("w", &["other.*"])
        .unwrap()
        .allow_results("p", false)
        .unwrap();
    let broker = MemoryBroker::new();
    let down = flaky(u32::MAX);
    let (faults, store) = (down.faults.clone(), down.inner.clone());
    let first = start_with_keys(&broker, down, registry(), worker_ring.clone());
    let producer = Producer::new(broker.clone(), store.clone())
        .with_keyring(worker_ring.clone().current("p").unwrap());
    let step = Step::<Num, u64>::__new("n", Ok(Map::new()));
    let mut h = producer.chain(num(7).then(step)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while faults.count("publish_final") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no hand-off tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = first.report().await;
    assert_eq!(report.returned, 1, "passed on: {report:?}");

    let second = start_with_keys(&broker, store, registry(), worker_ring);
    let got = tokio::time::timeout(Duration::from_secs(600), h.result()).await;
    assert_eq!(got.expect("in time").expect("the chain's result"), 7);
    second.report().await;
}
