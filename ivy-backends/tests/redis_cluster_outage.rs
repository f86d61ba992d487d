//! Every node of a Redis Cluster down: a handle waiting for a result keeps waiting, one whose limit
//! passes says the result store was unreachable (naming the URL), and once the deployment is
//! back commands work and the waiting handle gets its result, as with a single server down
//! (`redis_outage.rs`).
//!
//! Stops the whole setup of `scripts/redis-cluster start` and starts it afresh (empty) through
//! that script, also when the test fails. One test in this binary: it stops nodes, and cargo
//! runs test binaries one after another.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::{redis_cluster_notifier, redis_cluster_url, script};
use ivy_core::conformance::{unique, Echo};
use ivy_core::memory::MemoryBroker;
use ivy_core::{Call, Error, Notification, Outcome, Producer, Results};
use serde_json::{json, Map};

/// Starts the setup again when dropped, so that a failed test leaves it running.
struct StartAtEnd(bool);

impl Drop for StartAtEnd {
    fn drop(&mut self) {
        if !self.0 {
            script("redis-cluster", &["start"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_wait_through_an_outage_of_every_node() {
    let n = redis_cluster_notifier().await;
    let producer = Producer::new(MemoryBroker::new(), n.clone())
        .with_result_reread(Duration::from_millis(200));
    let echo = || Call::<Echo>::__new(Ok(Map::new()));
    let mut patient = producer.delayed_call(echo()).await.unwrap();
    let mut hasty = producer.delayed_call(echo()).await.unwrap();
    let patient_id = patient.id().to_owned();
    let waiting =
        tokio::spawn(async move { patient.result_timeout(Duration::from_secs(120)).await });

    script("redis-cluster", &["stop"]);
    let mut restart = StartAtEnd(false);

    let start = Instant::now();
    let err = hasty
        .result_timeout(Duration::from_secs(2))
        .await
        .expect_err("no result while every node is down");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        start.elapsed()
    );
    assert!(
        matches!(err, Error::ResultStoreUnreachable { .. }),
        "not a bare timeout: {err:?}"
    );
    let said = common::chain(&err);
    let shown = redis_cluster_url();
    assert!(said.contains(&shown), "names the deployment: {said}");
    assert!(
        !waiting.is_finished(),
        "a handle with time left keeps waiting"
    );

    script("redis-cluster", &["start"]);
    restart.0 = true;
    let back = Instant::now();

    // The deployment is back, empty: commands work again and the result is stored.
    let note = Notification::result(patient_id.clone(), 0, Outcome::Ok(json!({"back": 1})));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match n
            .publish_final(
                &unique("elsewhere"),
                &patient_id,
                note.to_bytes(),
                Duration::from_secs(60),
            )
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "commands never worked again: {}",
                    common::chain(&e)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let commands_back = back.elapsed();
    let got = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting handle finishes once the result is stored")
        .unwrap();
    assert_eq!(got.unwrap(), json!({"back": 1}));
    eprintln!(
        "Redis Cluster outage: the hasty handle failed after {:?} ({said}); commands worked {commands_back:?} after the restart",
        start.elapsed()
    );
}
