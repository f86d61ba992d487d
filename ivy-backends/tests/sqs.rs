//! SQS behaviour beyond the conformance suite: heartbeats, long delays, FIFO queues, size
//! limits, dead letters, URLs (`IVY_TEST_SQS_URL`, default the local moto server).
#![cfg(feature = "sqs")]

use std::time::Duration;

use ivy_backends::sqs::{SqsBroker, MAX_MESSAGE_SIZE};
use ivy_core::conformance::{unique, wait_dead_letters};
use ivy_core::{Broker, Consumer, Delivery, Error};
use tokio::time::{timeout, Instant};

mod common;
use common::{msg, next_within, sqs_broker as broker};

const STEP: Duration = Duration::from_secs(30);

async fn next<C: Consumer>(c: &mut C) -> C::Delivery {
    next_within(c, STEP).await
}

async fn nothing_for<C: Consumer>(c: &mut C, d: Duration, what: &str) {
    if let Ok(got) = timeout(d, c.next()).await {
        let body = got.map(|r| r.map(|d| String::from_utf8_lossy(d.body()).into_owned()));
        panic!("{what}: got {body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_visibility_timeout_runs_once() {
    let b = broker("visibility_timeout=2").await;
    let q = unique("heartbeat");
    b.publish(msg(&q, b"long task")).await.expect("publish");
    let mut worker = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next(&mut worker).await;
    assert_eq!(d.body(), b"long task");
    // Another worker polls while the first holds the message for 2.5 visibility timeouts.
    let mut other = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    nothing_for(
        &mut other,
        Duration::from_secs(5),
        "the held message was delivered twice",
    )
    .await;
    d.ack().await.expect("ack");
    nothing_for(
        &mut other,
        Duration::from_secs(3),
        "an acked message came back",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_longer_than_one_sqs_hop_are_kept() {
    // One-second hops stand in for SQS's 15 minutes.
    let b = broker("max_delay=1").await;
    let q = unique("long-delay");
    let delay = Duration::from_millis(3500);
    let mut m = msg(&q, b"patient");
    m.delay = Some(delay);
    let start = Instant::now();
    b.publish(m).await.expect("publish");
    b.publish(msg(&q, b"now")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 4)
        .await
        .expect("consume");
    let first = next(&mut c).await;
    assert_eq!(first.body(), b"now");
    first.ack().await.expect("ack");
    let d = next(&mut c).await;
    let waited = start.elapsed();
    assert_eq!(d.body(), b"patient");
    assert!(
        waited >= delay,
        "delivered after {waited:?}, before {delay:?}"
    );
    assert!(!d.redelivered(), "a re-sent delay is not a redelivery");
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queues_keep_order_and_take_retries_and_delays() {
    let b = broker("").await;
    let q = format!("{}.fifo", unique("fifo"));
    for i in 0..20 {
        b.publish(msg(&q, format!("{i}").as_bytes()))
            .await
            .expect("publish");
    }
    let mut c = b
        .consume(std::slice::from_ref(&q), 10)
        .await
        .expect("consume");
    for i in 0..20 {
        let d = next(&mut c).await;
        assert_eq!(
            d.body(),
            format!("{i}").as_bytes(),
            "message {i} out of order"
        );
        d.ack().await.expect("ack");
    }

    // A retry is not deduplicated against the original (same task id).
    b.publish(msg(&q, b"try 0")).await.expect("publish");
    let d = next(&mut c).await;
    d.retry(b"try 1".to_vec(), Duration::ZERO)
        .await
        .expect("retry");
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"try 1");
    d.ack().await.expect("ack");

    // A delayed message neither arrives early nor holds up the group.
    let mut m = msg(&q, b"later");
    let delay = Duration::from_millis(2500);
    m.delay = Some(delay);
    let start = Instant::now();
    b.publish(m).await.expect("publish");
    b.publish(msg(&q, b"now")).await.expect("publish");
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"now");
    d.ack().await.expect("ack");
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"later");
    assert!(
        start.elapsed() >= delay,
        "delivered after {:?}",
        start.elapsed()
    );
    d.ack().await.expect("ack");
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_sending() {
    // With create_queues=false and no such queue, anything sent would fail differently.
    let b = broker("create_queues=false").await;
    let q = unique("missing");
    match b.publish(msg(&q, vec![b'x'; MAX_MESSAGE_SIZE + 1])).await {
        Err(Error::MessageTooLarge { size, limit }) => {
            assert_eq!((size, limit), (MAX_MESSAGE_SIZE + 1, MAX_MESSAGE_SIZE))
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // Binary bodies travel base64-encoded: the encoded size counts.
    match b.publish(msg(&q, vec![0u8; 200_000])).await {
        Err(Error::MessageTooLarge { size, .. }) => assert!(size > MAX_MESSAGE_SIZE),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // In a bulk send the oversized message fails alone: the other one is sent (and fails
    // here only because the queue is missing).
    let batch = vec![msg(&q, b"fine"), msg(&q, vec![b'x'; MAX_MESSAGE_SIZE + 1])];
    let sent = b.publish_many(batch).await;
    assert!(
        matches!(
            sent[..],
            [
                Err(Error::Backend { .. }),
                Err(Error::MessageTooLarge { .. })
            ]
        ),
        "{sent:?}"
    );
    // The queue really is missing.
    assert!(matches!(
        b.publish(msg(&q, b"small")).await,
        Err(Error::Backend { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_body_and_reason() {
    let b = broker("").await;
    let q = unique("dead");
    assert!(b.take_dead_letters(&q, 10).await.expect("take").is_empty());
    let bodies: [&[u8]; 3] = [b"{\"json\": true}", b"\x00\xff binary", b""];
    for body in bodies {
        b.publish(msg(&q, body)).await.expect("publish");
    }
    let mut c = b
        .consume(std::slice::from_ref(&q), 3)
        .await
        .expect("consume");
    for _ in 0..3 {
        let d = next(&mut c).await;
        let reason = format!("bad input \0 of {} bytes", d.body().len());
        d.dead_letter(reason).await.expect("dead_letter");
    }
    let dead = wait_dead_letters(&b, &q, 3).await;
    for body in bodies {
        let letter = dead
            .iter()
            .find(|l| l.body == body)
            .unwrap_or_else(|| panic!("{body:?} not dead-lettered: {dead:?}"));
        assert_eq!(letter.queue, q);
        assert_eq!(
            letter.reason,
            format!("bad input \u{FFFD} of {} bytes", body.len())
        );
    }
    assert!(b.take_dead_letters(&q, 10).await.expect("take").is_empty());
    nothing_for(
        &mut c,
        Duration::from_secs(2),
        "a dead letter was redelivered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_buffered_messages_return_before_the_timeout() {
    // The default 30 s visibility timeout: anything seen sooner was released on purpose.
    let b = broker("").await;
    let q = unique("release");
    for body in [&b"a"[..], b"b", b"c"] {
        b.publish(msg(&q, body)).await.expect("publish");
    }
    let start = Instant::now();
    let mut c = b
        .consume(std::slice::from_ref(&q), 3)
        .await
        .expect("consume");
    let mut got = vec![next(&mut c).await];
    // Whatever else the first receive brought stays buffered until `close` gives it back.
    c.close().await.expect("close");
    assert!(
        c.next().await.is_none(),
        "a closed consumer delivers nothing"
    );
    drop(got.pop());
    let mut c = b
        .consume(std::slice::from_ref(&q), 3)
        .await
        .expect("consume");
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = next(&mut c).await;
        bodies.push(d.body().to_vec());
        d.ack().await.expect("ack");
    }
    bodies.sort();
    assert_eq!(bodies, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_publish_in_tens() {
    let b = broker("").await;
    let q = unique("batch");
    let batch: Vec<_> = (0..25)
        .map(|i| msg(&q, format!("{i}").as_bytes()))
        .collect();
    for sent in b.publish_many(batch).await {
        sent.expect("publish_many");
    }
    let mut c = b
        .consume(std::slice::from_ref(&q), 10)
        .await
        .expect("consume");
    let mut seen = Vec::new();
    for _ in 0..25 {
        let d = next(&mut c).await;
        seen.push(
            String::from_utf8(d.body().to_vec())
                .expect("text")
                .parse::<u32>()
                .expect("n"),
        );
        d.ack().await.expect("ack");
    }
    seen.sort();
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_queues_are_consumed() {
    let b = broker("wait_time=1").await;
    let (q1, q2) = (unique("multi-a"), unique("multi-b"));
    b.publish(msg(&q2, b"two")).await.expect("publish");
    b.publish(msg(&q1, b"one")).await.expect("publish");
    let mut c = b
        .consume(&[q1.clone(), q2.clone()], 2)
        .await
        .expect("consume");
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next(&mut c).await;
        got.push((d.queue().to_owned(), d.body().to_vec()));
        d.ack().await.expect("ack");
    }
    got.sort();
    assert_eq!(got, [(q1, b"one".to_vec()), (q2, b"two".to_vec())]);
}

#[tokio::test]
async fn missing_queues_are_not_created_when_told_not_to() {
    let b = broker("create_queues=false").await;
    match b.consume(&[unique("absent")], 1).await {
        Err(Error::Backend { source, .. }) => {
            assert!(
                source.to_string().contains("create_queues=false"),
                "{source}"
            )
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(matches!(
        b.consume(&["bad name!".to_owned()], 1).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn bad_urls_are_url_errors() {
    for url in [
        "amqp://127.0.0.1",
        "sqs://AKIA:secret@127.0.0.1:4566?region=us-east-1",
        "sqs://127.0.0.1:port?region=us-east-1",
        "sqs://127.0.0.1:4566/queue?region=us-east-1",
        "sqs://127.0.0.1:4566?region=us-east-1&wait_time=30",
        "sqs://127.0.0.1:4566?region=us-east-1&visibility_timeout=0",
        "sqs://127.0.0.1:4566?region=us-east-1&create_queues=no",
        "sqs://127.0.0.1:4566?region=us-east-1&max_delay=901",
        "sqs://127.0.0.1:4566?region=us-east-1&queue=x",
        "sqs://127.0.0.1:4566?region=us-east-1&region=eu-west-1",
        "sqs://?tls=true&region=us-east-1",
    ] {
        match SqsBroker::from_url(url).await {
            Err(Error::Url { url: shown, reason }) => {
                assert!(
                    !shown.contains("secret") && !reason.contains("secret"),
                    "{shown}: {reason}"
                );
            }
            other => panic!("{url}: expected a URL error, got {other:?}"),
        }
    }
}
