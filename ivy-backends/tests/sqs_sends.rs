//! A producer's sends on SQS go in batches (`SendMessageBatch`): concurrent publishes to one
//! queue share requests, bulk publishes fill batches of ten, and each publish still reports
//! its own message's fate, through a server that goes away and comes back.
#![cfg(feature = "sqs")]

use std::time::Duration;

use ivy_backends::sqs::SqsBroker;
use ivy_core::conformance::unique;
use ivy_core::{Broker, Delivery};
use tokio::task::JoinSet;

mod common;
use common::moto::Moto;
use common::{msg, next_within, sqs_broker as broker};

/// The port of this file's moto (the shared one is 4566, sqs_restart's 4570).
const PORT: u16 = 4571;
const STEP: Duration = Duration::from_secs(30);

/// Send requests of either kind this broker sent.
fn sends(b: &SqsBroker) -> u64 {
    b.requests_of("SendMessage") + b.requests_of("SendMessageBatch")
}

/// Publishes `n` messages `0..n` to `q` at once, each as its own `publish`; their results.
async fn publish_at_once(b: &SqsBroker, q: &str, n: usize) -> Vec<ivy_core::Result<()>> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let (b, m) = (b.clone(), msg(q, i.to_string()));
        set.spawn(async move { b.publish(m).await });
    }
    let mut results = Vec::with_capacity(n);
    while let Some(done) = set.join_next().await {
        results.push(done.expect("the publish task"));
    }
    results
}

/// Receives `n` messages from `q` and acks them; their bodies as numbers, sorted.
async fn drain(b: &SqsBroker, q: &str, n: usize) -> Vec<usize> {
    let mut c = b
        .consume(std::slice::from_ref(&q.to_owned()), 10)
        .await
        .expect("consume");
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next_within(&mut c, STEP).await;
        seen.push(
            std::str::from_utf8(d.body())
                .expect("text")
                .parse()
                .expect("a number"),
        );
        d.ack().await.expect("ack");
    }
    seen.sort_unstable();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_requests_and_every_message_arrives() {
    const N: usize = 100;
    let b = broker("wait_time=1").await;
    let q = unique("sends-shared");
    // The queue exists (and its URL is known) before the burst.
    b.publish(msg(&q, "0")).await.expect("publish");
    let before = sends(&b);
    for sent in publish_at_once(&b, &q, N).await {
        sent.expect("every publish succeeds");
    }
    let used = sends(&b) - before;
    assert!(b.requests_of("SendMessageBatch") > 0, "calls go in batches");
    // One alone, then batches of ten (a few partial ones where a request landed between two
    // publishes): far fewer than one request per message.
    assert!(
        used <= (N / 4) as u64,
        "{N} concurrent publishes took {used} requests; they should share batches"
    );
    let mut expected: Vec<usize> = (0..N).collect();
    expected.insert(0, 0);
    assert_eq!(drain(&b, &q, N + 1).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_publish_is_one_request() {
    let b = broker("").await;
    let q = unique("sends-lone");
    b.publish(msg(&q, "1")).await.expect("publish");
    let before = sends(&b);
    b.publish(msg(&q, "2")).await.expect("publish");
    assert_eq!(sends(&b) - before, 1);
    assert_eq!(drain(&b, &q, 2).await, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_each_while_the_server_is_down_and_work_once_it_is_back() {
    const N: usize = 30;
    let mut moto = tokio::task::block_in_place(|| Moto::start(PORT));
    let b = SqsBroker::from_url(&moto.url("wait_time=1"))
        .await
        .expect("broker");
    let q = unique("sends-down");
    b.publish(msg(&q, "0")).await.expect("publish");

    tokio::task::block_in_place(|| moto.stop());
    let results = publish_at_once(&b, &q, N).await;
    assert_eq!(results.len(), N, "every publish answers");
    for r in results {
        let e = r.expect_err("nothing can be sent while the server is down");
        let shown = common::chain(&e);
        assert!(
            shown.contains("could not publish") && shown.contains("127.0.0.1"),
            "says what failed and where: {shown}"
        );
    }

    // A fresh server has no queues: the next batches find the queue gone and create it.
    tokio::task::block_in_place(|| moto.resume());
    for sent in publish_at_once(&b, &q, N).await {
        sent.expect("publishes work again once the server is back");
    }
    assert_eq!(drain(&b, &q, N).await, (0..N).collect::<Vec<_>>());
}
