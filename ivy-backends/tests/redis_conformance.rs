//! The conformance suite on Redis (`IVY_TEST_REDIS_URL`, default the local server).
#![cfg(feature = "redis")]

async fn make_notifier() -> ivy_backends::redis::RedisNotifier {
    let url =
        std::env::var("IVY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    ivy_backends::redis::RedisNotifier::connect(&url)
        .await
        .expect("Redis must be running (scripts/services)")
}

ivy_core::notifier_conformance!(make_notifier);
