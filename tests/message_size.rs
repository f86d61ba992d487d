//! One size limit on both sides (issue 11, item 13): the producer refuses what the worker
//! would not read (its default: the broker's limit, at most the worker's 16 MiB), and a call that
//! still ends over the worker's limit gets a final error instead of leaving its handle waiting.
//! Also: a concurrency the broker cannot grant as a prefetch is refused (item 11).

use std::time::Duration;

use ivy::broker::RETRY_ROOM;
use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Error, Producer, TaskFailure, Worker};

/// Long enough for a worker on the memory broker; only the failure case waits it out.
const WAIT: Duration = Duration::from_secs(20);

const MIB: usize = 1024 * 1024;

#[ivy::task(name = "size.len", max_retries = 0)]
async fn len(data: String) -> usize {
    data.len()
}

/// A broker taking more than 16 MiB: the producer stops where the worker does, at 16 MiB, less
/// the room a retry needs (tests/size_room.rs).
#[tokio::test]
async fn the_producer_sends_no_more_than_the_worker_reads_by_default() {
    let big = MemoryBroker::with_max_message_size(32 * MIB);
    let worker = Worker::new(big.clone(), MemoryNotifier::new()).unwrap();
    assert_eq!(worker.config().max_message_size, 16 * MIB);
    let p = Producer::new(big.clone(), MemoryNotifier::new());
    let err = p
        .delayed_call(len::call("x".repeat(20 * MIB)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit, .. } if limit == 16 * MIB - RETRY_ROOM),
        "{err}"
    );
    assert_eq!(big.depth("default").ready, 0, "nothing was sent");

    // A broker taking less: the producer takes its limit (and the worker reads more).
    let small = MemoryBroker::with_max_message_size(1000);
    let p = Producer::new(small.clone(), MemoryNotifier::new());
    let err = p
        .delayed_call(len::call("x".repeat(2000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit, .. } if limit == 1000 - RETRY_ROOM),
        "{err}"
    );
}

/// A producer's own limit: lower than the broker's, it is the one applied; higher, the
/// broker's (less the retry room) still is.
#[tokio::test]
async fn a_producer_limit_is_applied_up_to_the_brokers() {
    let b = MemoryBroker::with_max_message_size(4000);
    let p = Producer::new(b.clone(), MemoryNotifier::new()).with_max_message_size(1000);
    let err = p
        .delayed_call(len::call("x".repeat(2000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit: 1000, .. }),
        "{err}"
    );
    let p = Producer::new(b.clone(), MemoryNotifier::new()).with_max_message_size(64 * MIB);
    p.delayed_call(len::call("x".repeat(2000))).await.unwrap();
    let err = p
        .delayed_call(len::call("x".repeat(5000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit, .. } if limit == 4000 - RETRY_ROOM),
        "{err}"
    );
    assert_eq!(
        b.depth("default").ready,
        1,
        "only the call within both limits was sent"
    );
}

/// A call over the worker's (lowered) limit: dead-lettered unread, and its handle gets the
/// final error `ivy.too_large` rather than waiting for a result that never comes.
#[tokio::test]
async fn a_call_over_the_workers_limit_gets_a_final_error() {
    let b = MemoryBroker::new();
    let n = MemoryNotifier::new();
    let worker = Worker::new(b.clone(), n.clone())
        .unwrap()
        .max_message_size(1000);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let p = Producer::new(b.clone(), n);
    let mut h = p.delayed_call(len::call("y".repeat(5000))).await.unwrap();
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::TOO_LARGE, "{f}");
            assert!(f.message.contains("limit of 1000 bytes"), "{f}");
        }
        other => panic!("expected the final error ivy.too_large, got {other:?}"),
    }
    // A call within the limit still runs.
    let mut ok = p.delayed_call(len::call("z".repeat(10))).await.unwrap();
    assert_eq!(ok.result_timeout(WAIT).await.unwrap(), 10);
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(b.depth("default").dead, 1);
}

#[cfg(feature = "amqp")]
mod amqp {
    use super::*;
    use ivy::backends::amqp::AmqpBroker;

    fn broker() -> AmqpBroker {
        let url = std::env::var("IVY_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        AmqpBroker::from_url(&url).expect("the AMQP URL")
    }

    /// RabbitMQ takes 128 MiB; a 20 MiB call, which the worker would not read, is refused by
    /// the producer before anything is sent.
    #[tokio::test]
    async fn a_call_the_worker_would_not_read_is_refused_by_the_producer() {
        let b = broker();
        let worker = Worker::new(b.clone(), MemoryNotifier::new()).unwrap();
        let limit = worker.config().max_message_size;
        assert_eq!(limit, 16 * MIB);
        let p = Producer::new(b, MemoryNotifier::new());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let queue = format!("ivy-conf-size-{}-{nanos}", std::process::id());
        let err = p
            .delayed_call(len::call("x".repeat(20 * MIB)).queue(queue))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::MessageTooLarge { limit: l, .. } if l == limit - RETRY_ROOM),
            "{err}"
        );
    }

    /// `basic.qos` cannot carry a prefetch over 65,535: such a concurrency is refused at start,
    /// not silently capped.
    #[tokio::test]
    async fn a_concurrency_over_the_prefetch_maximum_is_refused() {
        let worker = Worker::new(broker(), MemoryNotifier::new())
            .unwrap()
            .concurrency(70_000);
        let run = worker.run(std::future::pending());
        let err = tokio::time::timeout(WAIT, run)
            .await
            .expect("the worker refuses at once")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Config(_))
                && text.contains("concurrency of 70000")
                && text.contains("prefetch maximum of 65535"),
            "{text}"
        );
    }
}
