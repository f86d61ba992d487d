//! Checks of a [`Broker`]: queue semantics directly, then the end-to-end checks on this broker
//! with the memory notifier.

use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::helpers::{msg, next, unique, wait_dead_letters};
use super::{bulk, encryption, end_to_end, lasting, workflows};
use crate::broker::{Broker, Consumer, Delivery};
use crate::memory::MemoryNotifier;
use crate::Error;

/// A published body comes back unchanged from the queue it was sent to.
pub async fn round_trip<B: Broker>(b: B) {
    let q = unique("rt");
    b.publish(msg(&q, b"hello \x00\xff bytes"))
        .await
        .expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 4)
        .await
        .expect("consume");
    let d = next(&mut c, "round trip").await;
    assert_eq!(d.body(), b"hello \x00\xff bytes");
    assert_eq!(d.queue(), q);
    assert!(!d.redelivered());
    d.ack().await.expect("ack");
}

/// Where the broker promises FIFO, one consumer sees publish order.
pub async fn fifo_order<B: Broker>(b: B) {
    if !b.capabilities().fifo {
        return;
    }
    let q = unique("fifo");
    for i in 0..20 {
        b.publish(msg(&q, format!("{i}").as_bytes()))
            .await
            .expect("publish");
    }
    let mut c = b
        .consume(std::slice::from_ref(&q), 20)
        .await
        .expect("consume");
    for i in 0..20 {
        let d = next(&mut c, "ordered delivery").await;
        assert_eq!(
            d.body(),
            format!("{i}").as_bytes(),
            "message {i} out of order"
        );
        d.ack().await.expect("ack");
    }
}

/// An acked message is gone: a later consumer sees only what came after it.
pub async fn ack_removes<B: Broker>(b: B) {
    let q = unique("ack");
    b.publish(msg(&q, b"first")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    next(&mut c, "first").await.ack().await.expect("ack");
    c.close().await.expect("close");
    drop(c);
    b.publish(msg(&q, b"sentinel")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next(&mut c, "sentinel").await;
    assert_eq!(d.body(), b"sentinel", "an acked message came back");
    d.ack().await.expect("ack");
}

/// An unsettled delivery whose consumer dies is delivered again, marked redelivered.
pub async fn redelivery_after_consumer_dies<B: Broker>(b: B) {
    let q = unique("redeliver");
    b.publish(msg(&q, b"survivor")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next(&mut c, "first delivery").await;
    assert_eq!(d.body(), b"survivor");
    drop(d);
    drop(c);
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume again");
    let d = next(&mut c, "redelivery").await;
    assert_eq!(d.body(), b"survivor");
    assert!(d.redelivered(), "a redelivery must say so");
    d.ack().await.expect("ack");
}

/// `requeue` gives the message back at once, unchanged.
pub async fn requeue_returns<B: Broker>(b: B) {
    let q = unique("requeue");
    b.publish(msg(&q, b"again")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    next(&mut c, "first")
        .await
        .requeue()
        .await
        .expect("requeue");
    let d = next(&mut c, "requeued").await;
    assert_eq!(d.body(), b"again");
    d.ack().await.expect("ack");
}

/// `retry` replaces the body and delivers it again no earlier than the delay.
pub async fn retry_after_delay<B: Broker>(b: B) {
    let q = unique("retry");
    b.publish(msg(&q, b"attempt 0")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next(&mut c, "first").await;
    let delay = Duration::from_millis(700);
    let start = Instant::now();
    d.retry(b"attempt 1".to_vec(), delay).await.expect("retry");
    let d = next(&mut c, "retried").await;
    let waited = start.elapsed();
    assert_eq!(d.body(), b"attempt 1");
    assert!(
        waited + Duration::from_millis(100) >= delay,
        "retried after {waited:?}, before its delay of {delay:?}"
    );
    d.ack().await.expect("ack");
}

/// A delayed publish is not delivered before its delay.
pub async fn delayed_publish<B: Broker>(b: B) {
    let q = unique("delay");
    let mut m = msg(&q, b"later");
    let delay = Duration::from_millis(700);
    m.delay = Some(delay);
    let start = Instant::now();
    b.publish(m).await.expect("publish");
    b.publish(msg(&q, b"now")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 2)
        .await
        .expect("consume");
    let first = next(&mut c, "undelayed").await;
    assert_eq!(
        first.body(),
        b"now",
        "a delayed message overtook an immediate one"
    );
    let d = next(&mut c, "delayed").await;
    assert_eq!(d.body(), b"later");
    assert!(start.elapsed() + Duration::from_millis(100) >= delay);
    first.ack().await.expect("ack");
    d.ack().await.expect("ack");
}

/// A dead-lettered message lands in the dead letters with its reason and is not redelivered.
pub async fn dead_letter_keeps_reason<B: Broker>(b: B) {
    let q = unique("dead");
    b.publish(msg(&q, b"poison")).await.expect("publish");
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    next(&mut c, "poison")
        .await
        .dead_letter("it is poison".into())
        .await
        .expect("dead_letter");
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert_eq!(dead[0].body, b"poison");
    assert_eq!(dead[0].reason, "it is poison");
    assert_eq!(dead[0].queue, q);
    b.publish(msg(&q, b"sentinel")).await.expect("publish");
    let d = next(&mut c, "sentinel").await;
    assert_eq!(d.body(), b"sentinel", "a dead letter was redelivered");
    d.ack().await.expect("ack");
}

/// A consumer holds at most `prefetch` unsettled deliveries.
pub async fn prefetch_limits_unsettled<B: Broker>(b: B) {
    let q = unique("prefetch");
    for i in 0..3 {
        b.publish(msg(&q, format!("{i}").as_bytes()))
            .await
            .expect("publish");
    }
    let mut c = b
        .consume(std::slice::from_ref(&q), 2)
        .await
        .expect("consume");
    let d1 = next(&mut c, "1st").await;
    let d2 = next(&mut c, "2nd").await;
    let third = timeout(Duration::from_millis(500), c.next()).await;
    assert!(
        third.is_err(),
        "a third delivery arrived with a prefetch of 2"
    );
    d1.ack().await.expect("ack");
    let d3 = next(&mut c, "3rd after an ack").await;
    d2.ack().await.expect("ack");
    d3.ack().await.expect("ack");
}

/// Where the broker supports priorities, a higher one is delivered first.
pub async fn priorities<B: Broker>(b: B) {
    if !b.capabilities().priorities {
        return;
    }
    let q = unique("prio");
    for (body, p) in [(&b"low"[..], 1u8), (b"low", 1), (b"high", 9)] {
        let mut m = msg(&q, body);
        m.priority = Some(p);
        b.publish(m).await.expect("publish");
    }
    let mut c = b
        .consume(std::slice::from_ref(&q), 1)
        .await
        .expect("consume");
    let d = next(&mut c, "highest priority").await;
    assert_eq!(d.body(), b"high");
    d.ack().await.expect("ack");
}

/// A body over the limit is refused before it is sent, with a clear error.
pub async fn oversized_refused<B: Broker>(b: B) {
    let q = unique("big");
    let limit = b.capabilities().max_message_size;
    match b.publish(msg(&q, &vec![b'x'; limit + 1])).await {
        Err(Error::MessageTooLarge { size, limit: l }) => {
            assert_eq!((size, l), (limit + 1, limit))
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

/// Bulk sends: each call published and answered, or failing alone (notifier: memory).
pub async fn bulk_sends<B: Broker>(b: B) {
    bulk::bulk_sends(b, MemoryNotifier::new()).await
}

/// The producer and worker work end to end on this broker (notifier: memory).
pub async fn end_to_end<B: Broker>(b: B) {
    end_to_end::end_to_end(b, MemoryNotifier::new()).await
}

/// A worker that dies mid-task loses nothing: another worker completes the call.
pub async fn worker_killed_mid_task<B: Broker>(b: B) {
    end_to_end::worker_killed_mid_task(b, MemoryNotifier::new()).await
}

/// Poison messages end in the dead letters with their reason; the worker goes on.
pub async fn poison_messages<B: Broker>(b: B) {
    end_to_end::poison_messages(b, MemoryNotifier::new()).await
}

/// SIGTERM-like shutdown: running tasks finish within the grace period, the rest return.
pub async fn graceful_shutdown<B: Broker>(b: B) {
    end_to_end::graceful_shutdown(b, MemoryNotifier::new()).await
}

/// With encryption on: calls and results travel sealed, plain or foreign-key calls are
/// refused to the dead letters, old keys still work after rotation, and per-key task
/// permissions hold.
pub async fn encryption<B: Broker>(b: B) {
    encryption::encryption(b, MemoryNotifier::new()).await
}

// Workflows (issue 14)

/// Chains of typed steps, a failing middle step, hooks (notifier: memory).
pub async fn chains<B: Broker>(b: B) {
    workflows::chains(b, MemoryNotifier::new()).await
}

/// A group of 100, in order and as a stream (notifier: memory).
pub async fn groups<B: Broker>(b: B) {
    workflows::groups(b, MemoryNotifier::new()).await
}

/// Chords: a callback run once with 50 results, a failed member (notifier: memory).
pub async fn chords<B: Broker>(b: B) {
    workflows::chords(b, MemoryNotifier::new()).await
}

/// A chord member delivered twice: the callback still runs once (notifier: memory).
pub async fn chord_member_delivered_twice<B: Broker>(b: B) {
    workflows::chord_member_delivered_twice(b, MemoryNotifier::new()).await
}

/// A chain step delivered twice: its successor still runs once (notifier: memory).
pub async fn chain_step_delivered_twice<B: Broker>(b: B) {
    workflows::chain_step_delivered_twice(b, MemoryNotifier::new()).await
}

// Cancellation, state, permanent errors, unique calls (issue 14), with the memory notifier.

/// A call cancelled before a worker takes it never runs and ends `ivy.cancelled`.
pub async fn cancel_before_start<B: Broker>(b: B) {
    lasting::cancel_before_start(b, MemoryNotifier::new()).await
}

/// A running call is stopped by a cancel (async: dropped; blocking: sees the flag).
pub async fn cancel_while_running<B: Broker>(b: B) {
    lasting::cancel_while_running(b, MemoryNotifier::new()).await
}

/// A cancel recorded while no worker runs holds for the next worker.
pub async fn cancel_while_no_worker<B: Broker>(b: B) {
    lasting::cancel_while_no_worker(b, MemoryNotifier::new()).await
}

/// A cancel during a countdown resolves the handle at once.
pub async fn cancel_during_countdown<B: Broker>(b: B) {
    lasting::cancel_during_countdown(b, MemoryNotifier::new()).await
}

/// Cancelling a finished call records nothing and says so.
pub async fn cancel_finished<B: Broker>(b: B) {
    lasting::cancel_finished(b, MemoryNotifier::new()).await
}

/// `State<T>` comes from the worker; a missing one fails the call at once.
pub async fn state_injection<B: Broker>(b: B) {
    lasting::state_injection(b, MemoryNotifier::new()).await
}

/// A permanent error is not retried and is dead-lettered with its reason.
pub async fn permanent_errors<B: Broker>(b: B) {
    lasting::permanent_errors(b, MemoryNotifier::new()).await
}

/// A duplicate `unique_for` call is not published; its handle is the first's.
pub async fn unique_calls<B: Broker>(b: B) {
    lasting::unique_calls(b, MemoryNotifier::new()).await
}

/// A cancelled chain step stops the rest of the chain (notifier: memory).
pub async fn cancelled_step_stops_the_chain<B: Broker>(b: B) {
    workflows::cancelled_step_stops_the_chain(b, MemoryNotifier::new()).await
}

/// Cancelling a chain's handle stops it at the next step (notifier: memory).
pub async fn cancelled_chain_stops_at_the_next_step<B: Broker>(b: B) {
    workflows::cancelled_chain_stops_at_the_next_step(b, MemoryNotifier::new()).await
}
