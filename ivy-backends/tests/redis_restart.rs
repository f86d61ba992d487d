//! A subscription survives a Redis restart and says it may be missing something: when the
//! connection is lost, and when it is restored.
//!
//! It stops and starts a Redis of its own (127.0.0.1:6394, started here), never the shared
//! one, and stops it when done, also when it fails. Needs `redis-server` and `redis-cli` on
//! the PATH.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use ivy_backends::redis::RedisNotifier;
use ivy_core::conformance::unique;
use ivy_core::{Incoming, Results, Subscription};
use tokio::time::timeout;

mod common;
use common::own_redis::OwnRedis;

static REDIS: OwnRedis = OwnRedis::new(6394, None);

async fn next_incoming<S: Subscription>(s: &mut S, limit: Duration) -> Incoming {
    timeout(limit, s.next())
        .await
        .expect("a notification in time")
        .expect("subscription open")
        .expect("no subscription error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_restart_with_a_gap() {
    REDIS.start();
    let _guard = REDIS.stop_at_end();
    let n = RedisNotifier::connect(&REDIS.url()).await.unwrap();
    let ch = unique("restart");
    let mut s = n.subscribe(&ch).await.unwrap();
    n.publish(&ch, b"before".to_vec()).await.unwrap();
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(5)).await,
        Incoming::Message(b"before".to_vec())
    );

    REDIS.stop();
    // Said at once, so a reader stops trusting what it knows from the channel alone (a
    // worker's set of live cancellations), not only once the subscription is back.
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(10)).await,
        Incoming::Interrupted,
        "a lost subscription says so before it is restored"
    );
    // Down for longer than the connection manager's own reconnect attempts last.
    tokio::time::sleep(Duration::from_secs(8)).await;
    REDIS.start();

    let restarted = Instant::now();
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(20)).await,
        Incoming::Gap,
        "a restored subscription reports a gap"
    );
    eprintln!(
        "gap reported {:?} after Redis came back",
        restarted.elapsed()
    );

    // The command connection recovers too: its first command after the outage finds the
    // connection dead, and the notifier retries it once on a new one.
    n.publish(&ch, b"after".to_vec())
        .await
        .expect("first publish after the restart");
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(5)).await,
        Incoming::Message(b"after".to_vec())
    );
    let id = unique("task");
    n.publish_final(&ch, &id, b"final".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(n.fetch(&id).await.unwrap(), Some(b"final".to_vec()));
}
