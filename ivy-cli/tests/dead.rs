//! `ivy dead list|replay|purge` against RabbitMQ and SQS (moto), with a worker of this process
//! that dead-letters `cli_tests.flaky` calls while it is broken: listing consumes nothing,
//! replaying gets each call run once, and the work and dead counts add up before and after.

mod common;

use std::sync::atomic::Ordering;

use common::{amqp_url, depth, ivy, queue, redis_url, runs, until, Worker, BROKEN};
use serde_json::Value;

/// The dead letters `ivy dead list` shows.
async fn dead_list(env: &[(&str, &str)], q: &str) -> Vec<Value> {
    let run = ivy(&["dead", "list", q, "--json"], env).await.ok();
    run.json()["dead_letters"].as_array().cloned().unwrap()
}

async fn wait_for(env: &[(&str, &str)], q: &str, extra: &[&str], ready: u64, dead: u64) {
    until(&format!("ready {ready}, dead {dead} on {q}"), || async {
        let d = depth(env, q, extra).await;
        (d["ready"] == ready && d["dead"] == dead).then_some(())
    })
    .await;
}

/// The whole story on one broker: break calls, list them, replay one, then the rest.
async fn list_replay_purge(broker_url: &str, q: &str, depth_opts: &[&str]) {
    let redis = redis_url();
    let env = [
        ("IVY_BROKER_URL", broker_url),
        ("IVY_RESULT_URL", redis.as_str()),
    ];
    BROKEN.store(true, Ordering::SeqCst);
    let worker = Worker::start(broker_url, q, None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let args = format!(r#"{{"n": {n}}}"#);
        let run = ivy(&["call", "cli_tests.flaky", &args, "--queue", q], &env)
            .await
            .ok();
        ids.push(run.stdout.trim().to_owned());
    }
    wait_for(&env, q, depth_opts, 0, 3).await;

    // Listing twice shows the same three, and leaves them where they were.
    let listed = dead_list(&env, q).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let mut listed_ids: Vec<&str> = listed.iter().map(|l| l["id"].as_str().unwrap()).collect();
    listed_ids.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(listed_ids, sorted);
    for l in &listed {
        assert_eq!(l["task"], "cli_tests.flaky");
        assert_eq!(l["attempt"], 0);
        let reason = l["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("task cli_tests.flaky failed after 1 attempt(s): ")
                && reason.ends_with("broken for now"),
            "{reason}"
        );
    }
    assert_eq!(dead_list(&env, q).await.len(), 3);
    let table = ivy(&["dead", "list", q, "--limit", "2"], &env).await.ok();
    assert_eq!(
        table.stdout.lines().count(),
        3,
        "a header and two rows: {table:?}"
    );
    assert!(table.stdout.starts_with("ID "), "{table:?}");
    wait_for(&env, q, depth_opts, 0, 3).await;

    // Replayed while still broken: each is taken once, fails again and is dead again; the
    // replay does not pick up its own calls dead-lettered anew while it runs.
    let again = ivy(&["dead", "replay", q, "--all", "--json"], &env)
        .await
        .ok();
    assert_eq!(
        again.json()["replayed"].as_array().unwrap().len(),
        3,
        "{again:?}"
    );
    wait_for(&env, q, depth_opts, 0, 3).await;
    assert_eq!(dead_list(&env, q).await.len(), 3);

    // Replay one: it runs once, the other two stay dead.
    BROKEN.store(false, Ordering::SeqCst);
    let one = ivy(&["dead", "replay", q, "--id", &ids[1], "--json"], &env)
        .await
        .ok();
    assert_eq!(one.json()["replayed"], serde_json::json!([ids[1]]));
    until("the replayed call ran", || async {
        (runs(&ids[1]) == 1).then_some(())
    })
    .await;
    wait_for(&env, q, depth_opts, 0, 2).await;
    assert_eq!(runs(&ids[0]), 0);

    // An id that is not there: exit 1, nothing moves.
    let missing = ivy(&["dead", "replay", q, "--id", "no-such-id"], &env).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("no-such-id"), "{missing:?}");
    wait_for(&env, q, depth_opts, 0, 2).await;

    // The rest, with their attempts reset: each runs exactly once.
    let rest = ivy(&["dead", "replay", q, "--all", "--reset-attempts"], &env)
        .await
        .ok();
    assert_eq!(
        rest.stdout.trim(),
        format!("replayed 2 dead letter(s) onto `{q}`")
    );
    until("the replayed calls ran", || async {
        (runs(&ids[0]) == 1 && runs(&ids[2]) == 1).then_some(())
    })
    .await;
    wait_for(&env, q, depth_opts, 0, 0).await;
    assert!(ids.iter().all(|id| runs(id) == 1), "a call ran twice");
    assert!(dead_list(&env, q).await.is_empty());

    // Purge: refused without --yes (exit 2), then empties the dead letters.
    BROKEN.store(true, Ordering::SeqCst);
    ivy(
        &["call", "cli_tests.flaky", r#"{"n": 9}"#, "--queue", q],
        &env,
    )
    .await
    .ok();
    wait_for(&env, q, depth_opts, 0, 1).await;
    let refused = ivy(&["dead", "purge", q], &env).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    wait_for(&env, q, depth_opts, 0, 1).await;
    let purged = ivy(&["dead", "purge", q, "--yes", "--json"], &env)
        .await
        .ok();
    assert_eq!(purged.json()["purged"], 1);
    wait_for(&env, q, depth_opts, 0, 0).await;
    worker.stop().await;
}

// One test for both brokers (SQS when `ivy` is built with it): they share the worker's BROKEN
// switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_without_loss_and_replayed_once() {
    list_replay_purge(&amqp_url(), &queue("dead"), &["--no-management"]).await;
    #[cfg(feature = "sqs")]
    {
        // SQS: names take letters, digits, `-` and `_` only.
        let q = queue("dead").replace('.', "-");
        list_replay_purge(&common::sqs_url(), &q, &[]).await;
    }
}
