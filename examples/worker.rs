//! A worker process: `IVY_BROKER_URL=… IVY_RESULT_URL=… cargo run --example worker`.
//!
//! Runs every task of `shared/tasks.rs` until SIGINT or SIGTERM, then finishes what is running
//! (grace period `IVY_GRACE_SECS`, default 30) and exits 0. `IVY_QUEUES` (comma-separated;
//! default: `default` and every task's own queue) and `IVY_CONCURRENCY` (default 16) tune it;
//! `IVY_EVENTS=1` publishes task events (PROTOCOL.md §8) for `ivy watch` and dashboards, and
//! `IVY_EVENT_ARGS=1` puts the calls' arguments in them; with the `metrics` feature,
//! `IVY_METRICS_ADDR=127.0.0.1:9464` serves Prometheus metrics there. A setting it cannot read
//! exits 2 with a message; a failure (e.g. Redis unreachable at start) prints one line and
//! exits 1.

#[path = "shared/tasks.rs"]
mod tasks;

use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    tasks::init_logging();
    let (broker_url, result_url) = tasks::urls();
    tasks::require_shared(&broker_url, "IVY_BROKER_URL");
    tasks::require_shared(&result_url, "IVY_RESULT_URL");
    let queues = tasks::setting(
        "IVY_QUEUES",
        Vec::new(),
        "comma-separated queue names",
        |s| {
            let names: Vec<String> = s.split(',').map(|q| q.trim().to_string()).collect();
            names.iter().all(|q| !q.is_empty()).then_some(names)
        },
    );
    let concurrency = tasks::setting(
        "IVY_CONCURRENCY",
        16,
        "a whole number of tasks, at least 1",
        |s| s.parse::<usize>().ok().filter(|&n| n >= 1),
    );
    let grace = tasks::setting(
        "IVY_GRACE_SECS",
        Duration::from_secs(30),
        "a whole number of seconds, 0 or more",
        |s| s.parse::<u64>().ok().map(Duration::from_secs),
    );
    let flag = |s: &str| match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    };
    let events = tasks::setting("IVY_EVENTS", false, "0 or 1", flag);
    let event_args = tasks::setting("IVY_EVENT_ARGS", false, "0 or 1", flag);
    let keyring = tasks::keyring();
    tasks::exit_status(
        run(
            &broker_url,
            &result_url,
            keyring,
            queues,
            (concurrency, events, event_args),
            grace,
        )
        .await,
    )
}

async fn run(
    broker_url: &str,
    result_url: &str,
    keyring: ivy::Keyring,
    queues: Vec<String>,
    (concurrency, events, event_args): (usize, bool, bool),
    grace: Duration,
) -> ivy::Result<()> {
    let broker = ivy::backends::broker_from_url(broker_url).await?;
    let notifier = ivy::backends::notifier_from_url(result_url).await?;
    let worker = ivy::Worker::new(broker, notifier)?;
    #[cfg(feature = "metrics")]
    let worker = match metrics_addr() {
        Some(addr) => worker.metrics(addr),
        None => worker,
    };
    let report = worker
        .keyring(keyring)
        .queues(queues)
        .concurrency(concurrency)
        .grace_period(grace)
        .events(events)
        .event_args(event_args)
        .run_until_signal()
        .await?;
    eprintln!("worker report: {report}");
    Ok(())
}

/// `IVY_METRICS_ADDR` (e.g. `127.0.0.1:9464`), if set.
#[cfg(feature = "metrics")]
fn metrics_addr() -> Option<std::net::SocketAddr> {
    std::env::var_os("IVY_METRICS_ADDR")?;
    Some(tasks::setting(
        "IVY_METRICS_ADDR",
        std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
        "an address and port, e.g. 127.0.0.1:9464",
        |s| s.parse().ok(),
    ))
}
