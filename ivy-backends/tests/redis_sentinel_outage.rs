//! Every node of a Sentinel deployment down: a handle waiting for a result keeps waiting, one whose limit
//! passes says the result store was unreachable (naming the URL), and once the deployment is
//! back commands work and the waiting handle gets its result, as with a single server down
//! (`redis_outage.rs`).
//!
//! Stops the whole setup of `scripts/redis-sentinel start` and starts it afresh (empty) through
//! that script, also when the test fails. One test in this binary: it stops nodes, and cargo
//! runs test binaries one after another.
#![cfg(feature = "redis")]

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_wait_through_an_outage_of_every_node() {
    common::outage::handles_wait_through_an_outage_of_every_node(
        "redis-sentinel",
        "Sentinel deployment",
        common::redis_sentinel_notifier().await,
        common::redis_sentinel_url(),
    )
    .await;
}
