//! A Redis Cluster failover: when the primary of a shard dies, the notifier's commands and its
//! sharded subscriptions on that shard work again once its replica took over, and a handle
//! waiting through the failover gets its result.
//!
//! Kills a primary of the cluster `scripts/redis-cluster start` makes (through that script) and
//! restarts it at the end, also when the test fails. One test in this binary: it kills nodes,
//! and cargo runs test binaries one after another.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::{redis_cluster_notifier, script};
use ivy_core::conformance::{unique, Echo};
use ivy_core::memory::MemoryBroker;
use ivy_core::{Call, Incoming, Notification, Outcome, Producer, Results, Subscription};
use serde_json::{json, Map};

/// Restarts the killed node when dropped, so that a failed test leaves the cluster whole.
struct RestartAtEnd(Option<String>);

impl Drop for RestartAtEnd {
    fn drop(&mut self) {
        if let Some(port) = self.0.take() {
            script("redis-cluster", &["wait-ok"]);
            script("redis-cluster", &["restart-node", &port]);
        }
    }
}

async fn next_incoming<S: Subscription>(s: &mut S, deadline: Instant) -> Incoming {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(incoming))) => return incoming,
            Ok(Some(Err(e))) => eprintln!("subscription error (it goes on): {}", common::chain(&e)),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => panic!("nothing from the subscription in time"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_subscriptions_and_waiting_handles_follow_a_failover() {
    let n = redis_cluster_notifier().await;

    // A handle waiting for a call whose result is stored only after the failover.
    let producer =
        Producer::new(MemoryBroker::new(), n.clone()).with_result_reread(Duration::from_secs(1));
    let mut handle = producer
        .delayed_call(Call::<Echo>::__new(Ok(Map::new())))
        .await
        .unwrap();
    let waiting_id = handle.id().to_owned();
    let waiting =
        tokio::spawn(async move { handle.result_timeout(Duration::from_secs(120)).await });

    // The subscription's channel has the name of the waiting call's result key, so both are
    // in one slot: the shard whose primary dies serves both.
    let key = format!("ivy:result:{waiting_id}");
    let ch = key.clone();
    let mut s = n.subscribe(&ch).await.unwrap();
    n.publish(&ch, b"before".to_vec()).await.unwrap();
    assert_eq!(
        next_incoming(&mut s, Instant::now() + Duration::from_secs(10)).await,
        Incoming::Message(b"before".to_vec())
    );

    let killed = script("redis-cluster", &["kill-primary-of", &key]);
    let _restart = RestartAtEnd(Some(killed.clone()));
    let t0 = Instant::now();

    // Commands on that shard work again once its replica took over: the result of the
    // waiting call is stored (as a worker would, retrying).
    let ttl = Duration::from_secs(300);
    let note = Notification::result(waiting_id.clone(), 0, Outcome::Ok(json!({"after": 1})));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    loop {
        match n
            .publish_final(&unique("elsewhere"), &waiting_id, note.to_bytes(), ttl)
            .await
        {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "commands never worked again: {}",
                    common::chain(&e)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let commands_back = t0.elapsed();

    // The subscription reports that it may have missed something (after an `Interrupted`,
    // or alone when redis-rs resubscribed by itself), and hears again.
    let mut interrupted = false;
    loop {
        match next_incoming(&mut s, Instant::now() + Duration::from_secs(30)).await {
            Incoming::Interrupted => interrupted = true,
            Incoming::Gap => break,
            other => panic!("expected a gap, got {other:?}"),
        }
    }
    let subscription_back = t0.elapsed();
    // Published until heard: a gap reported while the replica was still taking over may
    // come before the shard accepts publishes again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = n.publish(&ch, b"after".to_vec()).await;
        match tokio::time::timeout(Duration::from_millis(500), s.next()).await {
            Ok(Some(Ok(Incoming::Message(m)))) if m == b"after" => break,
            Ok(Some(Ok(Incoming::Message(m)))) => panic!("unexpected message {m:?}"),
            Ok(Some(Ok(other))) => eprintln!("subscription: {other:?}"),
            Ok(Some(Err(e))) => eprintln!("subscription error: {}", common::chain(&e)),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the subscription never heard again"
        );
    }
    let heard_again = t0.elapsed();

    let got = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting handle gets its result")
        .unwrap()
        .expect("the result, not an error");
    assert_eq!(got, json!({"after": 1}));
    eprintln!(
        "cluster failover of {killed}: commands worked again {commands_back:?} after the SIGKILL \
         ({failures} failed tries), the subscription reported a gap after {subscription_back:?} \
         (interrupted first: {interrupted}) and heard again after {heard_again:?}, \
         the waiting handle had its result after {:?}",
        t0.elapsed()
    );
}
