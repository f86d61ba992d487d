//! `ivy call` and `ivy result` against RabbitMQ and Redis, with a worker of this process:
//! results, progress, exit codes 0 (success), 1 (the task failed, or no result in time) and 2
//! (usage), and an encrypted deployment.

mod common;

use common::{amqp_url, ivy, ivy_amqp, queue, redis_url, Worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_wait_prints_the_result_and_result_reads_it_again() {
    let q = queue("call");
    let worker = Worker::start(&amqp_url(), &q, None).await;
    let run = ivy_amqp(&[
        "call",
        "cli_tests.add",
        r#"{"x": 2, "y": 3}"#,
        "--queue",
        &q,
        "--wait",
    ])
    .await
    .ok();
    assert_eq!(run.stdout.lines().last(), Some("5"), "{run:?}");
    let id = run
        .stdout
        .split_whitespace()
        .next()
        .expect("the task id first");

    let again = ivy_amqp(&["result", id]).await.ok();
    assert_eq!(again.stdout.trim(), "5");
    let json = ivy_amqp(&["result", id, "--json"]).await.ok().json();
    assert_eq!(json["ok"], 5);
    assert_eq!(json["id"], id);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_wait_shows_progress_as_lines_when_stdout_is_not_a_terminal() {
    let q = queue("progress");
    let worker = Worker::start(&amqp_url(), &q, None).await;
    let run = ivy_amqp(&[
        "call",
        "cli_tests.steps",
        r#"{"n": 3}"#,
        "--queue",
        &q,
        "--wait",
    ])
    .await
    .ok();
    for step in 1..=3 {
        let line = format!(r#"progress: {{"done":{step},"of":3}}"#);
        assert!(run.stdout.contains(&line), "no `{line}` in {run:?}");
    }
    assert!(run.stdout.contains("running (attempt 0)"), "{run:?}");
    assert_eq!(run.stdout.lines().last(), Some("3"));

    let json = ivy_amqp(&[
        "call",
        "cli_tests.steps",
        r#"{"n": 2}"#,
        "--queue",
        &q,
        "--wait",
        "--json",
    ])
    .await
    .ok();
    let events: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(events[0]["event"], "sent");
    assert!(events
        .iter()
        .any(|e| e["event"] == "progress" && e["progress"]["done"] == 2));
    assert_eq!(events.last().unwrap()["ok"], 2);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_exits_1_with_its_kind_message_and_chain() {
    let q = queue("fail");
    let worker = Worker::start(&amqp_url(), &q, None).await;
    let run = ivy_amqp(&[
        "call",
        "cli_tests.fail",
        r#"{"message": "disk full"}"#,
        "--queue",
        &q,
        "--wait",
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("task failed: std::io::error::Error: disk full"),
        "{run:?}"
    );
    // A name no live worker runs: nothing is sent, and the nearest names are offered.
    let typo = ivy_amqp(&["call", "cli_tests.ad", "{}", "--queue", &q, "--wait"]).await;
    assert_eq!(typo.code, 2, "{typo:?}");
    assert!(
        typo.stderr
            .contains("runs task `cli_tests.ad`; did you mean")
            && typo.stderr.contains("`cli_tests.add`")
            && typo.stderr.contains("Nothing was sent"),
        "{typo:?}"
    );
    // --force sends it: the worker dead-letters it as unknown.
    let unknown = ivy_amqp(&[
        "call",
        "no.such.task",
        "{}",
        "--queue",
        &q,
        "--wait",
        "--force",
    ])
    .await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("ivy.unknown_task"), "{unknown:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_without_a_queue_goes_to_the_tasks_own_and_stores_its_result() {
    let worker = Worker::start(&amqp_url(), common::NAMED_QUEUE, None).await;
    // Until the worker's announcement is in.
    common::until("the worker on the named queue announced", || async {
        let run = ivy_amqp(&["workers", "--json"]).await.ok();
        let text = run.stdout;
        text.contains(&format!("\"{}\"", common::NAMED_QUEUE))
            .then_some(())
    })
    .await;
    let run = ivy_amqp(&["call", "cli_tests.named", r#"{"x": 41}"#])
        .await
        .ok();
    assert!(!run.stderr.contains("warning"), "{run:?}");
    let id = run.stdout.trim().to_owned();
    let id = id.as_str();
    // Sent without --wait, its result is stored all the same.
    let stored = common::until("the stored result", move || async move {
        let r = ivy_amqp(&["result", id]).await;
        (r.code == 0).then_some(r)
    })
    .await;
    assert_eq!(stored.stdout.trim(), "42", "{stored:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_send_nothing() {
    let q = queue("usage");
    let malformed = ivy_amqp(&["call", "cli_tests.add", r#"{"x": 2,"#, "--queue", &q]).await;
    assert_eq!(malformed.code, 2, "{malformed:?}");
    assert!(
        malformed
            .stderr
            .contains("the arguments are not valid JSON: EOF while parsing"),
        "{malformed:?}"
    );
    let array = ivy_amqp(&["call", "cli_tests.add", "[2, 3]", "--queue", &q]).await;
    assert_eq!(array.code, 2, "{array:?}");
    // Nothing was published: the queue was not even declared.
    let none = ivy_amqp(&["queues", &q, "--no-management", "--json"]).await;
    assert_eq!(none.code, 1, "{none:?}");
    assert_eq!(none.json()["queues"][0]["exists"], false);

    let no_broker = ivy(&["call", "cli_tests.add", "{}"], &[]).await;
    assert_eq!(no_broker.code, 2, "{no_broker:?}");
    assert!(no_broker.stderr.contains("IVY_BROKER_URL"), "{no_broker:?}");
    let bad_flag = ivy_amqp(&["call"]).await;
    assert_eq!(bad_flag.code, 2, "{bad_flag:?}");
    let bad_keys = ivy(&["queues", "x"], &[("IVY_KEYS", "k1:not-a-secret-at-all")]).await;
    assert_eq!(bad_keys.code, 2, "{bad_keys:?}");
    assert!(
        !bad_keys.stderr.contains("not-a-secret-at-all"),
        "{bad_keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_one_line_naming_it_without_the_password() {
    // Port 9 (discard) is closed on this machine: nothing listens there.
    let run = ivy(
        &["call", "cli_tests.add", "{}", "--wait"],
        &[
            ("IVY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("IVY_RESULT_URL", "redis://:hunter2@127.0.0.1:9"),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("redis://:***@127.0.0.1:9"), "{run:?}");
    assert!(!run.stderr.contains("hunter2"), "{run:?}");
    let broker = ivy(
        &["queues", "x", "--no-management"],
        &[("IVY_BROKER_URL", "amqp://guest:hunter2@127.0.0.1:9/%2f")],
    )
    .await;
    assert_eq!(broker.code, 1, "{broker:?}");
    assert_eq!(broker.stderr.lines().count(), 1, "{broker:?}");
    assert!(broker.stderr.contains("127.0.0.1:9"), "{broker:?}");
    assert!(!broker.stderr.contains("hunter2"), "{broker:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_wait_gives_up_after_its_timeout_with_exit_1() {
    let q = queue("timeout");
    let run = ivy_amqp(&[
        "call",
        "cli_tests.add",
        r#"{"x": 1, "y": 1}"#,
        "--queue",
        &q,
        "--wait",
        "--timeout",
        "300ms",
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no result after 300ms"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_calls_and_results_with_ivy_keys() {
    const KEYS: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let q = queue("keys");
    let keys = ivy::Keyring::from_spec(KEYS).unwrap();
    let worker = Worker::start(&amqp_url(), &q, Some(keys)).await;
    let (b, r) = (amqp_url(), redis_url());
    let env = [
        ("IVY_BROKER_URL", b.as_str()),
        ("IVY_RESULT_URL", r.as_str()),
        ("IVY_KEYS", KEYS),
    ];
    let run = ivy(
        &[
            "call",
            "cli_tests.add",
            r#"{"x": 20, "y": 22}"#,
            "--queue",
            &q,
            "--wait",
        ],
        &env,
    )
    .await
    .ok();
    assert_eq!(run.stdout.lines().last(), Some("42"), "{run:?}");
    assert!(!run.stdout.contains("0001020304") && !run.stderr.contains("0001020304"));
    // Without the key the stored result cannot be opened.
    let id = run.stdout.split_whitespace().next().unwrap();
    let locked = ivy(&["result", id], &env[..2]).await;
    assert_eq!(locked.code, 1, "{locked:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_a_queued_call_and_says_what_it_did() {
    let q = queue("cancel");
    // No worker on `q` yet: the call waits in the queue.
    let run = ivy_amqp(&[
        "call",
        "cli_tests.add",
        r#"{"x": 1, "y": 2}"#,
        "--queue",
        &q,
    ])
    .await
    .ok();
    let id = run.stdout.trim().to_owned();
    let first = ivy_amqp(&["cancel", &id]).await.ok();
    assert_eq!(first.stdout.trim(), format!("cancelled {id}"), "{first:?}");
    let again = ivy_amqp(&["cancel", &id]).await.ok();
    assert_eq!(
        again.stdout.trim(),
        format!("already cancelled {id}"),
        "{again:?}"
    );

    let worker = Worker::start(&amqp_url(), &q, None).await;
    let id = id.as_str();
    let dropped = common::until("the cancelled result", move || async move {
        let r = ivy_amqp(&["result", id]).await;
        (r.code == 1 && r.stderr.contains("ivy.cancelled")).then_some(r)
    })
    .await;
    assert!(dropped.stdout.is_empty(), "{dropped:?}");

    // A finished call cannot be cancelled: exit 1, saying so.
    let done = ivy_amqp(&[
        "call",
        "cli_tests.add",
        r#"{"x": 1, "y": 2}"#,
        "--queue",
        &q,
        "--wait",
        "--timeout",
        "30s",
    ])
    .await
    .ok();
    let done_id = done.stdout.split_whitespace().next().unwrap().to_owned();
    let late = ivy_amqp(&["cancel", &done_id]).await;
    assert_eq!(late.code, 1, "{late:?}");
    assert!(late.stderr.contains("has finished already"), "{late:?}");
    worker.stop().await;
}
