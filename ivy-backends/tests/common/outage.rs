//! Every node of a replicated Redis setup down (`redis_sentinel_outage.rs`,
//! `redis_cluster_outage.rs`): handles wait through it, as with a single server down
//! (`redis_outage.rs`).

use std::time::{Duration, Instant};

use ivy_backends::redis::RedisNotifier;
use ivy_core::conformance::{unique, Echo};
use ivy_core::memory::MemoryBroker;
use ivy_core::{Call, Error, Notification, Outcome, Producer, Results};
use serde_json::{json, Map};

use super::script;

/// Starts the setup again when dropped, so that a failed test leaves it running.
struct StartAtEnd(&'static str, bool);

impl Drop for StartAtEnd {
    fn drop(&mut self) {
        if !self.1 {
            script(self.0, &["start"]);
        }
    }
}

/// Every node of the setup of `scripts/<setup>` (at `url`, connected as `n`) down: a handle
/// waiting for a result keeps waiting, one whose limit passes says the result store was
/// unreachable (naming the URL), and once the setup is back (started afresh, empty) commands
/// work and the waiting handle gets its result. `what` names the setup in the test's output.
pub async fn handles_wait_through_an_outage_of_every_node(
    setup: &'static str,
    what: &str,
    n: RedisNotifier,
    url: String,
) {
    let producer = Producer::new(MemoryBroker::new(), n.clone())
        .with_result_reread(Duration::from_millis(200));
    let echo = || Call::<Echo>::__new(Ok(Map::new()));
    let mut patient = producer.delayed_call(echo()).await.unwrap();
    let mut hasty = producer.delayed_call(echo()).await.unwrap();
    let patient_id = patient.id().to_owned();
    let waiting =
        tokio::spawn(async move { patient.result_timeout(Duration::from_secs(120)).await });

    script(setup, &["stop"]);
    let mut restart = StartAtEnd(setup, false);

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
    let said = super::chain(&err);
    let shown = url;
    assert!(said.contains(&shown), "names the deployment: {said}");
    assert!(
        !waiting.is_finished(),
        "a handle with time left keeps waiting"
    );

    script(setup, &["start"]);
    restart.1 = true;
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
                    super::chain(&e)
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
        "{what} outage: the hasty handle failed after {:?} ({said}); commands worked {commands_back:?} after the restart",
        start.elapsed()
    );
}
