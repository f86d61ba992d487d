//! One process, the embedded in-memory broker: a worker and a producer, a result, progress
//! updates and a handled error. Run with `cargo run --example quickstart`.

use std::time::Duration;

use futures_util::StreamExt;
use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Worker};

/// Multiplies 1..=n, reporting progress as it goes.
#[ivy::task(name = "testpackage.factorial")]
async fn factorial(n: u64) -> Result<u64, FactorialError> {
    let mut acc: u64 = 1;
    for i in 1..=n {
        acc = acc.checked_mul(i).ok_or(FactorialError::Overflow { n })?;
        ivy::progress(&serde_json::json!({ "done": i, "of": n }))
            .await
            .ok();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(acc)
}

#[derive(Debug)]
enum FactorialError {
    Overflow { n: u64 },
}

impl std::fmt::Display for FactorialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FactorialError::Overflow { n } => write!(f, "{n}! does not fit in 64 bits"),
        }
    }
}

impl std::error::Error for FactorialError {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line of `Display` (what, where, why), not `main`'s Debug dump.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> ivy::Result<()> {
    // The worker logs through `tracing`; `RUST_LOG=info` shows it (the handled errors below are
    // logged as errors, which is why the default here is quiet).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();

    let broker = MemoryBroker::new();
    let notifier = MemoryNotifier::new();

    // The worker finds every #[task] linked into this binary by itself.
    let worker = Worker::new(broker.clone(), notifier.clone())?.concurrency(4);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));

    let producer = Producer::new(broker, notifier);

    // 1. A result, with progress updates on the way.
    let mut handle = producer.delayed_call(factorial::call(10)).await?;
    println!("sent testpackage.factorial(10) as task {}", handle.id());
    let mut progress = handle.progress();
    let printer = tokio::spawn(async move {
        while let Some(p) = progress.next().await {
            println!("  progress: {p}");
        }
    });
    let value = handle.result_timeout(Duration::from_secs(10)).await?;
    printer.await.ok();
    println!("result: 10! = {value} (status: {})", handle.status());

    // 2. A task error reaches the producer as a structured error. 21! overflows u64; this
    //    call allows no retries so the error comes back at once.
    let mut failing = producer
        .delayed_call(factorial::call(21).max_retries(0))
        .await?;
    match failing.result_timeout(Duration::from_secs(10)).await {
        Ok(v) => println!("unexpected success: {v}"),
        Err(ivy::Error::Task(failure)) => {
            println!(
                "handled error: kind={} message={:?}",
                failure.kind, failure.message
            )
        }
        Err(other) => return Err(other),
    }
    let fallback = producer
        .delayed_call(factorial::call(25).max_retries(0))
        .await?
        .result_or(0)
        .await;
    println!("result_or fallback for 25!: {fallback}");

    // 3. The function is still a plain function.
    println!("called directly: 5! = {}", factorial(5).await.unwrap_or(0));

    let _ = stop.send(());
    let report = worker.await.expect("the worker task")?;
    println!(
        "worker stopped: {} succeeded, {} failed",
        report.succeeded, report.failed
    );
    Ok(())
}
