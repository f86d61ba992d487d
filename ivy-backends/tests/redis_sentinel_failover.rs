//! A Sentinel failover: the notifier's commands and subscriptions follow the promoted replica,
//! and a handle waiting through the failover gets its result.
//!
//! Kills the primary of the setup `scripts/redis-sentinel start` makes (through that script)
//! and restarts it at the end, also when the test fails. One test in this binary: it kills
//! nodes, and cargo runs test binaries one after another.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::{redis_sentinel_notifier, script};
use ivy_core::conformance::{unique, Echo};
use ivy_core::memory::MemoryBroker;
use ivy_core::{Call, Incoming, Notification, Outcome, Producer, Results, Subscription};
use serde_json::{json, Map};

/// Restarts the killed node when dropped, so that a failed test leaves the setup whole.
struct RestartAtEnd(Option<String>);

impl Drop for RestartAtEnd {
    fn drop(&mut self) {
        if let Some(port) = self.0.take() {
            // The sentinels must name the new primary first.
            let deadline = Instant::now() + Duration::from_secs(30);
            while primary_port() == port && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            script("redis-sentinel", &["restart-node", &port]);
        }
    }
}

/// The port the first sentinel names as the primary's.
fn primary_port() -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "26401"])
        .args(["sentinel", "get-master-addr-by-name", "mymaster"])
        .output()
        .expect("redis-cli");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    out.lines().nth(1).unwrap_or_default().trim().to_owned()
}

/// Whether the replica at `port` holds `key` (replication is asynchronous).
fn replica_has(port: &str, key: &str) -> bool {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port, "exists", key])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim() == "1"
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
    let n = redis_sentinel_notifier().await;
    let ch = unique("failover");
    let mut s = n.subscribe(&ch).await.unwrap();
    n.publish(&ch, b"before".to_vec()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(
        next_incoming(&mut s, deadline).await,
        Incoming::Message(b"before".to_vec())
    );

    // A result stored before the failover, once the replica has it.
    let ttl = Duration::from_secs(300);
    let (stored, before) = (unique("stored"), primary_port());
    n.publish_final(&unique("nobody"), &stored, b"kept".to_vec(), ttl)
        .await
        .unwrap();
    let replica = if before == "6401" { "6402" } else { "6401" };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica_has(replica, &format!("ivy:result:{stored}")) {
        assert!(
            Instant::now() < deadline,
            "the replica got the stored result"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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

    let killed = script("redis-sentinel", &["kill-primary"]);
    assert_eq!(killed, before);
    let _restart = RestartAtEnd(Some(killed.clone()));
    let t0 = Instant::now();

    assert_eq!(
        next_incoming(&mut s, Instant::now() + Duration::from_secs(15)).await,
        Incoming::Interrupted,
        "the subscription says it lost its connection"
    );

    // Commands work again once the sentinels promoted the replica: the result of the
    // waiting call is stored (as a worker would, retrying) on the new primary.
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
    assert_ne!(primary_port(), killed, "the sentinels promoted the replica");

    // The subscription is restored (a gap: things may have been missed) and hears again.
    assert_eq!(
        next_incoming(&mut s, Instant::now() + Duration::from_secs(30)).await,
        Incoming::Gap
    );
    let subscription_back = t0.elapsed();
    n.publish(&ch, b"after".to_vec()).await.unwrap();
    assert_eq!(
        next_incoming(&mut s, Instant::now() + Duration::from_secs(10)).await,
        Incoming::Message(b"after".to_vec())
    );

    let got = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting handle gets its result")
        .unwrap()
        .expect("the result, not an error");
    assert_eq!(got, json!({"after": 1}));
    assert_eq!(
        n.fetch(&stored).await.unwrap().as_deref(),
        Some(&b"kept"[..]),
        "a result the replica had survives the failover"
    );
    eprintln!(
        "sentinel failover: commands worked again {commands_back:?} after the SIGKILL \
         ({failures} failed tries), the subscription was back after {subscription_back:?}, \
         the waiting handle had its result after {:?}",
        t0.elapsed()
    );
}
