//! The producer's unit tests: configuring a keyring before and after cloning or use.

use super::*;
use crate::broker::Results;
use crate::broker::{Consumer, Delivery};
use crate::failure::TaskFailure;
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::TaskOptions;
use serde_json::Map;

struct Noop;
impl Task for Noop {
    const NAME: &'static str = "producer.tests.noop";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = ();
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        Ok(Value::Null)
    }
}

fn call() -> Call<Noop> {
    Call::__new(Ok(Map::new()))
}

fn keyring() -> Keyring {
    Keyring::new().with_key("k1", &"ab".repeat(32)).unwrap()
}

/// The bodies waiting on the `default` queue, in publish order.
async fn bodies(broker: &MemoryBroker, n: usize) -> Vec<Vec<u8>> {
    let mut consumer = broker.consume(&["default".into()], n).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        out.push(d.body().to_vec());
        d.ack().await.unwrap();
    }
    out
}

#[tokio::test]
async fn with_keyring_after_a_clone_leaves_the_clone_as_it_was() {
    let broker = MemoryBroker::new();
    let plain = Producer::new(broker.clone(), MemoryNotifier::new());
    let clone = plain.clone();
    let sealed = plain.with_keyring(keyring());
    assert_ne!(clone.channel(), sealed.channel());
    clone.send(call()).await.unwrap();
    sealed.send(call()).await.unwrap();
    let bodies = bodies(&broker, 2).await;
    assert!(
        bodies[0].starts_with(b"{"),
        "the clone still sends plain calls"
    );
    assert!(
        bodies[1].starts_with(b"ivy1:"),
        "the result seals its calls"
    );
}

#[tokio::test]
async fn with_keyring_after_use() {
    let broker = MemoryBroker::new();
    let producer = Producer::new(broker.clone(), MemoryNotifier::new());
    let handle = producer.delayed_call(call()).await.unwrap();
    let sealed = producer.with_keyring(keyring());
    sealed.send(call()).await.unwrap();
    let bodies = bodies(&broker, 2).await;
    assert!(bodies[0].starts_with(b"{"));
    assert!(bodies[1].starts_with(b"ivy1:"));
    drop(handle);
}

#[test]
fn with_keyring_on_a_fresh_producer_keeps_its_channel() {
    let producer = Producer::new(MemoryBroker::new(), MemoryNotifier::new());
    let channel = producer.channel().to_owned();
    assert_eq!(producer.with_keyring(keyring()).channel(), channel);
}

/// Returns its name.
struct Named;
impl Task for Named {
    const NAME: &'static str = "producer.tests.named";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = String;
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        Ok(Value::from("named"))
    }
}

/// A result sealed under a key that may not send results (a producer's, here this producer's
/// own) is ignored, and the handle keeps waiting for the worker's. (Before keys had roles, the
/// forged result was taken.)
#[tokio::test]
async fn a_result_from_a_key_that_may_not_send_results_is_ignored() {
    let ring = Keyring::new()
        .with_key("w", &"cd".repeat(32))
        .unwrap()
        .with_key("p", &"ab".repeat(32))
        .unwrap()
        .allow_results("p", false)
        .unwrap();
    let notifier = MemoryNotifier::new();
    let producer = Producer::new(MemoryBroker::new(), notifier.clone()).with_keyring(ring.clone());
    let mut handle = producer
        .delayed_call(Call::<Named>::__new(Ok(Map::new())))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    for (key, value) in [("p", "forged"), ("w", "genuine")] {
        let note = Notification::result(id.clone(), 0, Outcome::Ok(Value::from(value)));
        let sealed = ring.reseal_binary(Some(key), &note.to_bytes());
        notifier
            .publish_final(producer.channel(), &id, sealed, Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert_eq!(handle.result().await.unwrap(), "genuine");
}

/// A chain's first call is held to the same id rules as `delayed_call` (it took any id).
#[tokio::test]
async fn a_chain_refuses_an_invalid_id() {
    let broker = MemoryBroker::new();
    let producer = Producer::new(broker.clone(), MemoryNotifier::new());
    let chain = call()
        .id("two words")
        .then(crate::Step::<Noop, ()>::__new("x", Ok(Map::new())));
    let err = producer.chain(chain).await.unwrap_err();
    assert!(matches!(err, Error::InvalidId { .. }), "{err}");
    assert_eq!(broker.depth("default").ready, 0, "nothing published");
}

/// A unique call whose claim was made but whose answer was lost is asked for again with the
/// same request token: it is this call's claim, and the call is published, once (the retry
/// saw its own claim as another call's, and the call was never published).
#[tokio::test]
async fn a_unique_claim_whose_answer_was_lost_still_publishes_the_call_once() {
    use crate::faults::{Fault, Faults, FaultyNotifier};
    let broker = MemoryBroker::new();
    let faults = Faults::new();
    faults.inject("claim_unique", 1, Fault::LoseAnswer);
    let producer = Producer::new(
        broker.clone(),
        FaultyNotifier::new(MemoryNotifier::new(), faults.clone()),
    );
    let window = Duration::from_secs(60);
    let id = producer.send(call().unique_for(window)).await.unwrap();
    assert_eq!(faults.fired(), 1);
    assert_eq!(bodies(&broker, 1).await.len(), 1, "published");
    let again = producer.send(call().unique_for(window)).await.unwrap();
    assert_eq!(again, id, "a second call is the first one's duplicate");
    assert_eq!(broker.depth("default").ready, 0, "published once");
}

/// A cancel recorded whose answer was lost is asked again with the same note: `Cancelled`,
/// not `AlreadyCancelled`; a second cancel says `AlreadyCancelled`.
#[tokio::test]
async fn a_cancel_whose_answer_was_lost_says_cancelled() {
    use crate::cancel::CancelOutcome;
    use crate::faults::{Fault, Faults, FaultyNotifier};
    let faults = Faults::new();
    faults.inject("cancel", 1, Fault::LoseAnswer);
    let producer = Producer::new(
        MemoryBroker::new(),
        FaultyNotifier::new(MemoryNotifier::new(), faults.clone()),
    );
    assert_eq!(
        producer.cancel("c-1").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(faults.fired(), 1);
    assert_eq!(
        producer.cancel("c-1").await.unwrap(),
        CancelOutcome::AlreadyCancelled
    );
}

/// What a hook cannot carry fails the send, naming why (it was dropped silently); a hook's own
/// id is kept.
#[tokio::test]
async fn a_hook_keeps_its_id_and_refuses_what_it_cannot_carry() {
    let broker = MemoryBroker::new();
    let producer = Producer::new(broker.clone(), MemoryNotifier::new());
    for (what, hook) in [
        ("countdown", call().countdown(Duration::from_secs(5))),
        ("expiry", call().expires_in(Duration::from_secs(5))),
        ("unique_for", call().unique_for(Duration::from_secs(5))),
        ("hooks", call().on_success(call())),
    ] {
        let err = producer.send(call().on_success(hook)).await.unwrap_err();
        assert!(err.to_string().contains("a hook cannot"), "{what}: {err}");
    }
    producer
        .send(call().on_failure(call().id("alert-7")))
        .await
        .unwrap();
    let body = bodies(&broker, 1).await.remove(0);
    let env = crate::Envelope::from_slice(&body).unwrap();
    assert_eq!(env.flow.unwrap().on_failure.unwrap().id, "alert-7");
}

/// A unique call whose publish outcome is unknown (the broker may have it) keeps its key: sent
/// again, it is the first call's duplicate, not a second call (the key was given up, and the
/// call went out twice); the error names the call.
#[tokio::test]
async fn a_unique_call_whose_publish_outcome_is_unknown_keeps_its_key() {
    use crate::faults::{Fault, Faults, FaultyBroker};
    let broker = MemoryBroker::new();
    let faults = Faults::new();
    faults.inject("publish", 1, Fault::LoseAnswer);
    let producer = Producer::new(
        FaultyBroker::new(broker.clone(), faults.clone()),
        MemoryNotifier::new(),
    );
    let window = Duration::from_secs(60);
    let err = producer.send(call().unique_for(window)).await.unwrap_err();
    assert!(matches!(err, Error::PublishOutcomeUnknown { .. }), "{err}");
    assert!(err.to_string().contains("of call `"), "{err}");
    producer.send(call().unique_for(window)).await.unwrap();
    assert_eq!(bodies(&broker, 1).await.len(), 1);
    assert_eq!(broker.depth("default").ready, 0, "published once");
}
