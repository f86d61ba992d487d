//! The conformance suite on RabbitMQ (`IVY_TEST_AMQP_URL`, default the local guest account).
#![cfg(feature = "amqp")]

mod common;

/// Every queue a priority queue, so the suite's priority check runs (plain queues, the
/// default, pass the rest of it as well: tests/amqp_priorities.rs).
async fn make_broker() -> ivy_backends::amqp::AmqpBroker {
    common::amqp_broker("priority_queues=*").await
}

ivy_core::broker_conformance!(make_broker);
