//! Redis restarted while results are pending: every result still reaches the producer (stored
//! results are re-read after the subscription's gap; a result the worker could not store is
//! retried or the call returned to the broker and run again). Alone in its binary: it stops
//! the shared Redis for a moment.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::process::Command;
use std::time::Duration;

use processes::{producer, queue, WorkerProcess};

fn start_redis() {
    let _ = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .status();
}

struct StartRedisOnDrop;
impl Drop for StartRedisOnDrop {
    fn drop(&mut self) {
        if !Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "ping"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            start_redis();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_arrives_across_a_redis_restart() {
    let q = queue("redis-restart");
    let p = producer().await;
    let mut worker = WorkerProcess::start(&q, 8, 30);
    let _guard = StartRedisOnDrop;
    let mut handles = Vec::new();
    for i in 0..20u64 {
        handles.push((
            i,
            p.delayed_call(tasks::slow_square::call(i, 200 + 100 * (i % 10)).queue(&q))
                .await
                .unwrap(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "shutdown", "nosave"])
        .status()
        .unwrap();
    let _ = ok;
    tokio::time::sleep(Duration::from_millis(700)).await;
    start_redis();
    for (i, mut h) in handles {
        assert_eq!(
            h.result_timeout(Duration::from_secs(90)).await.unwrap(),
            i * i,
            "call {i}"
        );
    }
    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(60)), 0, "{}", worker.log());
}
