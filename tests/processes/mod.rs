//! Shared by the multi-process tests: the example worker binary against real RabbitMQ and
//! Redis, and a producer in the test process using the same task definitions.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ivy::backends::{broker_from_url, notifier_from_url, AnyBroker, AnyNotifier};

pub fn amqp_url() -> String {
    std::env::var("IVY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("IVY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn sqs_url() -> String {
    std::env::var("IVY_TEST_SQS_URL")
        .unwrap_or_else(|_| "sqs://127.0.0.1:4566?region=us-east-1".into())
}

pub async fn producer() -> ivy::Producer<AnyBroker, AnyNotifier> {
    producer_on(&amqp_url()).await
}

pub async fn producer_on(broker_url: &str) -> ivy::Producer<AnyBroker, AnyNotifier> {
    producer_with(broker_url, &redis_url()).await
}

/// A producer on the given broker and result store.
pub async fn producer_with(
    broker_url: &str,
    result_url: &str,
) -> ivy::Producer<AnyBroker, AnyNotifier> {
    let b = broker_from_url(broker_url)
        .await
        .expect("the broker (run scripts/services)");
    let n = notifier_from_url(result_url)
        .await
        .expect("Redis (run scripts/services)");
    ivy::Producer::new(b, n)
}

/// An example binary built by `cargo test` next to this test's binary.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --all-features` (it builds the examples) or scripts/test",
        path.display()
    );
    path
}

/// A worker process; killed (SIGKILL) when dropped if still running.
pub struct WorkerProcess {
    pub child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    pub fn start(queue: &str, concurrency: usize, grace_secs: u64) -> Self {
        Self::start_on(&amqp_url(), queue, concurrency, grace_secs)
    }

    pub fn start_on(broker_url: &str, queue: &str, concurrency: usize, grace_secs: u64) -> Self {
        Self::start_with(broker_url, &redis_url(), queue, concurrency, grace_secs)
    }

    /// A worker on the given broker and result store.
    pub fn start_with(
        broker_url: &str,
        result_url: &str,
        queue: &str,
        concurrency: usize,
        grace_secs: u64,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{queue}-{}.log", uuid()));
        let child = Command::new(example("worker"))
            .env("IVY_BROKER_URL", broker_url)
            .env("IVY_RESULT_URL", result_url)
            .env("IVY_QUEUES", queue)
            .env("IVY_CONCURRENCY", concurrency.to_string())
            .env("IVY_GRACE_SECS", grace_secs.to_string())
            .env("RUST_LOG", "info")
            .env_remove("IVY_KEYS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the worker example");
        let mut w = WorkerProcess { child, log };
        w.wait_for_log("worker started", Duration::from_secs(60));
        w
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "worker exited ({status}) before logging {needle:?}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "worker did not log {needle:?} within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < limit,
                "worker did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `succeeded` count of the report the worker prints when it stops.
    pub fn succeeded(&self) -> u64 {
        let log = self.log();
        let at = log
            .find("worker report: ")
            .expect("the worker printed its report");
        let rest = &log[at..];
        let n = rest.split("succeeded: ").nth(1).expect("succeeded field");
        n.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn uuid() -> String {
    ivy::envelope::new_task_id().replace('-', "")
}

pub fn queue(prefix: &str) -> String {
    format!("ivy-e2e-{prefix}-{}", uuid())
}
