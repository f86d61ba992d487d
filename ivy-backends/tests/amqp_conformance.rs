//! The conformance suite on RabbitMQ (`IVY_TEST_AMQP_URL`, default the local guest account).
#![cfg(feature = "amqp")]

async fn make_broker() -> ivy_backends::amqp::AmqpBroker {
    let url = std::env::var("IVY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    ivy_backends::amqp::AmqpBroker::connect(&url)
        .await
        .expect("RabbitMQ must be running (scripts/services)")
}

ivy_core::broker_conformance!(make_broker);
