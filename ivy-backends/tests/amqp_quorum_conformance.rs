//! The conformance suite on RabbitMQ with `?queue_type=quorum` (no priorities).
#![cfg(feature = "amqp")]

mod common;

async fn make_broker() -> ivy_backends::amqp::AmqpBroker {
    common::amqp_broker("queue_type=quorum").await
}

ivy_core::broker_conformance!(make_broker);
