//! The conformance suite on a 3-node RabbitMQ cluster with quorum queues, the URL naming all
//! three nodes (`scripts/rabbitmq-cluster`, which `scripts/test` starts).
#![cfg(feature = "amqp")]

mod common;

async fn make_broker() -> ivy_backends::amqp::AmqpBroker {
    let url = common::cluster::amqp_cluster_url();
    ivy_backends::amqp::AmqpBroker::connect(&url)
        .await
        .expect("the RabbitMQ test cluster must be running (scripts/rabbitmq-cluster start)")
}

ivy_core::broker_conformance!(make_broker);
