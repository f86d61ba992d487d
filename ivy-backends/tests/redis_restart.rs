//! A subscription survives a Redis restart and says it may have missed something.
//!
//! It stops and starts a Redis of its own (127.0.0.1:6394, started here), never the shared
//! one, and stops it when done, also when it fails. Needs `redis-server` and `redis-cli` on
//! the PATH.
#![cfg(feature = "redis")]

use std::process::Command;
use std::time::{Duration, Instant};

use ivy_backends::redis::RedisNotifier;
use ivy_core::conformance::unique;
use ivy_core::{Incoming, Notifier, Subscription};
use tokio::time::timeout;

const PORT: &str = "6394";
const URL: &str = "redis://127.0.0.1:6394";
const STATE_DIR: &str = "/tmp/ivy-test-redis-6394";

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

fn stop_redis() {
    assert!(ping(), "the test Redis is up before it is stopped");
    // `nosave`: nothing to persist, and it stops at once.
    let _ = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", PORT, "shutdown", "nosave"])
        .output();
    wait_until("Redis stopped", Duration::from_secs(10), || !ping());
}

fn start_redis() {
    if ping() {
        return;
    }
    let _ = std::fs::create_dir_all(STATE_DIR);
    let status = Command::new("redis-server")
        .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--port", PORT])
        .args(["--save", "", "--appendonly", "no", "--dir", STATE_DIR])
        .args(["--pidfile", &format!("{STATE_DIR}/redis.pid")])
        .args(["--logfile", &format!("{STATE_DIR}/redis.log")])
        .status()
        .expect("run redis-server");
    assert!(status.success(), "redis-server failed: {status}");
    wait_until("Redis answering", Duration::from_secs(15), ping);
}

/// Stops the test's Redis when dropped, also while unwinding from a failed assertion.
struct StopRedisAtEnd;

impl Drop for StopRedisAtEnd {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", PORT, "shutdown", "nosave"])
            .output();
    }
}

async fn next_incoming<S: Subscription>(s: &mut S, limit: Duration) -> Incoming {
    timeout(limit, s.next())
        .await
        .expect("a notification in time")
        .expect("subscription open")
        .expect("no subscription error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_restart_with_a_gap() {
    start_redis();
    let _guard = StopRedisAtEnd;
    let n = RedisNotifier::connect(URL).await.unwrap();
    let ch = unique("restart");
    let mut s = n.subscribe(&ch).await.unwrap();
    n.publish(&ch, b"before".to_vec()).await.unwrap();
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(5)).await,
        Incoming::Message(b"before".to_vec())
    );

    stop_redis();
    // Down for longer than the connection manager's own reconnect attempts last.
    tokio::time::sleep(Duration::from_secs(8)).await;
    start_redis();

    let restarted = Instant::now();
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(20)).await,
        Incoming::Gap,
        "a restored subscription reports a gap"
    );
    eprintln!(
        "gap reported {:?} after Redis came back",
        restarted.elapsed()
    );

    // The command connection recovers too: its first command after the outage finds the
    // connection dead, and the notifier retries it once on a new one.
    n.publish(&ch, b"after".to_vec())
        .await
        .expect("first publish after the restart");
    assert_eq!(
        next_incoming(&mut s, Duration::from_secs(5)).await,
        Incoming::Message(b"after".to_vec())
    );
    let id = unique("task");
    n.publish_final(&ch, &id, b"final".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(n.fetch(&id).await.unwrap(), Some(b"final".to_vec()));
}
