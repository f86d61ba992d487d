//! A worker process: `IVY_BROKER_URL=… IVY_RESULT_URL=… cargo run --example worker`.
//!
//! Runs every task of `shared/tasks.rs` until SIGINT or SIGTERM, then finishes what is running
//! (grace period `IVY_GRACE_SECS`, default 30) and exits 0. `IVY_QUEUES` (comma-separated,
//! default `default`) and `IVY_CONCURRENCY` (default 16) tune it.

#[path = "shared/tasks.rs"]
mod tasks;

use std::time::Duration;

#[tokio::main]
async fn main() -> ivy::Result<()> {
    tasks::init_logging();
    let (broker_url, result_url) = tasks::urls();
    tasks::require_shared(&broker_url, "IVY_BROKER_URL");
    tasks::require_shared(&result_url, "IVY_RESULT_URL");
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let queues: Vec<String> = env("IVY_QUEUES", "default")
        .split(',')
        .map(str::to_string)
        .collect();
    let concurrency = env("IVY_CONCURRENCY", "16").parse().unwrap_or(16);
    let grace = Duration::from_secs(env("IVY_GRACE_SECS", "30").parse().unwrap_or(30));

    let broker = ivy::backends::broker_from_url(&broker_url).await?;
    let notifier = ivy::backends::notifier_from_url(&result_url).await?;
    let report = ivy::Worker::new(broker, notifier)?
        .keyring(tasks::keyring()?)
        .queues(queues)
        .concurrency(concurrency)
        .grace_period(grace)
        .run_until_signal()
        .await?;
    eprintln!("worker report: {report:?}");
    Ok(())
}
