//! `ivy queues` reports a known state: on RabbitMQ through its management API (ready, in
//! flight, delayed, dead, consumers), without it (passive declares: the rest unknown), and on
//! SQS (GetQueueAttributes).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{amqp_url, depth, ivy, queue, redis_url, until, Worker, HELD};
use ivy::backends::{broker_from_url, notifier_from_url};
use serde_json::{json, Value};

/// Sends a call of `add` delayed by a minute, as a producer would.
async fn send_delayed(broker_url: &str, q: &str) {
    let broker = broker_from_url(broker_url).await.unwrap();
    let notifier = notifier_from_url(&redis_url()).await.unwrap();
    ivy::Producer::new(broker, notifier)
        .send(
            common::add::call(1, 2)
                .queue(q)
                .countdown(Duration::from_secs(60)),
        )
        .await
        .unwrap();
}

fn figures(d: &Value) -> Value {
    json!([
        d["ready"],
        d["in_flight"],
        d["delayed"],
        d["dead"],
        d["consumers"]
    ])
}

async fn wait_for(env: &[(&str, &str)], q: &str, extra: &[&str], want: Value) {
    until(&format!("{want} on {q}"), || {
        let want = want.clone();
        async move { (figures(&depth(env, q, extra).await) == want).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_and_without_the_management_api() {
    let (b, r) = (amqp_url(), redis_url());
    let env = [
        ("IVY_BROKER_URL", b.as_str()),
        ("IVY_RESULT_URL", r.as_str()),
    ];
    let q = queue("queues");
    for n in 0..3 {
        let args = format!(r#"{{"x": {n}, "y": 1}}"#);
        ivy(&["call", "cli_tests.add", &args, "--queue", &q], &env)
            .await
            .ok();
    }
    send_delayed(&b, &q).await;
    // Passive declares: ready, dead and consumers; in flight and delayed unknown.
    wait_for(&env, &q, &["--no-management"], json!([3, null, null, 0, 0])).await;
    let unreachable = ivy(
        &[
            "queues",
            &q,
            "--json",
            "--management-url",
            "http://127.0.0.1:9",
        ],
        &env,
    )
    .await
    .ok();
    assert_eq!(unreachable.json()["source"], "passive");
    assert!(
        unreachable.stderr.contains("http://127.0.0.1:9"),
        "{unreachable:?}"
    );
    // The management API (its figures lag by a few seconds).
    wait_for(&env, &q, &[], json!([3, 0, 1, 0, 0])).await;
    let all = ivy(&["queues", "--json"], &env).await.ok().json();
    assert_eq!(all["source"], "management");
    assert!(all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["queue"] == q.as_str()));

    // A worker takes the three calls and holds a fourth.
    HELD.store(true, Ordering::SeqCst);
    let worker = Worker::start(&b, &q, None).await;
    ivy(&["call", "cli_tests.hold", "{}", "--queue", &q], &env)
        .await
        .ok();
    wait_for(&env, &q, &[], json!([0, 1, 1, 0, 1])).await;
    wait_for(&env, &q, &["--no-management"], json!([0, null, null, 0, 1])).await;
    let table = ivy(&["queues", &q, "--no-management"], &env).await.ok();
    assert_eq!(
        table.stdout,
        format!(
            "QUEUE{}  READY  IN FLIGHT  DELAYED  DEAD  CONSUMERS\n{q}  0      ?          ?        0     1\n",
            " ".repeat(q.len() - 5)
        )
    );
    HELD.store(false, Ordering::SeqCst);
    worker.stop().await;
}

// Only when `ivy` is built with SQS (`--features sqs`; scripts/test runs `--all-features`).
#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_through_get_queue_attributes() {
    let (b, r) = (common::sqs_url(), redis_url());
    let env = [
        ("IVY_BROKER_URL", b.as_str()),
        ("IVY_RESULT_URL", r.as_str()),
    ];
    let q = queue("queues").replace('.', "-");
    for n in 0..2 {
        let args = format!(r#"{{"x": {n}, "y": 1}}"#);
        ivy(&["call", "cli_tests.add", &args, "--queue", &q], &env)
            .await
            .ok();
    }
    send_delayed(&b, &q).await;
    wait_for(&env, &q, &[], json!([2, 0, 1, 0, null])).await;
    let all = ivy(&["queues", "--json"], &env).await.ok().json();
    assert_eq!(all["source"], "sqs");
    assert!(all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["queue"] == q.as_str()));
    let missing = ivy(&["queues", "no-such-queue-here", "--json"], &env).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(missing.json()["queues"][0]["exists"], false);
}
