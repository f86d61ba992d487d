//! The producer and a consumer ride out a RabbitMQ restart (`rabbitmqctl stop_app` /
//! `start_app`).
//!
//! This stops the shared local RabbitMQ for a few seconds, breaking whatever else uses it
//! meanwhile, so it is ignored by default and lives in a test binary of its own:
//! `cargo test -p ivy-backends --features amqp --test amqp_restart -- --ignored`.
//! It starts RabbitMQ again even when it fails. Needs `rabbitmqctl` and the rights to use it.
#![cfg(feature = "amqp")]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ivy_backends::amqp::AmqpBroker;
use ivy_core::conformance::unique;
use ivy_core::{Broker, Consumer, Delivery};
use tokio::time::timeout;

mod common;
use common::{amqp_url as url, msg, next_within};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?}: {status}");
}

/// Starts the RabbitMQ application again when dropped, also while unwinding.
struct KeepRabbitUp;

impl Drop for KeepRabbitUp {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ; run with --ignored"]
async fn producer_and_consumer_survive_a_restart() {
    let b = AmqpBroker::connect(&format!("{}?connect_timeout_ms=60000", url()))
        .await
        .expect("RabbitMQ must be running (scripts/services)");
    let q = unique("amqp-restart");
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    b.publish(msg(&q, "before")).await.unwrap();
    let unsettled = next_within(&mut c, Duration::from_secs(10)).await;
    assert_eq!(unsettled.body(), b"before");

    let _guard = KeepRabbitUp;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
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
    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
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
