//! PROTOCOL.md §1 "AMQP", checked the way a client in another language meets it: a raw AMQP
//! client (lapin, without Ivy) declares the queues with the documented arguments and reads the
//! messages Ivy sends, against the shared RabbitMQ. RabbitMQ refuses a declaration whose
//! durability or arguments differ from the existing queue's (`PRECONDITION_FAILED`), so a
//! declaration that succeeds proves the document and the code agree.
#![cfg(feature = "amqp")]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ivy::backends::amqp::AmqpBroker;
use ivy::{Broker, Consumer, Delivery, OutgoingMessage};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn amqp_url() -> String {
    std::env::var("IVY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A fresh queue name that scripts/clean-test-queues removes later (`ivy-conf-*`).
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ivy-conf-protocol-{tag}-{}-{nanos}", std::process::id())
}

fn ivy_broker(quorum: bool) -> AmqpBroker {
    let url = if quorum {
        format!("{}?queue_type=quorum", amqp_url())
    } else {
        amqp_url()
    };
    AmqpBroker::from_url(&url).expect("the AMQP URL")
}

async fn raw() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ (run scripts/services)")
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The queue arguments of PROTOCOL.md §1, written as another client would: integers as
/// 32-bit signed (`I`), which RabbitMQ treats as equal to Ivy's own integer widths. A classic
/// work queue is plain unless listed in `?priority_queues=` ([`priority_work_args`]).
fn work_args(quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    args
}

/// A classic work queue listed in `?priority_queues=`.
fn priority_work_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(9));
    args
}

fn dead_args(quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    args
}

fn delay_args(queue: &str, ms: i32, quorum: bool) -> FieldTable {
    let mut args = dead_args(quorum);
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
    args.insert("x-expires".into(), AMQPValue::LongInt(ms + 120_000));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(queue));
    if quorum {
        // At-least-once dead-lettering, and the overflow mode it needs (PROTOCOL.md §1).
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares `name` on a channel of its own (a refusal closes the channel).
async fn declare(
    conn: &Connection,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    channel.queue_declare(name.into(), options, args).await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

async fn declare_as_documented(conn: &Connection, name: &str, args: FieldTable) {
    if let Err(e) = declare(conn, name, durable(), args).await {
        panic!("declaring `{name}` as PROTOCOL.md says was refused: {e}");
    }
}

async fn refused(conn: &Connection, name: &str, options: QueueDeclareOptions, args: FieldTable) {
    let e = declare(conn, name, options, args)
        .await
        .expect_err("a declaration that differs from the queue's is refused");
    assert!(e.to_string().contains("PRECONDITION_FAILED"), "{name}: {e}");
}

/// Polls `queue` with `basic.get` until a message arrives (or the deadline passes).
async fn get(conn: &Connection, queue: &str, within: Duration) -> BasicGetMessage {
    let channel = conn.create_channel().await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap();
        if let Some(got) = got {
            got.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            return got;
        }
        assert!(Instant::now() < deadline, "nothing arrived in `{queue}`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    p.headers().as_ref()?.inner().get(name)
}

/// Ivy declared the work, dead-letter and delay queues: declaring them again as the document
/// says succeeds, and a declaration that differs in one argument is refused (so the check
/// has teeth). A 1001 ms delay goes to the 1100 ms bucket.
#[tokio::test]
async fn ivy_declares_the_documented_queues() {
    let conn = raw().await;
    for quorum in [false, true] {
        let q = unique(if quorum {
            "decl-quorum"
        } else {
            "decl-classic"
        });
        let broker = ivy_broker(quorum);
        for delay in [None, Some(1000), Some(1001)] {
            let mut msg = OutgoingMessage::new("decl", q.clone(), b"{}".to_vec());
            if let Some(ms) = delay {
                msg = msg.with_delay(Duration::from_millis(ms));
            }
            broker.publish(msg).await.unwrap();
        }
        declare_as_documented(&conn, &q, work_args(quorum)).await;
        declare_as_documented(&conn, &format!("{q}.dead"), dead_args(quorum)).await;
        for ms in [1000, 1100] {
            let delay = format!("{q}.delay.{ms}");
            declare_as_documented(&conn, &delay, delay_args(&q, ms, quorum)).await;
        }

        let transient = QueueDeclareOptions::default();
        refused(&conn, &q, transient, work_args(quorum)).await;
        let other = if quorum {
            FieldTable::default()
        } else {
            priority_work_args()
        };
        refused(&conn, &q, durable(), other).await;
        let delay = format!("{q}.delay.1000");
        refused(&conn, &delay, durable(), delay_args(&q, 1001, quorum)).await;
        let mut no_expiry = dead_args(quorum);
        for (k, v) in delay_args(&q, 1000, quorum).inner() {
            if k.as_str() != "x-expires" {
                no_expiry.insert(k.clone(), v.clone());
            }
        }
        refused(&conn, &delay, durable(), no_expiry).await;
        refused(
            &conn,
            &delay,
            durable(),
            delay_args("elsewhere", 1000, quorum),
        )
        .await;
    }
}

/// A classic queue listed in `?priority_queues=` (or all, with `*`) is declared with
/// `x-max-priority` 9; the others stay plain.
#[tokio::test]
async fn listed_queues_are_declared_with_priorities() {
    let conn = raw().await;
    let listed = unique("decl-priority");
    let plain = unique("decl-plain");
    let all = unique("decl-all");
    let url = format!("{}?priority_queues={listed}", amqp_url());
    let broker = AmqpBroker::from_url(&url).expect("the AMQP URL");
    for q in [&listed, &plain] {
        let msg = OutgoingMessage::new("decl", q.clone(), b"{}".to_vec());
        broker.publish(msg).await.unwrap();
    }
    let every = AmqpBroker::from_url(&format!("{}?priority_queues=*", amqp_url())).unwrap();
    let msg = OutgoingMessage::new("decl", all.clone(), b"{}".to_vec());
    every.publish(msg).await.unwrap();
    declare_as_documented(&conn, &listed, priority_work_args()).await;
    declare_as_documented(&conn, &all, priority_work_args()).await;
    declare_as_documented(&conn, &plain, work_args(false)).await;
    declare_as_documented(&conn, &format!("{listed}.dead"), dead_args(false)).await;
    refused(&conn, &listed, durable(), work_args(false)).await;
    refused(&conn, &plain, durable(), priority_work_args()).await;
}

/// A client that declares the queues first, as the document says, does not stop Ivy from
/// publishing to them (immediately and through a delay bucket).
#[tokio::test]
async fn queues_declared_from_the_document_take_ivys_messages() {
    let conn = raw().await;
    for quorum in [false, true] {
        let q = unique(if quorum {
            "first-quorum"
        } else {
            "first-classic"
        });
        declare_as_documented(&conn, &q, work_args(quorum)).await;
        declare_as_documented(&conn, &format!("{q}.dead"), dead_args(quorum)).await;
        let delay = format!("{q}.delay.1000");
        declare_as_documented(&conn, &delay, delay_args(&q, 1000, quorum)).await;

        let broker = ivy_broker(quorum);
        let now = OutgoingMessage::new("first-now", q.clone(), b"{}".to_vec());
        broker
            .publish(now)
            .await
            .expect("publish to queues declared first");
        let later = OutgoingMessage::new("first-later", q.clone(), b"{}".to_vec())
            .with_delay(Duration::from_millis(1000));
        broker
            .publish(later)
            .await
            .expect("publish through a delay queue declared first");
    }
}

/// The properties Ivy sends, read with a raw client: persistent, the task id as message id,
/// the priority (classic queues only), and nothing else: no content type, no headers. A
/// delayed message reaches the work queue with the same properties plus RabbitMQ's `x-death`.
#[tokio::test]
async fn the_documented_properties_are_sent() {
    let conn = raw().await;
    for quorum in [false, true] {
        let q = unique(if quorum {
            "props-quorum"
        } else {
            "props-classic"
        });
        let broker = ivy_broker(quorum);
        let body = br#"{"not":"checked here"}"#.to_vec();
        let msg = OutgoingMessage::new("task-id-1", q.clone(), body.clone()).with_priority(3);
        broker.publish(msg).await.unwrap();
        let got = get(&conn, &q, Duration::from_secs(10)).await;
        let p = &got.delivery.properties;
        assert_eq!(
            got.delivery.data, body,
            "the body is the payload, byte for byte"
        );
        assert_eq!(got.delivery.exchange.as_str(), "", "the default exchange");
        assert_eq!(got.delivery.routing_key.as_str(), q, "routing key = queue");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some("task-id-1")
        );
        assert_eq!(*p.priority(), if quorum { None } else { Some(3) });
        assert_eq!(*p.content_type(), None, "no content type is sent");
        assert_eq!(*p.content_encoding(), None);
        // Ivy sends no headers; a quorum queue adds its delivery count on the way out.
        let headers: Vec<&str> = p
            .headers()
            .iter()
            .flat_map(|h| h.inner().keys())
            .map(|k| k.as_str())
            .collect();
        let added: &[&str] = if quorum { &["x-delivery-count"] } else { &[] };
        assert_eq!(headers, added);
        assert_eq!(*p.expiration(), None, "no per-message TTL");

        let delayed = OutgoingMessage::new("task-id-2", q.clone(), body.clone())
            .with_priority(3)
            .with_delay(Duration::from_millis(200));
        broker.publish(delayed).await.unwrap();
        let got = get(&conn, &q, Duration::from_secs(10)).await;
        let p = &got.delivery.properties;
        assert_eq!(got.delivery.data, body);
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some("task-id-2")
        );
        assert_eq!(*p.priority(), if quorum { None } else { Some(3) });
        assert!(
            header(p, "x-death").is_some(),
            "RabbitMQ's dead-letter history"
        );
    }
}

/// A retry goes through the delay bucket with the original's message id and priority; a dead
/// letter goes to `<queue>.dead` with them and the reason in `x-ivy-reason`.
#[tokio::test]
async fn retries_and_dead_letters_keep_the_properties() {
    let conn = raw().await;
    let q = unique("settle");
    let broker = ivy_broker(false);
    let msg = OutgoingMessage::new("settle-id", q.clone(), b"first".to_vec()).with_priority(7);
    broker.publish(msg).await.unwrap();
    let mut consumer = broker.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let next = async |c: &mut ivy::backends::amqp::AmqpConsumer| {
        tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("a delivery")
            .expect("the stream goes on")
            .expect("no error")
    };

    let d = next(&mut consumer).await;
    d.retry(b"second".to_vec(), Duration::from_millis(1001))
        .await
        .unwrap();
    // The retry's bucket exists with the documented arguments.
    let bucket = format!("{q}.delay.1100");
    declare_as_documented(&conn, &bucket, delay_args(&q, 1100, false)).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.body(), b"second");
    assert_eq!(d.message_id(), Some("settle-id"));
    assert_eq!(d.priority(), Some(7));

    d.dead_letter("why it died".into()).await.unwrap();
    drop(consumer);
    let got = get(&conn, &format!("{q}.dead"), Duration::from_secs(10)).await;
    let p = &got.delivery.properties;
    assert_eq!(got.delivery.data, b"second", "dead letters keep the body");
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some("settle-id")
    );
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(*p.content_type(), None);
    assert_eq!(header(p, "x-ivy-reason"), Some(&text("why it died")));
}

/// PROTOCOL.md §2 "Size limits": what Ivy publishes to RabbitMQ.
#[test]
fn the_documented_size_limit_is_the_brokers() {
    let doc = include_str!("../PROTOCOL.md");
    let row = "| what Ivy publishes to RabbitMQ |";
    let line = doc.lines().find(|l| l.starts_with(row)).expect(row);
    let cell = line.split('|').nth(2).unwrap().split_whitespace().next();
    let documented: usize = cell.unwrap().replace(',', "").parse().unwrap();
    let limit = ivy_broker(false).capabilities().max_message_size;
    assert_eq!(limit, documented);
}
