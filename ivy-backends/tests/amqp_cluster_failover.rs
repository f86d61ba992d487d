//! Losing a RabbitMQ node loses nothing: on the 3-node test cluster (`scripts/rabbitmq-cluster`)
//! with quorum queues and a URL naming all three nodes, the node the consumer is connected to
//! is SIGKILLed, then the node the producer is connected to. Every confirmed message is
//! delivered (at least once), the clients move to other nodes by themselves, and no publish
//! waits forever. The killed nodes are started again at the end.
#![cfg(feature = "amqp")]

use std::collections::BTreeSet;
use std::time::Duration;

use ivy_backends::amqp::AmqpBroker;
use ivy_core::conformance::unique;
use ivy_core::{Broker, Consumer, Delivery};
use tokio::time::{timeout, Instant};

mod common;
use common::cluster::{amqp_cluster_url, rabbit_node_number, wait_quorum_online, KilledRabbits};
use common::{chain, msg};

async fn broker() -> AmqpBroker {
    AmqpBroker::connect(&format!("{}&connect_timeout_ms=60000", amqp_cluster_url()))
        .await
        .expect("the RabbitMQ test cluster must be running (scripts/rabbitmq-cluster start)")
}

/// Publishes `bodies`, each confirmed (or failing: then the test fails, naming why).
async fn publish_all(b: &AmqpBroker, q: &str, bodies: impl Iterator<Item = String>) {
    for body in bodies {
        let sent = timeout(Duration::from_secs(90), b.publish(msg(q, &body)))
            .await
            .unwrap_or_else(|_| panic!("publish of {body} still waiting after 90 s"));
        if let Err(e) = sent {
            panic!("publish of {body} failed: {}", chain(&e));
        }
    }
}

/// Takes deliveries (acking each) until every body in `want` has been seen.
async fn receive_all<C: Consumer>(c: &mut C, want: &BTreeSet<String>, seen: &mut BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !want.is_subset(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, c.next()).await {
            Ok(Some(Ok(d))) => {
                seen.insert(String::from_utf8(d.body().to_vec()).unwrap());
                // An ack on a connection that died is lost; the message comes again.
                let _ = d.ack().await;
            }
            Ok(Some(Err(e))) => eprintln!("consumer error (it reconnects): {}", chain(&e)),
            Ok(None) => panic!("the consumer closed"),
            Err(_) => {
                let missing: Vec<_> = want.difference(seen).take(10).collect();
                panic!(
                    "after 90 s, {} messages never came, e.g. {missing:?}",
                    want.difference(seen).count()
                );
            }
        }
    }
}

// Ignored: about one run in two, a publish after a node's SIGKILL stays unconfirmed for the
// whole 60 s timeout (every retry on a new connection too), although RabbitMQ's log shows the
// quorum queue with a new leader 0.4 s after the kill; not understood yet (issue 22's note).
// Run it with `cargo test -p ivy-backends --all-features --test amqp_cluster_failover --
// --ignored` after `scripts/rabbitmq-cluster start`. The chaos run's cluster path kills the
// same nodes under load and is part of scripts/test.
#[ignore = "a publish after a node's SIGKILL sometimes stays unconfirmed for 60 s; see the comment"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_consumers_node_and_then_the_producers_loses_nothing() {
    let mut killed = KilledRabbits::default();
    let consumer_side = broker().await;
    let producer = broker().await;
    let q = unique("cluster-failover");
    let mut c = consumer_side
        .consume(std::slice::from_ref(&q), 10)
        .await
        .unwrap();
    let batch = |from: usize, to: usize| (from..to).map(|i| format!("m{i}"));
    let mut seen = BTreeSet::new();

    publish_all(&producer, &q, batch(0, 100)).await;
    receive_all(&mut c, &batch(0, 100).collect(), &mut seen).await;

    // The consumer's node dies (once every member of the queue is online: a member still
    // starting, as on a cluster just formed, would leave a minority).
    let queue = q.clone();
    tokio::task::spawn_blocking(move || wait_quorum_online(&queue))
        .await
        .unwrap();
    let consumer_node = consumer_side
        .connected_node()
        .expect("the consumer's node is known");
    eprintln!("killing the consumer's node {consumer_node}");
    killed.kill(&rabbit_node_number(&consumer_node));
    publish_all(&producer, &q, batch(100, 200)).await;
    receive_all(&mut c, &batch(0, 200).collect(), &mut seen).await;
    let moved_to = consumer_side.connected_node().unwrap();
    assert_ne!(moved_to, consumer_node, "the consumer is on another node");

    // Two nodes down of three is a minority, where quorum queues stop: bring it back first.
    killed = tokio::task::spawn_blocking(move || {
        killed.restart();
        killed
    })
    .await
    .unwrap();

    let queue = q.clone();
    tokio::task::spawn_blocking(move || wait_quorum_online(&queue))
        .await
        .unwrap();
    // Then the producer's (after a publish, so it is connected somewhere alive).
    let producer_node = producer
        .connected_node()
        .expect("the producer's node is known");
    eprintln!("killing the producer's node {producer_node}");
    killed.kill(&rabbit_node_number(&producer_node));
    publish_all(&producer, &q, batch(200, 300)).await;
    assert_ne!(producer.connected_node().unwrap(), producer_node);
    receive_all(&mut c, &batch(0, 300).collect(), &mut seen).await;
    assert_eq!(seen.len(), 300);
}
