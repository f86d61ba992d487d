//! Tasks shared by the `producer` and `worker` examples: one codebase, two binaries.

use std::time::Duration;

// The settings helpers, here too so that `tasks::urls()` and the rest keep working; an example
// with tasks of its own (`web`) includes `settings.rs` alone. The tests that include this file
// for its tasks use none of them.
#[path = "settings.rs"]
mod settings;
#[allow(unused_imports)]
pub use settings::*;

/// Adds two numbers.
#[ivy::task(name = "examples.add")]
pub async fn add(x: u64, y: u64) -> u64 {
    x + y
}

/// Squares `n` slowly, reporting progress.
#[ivy::task(name = "examples.slow_square", timeout = "60s")]
pub async fn slow_square(n: u64, ms: u64) -> u64 {
    for step in 1..=4u32 {
        ivy::progress(&step).await.ok();
        tokio::time::sleep(Duration::from_millis(ms / 4)).await;
    }
    n * n
}

/// Always fails, to show retries and dead letters.
#[ivy::task(name = "examples.fail", max_retries = 1, retry_backoff = "100ms")]
pub async fn fail(message: String) -> Result<(), std::io::Error> {
    Err(std::io::Error::other(message))
}

/// Adds up a chord's results; logs each run, so tests can count them across processes.
#[ivy::task(name = "examples.total")]
pub async fn total(values: Vec<u64>) -> u64 {
    tracing::info!(results = values.len(), "chord callback ran");
    values.iter().sum()
}
