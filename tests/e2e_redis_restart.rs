//! Redis restarted while results are pending: every result still reaches the producer (stored
//! results are re-read after the subscription's gap; a result the worker could not store is
//! held and retried until Redis is back). It stops and starts a Redis of its own on port 6393,
//! never the shared one; needs `redis-server` and `redis-cli` on the PATH.
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::process::Command;
use std::time::{Duration, Instant};

use processes::{amqp_url, producer_with, queue, WorkerProcess};

/// The Redis this test stops and starts: its own, never the shared one on 6379.
const PORT: &str = "6393";
const URL: &str = "redis://127.0.0.1:6393";

fn ping() -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", PORT, "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_redis() {
    let dir = std::env::temp_dir().join(format!("ivy-test-redis-{PORT}"));
    std::fs::create_dir_all(&dir).expect("a directory for the test Redis");
    let status = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", PORT, "--daemonize", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .status()
        .expect("run redis-server");
    assert!(status.success(), "redis-server failed: {status}");
    wait_until("the test Redis answering", Duration::from_secs(15), ping);
}

fn stop_redis() {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", PORT, "shutdown", "nosave"])
        .output()
        .expect("run redis-cli");
    // A successful shutdown closes the connection without a reply; an error is printed.
    assert!(
        out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("ERR"),
        "redis-cli shutdown: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("the test Redis stopped", Duration::from_secs(15), || {
        !ping()
    });
}

/// Stops the test's Redis however the test ends.
struct StopRedisOnDrop;
impl Drop for StopRedisOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", PORT, "shutdown", "nosave"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_arrives_across_a_redis_restart() {
    if ping() {
        stop_redis(); // left over from an earlier run
    }
    start_redis();
    let _guard = StopRedisOnDrop;
    let q = queue("redis-restart");
    let p = producer_with(&amqp_url(), URL).await;
    let mut worker = WorkerProcess::start_with(&amqp_url(), URL, &q, 8, 30);
    let mut handles = Vec::new();
    for i in 0..20u64 {
        handles.push((
            i,
            p.delayed_call(tasks::slow_square::call(i, 200 + 100 * (i % 10)).queue(&q))
                .await
                .unwrap(),
        ));
    }
    tokio::task::spawn_blocking(stop_redis).await.unwrap();
    // Redis stays down until the outage has hit a result the worker could not store.
    let mut worker = tokio::task::spawn_blocking(move || {
        worker.wait_for_log(
            "could not store the result; holding the call",
            Duration::from_secs(60),
        );
        start_redis();
        worker
    })
    .await
    .unwrap();
    for (i, mut h) in handles {
        assert_eq!(
            h.result_timeout(Duration::from_secs(90)).await.unwrap(),
            i * i,
            "call {i}"
        );
    }
    assert!(
        worker.log().contains("the result was stored after all"),
        "{}",
        worker.log()
    );
    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(60)), 0, "{}", worker.log());
}
