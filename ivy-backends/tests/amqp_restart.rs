//! The producer and a consumer ride out a RabbitMQ restart (`rabbitmqctl stop_app` /
//! `start_app`), on a RabbitMQ node of the test's own (`scripts/rabbitmq-node`, port 5687),
//! never the shared one. Needs `rabbitmq-server` and the rights to run it.
#![cfg(feature = "amqp")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ivy_backends::amqp::AmqpBroker;
use ivy_core::conformance::unique;
use ivy_core::{Broker, Consumer, Delivery};
use tokio::time::timeout;

mod common;
use common::own_rabbit::OwnRabbit;
use common::{msg, next_within};

static RABBIT: OwnRabbit = OwnRabbit::new("ivy-test-restart", 5687);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_survive_a_restart() {
    let _node = tokio::task::spawn_blocking(|| RABBIT.start())
        .await
        .unwrap();
    let b = AmqpBroker::connect(&format!("{}?connect_timeout_ms=60000", RABBIT.url()))
        .await
        .expect("the test's own RabbitMQ node");
    let q = unique("amqp-restart");
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    b.publish(msg(&q, "before")).await.unwrap();
    let unsettled = next_within(&mut c, Duration::from_secs(10)).await;
    assert_eq!(unsettled.body(), b"before");

    tokio::task::spawn_blocking(|| RABBIT.ctl(&["stop_app"]))
        .await
        .unwrap();

    // The consumer reports the loss once...
    let lost = timeout(Duration::from_secs(20), c.next())
        .await
        .expect("the consumer notices the restart")
        .expect("consumer open");
    assert!(lost.is_err(), "expected an error, got a delivery");
    // ...and a delivery from the dead connection cannot be settled (it is redelivered).
    assert!(unsettled.ack().await.is_err());

    // A publish while the broker is down waits for it.
    let publisher = {
        let (b, q) = (b.clone(), q.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            b.publish(msg(&q, "during")).await.map(|()| start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !publisher.is_finished(),
        "published while RabbitMQ was down"
    );
    tokio::task::spawn_blocking(|| RABBIT.ctl(&["start_app"]))
        .await
        .unwrap();
    let waited = timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publish finishes once RabbitMQ is back")
        .unwrap()
        .expect("publish succeeds once RabbitMQ is back");
    eprintln!("publish waited {waited:?} for RabbitMQ");

    // The consumer reconnects by itself and gets both messages.
    let mut bodies = BTreeSet::new();
    while bodies.len() < 2 {
        match timeout(Duration::from_secs(30), c.next())
            .await
            .expect("deliveries after the restart")
            .expect("consumer open")
        {
            Ok(d) => {
                bodies.insert(String::from_utf8(d.body().to_vec()).unwrap());
                d.ack().await.unwrap();
            }
            Err(e) => eprintln!("consumer error while reconnecting: {e}"),
        }
    }
    assert_eq!(
        bodies,
        BTreeSet::from(["before".to_owned(), "during".to_owned()])
    );
}
