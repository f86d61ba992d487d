//! The producer's unit tests: configuring a keyring before and after cloning or use.

use super::*;
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
