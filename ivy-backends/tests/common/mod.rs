//! What the backend test binaries share: where the services are, a message to publish and an
//! error's whole chain. Not a test binary itself (a folder with `mod.rs`).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

#[cfg(feature = "redis")]
pub mod apart;
pub mod cluster;
#[cfg(feature = "sqs")]
pub mod moto;
#[cfg(feature = "redis")]
pub mod outage;
#[cfg(feature = "amqp")]
pub mod own_rabbit;
#[cfg(feature = "redis")]
pub mod own_redis;

use std::error::Error as _;
use std::time::Duration;

use ivy_core::{Consumer, Error, OutgoingMessage};
use tokio::time::timeout;

/// `IVY_TEST_AMQP_URL`, default the local guest account.
pub fn amqp_url() -> String {
    env_or("IVY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// `IVY_TEST_REDIS_URL`, default the local server.
pub fn redis_url() -> String {
    env_or("IVY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// `IVY_TEST_REDIS_SENTINEL_URL`, default the setup `scripts/redis-sentinel start` makes.
pub fn redis_sentinel_url() -> String {
    env_or(
        "IVY_TEST_REDIS_SENTINEL_URL",
        "redis+sentinel://127.0.0.1:26401,127.0.0.1:26402,127.0.0.1:26403/mymaster",
    )
}

/// `IVY_TEST_REDIS_CLUSTER_URL`, default the cluster `scripts/redis-cluster start` makes.
pub fn redis_cluster_url() -> String {
    env_or(
        "IVY_TEST_REDIS_CLUSTER_URL",
        "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003/",
    )
}

/// `IVY_TEST_SQS_URL` (default the local moto server) with extra URL `options`
/// (`"visibility_timeout=2"`), if any.
pub fn sqs_url(options: &str) -> String {
    with_options(
        env_or("IVY_TEST_SQS_URL", "sqs://127.0.0.1:4566?region=us-east-1"),
        options,
    )
}

/// RabbitMQ at [`amqp_url`] with extra URL `options`, connected.
#[cfg(feature = "amqp")]
pub async fn amqp_broker(options: &str) -> ivy_backends::amqp::AmqpBroker {
    ivy_backends::amqp::AmqpBroker::connect(&with_options(amqp_url(), options))
        .await
        .expect("RabbitMQ must be running (scripts/services)")
}

/// The SQS server at [`sqs_url`] with extra URL `options`.
#[cfg(feature = "sqs")]
pub async fn sqs_broker(options: &str) -> ivy_backends::sqs::SqsBroker {
    ivy_backends::sqs::SqsBroker::from_url(&sqs_url(options))
        .await
        .expect("an SQS server must be running (scripts/services)")
}

/// The SQS URL of queue `q` (by its SQS name), read with the plain SQS API.
#[cfg(feature = "sqs")]
pub async fn sqs_queue_url(b: &ivy_backends::sqs::SqsBroker, q: &str) -> String {
    b.client()
        .get_queue_url()
        .queue_name(q)
        .send()
        .await
        .expect("queue url")
        .queue_url
        .expect("a url")
}

/// Redis at [`redis_url`], connected.
#[cfg(feature = "redis")]
pub async fn redis_notifier() -> ivy_backends::redis::RedisNotifier {
    ivy_backends::redis::RedisNotifier::connect(&redis_url())
        .await
        .expect("Redis must be running (scripts/services)")
}

/// The Sentinel deployment at [`redis_sentinel_url`], connected.
#[cfg(feature = "redis")]
pub async fn redis_sentinel_notifier() -> ivy_backends::redis::RedisNotifier {
    let url = redis_sentinel_url();
    ivy_backends::redis::RedisNotifier::connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis Sentinel must be running (scripts/redis-sentinel start): {}",
                chain(&e)
            )
        })
}

/// The Redis Cluster at [`redis_cluster_url`], connected.
#[cfg(feature = "redis")]
pub async fn redis_cluster_notifier() -> ivy_backends::redis::RedisNotifier {
    let url = redis_cluster_url();
    ivy_backends::redis::RedisNotifier::connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a Redis Cluster must be running (scripts/redis-cluster start): {}",
                chain(&e)
            )
        })
}

/// Runs `scripts/<name> <args>` of the workspace and returns its standard output, trimmed;
/// panics, with what it said, when it fails.
pub fn script(name: &str, args: &[&str]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = std::process::Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn with_options(url: String, options: &str) -> String {
    match (options.is_empty(), url.contains('?')) {
        (true, _) => url,
        (false, true) => format!("{url}&{options}"),
        (false, false) => format!("{url}?{options}"),
    }
}

/// A message for `queue` with a fresh task id, no priority and no delay.
pub fn msg(queue: &str, body: impl AsRef<[u8]>) -> OutgoingMessage {
    OutgoingMessage::new(
        ivy_core::envelope::new_task_id(),
        queue,
        body.as_ref().to_vec(),
    )
}

/// The next delivery of `c`, which must come within `limit`.
pub async fn next_within<C: Consumer>(c: &mut C, limit: Duration) -> C::Delivery {
    timeout(limit, c.next())
        .await
        .unwrap_or_else(|_| panic!("a delivery within {limit:?}"))
        .expect("consumer open")
        .expect("no consumer error")
}

/// The next delivery within `limit`, asking again after a consumer error, which the
/// `Consumer` contract makes transient (a server restarting, a connection re-made).
#[allow(dead_code)]
pub async fn next_delivery_within<C: Consumer>(c: &mut C, limit: Duration) -> C::Delivery {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match timeout(left, c.next()).await {
            Ok(Some(Ok(d))) => return d,
            Ok(Some(Err(e))) => eprintln!("consumer error, asking again: {}", chain(&e)),
            Ok(None) => panic!("the consumer closed"),
            Err(_) => panic!("a delivery within {limit:?}"),
        }
    }
}

/// The whole error chain, as a log line would show it.
pub fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
