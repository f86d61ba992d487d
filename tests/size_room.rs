//! Room for a retry (issue 11, item 10): a retry adds `"attempt":N` to its call, so a call the
//! producer accepts right at its limit must still leave room below the broker's limit and the
//! worker's for that, or its retry is refused and the call runs again and again, never
//! ending. The producer keeps `ivy::broker::RETRY_ROOM` bytes below both.

use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Error, Keyring, Producer, TaskHandle, Worker};

/// Long enough for a worker on the memory broker; only the failure case waits it out.
const WAIT: Duration = Duration::from_secs(20);

const MIB: usize = 1024 * 1024;

#[ivy::task(name = "room.first_fails", max_retries = 1, retry_backoff = "10ms")]
async fn first_fails(data: String) -> Result<usize, String> {
    match ivy::current_task().expect("in a worker").attempt {
        0 => Err("the first attempt fails".into()),
        _ => Ok(data.len()),
    }
}

/// Publishes a call with the longest argument the producer accepts, to within `step` bytes
/// (a sealed body grows by whole cipher blocks): its body is then at the producer's limit, or
/// within a block of it. Returns its handle and the argument's length.
async fn call_at_the_limit(
    p: &Producer<MemoryBroker, MemoryNotifier>,
    step: usize,
) -> (TaskHandle<first_fails>, usize) {
    // Over any default limit.
    let mut len = 17 * MIB;
    loop {
        match p.delayed_call(first_fails::call("x".repeat(len))).await {
            Ok(h) => {
                let more = p
                    .delayed_call(first_fails::call("x".repeat(len + step)))
                    .await;
                assert!(
                    matches!(more, Err(Error::MessageTooLarge { .. })),
                    "{more:?}"
                );
                return (h, len);
            }
            Err(Error::MessageTooLarge { size, limit }) => len -= (size - limit).max(1),
            Err(e) => panic!("expected MessageTooLarge, got {e}"),
        }
    }
}

/// Runs a worker on `b` until a call at the producer's limit, whose first attempt fails, has
/// succeeded in its retry.
async fn retried_at_the_limit(b: MemoryBroker, keyring: Option<Keyring>) {
    let n = MemoryNotifier::new();
    let mut worker = Worker::new(b.clone(), n.clone()).unwrap();
    let mut p = Producer::new(b.clone(), n);
    let mut step = 1;
    if let Some(ring) = keyring {
        worker = worker.keyring(ring.clone());
        p = p.with_keyring(ring);
        step = 16;
    }
    let (mut h, len) = call_at_the_limit(&p, step).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    match h.result_timeout(WAIT).await {
        Ok(n) => assert_eq!(n, len),
        Err(e) => panic!("the retry of a call at the limit did not succeed: {e}"),
    }
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.retried, report.succeeded), (1, 1), "{report:?}");
}

/// The memory broker takes 16 MiB, as much as a worker reads: the retry must fit both.
#[tokio::test]
async fn a_call_at_the_default_limit_can_be_retried() {
    retried_at_the_limit(MemoryBroker::new(), None).await;
}

/// A broker taking less than the worker reads, and a sealed call, whose retry grows by the
/// `attempt` field and up to a cipher block.
#[tokio::test]
async fn a_sealed_call_at_a_small_brokers_limit_can_be_retried() {
    let ring =
        Keyring::from_spec("k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap();
    retried_at_the_limit(MemoryBroker::with_max_message_size(64 * 1024), Some(ring)).await;
}

/// The room is kept below the broker's limit even when a producer's own limit is higher.
#[tokio::test]
async fn a_producer_limit_leaves_room_below_the_brokers() {
    let b = MemoryBroker::with_max_message_size(4000);
    let p = Producer::new(b, MemoryNotifier::new()).with_max_message_size(64 * MIB);
    let err = p
        .delayed_call(first_fails::call("x".repeat(5000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit, .. } if limit == 4000 - ivy::broker::RETRY_ROOM),
        "{err}"
    );
}
