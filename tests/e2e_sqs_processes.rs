//! The same example binaries on Amazon SQS (moto) + Redis: only the URL changes. A worker killed
//! with SIGKILL mid-task leaves its message invisible until the visibility timeout, after which
//! another worker completes it.
#![cfg(all(feature = "sqs", feature = "redis"))]

mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::time::Duration;

use ivy::Status;
use processes::{example, producer_on, queue, sqs_url, WorkerProcess};

const WAIT: Duration = Duration::from_secs(90);

/// A short visibility timeout so a killed worker's message comes back quickly.
fn url() -> String {
    format!("{}&visibility_timeout=3&wait_time=1", sqs_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_binaries_work_end_to_end_on_sqs() {
    let q = "default";
    let mut worker = WorkerProcess::start_on(&url(), q, 8, 5);
    let out = tokio::process::Command::new(example("producer"))
        .arg("15")
        .env("IVY_BROKER_URL", url())
        .env("IVY_RESULT_URL", processes::redis_url())
        .env_remove("IVY_KEYS")
        .output()
        .await
        .expect("run the producer example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "producer failed: {stdout}\n{}\nworker:\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.log()
    );
    assert!(stdout.contains("all 17 results received"), "{stdout}");
    worker.signal("-TERM");
    assert_eq!(worker.wait(WAIT), 0, "{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_task_reappears_after_the_visibility_timeout() {
    let q = queue("sqs-kill");
    let p = producer_on(&url()).await;
    let mut first = WorkerProcess::start_on(&url(), &q, 2, 5);
    let mut h = p
        .delayed_call(tasks::slow_square::call(9, 2000).queue(&q))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while h.status() != Status::Running {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task started");
    first.signal("-KILL");
    first.wait(WAIT);
    let mut second = WorkerProcess::start_on(&url(), &q, 2, 5);
    assert_eq!(h.result_timeout(WAIT).await.unwrap(), 81);
    second.signal("-TERM");
    assert_eq!(second.wait(WAIT), 0, "{}", second.log());
    assert_eq!(second.succeeded(), 1, "ran once more:\n{}", second.log());
}
