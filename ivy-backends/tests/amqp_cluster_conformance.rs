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

/// A worker on a URL naming several nodes announces the node it consumes from, for
/// `ivy workers` and the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_announces_the_node_it_consumes_from() {
    use std::time::{Duration, Instant};

    use ivy_core::conformance::{unique, Echo};
    use ivy_core::events::WorkerInfo;
    use ivy_core::memory::MemoryNotifier;
    use ivy_core::{Broker, Presence, Registry, Worker};

    let broker = make_broker().await;
    let notifier = MemoryNotifier::new();
    let registry = Registry::new().register::<Echo>().unwrap();
    let worker = Worker::with_registry(broker.clone(), notifier.clone(), registry)
        .queues([unique("cluster-announce")])
        .announce_every(Duration::from_millis(100));
    let id = worker.id().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let announced = notifier
            .announcements()
            .await
            .unwrap()
            .iter()
            .filter_map(|p| WorkerInfo::from_slice(p).ok())
            .find(|w| w.id == id)
            .and_then(|w| w.broker_node);
        if let Some(node) = announced {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "no broker node announced in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        ["127.0.0.1:5701", "127.0.0.1:5702", "127.0.0.1:5703"].contains(&node.as_str()),
        "{node}"
    );
    assert_eq!(broker.connected_node().as_deref(), Some(node.as_str()));
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
