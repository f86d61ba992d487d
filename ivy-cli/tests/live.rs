//! `ivy workers`, `ivy watch` and the warning of `ivy call` for a task no live worker serves,
//! against RabbitMQ and Redis with workers of this process.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{amqp_url, ivy_amqp, queue, redis_url, until};
use ivy::backends::{broker_from_url, notifier_from_url};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A worker on `queue` with events on, announcing every `every` (kept 3 × `every`).
async fn worker(
    queue: &str,
    every: Duration,
) -> (
    String,
    tokio::task::JoinHandle<ivy::Result<ivy::WorkerReport>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let broker = broker_from_url(&amqp_url()).await.expect("RabbitMQ");
    let notifier = notifier_from_url(&redis_url()).await.expect("Redis");
    let w = ivy::Worker::new(broker, notifier)
        .unwrap()
        .queues([queue])
        .events(true)
        .announce_every(every);
    let id = w.id().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(w.run(async move {
        stopped.await.ok();
    }));
    (id, join, stop)
}

/// The worker `id` as `ivy workers --json` lists it, if it does.
async fn listed(id: &str) -> Option<Value> {
    let run = ivy_amqp(&["workers", "--json"]).await.ok();
    run.json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_a_live_worker_until_it_stops_or_is_killed() {
    let q = queue("workers");
    let (id, join, stop) = worker(&q, Duration::from_millis(300)).await;
    let info = until("the worker listed", || listed(&id)).await;
    assert_eq!(info["queues"], serde_json::json!([q]));
    assert!(
        info["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "cli_tests.add"),
        "{info}"
    );
    let table = ivy_amqp(&["workers"]).await.ok();
    assert!(table.stdout.starts_with("WORKER"), "{table:?}");
    assert!(table.stdout.contains(&id), "{table:?}");

    // A graceful stop withdraws it at once.
    stop.send(()).ok();
    join.await.unwrap().unwrap();
    assert_eq!(listed(&id).await, None, "withdrawn at a graceful stop");

    // A worker process killed without a word (SIGKILL) cannot withdraw its announcement: it
    // is listed until its TTL (3 × 1 s here) runs out.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "worker_process", "--nocapture"])
        .env("IVY_CLI_TEST_WORKER_QUEUE", &q)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the worker process starts");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let killed = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the worker process ended before naming itself");
        if let Some(id) = line.trim().strip_prefix("worker id: ") {
            break id.to_owned();
        }
    };
    until("the worker process listed", || listed(&killed)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        listed(&killed).await.is_some(),
        "not withdrawn by a killed process"
    );
    until("the killed worker gone after its TTL", || async {
        listed(&killed).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_events_of_a_call_and_call_warns_about_unserved_tasks() {
    let q = queue("watch");
    let (id, join, stop) = worker(&q, Duration::from_millis(300)).await;
    until("the worker listed", || listed(&id)).await;

    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_ivy"))
        .args([
            "watch",
            "--json",
            "--task",
            "cli_tests.add",
            "--queue",
            &q,
            "--count",
            "3",
        ])
        .env("IVY_BROKER_URL", amqp_url())
        .env("IVY_RESULT_URL", redis_url())
        .env_remove("IVY_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ivy watch runs");
    let mut stderr = BufReader::new(watch.stderr.take().unwrap()).lines();
    let first = stderr.next_line().await.unwrap().unwrap_or_default();
    assert!(first.starts_with("watching task events"), "{first}");

    // A served task: no warning.
    let call = ivy_amqp(&[
        "call",
        "cli_tests.add",
        r#"{"x": 2, "y": 3}"#,
        "--queue",
        &q,
        "--wait",
    ])
    .await
    .ok();
    assert!(!call.stderr.contains("warning"), "{call:?}");
    let out = tokio::time::timeout(Duration::from_secs(30), watch.wait_with_output())
        .await
        .expect("watch stops after 3 events")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["received", "started", "succeeded"], "{events:?}");
    assert!(
        events.iter().all(|e| e["worker"] == id.as_str()),
        "{events:?}"
    );

    // A task no live worker announces: refused (nothing sent), or sent with --force and a
    // warning.
    let nobody = queue("nobody");
    let call = ivy_amqp(&["call", "no_such.task", "{}", "--queue", &nobody]).await;
    assert_eq!(call.code, 2, "{call:?}");
    assert!(call.stderr.contains("runs task `no_such.task`"), "{call:?}");
    let call = ivy_amqp(&["call", "no_such.task", "{}", "--queue", &nobody, "--force"])
        .await
        .ok();
    assert!(
        call.stderr.contains("warning: none of the")
            && call.stderr.contains("runs task `no_such.task`"),
        "{call:?}"
    );
    assert!(
        call.stderr
            .contains(&format!("warning: no live worker consumes queue {nobody}")),
        "{call:?}"
    );
    stop.send(()).ok();
    join.await.unwrap().unwrap();
}

/// Run by the test above as a child process (`IVY_CLI_TEST_WORKER_QUEUE` set): a worker
/// announcing every second until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process for workers_lists_a_live_worker_until_it_stops_or_is_killed"]
async fn worker_process() {
    let Ok(q) = std::env::var("IVY_CLI_TEST_WORKER_QUEUE") else {
        return;
    };
    let (id, join, _stop) = worker(&q, Duration::from_secs(1)).await;
    println!("worker id: {id}");
    join.await.unwrap().unwrap();
}
