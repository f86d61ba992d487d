//! Producer -> RabbitMQ -> worker process -> Redis -> producer, across processes, with the
//! failures a production deployment sees: a worker killed mid-task, SIGTERM under load, several
//! workers sharing a queue. Every call completes exactly once from the producer's view.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::time::Duration;

use ivy::Status;
use processes::{example, producer, queue, WorkerProcess};

const WAIT: Duration = Duration::from_secs(60);

async fn until_running(h: &ivy::TaskHandle<tasks::slow_square>) {
    tokio::time::timeout(WAIT, async {
        while h.status() != Status::Running {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_binaries_work_end_to_end() {
    let q = "default"; // the producer example uses the tasks' own queue
    let _worker = WorkerProcess::start(q, 8, 5);
    let out = tokio::process::Command::new(example("producer"))
        .arg("25")
        .env("IVY_BROKER_URL", processes::amqp_url())
        .env("IVY_RESULT_URL", processes::redis_url())
        .env_remove("IVY_KEYS")
        .output()
        .await
        .expect("run the producer example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "producer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("add(24, 24) = 48"), "{stdout}");
    assert!(stdout.contains("slow_square(12) = 144"), "{stdout}");
    assert!(stdout.contains("fail(): on purpose"), "{stdout}");
    assert!(stdout.contains("all 27 results received"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_task_is_redelivered_and_completed_once() {
    let q = queue("kill");
    let p = producer().await;
    let mut first = WorkerProcess::start(&q, 4, 5);
    let mut h = p
        .delayed_call(tasks::slow_square::call(7, 3000).queue(&q))
        .await
        .unwrap();
    until_running(&h).await;
    first.signal("-KILL");
    assert_ne!(first.wait(WAIT), 0, "SIGKILL is not a clean exit");
    let mut second = WorkerProcess::start(&q, 4, 5);
    assert_eq!(h.result_timeout(WAIT).await.unwrap(), 49);
    second.signal("-TERM");
    assert_eq!(second.wait(WAIT), 0);
    assert_eq!(
        second.succeeded(),
        1,
        "ran exactly once more:\n{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_and_leaves_the_rest_queued() {
    let q = queue("term");
    let p = producer().await;
    let mut worker = WorkerProcess::start(&q, 2, 30);
    let mut handles = Vec::new();
    for i in 0..8u64 {
        handles.push((
            i,
            p.delayed_call(tasks::slow_square::call(i, 1200).queue(&q))
                .await
                .unwrap(),
        ));
    }
    tokio::time::timeout(WAIT, async {
        while handles
            .iter()
            .filter(|(_, h)| h.status() == Status::Running)
            .count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two tasks started");
    worker.signal("-TERM");
    assert_eq!(
        worker.wait(WAIT),
        0,
        "a graceful stop exits 0:\n{}",
        worker.log()
    );
    let finished = worker.succeeded();
    assert!(
        (2..8).contains(&finished),
        "in-flight tasks finish, the rest wait: {finished}"
    );
    // The rest stayed queued: a new worker runs exactly those.
    let mut next = WorkerProcess::start(&q, 4, 30);
    for (i, mut h) in handles {
        assert_eq!(h.result_timeout(WAIT).await.unwrap(), i * i);
    }
    next.signal("-TERM");
    assert_eq!(next.wait(WAIT), 0);
    assert_eq!(
        finished + next.succeeded(),
        8,
        "each call ran once:\n{}",
        next.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_a_queue_and_each_result_arrives_once() {
    let q = queue("share");
    let p = producer().await;
    let mut a = WorkerProcess::start(&q, 2, 10);
    let mut b = WorkerProcess::start(&q, 2, 10);
    let mut handles = Vec::new();
    for i in 0..30u64 {
        handles.push((
            i,
            p.delayed_call(tasks::slow_square::call(i, 100).queue(&q))
                .await
                .unwrap(),
        ));
    }
    for (i, mut h) in handles {
        assert_eq!(h.result_timeout(WAIT).await.unwrap(), i * i);
    }
    a.signal("-TERM");
    b.signal("-TERM");
    assert_eq!(a.wait(WAIT), 0);
    assert_eq!(b.wait(WAIT), 0);
    let (sa, sb) = (a.succeeded(), b.succeeded());
    assert_eq!(sa + sb, 30, "each call ran once");
    assert!(sa > 0 && sb > 0, "both workers took work: {sa} and {sb}");
}
