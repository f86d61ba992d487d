//! SQS against a moto server of this test's own that is restarted, so that every queue
//! vanishes (as a queue deleted on AWS does): queues are created again when missing.
#![cfg(feature = "sqs")]

use std::time::Duration;

use ivy_backends::sqs::SqsBroker;
use ivy_core::conformance::unique;
use ivy_core::{Broker, Consumer, Delivery};
use tokio::time::{timeout, Instant};

mod common;
use common::moto::Moto;
use common::{msg, next_delivery_within, next_within};

/// The port of this file's moto (the shared one is 4566).
const PORT: u16 = 4570;
const STEP: Duration = Duration::from_secs(30);

async fn queue_exists(b: &SqsBroker, name: &str) -> bool {
    b.client()
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_queues_are_created_again() {
    let mut moto = tokio::task::block_in_place(|| Moto::start(PORT));
    let q = unique("vanish");
    let producer = SqsBroker::from_url(&moto.url("")).await.expect("broker");
    let worker = SqsBroker::from_url(&moto.url("wait_time=1"))
        .await
        .expect("broker");

    // Both brokers know the queues' URLs before they vanish.
    let mut c = worker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    producer.publish(msg(&q, b"before")).await.expect("publish");
    let d = next_within(&mut c, STEP).await;
    assert_eq!(d.body(), b"before");
    d.dead_letter("first".into()).await.expect("dead_letter");
    let dead = producer.take_dead_letters(&q, 1).await.expect("take");
    assert_eq!(dead.len(), 1);

    tokio::task::block_in_place(|| moto.restart());
    assert!(!queue_exists(&producer, &q).await, "moto kept the queue");

    // The consumer polls a queue that is gone: it creates it again.
    let deadline = Instant::now() + STEP;
    while !queue_exists(&producer, &q).await {
        assert!(
            Instant::now() < deadline,
            "the consumer did not create the queue again"
        );
        if let Ok(Some(Err(e))) = timeout(Duration::from_millis(500), c.next()).await {
            eprintln!("consumer error: {}", common::chain(&e));
        }
    }

    // The producer's cached URL is stale; the dead-letter queue is gone too.
    tokio::task::block_in_place(|| moto.restart());
    producer
        .publish(msg(&q, b"after"))
        .await
        .expect("publish after the restart");
    // The consumer may meet the restart (connection refused) before the message.
    let d = next_delivery_within(&mut c, STEP).await;
    assert_eq!(d.body(), b"after");
    d.dead_letter("second".into())
        .await
        .expect("dead_letter after the restart");
    let deadline = Instant::now() + STEP;
    let dead = loop {
        let got = producer.take_dead_letters(&q, 1).await.expect("take");
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter after the restart"
        );
    };
    assert_eq!(
        (dead[0].body.as_slice(), dead[0].reason.as_str()),
        (&b"after"[..], "second")
    );
}
