//! Acks on SQS go in batches (`DeleteMessageBatch`), and each ack still reports its own
//! message's fate (`IVY_TEST_SQS_URL`, default the local moto server).
#![cfg(feature = "sqs")]

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use ivy_backends::sqs::SqsBroker;
use ivy_core::conformance::unique;
use ivy_core::envelope::new_task_id;
use ivy_core::{Broker, Delivery, OutgoingMessage};
use tokio::task::JoinSet;

mod common;
use common::{next_within, sqs_broker as broker, sqs_queue_url};

const STEP: Duration = Duration::from_secs(30);

async fn publish(b: &SqsBroker, q: &str, n: usize) {
    for i in 0..n {
        b.publish(OutgoingMessage::new(
            new_task_id(),
            q,
            format!("m{i}").into_bytes(),
        ))
        .await
        .expect("publish");
    }
}

/// Messages in the queue, visible or not.
async fn messages_left(b: &SqsBroker, url: &str) -> u64 {
    let out = b
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let attrs = out.attributes().expect("attributes");
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a count")
    })
    .sum()
}

/// Delete requests of either kind this broker sent.
fn deletes(b: &SqsBroker) -> u64 {
    b.requests_of("DeleteMessage") + b.requests_of("DeleteMessageBatch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_in_quick_succession_share_requests_and_remove_every_message() {
    const N: usize = 25;
    let b = broker("visibility_timeout=2").await;
    let q = unique("acks-batched");
    let mut consumer = b
        .consume(std::slice::from_ref(&q), N)
        .await
        .expect("consume");
    publish(&b, &q, N).await;
    let mut deliveries = Vec::with_capacity(N);
    for _ in 0..N {
        deliveries.push(next_within(&mut consumer, STEP).await);
    }
    let before = deletes(&b);
    let mut acks = JoinSet::new();
    for d in deliveries {
        acks.spawn(d.ack());
    }
    while let Some(done) = acks.join_next().await {
        done.expect("the ack task").expect("every ack succeeds");
    }
    let sent = deletes(&b) - before;
    assert!(
        sent < N as u64,
        "{N} acks took {sent} delete requests; they should share batches"
    );
    assert_eq!(b.requests_of("DeleteMessage"), 0, "acks go in batches");
    drop(consumer);
    // Every message is gone, not merely hidden: none comes back after the visibility timeout.
    let url = sqs_queue_url(&b, &q).await;
    assert_eq!(messages_left(&b, &url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_entry_fails_only_its_own_ack() {
    let b = broker("").await;
    let q = unique("acks-stale");
    let mut consumer = b
        .consume(std::slice::from_ref(&q), 2)
        .await
        .expect("consume");
    publish(&b, &q, 1).await;
    let stale = next_within(&mut consumer, STEP).await;
    // The message vanishes without being deleted through its receipt, which goes stale.
    let url = sqs_queue_url(&b, &q).await;
    b.client()
        .purge_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("purge");
    publish(&b, &q, 1).await;
    let fresh = next_within(&mut consumer, STEP).await;
    let before = deletes(&b);
    let (stale, fresh) = tokio::join!(stale.ack(), fresh.ack());
    let err = stale.expect_err("the stale receipt's ack fails");
    let shown = err.to_string();
    assert!(
        shown.contains("could not delete") && shown.contains("ReceiptHandleIsInvalid"),
        "says what failed and why: {shown}"
    );
    fresh.expect("the other ack succeeds");
    assert_eq!(deletes(&b) - before, 1, "both in one request");
    let deadline = Instant::now() + STEP;
    while messages_left(&b, &url).await != 0 {
        assert!(Instant::now() < deadline, "the fresh message is deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_whose_caller_stops_waiting_still_deletes() {
    let b = broker("").await;
    let q = unique("acks-abandoned");
    let mut consumer = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    publish(&b, &q, 1).await;
    let d = next_within(&mut consumer, STEP).await;
    // Polled once, so the ack joins a batch, then dropped.
    let mut ack = Box::pin(d.ack());
    assert!(futures_poll_once(ack.as_mut()).await.is_none());
    drop(ack);
    let url = sqs_queue_url(&b, &q).await;
    let deadline = Instant::now() + STEP;
    while messages_left(&b, &url).await != 0 {
        assert!(Instant::now() < deadline, "the message is deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` once: its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
