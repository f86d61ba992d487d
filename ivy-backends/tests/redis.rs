//! Redis specifics beyond the conformance suite: keys, TTLs, binary payloads and URLs.
#![cfg(feature = "redis")]

use std::time::Duration;

use ivy_backends::redis::{RedisNotifier, RESULT_KEY_PREFIX, WORKER_INDEX_KEY, WORKER_KEY_PREFIX};
use ivy_backends::{notifier_from_url, AnyNotifier};
use ivy_core::conformance::unique;
use ivy_core::{Error, Incoming, Presence, Results, Subscription};
use tokio::time::timeout;

mod common;
use common::{chain, redis_notifier as notifier, redis_url as url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_results_are_stored_under_their_key_with_a_ttl() {
    let n = notifier().await;
    let id = unique("task");
    n.publish_final(&unique("ch"), &id, vec![0, 255, 1], Duration::from_secs(90))
        .await
        .unwrap();
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{RESULT_KEY_PREFIX}{id}");
    let (value, ttl): (Vec<u8>, i64) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, [0, 255, 1]);
    assert!((80_000..=90_000).contains(&ttl), "PTTL {ttl}");
    assert_eq!(n.fetch(&id).await.unwrap(), Some(vec![0, 255, 1]));
    assert_eq!(n.fetch(&unique("unknown")).await.unwrap(), None);
}

/// PROTOCOL.md §9: the announcement under `ivy:worker:<id>` with its TTL, indexed in the
/// sorted set `ivy:workers` by expiry; a withdrawal removes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_announcements_are_stored_and_indexed_as_documented() {
    let n = notifier().await;
    let id = unique("worker");
    n.announce(&id, b"{}".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    let client = redis::Client::open(url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{WORKER_KEY_PREFIX}{id}");
    let read = |conn: redis::aio::MultiplexedConnection| {
        let (key, id) = (key.clone(), id.clone());
        async move {
            let mut conn = conn;
            let (value, ttl, score): (Option<Vec<u8>>, i64, Option<f64>) = redis::pipe()
                .cmd("GET")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .cmd("ZSCORE")
                .arg(WORKER_INDEX_KEY)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .unwrap();
            (value, ttl, score)
        }
    };
    let (value, ttl, score) = read(conn.clone()).await;
    assert_eq!(value.as_deref(), Some(&b"{}"[..]));
    assert!((20_000..=30_000).contains(&ttl), "PTTL {ttl}");
    let expiry = ivy_core::envelope::now_ms() as f64 + 30_000.0;
    let score = score.expect("indexed");
    assert!(
        (expiry - score).abs() < 10_000.0,
        "score {score}, expected about {expiry}"
    );
    n.withdraw(&id).await.unwrap();
    let (value, _, score) = read(conn).await;
    assert_eq!((value, score), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_and_two_subscribers() {
    let n = notifier().await;
    let ch = unique("ch");
    let mut s1 = n.subscribe(&ch).await.unwrap();
    let mut s2 = n.subscribe(&ch).await.unwrap();
    n.publish(&ch, vec![0, 159, 146, 150]).await.unwrap();
    for s in [&mut s1, &mut s2] {
        let got = timeout(Duration::from_secs(5), s.next()).await.unwrap();
        assert_eq!(
            got.unwrap().unwrap(),
            Incoming::Message(vec![0, 159, 146, 150])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_notifier_from_a_redis_url() {
    let n = notifier_from_url(&url()).await.unwrap();
    assert!(matches!(n, AnyNotifier::Redis(_)));
    let ch = unique("any");
    let mut s = n.subscribe(&ch).await.unwrap();
    n.publish(&ch, b"hi".to_vec()).await.unwrap();
    let got = timeout(Duration::from_secs(5), s.next()).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), Incoming::Message(b"hi".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_an_error_without_the_password() {
    let e = RedisNotifier::connect("redis://:hunter2@127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(!chain(&e).contains("hunter2"), "{}", chain(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_redis_urls_are_url_errors() {
    for bad in ["redis://:hunter2@127.0.0.1:notaport", "amqp://x:hunter2@h"] {
        match notifier_from_url(bad).await {
            Err(Error::Url { url, reason }) => {
                assert!(
                    !url.contains("hunter2") && !reason.contains("hunter2"),
                    "{url} {reason}"
                )
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// TLS is compiled in (rustls on ring): a TLS handshake against a plain-text server fails
/// with an error, not a panic about a missing crypto provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_against_a_plain_server_fails_cleanly() {
    let plain = url().replacen("redis://", "rediss://", 1);
    assert!(RedisNotifier::connect(&plain).await.is_err());
}
