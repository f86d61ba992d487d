//! Priority queues are opt-in (`?priority_queues=`): by default a work queue is a plain
//! classic queue, a listed one gets `x-max-priority` 9, and a queue that already exists with
//! the other kind (declared by an Ivy that made every classic queue a priority queue) is used
//! as it is by producers and workers alike, its priorities honoured or not as it was declared.
#![cfg(feature = "amqp")]

use std::time::Duration;

use ivy_backends::amqp::AmqpBroker;
use ivy_core::conformance::unique;
use ivy_core::{Broker, Delivery};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

mod common;
use common::{amqp_url, msg, next_within};

async fn raw() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ (run scripts/services)")
}

fn priority_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    args
}

/// Declares `queue` durable with `args` on a channel of its own; whether RabbitMQ took it
/// (it refuses a declaration whose arguments differ from the existing queue's).
async fn declares(conn: &Connection, queue: &str, args: FieldTable) -> bool {
    let channel = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let ok = channel
        .queue_declare(queue.into(), durable, args)
        .await
        .is_ok();
    let _ = channel.close(200, "done".into()).await;
    ok
}

/// Publishes low, low, high priority to `q` through `broker`, then consumes the first.
async fn first_of_low_low_high(broker: &AmqpBroker, q: &str) -> Vec<u8> {
    for (body, p) in [("low", 1u8), ("low", 1), ("high", 9)] {
        let mut m = msg(q, body);
        m.priority = Some(p);
        broker.publish(m).await.expect("publish");
    }
    let mut c = broker.consume(&[q.to_owned()], 1).await.expect("consume");
    let d = next_within(&mut c, Duration::from_secs(20)).await;
    let body = d.body().to_vec();
    d.ack().await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queues_are_plain_unless_listed() {
    let conn = raw().await;
    let plain = unique("amqp-prio-plain");
    let listed = unique("amqp-prio-listed");
    let broker = common::amqp_broker(&format!("priority_queues={listed}")).await;
    assert!(
        !broker.capabilities().priorities,
        "not every queue has them"
    );
    broker.publish(msg(&plain, "a")).await.unwrap();
    broker.publish(msg(&listed, "a")).await.unwrap();
    assert!(declares(&conn, &plain, FieldTable::default()).await);
    assert!(!declares(&conn, &plain, priority_args()).await);
    assert!(declares(&conn, &listed, priority_args()).await);
    assert!(!declares(&conn, &listed, FieldTable::default()).await);
    // A listed queue honours priorities; a plain one delivers in order.
    assert_eq!(first_of_low_low_high(&broker, &listed).await, b"high");
    let fresh = unique("amqp-prio-fifo");
    assert_eq!(first_of_low_low_high(&broker, &fresh).await, b"low");
    let all = common::amqp_broker("priority_queues=*").await;
    assert!(all.capabilities().priorities);
}

/// A queue that an earlier Ivy declared with `x-max-priority` keeps working, priorities
/// included, for a producer and a worker that do not list it, each on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_priority_queue_is_used_as_it_is() {
    let conn = raw().await;
    let q = unique("amqp-prio-existing");
    assert!(declares(&conn, &q, priority_args()).await);
    let producer = common::amqp_broker("").await;
    let worker = common::amqp_broker("").await;
    for (body, p) in [("low", 1u8), ("low", 1), ("high", 9)] {
        let mut m = msg(&q, body);
        m.priority = Some(p);
        producer
            .publish(m)
            .await
            .expect("publish to the existing queue");
    }
    let mut c = worker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume the existing queue");
    let d = next_within(&mut c, Duration::from_secs(20)).await;
    assert_eq!(d.body(), b"high");
    d.ack().await.unwrap();
    // Still a priority queue: nothing re-declared it.
    assert!(declares(&conn, &q, priority_args()).await);
    // And the other way round: listed, but it exists plain.
    let plain = unique("amqp-prio-existing-plain");
    assert!(declares(&conn, &plain, FieldTable::default()).await);
    let listing = common::amqp_broker(&format!("priority_queues={plain}")).await;
    assert_eq!(first_of_low_low_high(&listing, &plain).await, b"low");
}
