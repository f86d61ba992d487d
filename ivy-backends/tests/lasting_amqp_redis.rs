//! Issue 14's checks (cancellation that lasts, shared state, permanent errors, unique calls) on
//! RabbitMQ and Redis together, as a deployment runs them: the conformance suite runs each
//! backend with the memory implementation of the other trait.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod common;

macro_rules! on_amqp_and_redis {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let broker = common::amqp_broker("").await;
                let notifier = common::redis_notifier().await;
                ivy_core::conformance::lasting::$case(broker, notifier).await
            }
        )*
    };
}

on_amqp_and_redis!(
    cancel_before_start,
    cancel_while_running,
    cancel_while_no_worker,
    cancel_finished,
    state_injection,
    permanent_errors,
    unique_calls,
);
