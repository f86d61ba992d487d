//! RabbitMQ specifics beyond the conformance suite: delay buckets, settlement after the
//! consumer is gone, `close`, dead-letter order, URLs and unreachable brokers.
#![cfg(feature = "amqp")]

use std::time::{Duration, Instant};

use ivy_backends::amqp::{AmqpBroker, AmqpConsumer, AmqpDelivery};
use ivy_backends::{broker_from_url, AnyBroker};
use ivy_core::conformance::unique;
use ivy_core::{Broker, Consumer, Delivery, Error};

mod common;
use common::{amqp_url as url, chain, msg, next_within};

async fn broker() -> AmqpBroker {
    common::amqp_broker("").await
}

async fn next(c: &mut AmqpConsumer) -> AmqpDelivery {
    next_within(c, Duration::from_secs(20)).await
}

/// Waits (up to 20 s) until `queue` holds exactly `ready` messages ready for delivery, as
/// RabbitMQ counts them (a passive declare on a connection of the test's own).
async fn until_ready(queue: &str, ready: u32, what: &str) {
    let conn = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("a channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = ch
            .queue_declare(queue.into(), passive, Default::default())
            .await
            .expect("the queue exists");
        if q.message_count() == ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} ready in {queue}, expected {ready}",
            q.message_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = conn.close(0, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_id_is_the_task_id() {
    let b = broker().await;
    let q = unique("amqp-id");
    let m = msg(&q, "x");
    let id = m.id.clone();
    b.publish(m).await.unwrap();
    let mut c = b.consume(&[q], 1).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.message_id(), Some(id.as_str()));
    d.ack().await.unwrap();
}

/// Per-message TTLs only expire at the head of a queue; buckets keep a long delay from
/// holding back a short one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_delay_does_not_hold_back_a_short_one() {
    let b = broker().await;
    let q = unique("amqp-buckets");
    let start = Instant::now();
    let mut long = msg(&q, "long");
    long.delay = Some(Duration::from_secs(3));
    b.publish(long).await.unwrap();
    let mut short = msg(&q, "short");
    short.delay = Some(Duration::from_millis(300));
    b.publish(short).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), 2).await.unwrap();
    let first = next(&mut c).await;
    assert_eq!(first.body(), b"short");
    let at = start.elapsed();
    assert!(
        at >= Duration::from_millis(300),
        "short delay over after {at:?}"
    );
    assert!(
        at < Duration::from_secs(2),
        "short delay held back until {at:?}"
    );
    let second = next(&mut c).await;
    assert_eq!(second.body(), b"long");
    assert!(start.elapsed() >= Duration::from_secs(3));
    first.ack().await.unwrap();
    second.ack().await.unwrap();
}

/// A retried message keeps its id and priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_keeps_id_and_priority() {
    let b = broker().await;
    let q = unique("amqp-retry-props");
    let mut m = msg(&q, "attempt 0");
    m.priority = Some(7);
    let id = m.id.clone();
    b.publish(m).await.unwrap();
    let mut c = b.consume(&[q], 1).await.unwrap();
    let d = next(&mut c).await;
    d.retry(b"attempt 1".to_vec(), Duration::from_millis(50))
        .await
        .unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"attempt 1");
    assert_eq!(d.message_id(), Some(id.as_str()));
    assert_eq!(d.priority(), Some(7));
    d.ack().await.unwrap();
}

/// A dropped delivery comes back at once (not only when the consumer goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_delivery_returns_to_the_same_consumer() {
    let b = broker().await;
    let q = unique("amqp-drop");
    b.publish(msg(&q, "boomerang")).await.unwrap();
    let mut c = b.consume(&[q], 1).await.unwrap();
    drop(next(&mut c).await);
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"boomerang");
    assert!(d.redelivered());
    d.ack().await.unwrap();
}

/// Deliveries outlive their consumer, but settling them then fails visibly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_after_the_consumer_is_gone_is_an_error() {
    let b = broker().await;
    let q = unique("amqp-orphan");
    b.publish(msg(&q, "orphan")).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let d = next(&mut c).await;
    drop(c);
    // The channel closes asynchronously; once closed, RabbitMQ puts the message back.
    until_ready(
        &q,
        1,
        "the unacked message returned when the channel closed",
    )
    .await;
    let e = d.ack().await.expect_err("ack on a closed channel");
    assert!(chain(&e).contains("redeliver"), "{}", chain(&e));
    let mut c = b.consume(&[q], 1).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"orphan");
    assert!(d.redelivered());
    d.ack().await.unwrap();
}

/// `close` stops deliveries and gives back the prefetched ones, but handed-out deliveries
/// can still be settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_keeps_handed_out_deliveries_settleable() {
    let b = broker().await;
    let q = unique("amqp-close");
    for body in ["a", "b", "c"] {
        b.publish(msg(&q, body)).await.unwrap();
    }
    let mut c = b.consume(std::slice::from_ref(&q), 3).await.unwrap();
    let a = next(&mut c).await;
    assert_eq!(a.body(), b"a");
    // Wait until the other two reach the client's buffer (none is left ready in the queue).
    until_ready(&q, 0, "all three delivered to the consumer").await;
    c.close().await.unwrap();
    assert!(c.next().await.is_none(), "a closed consumer yields None");
    a.ack().await.expect("ack after close");
    let mut c2 = b.consume(std::slice::from_ref(&q), 3).await.unwrap();
    let mut rest = vec![next(&mut c2).await, next(&mut c2).await];
    rest.sort_by(|x, y| x.body().cmp(y.body()));
    assert_eq!(rest[0].body(), b"b");
    assert_eq!(rest[1].body(), b"c");
    for d in rest {
        d.ack().await.unwrap();
    }
    drop(c);
}

/// Dead letters come back oldest first, at most `max` at a time, and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_oldest_first_up_to_max() {
    let b = broker().await;
    let q = unique("amqp-dead");
    for body in ["1", "2", "3"] {
        b.publish(msg(&q, body)).await.unwrap();
    }
    let mut c = b.consume(std::slice::from_ref(&q), 3).await.unwrap();
    for _ in 0..3 {
        let d = next(&mut c).await;
        let reason = format!("bad {}", String::from_utf8_lossy(d.body()));
        d.dead_letter(reason).await.unwrap();
    }
    let first = b.take_dead_letters(&q, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(
        (&first[0].body[..], &first[0].reason[..]),
        (&b"1"[..], "bad 1")
    );
    assert_eq!(
        (&first[1].body[..], &first[1].reason[..]),
        (&b"2"[..], "bad 2")
    );
    let rest = b.take_dead_letters(&q, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].body, b"3");
    assert_eq!(rest[0].queue, q);
    assert!(b.take_dead_letters(&q, 10).await.unwrap().is_empty());
}

/// A reason longer than an AMQP frame (RabbitMQ's default is 128 KiB) once closed the
/// connection with FRAME_ERROR, so the dead letter was never confirmed and the call ran again:
/// the header carries a cut reason instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reason_longer_than_a_frame_is_cut() {
    let b = broker().await;
    let q = unique("amqp-long-reason");
    b.publish(msg(&q, "body")).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), 1).await.unwrap();
    let d = next(&mut c).await;
    // Two-byte characters, so that a cut at a fixed size would split one.
    let reason = format!("failed: {}", "é".repeat(100_000));
    let whole = reason.len();
    tokio::time::timeout(Duration::from_secs(30), d.dead_letter(reason))
        .await
        .expect("the dead letter is confirmed within 30 s")
        .unwrap();
    let letters = b.take_dead_letters(&q, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body, b"body");
    let cut = &letters[0].reason;
    assert!(cut.len() <= 4 * 1024, "{} bytes", cut.len());
    assert!(cut.starts_with("failed: éé"), "{cut}");
    assert!(
        cut.ends_with(&format!("(cut, {whole} bytes in all)")),
        "{}",
        &cut[cut.len() - 60..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_on_two_queues() {
    let b = broker().await;
    let (q1, q2) = (unique("amqp-two-a"), unique("amqp-two-b"));
    b.publish(msg(&q1, "for a")).await.unwrap();
    b.publish(msg(&q2, "for b")).await.unwrap();
    let mut c = b.consume(&[q1.clone(), q2.clone()], 2).await.unwrap();
    let mut got = vec![next(&mut c).await, next(&mut c).await];
    got.sort_by(|x, y| x.queue().cmp(y.queue()));
    assert_eq!(
        (got[0].queue(), got[0].body()),
        (q1.as_str(), &b"for a"[..])
    );
    assert_eq!(
        (got[1].queue(), got[1].body()),
        (q2.as_str(), &b"for b"[..])
    );
    for d in got {
        d.ack().await.unwrap();
    }
}

/// A consumer of several queues holds at most `prefetch` unsettled deliveries in all (one
/// limit per worker, not one per queue), with classic and with quorum queues.
async fn prefetch_is_one_limit_for_all_queues(options: &str) {
    let b = common::amqp_broker(options).await;
    let (q1, q2) = (unique("amqp-prefetch-a"), unique("amqp-prefetch-b"));
    for i in 0..3 {
        b.publish(msg(&q1, format!("a{i}"))).await.unwrap();
        b.publish(msg(&q2, format!("b{i}"))).await.unwrap();
    }
    let mut c = b.consume(&[q1, q2], 2).await.unwrap();
    let first = next(&mut c).await;
    let second = next(&mut c).await;
    // Per queue, RabbitMQ would send two more at once; give it ample time to show that.
    let third = tokio::time::timeout(Duration::from_secs(1), c.next()).await;
    assert!(
        third.is_err(),
        "a third unsettled delivery with a prefetch of 2: {:?}",
        third.map(|d| d.map(|d| d.map(|d| String::from_utf8_lossy(d.body()).into_owned())))
    );
    first.ack().await.unwrap();
    let third = next(&mut c).await;
    for d in [second, third] {
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_one_limit_for_all_classic_queues() {
    prefetch_is_one_limit_for_all_queues("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_one_limit_for_all_quorum_queues() {
    prefetch_is_one_limit_for_all_queues("queue_type=quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_have_no_priorities() {
    let b = AmqpBroker::connect(&format!("{}?queue_type=quorum", url()))
        .await
        .unwrap();
    assert!(!b.capabilities().priorities);
    let all = common::amqp_broker("priority_queues=*").await;
    assert!(all.capabilities().priorities);
}

/// A queue that exists with other arguments is refused at once (no retrying until the
/// deadline), and the broker goes on serving other queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_existing_queue_is_refused_at_once() {
    let q = unique("amqp-mismatch");
    broker().await.publish(msg(&q, "classic")).await.unwrap();
    let quorum = AmqpBroker::connect(&format!("{}?queue_type=quorum", url()))
        .await
        .unwrap();
    let start = Instant::now();
    let e = quorum
        .publish(msg(&q, "quorum"))
        .await
        .expect_err("a classic queue cannot be declared as quorum");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(chain(&e).contains("PRECONDITION_FAILED"), "{}", chain(&e));
    quorum
        .publish(msg(&unique("amqp-mismatch-other"), "fine"))
        .await
        .expect("other queues still work");
}

/// A publish that went out but was not confirmed in time may be in the queue (and its call
/// may run): it fails with its own error kind, which says so. A connect timeout of 0 ms makes
/// "not in time" certain without a fault: the confirm needs a round trip to RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_has_an_unknown_outcome() {
    let b = common::amqp_broker("connect_timeout_ms=0").await;
    let q = unique("amqp-unconfirmed");
    let e = b
        .publish(msg(&q, "maybe"))
        .await
        .expect_err("no confirm within 0 ms");
    let text = chain(&e);
    match &e {
        Error::PublishOutcomeUnknown { backend, queue, .. } => {
            assert_eq!((*backend, queue.as_str()), ("amqp", q.as_str()))
        }
        other => panic!("expected PublishOutcomeUnknown, got {other:?}"),
    }
    assert!(text.contains("outcome unknown"), "{text}");
    assert!(text.contains("duplicate"), "{text}");
    assert!(text.contains("did not confirm"), "{text}");
    assert!(text.contains("guest:***@"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_before_sending() {
    let b = AmqpBroker::from_url("amqp://guest:guest@127.0.0.1:1/%2f").unwrap();
    let limit = b.capabilities().max_message_size;
    assert_eq!(limit, 128 * 1024 * 1024);
    // Nothing listens on port 1: refusing without a connection proves nothing was sent.
    match b.publish(msg("big", "x".repeat(limit + 1))).await {
        Err(Error::MessageTooLarge { size, limit: l }) => assert_eq!((size, l), (limit + 1, limit)),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_fails_after_the_connect_timeout() {
    let b = AmqpBroker::from_url("amqp://guest:hunter2@127.0.0.1:1/%2f?connect_timeout_ms=700")
        .unwrap();
    let start = Instant::now();
    let e = b
        .publish(msg("nowhere", "x"))
        .await
        .expect_err("unreachable");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "gave up after {took:?}");
    assert!(took < Duration::from_secs(5), "gave up only after {took:?}");
    let text = chain(&e);
    assert!(text.contains("unreachable"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_without_waiting_or_leaking() {
    let bad = url().replacen("guest:guest@", "guest:hunter2@", 1);
    assert_ne!(bad, url(), "test needs a URL with guest:guest@");
    let start = Instant::now();
    let e = AmqpBroker::connect(&bad).await.expect_err("wrong password");
    assert!(start.elapsed() < Duration::from_secs(10));
    let text = chain(&e);
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_broker_from_an_amqp_url() {
    let b = broker_from_url(&url()).await.unwrap();
    assert!(matches!(b, AnyBroker::Amqp(_)));
    let q = unique("amqp-any");
    b.publish(msg(&q, "via AnyBroker")).await.unwrap();
    let mut c = b.consume(&[q], 1).await.unwrap();
    let d = next_within(&mut c, Duration::from_secs(20)).await;
    assert_eq!(d.body(), b"via AnyBroker");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_amqp_urls_are_url_errors() {
    for bad in [
        "amqp://guest:hunter2@127.0.0.1:5672/%2f?queue_type=fast",
        "amqp://guest:hunter2@127.0.0.1:notaport/%2f",
        "amqp://guest:hunter2@127.0.0.1/?connect_timeout_ms=soon",
    ] {
        match broker_from_url(bad).await {
            Err(Error::Url { url, reason }) => {
                assert!(!url.contains("hunter2") && !reason.contains("hunter2"))
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// TLS is compiled in (rustls on ring): a TLS handshake against the plain-text port fails
/// with an error, not a panic about a missing crypto provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_against_a_plain_port_fails_cleanly() {
    let tls = url().replacen("amqp://", "amqps://", 1);
    let sep = if tls.contains('?') { '&' } else { '?' };
    let e = AmqpBroker::connect(&format!("{tls}{sep}connect_timeout_ms=1500"))
        .await
        .expect_err("no TLS on the plain port");
    assert!(!chain(&e).contains("guest:guest"), "{}", chain(&e));
}
