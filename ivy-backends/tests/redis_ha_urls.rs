//! Sentinel and Cluster URLs that cannot work fail at connect with one line naming the URL,
//! password hidden: a master name the sentinels do not know, a cluster URL naming a server
//! that is not in cluster mode, every node down (after a bounded wait). Needs the setups of
//! `scripts/redis-sentinel start` and the shared Redis (`IVY_TEST_REDIS_URL`).
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use ivy_core::Error;

const PASSWORD: &str = "ha-secret";

async fn refusal(url: &str) -> String {
    match ivy_backends::notifier_from_url(url).await {
        Ok(_) => panic!("{url} connected"),
        Err(e) => {
            let said = common::chain(&e);
            assert!(!said.contains(PASSWORD), "{said}");
            assert!(!said.contains('\n'), "one line: {said}");
            said
        }
    }
}

#[tokio::test]
async fn an_unknown_master_name_is_named() {
    // The sentinels of the test setup must answer, or this would test nothing.
    common::redis_sentinel_notifier().await;
    let url = format!("redis+sentinel://:{PASSWORD}@127.0.0.1:26401,127.0.0.1:26402/nosuchmaster");
    let said = refusal(&url).await;
    assert!(
        said.contains("know no primary named `nosuchmaster`"),
        "{said}"
    );
    assert!(
        said.contains("redis+sentinel://:***@127.0.0.1:26401,127.0.0.1:26402/nosuchmaster"),
        "{said}"
    );
}

#[tokio::test]
async fn a_server_not_in_cluster_mode_is_named() {
    let single = ivy_core::url::ParsedUrl::parse(&common::redis_url()).unwrap();
    let node = format!(
        "{}:{}",
        single.host().unwrap(),
        single.port().unwrap_or(6379)
    );
    // The shared Redis must answer, or this would test nothing.
    common::redis_notifier().await;
    let said = refusal(&format!("redis+cluster://:{PASSWORD}@{node}/")).await;
    assert!(said.contains("is not in cluster mode"), "{said}");
    assert!(
        said.contains(&format!("redis+cluster://:***@{node}/")),
        "{said}"
    );
}

#[tokio::test]
async fn every_node_down_fails_in_bounded_time() {
    // Ports nothing listens on (the tests' own ranges start at 6390).
    for url in [
        format!("redis+sentinel://:{PASSWORD}@127.0.0.1:26499,127.0.0.1:26498/mymaster"),
        format!("redis+cluster://:{PASSWORD}@127.0.0.1:7099,127.0.0.1:7098/"),
    ] {
        let start = Instant::now();
        let said = refusal(&url).await;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert!(
            said.contains("could not") && said.contains(":***@127.0.0.1:"),
            "{said}"
        );
    }
}

#[tokio::test]
async fn malformed_urls_are_url_errors() {
    for (url, why) in [
        (
            format!("redis+sentinel://:{PASSWORD}@/mymaster"),
            "lists no node",
        ),
        (
            format!("redis+sentinel://:{PASSWORD}@h1,h2"),
            "names no master",
        ),
        (format!("redis+cluster://:{PASSWORD}@"), "lists no node"),
        (
            format!("rediss+cluster://:{PASSWORD}@h1,h2/"),
            "TLS is not supported",
        ),
    ] {
        match ivy_backends::notifier_from_url(&url).await {
            Err(Error::Url { url, reason }) => {
                assert!(reason.contains(why), "{reason}");
                assert!(!url.contains(PASSWORD) && url.contains(":***@"), "{url}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

/// `?wait_replicas=N`: the writes a failover must not lose are acknowledged once `N` replicas
/// have them, and fail when fewer do (each primary of the test setups has one replica).
#[tokio::test]
async fn wait_replicas_confirms_or_fails_the_writes_that_must_survive_a_failover() {
    use ivy_core::{Claim, Coordination, Results};
    let ttl = Duration::from_secs(60);
    for base in [common::redis_sentinel_url(), common::redis_cluster_url()] {
        let with = |options: &str| format!("{base}?{options}");
        let n = ivy_backends::redis::RedisNotifier::connect(&with("wait_replicas=1"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{base} (run scripts/redis-sentinel start and scripts/redis-cluster start): {}",
                    common::chain(&e)
                )
            });
        let id = ivy_core::conformance::unique("durable");
        n.publish_final("ivy.reply.none", &id, b"r".to_vec(), ttl)
            .await
            .unwrap();
        assert_eq!(n.fetch(&id).await.unwrap().as_deref(), Some(&b"r"[..]));
        assert_eq!(n.claim(&id, "me", ttl).await.unwrap(), Claim::Won);
        n.mark_done(&id, ttl).await.unwrap();
        assert_eq!(n.claim(&id, "me", ttl).await.unwrap(), Claim::Done);
        assert_eq!(n.count_member(&id, "m0", ttl).await.unwrap(), 1);

        let n = ivy_backends::redis::RedisNotifier::connect(&with(
            "wait_replicas=2&wait_timeout_ms=100",
        ))
        .await
        .unwrap();
        let e = n
            .publish_final("ivy.reply.none", &id, b"r".to_vec(), ttl)
            .await
            .expect_err("one replica is not two");
        let said = common::chain(&e);
        assert!(
            said.contains("only 1 of 2 replicas acknowledged it within 100 ms"),
            "{said}"
        );
        let e = n
            .claim(&ivy_core::conformance::unique("c"), "me", ttl)
            .await;
        assert!(e.is_err(), "{e:?}");
    }
}

#[tokio::test]
async fn bad_wait_options_are_url_errors() {
    for url in [
        format!("redis+sentinel://:{PASSWORD}@h1,h2/m?wait_replicas=x"),
        format!("redis+cluster://:{PASSWORD}@h1,h2/?wait_timeout_ms=9000&wait_replicas=1"),
        format!("redis://:{PASSWORD}@127.0.0.1/?wait_replicas=-1"),
    ] {
        match ivy_backends::notifier_from_url(&url).await {
            Err(Error::Url { url, reason }) => {
                assert!(reason.contains("wait_"), "{reason}");
                assert!(!url.contains(PASSWORD), "{url}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}
