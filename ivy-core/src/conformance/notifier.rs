//! Checks of a [`Notifier`]: publish and subscribe, kept final results and their expiry, then
//! the end-to-end checks on this notifier with the memory broker.

use std::time::Duration;

use serde_json::json;

use super::helpers::{echo, spawn_configured, spawn_worker, step, unique};
use super::tasks::registry;
use super::tasks::Echo;
use super::{end_to_end, lasting, workflows};
use crate::broker::{Incoming, Notifier, Subscription};
use crate::envelope::new_task_id;
use crate::events::{EventKind, TaskEvent, WorkerInfo, EVENTS_CHANNEL};
use crate::memory::MemoryBroker;
use crate::{Producer, Worker};

async fn recv<S: Subscription>(s: &mut S) -> Vec<u8> {
    loop {
        match step("notification", s.next()).await {
            Some(Ok(Incoming::Message(p))) => return p,
            Some(Ok(Incoming::Gap | Incoming::Interrupted)) => continue,
            Some(Err(e)) => panic!("subscription error: {e}"),
            None => panic!("subscription closed"),
        }
    }
}

/// Payloads published on a channel reach its subscriber in order; other channels' do not.
pub async fn publish_subscribe<N: Notifier>(n: N) {
    let ch = unique("ch");
    let other = unique("other");
    let mut s = n.subscribe(&ch).await.expect("subscribe");
    for i in 0..10 {
        n.publish(&other, b"not for you".to_vec())
            .await
            .expect("publish");
        n.publish(&ch, format!("{i}").into_bytes())
            .await
            .expect("publish");
    }
    for i in 0..10 {
        assert_eq!(recv(&mut s).await, format!("{i}").into_bytes());
    }
}

/// A final payload is published and kept: a late reader fetches it by task id, or several
/// with `fetch_many`.
pub async fn final_is_kept_for_late_readers<N: Notifier>(n: N) {
    let ch = unique("final");
    let id = new_task_id();
    let mut s = n.subscribe(&ch).await.expect("subscribe");
    n.publish_final(&ch, &id, b"the result".to_vec(), Duration::from_secs(60))
        .await
        .expect("publish_final");
    assert_eq!(recv(&mut s).await, b"the result");
    assert_eq!(
        n.fetch(&id).await.expect("fetch").as_deref(),
        Some(&b"the result"[..])
    );
    // Nobody listening at all: still kept.
    let id2 = new_task_id();
    n.publish_final(
        &unique("nobody"),
        &id2,
        b"kept".to_vec(),
        Duration::from_secs(60),
    )
    .await
    .expect("publish_final");
    assert_eq!(
        n.fetch(&id2).await.expect("fetch").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(n.fetch(&new_task_id()).await.expect("fetch"), None);
    // Several at once: in the order asked, `None` for an id with nothing kept.
    assert_eq!(
        n.fetch_many(&[id2, new_task_id(), id])
            .await
            .expect("fetch_many"),
        vec![Some(b"kept".to_vec()), None, Some(b"the result".to_vec())]
    );
}

/// A kept result expires after its time to live.
pub async fn results_expire<N: Notifier>(n: N) {
    let id = new_task_id();
    n.publish_final(
        &unique("ttl"),
        &id,
        b"brief".to_vec(),
        Duration::from_secs(1),
    )
    .await
    .expect("publish_final");
    let stored = std::time::Instant::now();
    assert_eq!(
        n.fetch(&id).await.expect("fetch"),
        Some(b"brief".to_vec()),
        "the result was kept"
    );
    // Gone once its time to live is over (the deadline leaves room for a slow machine).
    let deadline = stored + Duration::from_secs(6);
    while n.fetch(&id).await.expect("fetch").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the result outlived its 1 s TTL by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The producer and worker work end to end with this notifier (broker: memory).
pub async fn end_to_end<N: Notifier>(n: N) {
    end_to_end::end_to_end(MemoryBroker::new(), n).await
}

/// A producer that asks after the result was published still gets it.
pub async fn late_producer_gets_result<N: Notifier>(n: N) {
    let b = MemoryBroker::new();
    let q = unique("late");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let first = Producer::new(b.clone(), n.clone());
    let id = {
        let mut h = first.delayed_call(echo(&q, json!(7))).await.expect("call");
        h.result().await.expect("result");
        h.id().to_string()
    };
    drop(first);
    let other = Producer::new(b, n);
    let mut h = other.handle::<Echo>(id).await.expect("handle");
    let v = step("late result", h.result()).await.expect("late result");
    assert_eq!(v, json!({"value": 7}));
    worker.stop().await;
}

/// A worker's announcement is listed while kept, replaced when refreshed, gone once withdrawn
/// or once its time to live is over.
pub async fn workers_are_announced_and_expire<N: Notifier>(n: N) {
    let (a, b) = (unique("worker-a"), unique("worker-b"));
    let listed = |n: N, id: String| async move {
        n.announcements()
            .await
            .expect("announcements")
            .into_iter()
            .filter(|p| p.starts_with(id.as_bytes()))
            .collect::<Vec<_>>()
    };
    n.announce(&a, format!("{a} 1").into_bytes(), Duration::from_secs(60))
        .await
        .expect("announce");
    n.announce(&a, format!("{a} 2").into_bytes(), Duration::from_secs(60))
        .await
        .expect("announce again");
    n.announce(&b, format!("{b} 1").into_bytes(), Duration::from_secs(1))
        .await
        .expect("announce");
    let announced = std::time::Instant::now();
    assert_eq!(
        listed(n.clone(), a.clone()).await,
        [format!("{a} 2").into_bytes()]
    );
    assert_eq!(
        listed(n.clone(), b.clone()).await,
        [format!("{b} 1").into_bytes()]
    );
    n.withdraw(&a).await.expect("withdraw");
    assert!(listed(n.clone(), a.clone()).await.is_empty(), "withdrawn");
    let deadline = announced + Duration::from_secs(6);
    while !listed(n.clone(), b.clone()).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the announcement outlived its 1 s TTL by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker with events on publishes them on this notifier, and announces itself.
pub async fn worker_events_and_announcement<N: Notifier>(n: N) {
    let b = MemoryBroker::new();
    let q = unique("events");
    let mut events = n.subscribe(EVENTS_CHANNEL).await.expect("subscribe");
    let w = Worker::with_registry(b.clone(), n.clone(), registry())
        .queues([q.clone()])
        .events(true)
        .announce_every(Duration::from_millis(200));
    let worker_id = w.id().to_owned();
    let worker = spawn_configured(w);
    let p = Producer::new(b, n.clone());
    let mut h = p.delayed_call(echo(&q, json!(1))).await.expect("call");
    step("result", h.result()).await.expect("result");
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = TaskEvent::from_slice(&recv(&mut events).await).expect("an event");
        if e.id.as_deref() == Some(h.id()) {
            assert_eq!(e.worker, worker_id);
            kinds.push(e.event);
        }
    }
    assert_eq!(
        kinds,
        [
            EventKind::Received,
            EventKind::Started,
            EventKind::Succeeded
        ]
    );
    let live = |n: N| {
        let id = worker_id.clone();
        async move {
            n.announcements()
                .await
                .expect("announcements")
                .iter()
                .filter_map(|p| WorkerInfo::from_slice(p).ok())
                .any(|w| w.id == id)
        }
    };

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !live(n.clone()).await {
        assert!(std::time::Instant::now() < deadline, "never announced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    assert!(!live(n.clone()).await, "withdrawn at a graceful stop");
}

// Workflows (issue 14)

/// `count_member`: counting by member,
/// leases.
pub async fn claims<N: Notifier>(n: N) {
    workflows::claims(n).await
}

/// Chains of typed steps, a failing middle step, hooks (broker: memory).
pub async fn chains<N: Notifier>(n: N) {
    workflows::chains(MemoryBroker::new(), n).await
}

/// Bulk sends: each call published and answered, or failing alone (broker: memory).
pub async fn bulk_sends<N: Notifier>(n: N) {
    super::bulk::bulk_sends(MemoryBroker::new(), n).await
}

/// A group of 100, in order and as a stream (broker: memory).
pub async fn groups<N: Notifier>(n: N) {
    workflows::groups(MemoryBroker::new(), n).await
}

/// Chords: a callback run once with 50 results, a failed member (broker: memory).
pub async fn chords<N: Notifier>(n: N) {
    workflows::chords(MemoryBroker::new(), n).await
}

/// A chord member delivered twice: the callback still runs once (broker: memory).
pub async fn chord_member_delivered_twice<N: Notifier>(n: N) {
    workflows::chord_member_delivered_twice(MemoryBroker::new(), n).await
}

/// A chain step delivered twice: its successor still runs once (broker: memory).
pub async fn chain_step_delivered_twice<N: Notifier>(n: N) {
    workflows::chain_step_delivered_twice(MemoryBroker::new(), n).await
}

// Cancellation, state, permanent errors, unique calls (issue 14), with the memory broker.

/// A call cancelled before a worker takes it never runs and ends `ivy.cancelled`.
pub async fn cancel_before_start<N: Notifier>(n: N) {
    lasting::cancel_before_start(MemoryBroker::new(), n).await
}

/// A running call is stopped by a cancel (async: dropped; blocking: sees the flag).
pub async fn cancel_while_running<N: Notifier>(n: N) {
    lasting::cancel_while_running(MemoryBroker::new(), n).await
}

/// A cancel recorded while no worker runs holds for the next worker.
pub async fn cancel_while_no_worker<N: Notifier>(n: N) {
    lasting::cancel_while_no_worker(MemoryBroker::new(), n).await
}

/// A cancel during a countdown resolves the handle at once.
pub async fn cancel_during_countdown<N: Notifier>(n: N) {
    lasting::cancel_during_countdown(MemoryBroker::new(), n).await
}

/// Cancelling a finished call records nothing and says so.
pub async fn cancel_finished<N: Notifier>(n: N) {
    lasting::cancel_finished(MemoryBroker::new(), n).await
}

/// `State<T>` comes from the worker; a missing one fails the call at once.
pub async fn state_injection<N: Notifier>(n: N) {
    lasting::state_injection(MemoryBroker::new(), n).await
}

/// A permanent error is not retried and is dead-lettered with its reason.
pub async fn permanent_errors<N: Notifier>(n: N) {
    lasting::permanent_errors(MemoryBroker::new(), n).await
}

/// A duplicate `unique_for` call is not published; its handle is the first's.
pub async fn unique_calls<N: Notifier>(n: N) {
    lasting::unique_calls(MemoryBroker::new(), n).await
}

/// A cancelled chain step stops the rest of the chain (broker: memory).
pub async fn cancelled_step_stops_the_chain<N: Notifier>(n: N) {
    workflows::cancelled_step_stops_the_chain(MemoryBroker::new(), n).await
}

/// Cancelling a chain's handle stops it at the next step (broker: memory).
pub async fn cancelled_chain_stops_at_the_next_step<N: Notifier>(n: N) {
    workflows::cancelled_chain_stops_at_the_next_step(MemoryBroker::new(), n).await
}
