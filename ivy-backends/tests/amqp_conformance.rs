//! The conformance suite on RabbitMQ (`IVY_TEST_AMQP_URL`, default the local guest account).
#![cfg(feature = "amqp")]

mod common;

async fn make_broker() -> ivy_backends::amqp::AmqpBroker {
    common::amqp_broker("").await
}

ivy_core::broker_conformance!(make_broker);
