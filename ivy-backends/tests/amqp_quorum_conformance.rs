//! The conformance suite on RabbitMQ with `?queue_type=quorum` (no priorities).
#![cfg(feature = "amqp")]

async fn make_broker() -> ivy_backends::amqp::AmqpBroker {
    let url = std::env::var("IVY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let sep = if url.contains('?') { '&' } else { '?' };
    ivy_backends::amqp::AmqpBroker::connect(&format!("{url}{sep}queue_type=quorum"))
        .await
        .expect("RabbitMQ must be running (scripts/services)")
}

ivy_core::broker_conformance!(make_broker);
