//! The example worker says what went wrong in one readable line and exits non-zero: 1 when a
//! service cannot be reached, 2 when a setting from the environment cannot be read (instead of
//! quietly using the default).
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;

use std::process::Output;
use std::time::Duration;

use processes::example;

/// Far more than the worker needs to give up on a closed port; only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cr3t-pa55";

/// A Redis URL with a password, on a loopback port nothing listens on.
fn unreachable_redis_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    format!("redis://:{SECRET}@127.0.0.1:{port}")
}

/// Runs the example worker with `env` on top of a working broker URL and an unreachable Redis.
async fn run_worker(env: &[(&str, &str)]) -> (Output, String) {
    let redis = unreachable_redis_url();
    let mut cmd = tokio::process::Command::new(example("worker"));
    cmd.env("IVY_BROKER_URL", processes::amqp_url())
        .env("IVY_RESULT_URL", &redis)
        .env("IVY_QUEUES", processes::queue("example-errors"))
        .env("RUST_LOG", "warn")
        .env_remove("IVY_KEYS")
        .env_remove("IVY_CONCURRENCY")
        .env_remove("IVY_GRACE_SECS")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the worker exits by itself")
        .expect("run the worker example");
    (out, redis)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_names_the_url_without_its_password() {
    let (out, redis) = run_worker(&[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let redacted = redis.replace(SECRET, "***");
    assert!(err.contains(&redacted), "names {redacted}: {err}");
    assert!(!err.contains(SECRET), "leaks the password: {err}");
    assert!(
        !err.contains("{ ") && !err.contains("Error {") && !err.contains("Backend"),
        "a Debug dump: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("one `error:` line: {err}"));
    assert!(
        line.contains("could not connect to Redis"),
        "says what: {line}"
    );
    assert!(line.to_lowercase().contains("refused"), "says why: {line}");
}

async fn refused_setting(var: &str, value: &str) {
    let (out, _) = run_worker(&[(var, value)]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
    assert!(
        err.contains(var) && err.contains(value),
        "names the setting and its value: {err}"
    );
    assert!(!err.contains("Redis"), "refused before connecting: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_that_is_not_a_number_is_refused() {
    refused_setting("IVY_CONCURRENCY", "abc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_concurrency_is_refused() {
    refused_setting("IVY_CONCURRENCY", "0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_grace_period_is_refused() {
    refused_setting("IVY_GRACE_SECS", "-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_queue_name_is_refused() {
    refused_setting("IVY_QUEUES", "a,,b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_one_line_with_no_lapin_lines_before_it() {
    let wrong = processes::amqp_url().replacen("guest:guest@", &format!("guest:{SECRET}@"), 1);
    assert!(
        wrong.contains(SECRET),
        "the test needs a URL with guest:guest@"
    );
    let (out, _) = run_worker(&[("IVY_BROKER_URL", &wrong), ("RUST_LOG", "info")]).await;
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("lapin") && !err.contains("ShortString"),
        "lapin's own lines: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("one `error:` line: {err}"));
    assert!(line.contains("ACCESS_REFUSED"), "says why: {line}");
    assert!(!err.contains(SECRET), "leaks the password: {err}");
}
