//! Deployments sharing one Redis stay apart (PROTOCOL.md §3): two databases, or two
//! `?prefix=`es in one, never see each other's results, reply channels, events,
//! announcements, cancels, claims or limits; and the names are the documented ones, so that
//! another implementation can share a deployment. Needs the local Redis
//! (`IVY_TEST_REDIS_URL`, a `redis://host:port` URL without a database or query).
#![cfg(feature = "redis")]

use std::time::Duration;

use ivy_backends::redis::{RedisNotifier, RESULT_KEY_PREFIX};
use ivy_core::conformance::unique;
use ivy_core::events::EVENTS_CHANNEL;
use ivy_core::Results;

mod common;
use common::apart::{deployments_stay_apart, next_message};
use common::redis_url;

/// The conformance suite, on database 3 with a prefix.
async fn prefixed_notifier() -> RedisNotifier {
    connect("/3?prefix=ivy-conformance").await
}

ivy_core::notifier_conformance!(prefixed_notifier);

const TTL: Duration = Duration::from_secs(60);

async fn connect(tail: &str) -> RedisNotifier {
    let url = format!("{}{tail}", redis_url().trim_end_matches('/'));
    RedisNotifier::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("Redis must be running at {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_stay_apart() {
    // Two deployments written for one server each, on databases 0 and 3 of one.
    deployments_stay_apart(&connect("").await, &connect("/3").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_stay_apart() {
    let (a, b) = (
        connect("?prefix=ivy-test-a").await,
        connect("/0?prefix=ivy-test-b").await,
    );
    deployments_stay_apart(&a, &b).await;
    deployments_stay_apart(&connect("").await, &a).await;
    deployments_stay_apart(&connect("/3?prefix=ivy-test-a").await, &a).await;
}

/// PROTOCOL.md §3: keys are `<prefix>:<name>`; channels are that, preceded by `db<n>:` on
/// database n (here read with a notifier of database 0 without a prefix, whose names are
/// the plain ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_follow_the_documented_layout() {
    let plain = connect("").await;
    let prefixed = connect("/3?prefix=ivy-test.layout").await;
    let mut events = plain
        .subscribe(&format!("db3:ivy-test.layout:{EVENTS_CHANNEL}"))
        .await
        .unwrap();
    prefixed
        .publish(EVENTS_CHANNEL, b"event".to_vec())
        .await
        .unwrap();
    assert_eq!(next_message(&mut events).await, "event");

    let id = unique("task");
    prefixed
        .publish_final("ivy.reply.x", &id, b"7".to_vec(), TTL)
        .await
        .unwrap();
    let client = redis::Client::open(format!("{}/3", redis_url())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (prefixed_value, plain_value): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::pipe()
        .cmd("GET")
        .arg(format!("ivy-test.layout:{RESULT_KEY_PREFIX}{id}"))
        .cmd("GET")
        .arg(format!("{RESULT_KEY_PREFIX}{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (prefixed_value.as_deref(), plain_value),
        (Some(&b"7"[..]), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prefixes_are_url_errors() {
    for bad in ["{tag}", "a%20b", "db3", "app:"] {
        let url = format!("redis://:secret@127.0.0.1:6379/?prefix={bad}");
        match RedisNotifier::connect(&url).await {
            Err(ivy_core::Error::Url { url, reason }) => {
                assert!(reason.contains("bad prefix"), "{reason}");
                assert!(!url.contains("secret"), "{url}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}
