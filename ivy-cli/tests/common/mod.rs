//! Shared by the `ivy` command's tests: the binary run as a process against the real
//! RabbitMQ, Redis and moto (started by scripts/services), and an in-process worker serving
//! the tasks below.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ivy::backends::{broker_from_url, notifier_from_url};
use serde_json::Value;
use tokio::sync::oneshot;

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

/// A queue name of this run: `ivy-e2e-*`, which scripts/clean-test-queues deletes later.
pub fn queue(what: &str) -> String {
    format!("ivy-e2e-cli-{what}-{}", uuid::Uuid::now_v7().simple())
}

/// Adds two numbers.
#[ivy::task(name = "cli_tests.add")]
pub async fn add(x: u64, y: u64) -> u64 {
    x + y
}

/// Reports `{"done": i, "of": n}` for each step, then returns n.
#[ivy::task(name = "cli_tests.steps")]
pub async fn steps(n: u64) -> u64 {
    for i in 1..=n {
        ivy::progress(&serde_json::json!({"done": i, "of": n}))
            .await
            .ok();
    }
    n
}

/// Fails with a cause, without retries.
#[ivy::task(name = "cli_tests.fail", max_retries = 0)]
pub async fn fail(message: String) -> Result<(), std::io::Error> {
    Err(std::io::Error::other(message))
}

/// While [`BROKEN`] is set, fails (no retries, so its calls are dead-lettered); otherwise
/// counts its runs by task id in [`RUNS`].
#[ivy::task(name = "cli_tests.flaky", max_retries = 0)]
pub async fn flaky(n: u64) -> Result<u64, std::io::Error> {
    if BROKEN.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("broken for now"));
    }
    let id = ivy::current_task().expect("inside a task").id;
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default() += 1;
    Ok(n)
}

/// Runs until [`HELD`] is cleared: a call that stays in flight.
/// The queue of `cli_tests.named`, its own (not `default`).
pub const NAMED_QUEUE: &str = "ivy-cli-tests.named";

#[ivy::task(name = "cli_tests.named", queue = "ivy-cli-tests.named")]
async fn named(x: u32) -> u32 {
    x + 1
}

#[ivy::task(name = "cli_tests.hold")]
pub async fn hold() {
    while HELD.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reports `{"done": 3, "of": 4}`, then once [`STEP`] reaches 1 the text `label`, then
/// returns once it reaches 2: a running call whose progress a test controls.
#[ivy::task(name = "cli_tests.stepwise")]
pub async fn stepwise(label: String) {
    ivy::progress(&serde_json::json!({"done": 3, "of": 4}))
        .await
        .ok();
    while STEP.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ivy::progress(&label).await.ok();
    while STEP.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How far [`stepwise`] may go.
pub static STEP: AtomicU32 = AtomicU32::new(0);
pub static HELD: AtomicBool = AtomicBool::new(true);
pub static BROKEN: AtomicBool = AtomicBool::new(true);
pub static RUNS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// How many times `flaky` ran call `id` successfully.
pub fn runs(id: &str) -> u32 {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(id).copied())
        .unwrap_or(0)
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last line of stdout as JSON.
    pub fn json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "ivy failed: {self:?}");
        self
    }
}

/// Runs `ivy args` with `env` (and none of the caller's IVY_* settings).
pub async fn ivy(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ivy"));
    command.args(args);
    for var in [
        "IVY_BROKER_URL",
        "IVY_RESULT_URL",
        "IVY_KEYS",
        "IVY_MANAGEMENT_URL",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let out = command.output().await.expect("the ivy binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ivy` against RabbitMQ and Redis.
pub async fn ivy_amqp(args: &[&str]) -> Run {
    let (b, r) = (amqp_url(), redis_url());
    ivy(args, &[("IVY_BROKER_URL", &b), ("IVY_RESULT_URL", &r)]).await
}

/// Polls `check` until it returns `Some`, for at most 30 s.
pub async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker of this process on `queue`, until [`Worker::stop`].
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<ivy::Result<ivy::WorkerReport>>,
}

impl Worker {
    pub async fn start(broker_url: &str, queue: &str, keys: Option<ivy::Keyring>) -> Self {
        let broker = broker_from_url(broker_url)
            .await
            .expect("the broker (run scripts/services)");
        let notifier = notifier_from_url(&redis_url())
            .await
            .expect("Redis (run scripts/services)");
        let mut worker = ivy::Worker::new(broker, notifier)
            .expect("tasks register")
            .queues([queue])
            .concurrency(4)
            .running_status_after(Duration::ZERO);
        if let Some(keys) = keys {
            worker = worker.keyring(keys);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(worker.run(async move {
            stopped.await.ok();
        }));
        Worker {
            stop: Some(stop),
            done,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        (&mut self.done)
            .await
            .expect("the worker task")
            .expect("the worker stops cleanly");
    }
}

/// The figures `ivy queues --json` gives for `queue` (with `extra` options).
pub async fn depth(env: &[(&str, &str)], queue: &str, extra: &[&str]) -> Value {
    let mut args = vec!["queues", queue, "--json"];
    args.extend_from_slice(extra);
    let run = ivy(&args, env).await.ok();
    let all = run.json();
    assert_eq!(all["queues"][0]["queue"], queue, "{run:?}");
    all["queues"][0].clone()
}
