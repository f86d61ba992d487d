//! What is particular to a Redis Cluster (`IVY_TEST_REDIS_CLUSTER_URL`, default the one
//! `scripts/redis-cluster start` makes): pub/sub is sharded, and the kept cancellations, whose
//! keys live in many slots, are all listed.
#![cfg(feature = "redis")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::redis_cluster_notifier;
use ivy_core::conformance::unique;
use ivy_core::{Coordination, Incoming, Results, Subscription};

/// `redis-cli -c` (follows redirections) against the cluster's first seed node.
fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", "7001"])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_sharded() {
    let n = redis_cluster_notifier().await;
    let ch = unique("sharded");
    let mut s = n.subscribe(&ch).await.unwrap();
    // Another client's SPUBLISH reaches the subscription; its answer counts the subscriber.
    assert_eq!(
        cli(&["spublish", &ch, "from-cli"]),
        "1",
        "one sharded subscriber"
    );
    let got = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a message in time");
    assert_eq!(
        got.unwrap().unwrap(),
        Incoming::Message(b"from-cli".to_vec())
    );
    // A classic PUBLISH finds no subscriber: Ivy's subscription is not a classic one.
    assert_eq!(cli(&["publish", &ch, "classic"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_in_many_slots_are_all_listed() {
    let n = redis_cluster_notifier().await;
    let ids: Vec<String> = (0..300).map(|i| unique(&format!("c{i}"))).collect();
    for id in &ids {
        let note = format!(r#"{{"v":1,"id":"{id}","until":0}}"#).into_bytes();
        n.cancel(id, note, Duration::from_secs(600)).await.unwrap();
    }
    let listed = n.cancellations().await.unwrap();
    for id in &ids {
        assert!(listed.iter().any(|(l, _)| l == id), "{id} listed");
        assert!(n.is_cancelled(id).await.unwrap());
    }
}

/// Two prefixes on one cluster stay apart (PROTOCOL.md §3, §14): the prefix goes outside the
/// hash tags and before the sharded channels' names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_stay_apart_on_a_cluster() {
    let base = common::redis_cluster_url();
    let connect = |prefix: &str| {
        let url = format!("{base}?prefix={prefix}");
        async move {
            ivy_backends::redis::RedisNotifier::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {}", common::chain(&e)))
        }
    };
    let (a, b) = (connect("ivy-test-a").await, connect("ivy-test-b").await);
    common::apart::deployments_stay_apart(&a, &b).await;
    common::apart::deployments_stay_apart(&redis_cluster_notifier().await, &a).await;
}
