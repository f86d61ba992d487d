//! RabbitMQ restarted mid-stream (`rabbitmqctl stop_app` / `start_app`): the producer and a
//! worker process recover by themselves and every call completes exactly once. Alone in its
//! binary: it stops the shared RabbitMQ for a few seconds.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::process::Command;
use std::time::Duration;

use processes::{producer, queue, WorkerProcess};

struct StartRabbitOnDrop;
impl Drop for StartRabbitOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
    }
}

fn rabbitmqctl(arg: &str) {
    let ok = Command::new("rabbitmqctl")
        .arg(arg)
        .status()
        .expect("rabbitmqctl")
        .success();
    assert!(ok, "rabbitmqctl {arg} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_worker_ride_out_a_rabbitmq_restart() {
    let q = queue("rabbit-restart");
    let p = producer().await;
    let mut worker = WorkerProcess::start(&q, 4, 30);
    let _guard = StartRabbitOnDrop;

    let sender = {
        let p = p.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for i in 0..30u64 {
                // During the outage this waits for the broker (within its deadline).
                let h = p
                    .delayed_call(tasks::add::call(i, 1).queue(&q))
                    .await
                    .expect("a confirmed publish");
                handles.push((i, h));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            handles
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::spawn_blocking(|| {
        rabbitmqctl("stop_app");
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl("start_app");
    })
    .await
    .unwrap();

    let handles = sender.await.unwrap();
    assert_eq!(handles.len(), 30);
    for (i, mut h) in handles {
        assert_eq!(
            h.result_timeout(Duration::from_secs(90)).await.unwrap(),
            i + 1
        );
    }
    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(60)), 0, "{}", worker.log());
    // A call whose ack was lost in the restart runs again (at least once); none is lost.
    assert!(worker.succeeded() >= 30, "{}", worker.log());
}
