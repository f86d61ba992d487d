//! Settling messages on SQS within the queue's own size limit (`MaximumMessageSize`, 1 MiB on
//! new queues and on moto), and ending in a terminal state instead of circling
//! (`IVY_TEST_SQS_URL`, default the local moto server).
#![cfg(feature = "sqs")]

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use ivy_backends::sqs::{SqsBroker, MAX_MESSAGE_SIZE};
use ivy_core::conformance::{unique, wait_dead_letters, Boom};
use ivy_core::envelope::{new_task_id, PROTOCOL_VERSION};
use ivy_core::memory::MemoryNotifier;
use ivy_core::{Broker, Consumer, Delivery, Error, Registry, Worker, WorkerReport};
use tokio::time::timeout;

mod common;
use common::{next_within, sqs_broker as broker, sqs_queue_url};

const STEP: Duration = Duration::from_secs(30);
/// Larger than `ivy_backends::sqs::MAX_MESSAGE_SIZE`, well within moto's 1 MiB.
const LARGE: usize = 300 * 1024;

/// Creates the queues of `q` and returns the work queue's URL and its real size limit.
async fn queue(b: &SqsBroker, q: &str) -> (String, usize) {
    drop(b.consume(&[q.to_owned()], 1).await.expect("consume"));
    let url = sqs_queue_url(b, q).await;
    let attrs = b
        .client()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
        .send()
        .await
        .expect("attributes");
    let limit = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
        .and_then(|v| v.parse().ok())
        .expect("MaximumMessageSize");
    (url, limit)
}

/// Sends `body` straight to the queue, as another SQS client would.
async fn send_raw(b: &SqsBroker, url: &str, body: String) {
    b.client()
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("send_message");
}

/// Runs a worker with the `Boom` task on `q` until `done` says so, and returns its report.
async fn run_worker(
    b: &SqsBroker,
    q: &str,
    done: impl std::future::Future<Output = ()> + Send,
) -> WorkerReport {
    let registry = Registry::new().register::<Boom>().expect("registry");
    let worker =
        Worker::with_registry(b.clone(), MemoryNotifier::new(), registry).queues([q.to_owned()]);
    timeout(STEP * 2, worker.run(done))
        .await
        .expect("the worker stops")
        .expect("the worker runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_poison_message_is_dead_lettered_once() {
    let b = broker("").await;
    let q = unique("large-poison");
    let (url, limit) = queue(&b, &q).await;
    assert!(
        limit > LARGE + 1024,
        "moto's queues take 1 MiB, this one {limit}"
    );
    let body = "x".repeat(LARGE);
    send_raw(&b, &url, body.clone()).await;
    let checker = b.clone();
    let q2 = q.clone();
    let report = run_worker(&b, &q, async move {
        let dead = wait_dead_letters(&checker, &q2, 1).await;
        assert_eq!(dead[0].body.len(), LARGE);
        assert!(
            dead[0].reason.contains("not an Ivy envelope"),
            "{}",
            dead[0].reason
        );
    })
    .await;
    assert_eq!(
        (report.dead_lettered, report.returned),
        (1, 0),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_failing_call_runs_at_most_max_retries_plus_one_times() {
    let b = broker("").await;
    let q = unique("large-boom");
    let (url, _) = queue(&b, &q).await;
    let body = format!(
        r#"{{"v":{PROTOCOL_VERSION},"id":"{}","task":"{}","args":{{"pad":"{}"}},"queue":"{q}","attempt":0,"max_retries":1,"created_at":0}}"#,
        new_task_id(),
        <Boom as ivy_core::Task>::NAME,
        "x".repeat(LARGE),
    );
    send_raw(&b, &url, body).await;
    let checker = b.clone();
    let q2 = q.clone();
    let report = run_worker(&b, &q, async move {
        wait_dead_letters(&checker, &q2, 1).await;
    })
    .await;
    // One run that is retried, one more run that fails for good (and is dead-lettered),
    // nothing given back to the queue.
    assert_eq!(
        (report.retried, report.failed, report.returned),
        (1, 1, 0),
        "{report:?}"
    );
}

/// A retry the queue cannot take (a call grown by its `attempt`, or passed on with a large
/// outcome) is refused with `MessageTooLarge` and settles nothing. Dead-lettering it here, as
/// before, left the caller without a final result and the dead letter without a reason, and
/// the worker counted a retry; now the message comes back for the worker to end it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_outgrows_the_queue_is_refused_and_the_message_kept() {
    let b = broker("").await;
    let q = unique("outgrown");
    let (url, limit) = queue(&b, &q).await;
    // Room left for the dead letter's reason.
    let size = limit - 1024;
    send_raw(&b, &url, "y".repeat(size)).await;
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next_within(&mut c, STEP).await;
    assert_eq!(d.body().len(), size);
    let grown = vec![b'y'; limit + 10];
    match d.retry(grown, Duration::ZERO).await {
        Err(Error::MessageTooLarge { size: s, limit: l }) => {
            assert_eq!(l, limit);
            assert!(s > limit, "{s} bytes");
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(
        b.take_dead_letters(&q, 10).await.expect("take").is_empty(),
        "nothing dead-lettered behind the caller's back"
    );
    // Still there: back at once, and it can be dead-lettered with a reason.
    let d = next_within(&mut c, STEP).await;
    assert_eq!(d.body().len(), size);
    d.dead_letter("its retry is too large".into())
        .await
        .expect("dead_letter");
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert_eq!(dead[0].body.len(), size);
    assert_eq!(dead[0].reason, "its retry is too large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_the_publish_limit_is_dead_lettered_with_its_reason() {
    let b = broker("").await;
    let q = unique("at-limit");
    let body = vec![b'z'; MAX_MESSAGE_SIZE];
    b.publish(common::msg(&q, &body)).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next_within(&mut c, STEP).await;
    d.dead_letter("too big to run".into())
        .await
        .expect("dead_letter");
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert_eq!(dead[0].body, body);
    assert_eq!(dead[0].reason, "too big to run");
}

#[tokio::test]
async fn sqs_errors_say_what_where_and_why() {
    // Nothing listens there.
    let url = "sqs://127.0.0.1:4599?region=us-east-1";
    let b = SqsBroker::from_url(url).await.expect("broker");
    let q = unique("unreachable");
    let e = b
        .publish(common::msg(&q, b"x"))
        .await
        .expect_err("nothing to publish to");
    let line = common::chain(&e);
    eprintln!("{line}");
    assert!(line.contains(&format!("`{q}`")), "{line}");
    assert!(line.contains("127.0.0.1:4599"), "{line}");
    assert!(line.to_lowercase().contains("connect"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_pauses_the_message_instead_of_returning_it_at_once() {
    let creator = broker("").await;
    let q = unique("no-dead");
    queue(&creator, &q).await;
    // The dead-letter queue is gone and this broker may not create it again.
    let dead_url = creator
        .client()
        .get_queue_url()
        .queue_name(format!("{q}-dead"))
        .send()
        .await
        .expect("dead queue")
        .queue_url
        .expect("a url");
    creator
        .client()
        .delete_queue()
        .queue_url(dead_url)
        .send()
        .await
        .expect("delete the dead-letter queue");
    let b = broker("create_queues=false&wait_time=1").await;
    b.publish(common::msg(&q, b"poison"))
        .await
        .expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next_within(&mut c, STEP).await;
    let e = d
        .dead_letter("bad".into())
        .await
        .expect_err("no dead-letter queue");
    assert!(common::chain(&e).contains("create_queues=false"), "{e:?}");
    // Not straight back (the first pause is 2 s), but back: nothing is lost.
    assert!(
        timeout(Duration::from_millis(1500), c.next())
            .await
            .is_err(),
        "the message came straight back"
    );
    let again = next_within(&mut c, STEP).await;
    assert_eq!(again.body(), b"poison");
    assert!(again.redelivered());
}
