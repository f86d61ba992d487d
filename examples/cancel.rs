//! Cancellation, shared state, permanent errors and unique calls on the in-memory broker. Run
//! with `cargo run --example cancel`.

use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{CancelOutcome, Producer, State, Worker};

/// Pretends to build a report for `year`, slowly.
#[ivy::task(name = "cancel.report")]
async fn report(year: u32) -> String {
    tokio::time::sleep(Duration::from_secs(60)).await;
    format!("the report of {year}")
}

/// What the worker gives tasks: a greeting, standing in for a database pool.
#[derive(Clone)]
struct Greeting(String);

/// Greets with the worker's greeting (a `State` parameter, not an argument of the call).
#[ivy::task(name = "cancel.greet")]
async fn greet(name: String, greeting: State<Greeting>) -> String {
    format!("{}, {name}", greeting.0 .0)
}

/// Refuses an order number no retry can fix.
#[ivy::task(name = "cancel.charge", max_retries = 5)]
async fn charge(order: u64) -> Result<u64, ivy::Permanent> {
    if order == 0 {
        return Err(ivy::Permanent::new("order 0 does not exist"));
    }
    Ok(order * 100)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The handle's outcome in one line.
fn said<T: std::fmt::Debug>(r: ivy::Result<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(ivy::Error::Task(f)) => format!("{}: {}", f.kind, f.message),
        Err(e) => format!("error: {e}"),
    }
}

async fn run() -> ivy::Result<()> {
    let broker = MemoryBroker::new();
    let notifier = MemoryNotifier::new();
    let producer = Producer::new(broker.clone(), notifier.clone());
    let limit = Duration::from_secs(10);

    // Cancelled while no worker runs: the cancellation is kept, the next worker drops the call.
    let mut early = producer.delayed_call(report::call(2025)).await?;
    println!("cancel before any worker: {}", early.cancel().await?);

    let worker = Worker::new(broker, notifier)?
        .concurrency(4)
        .state(Greeting("hello".into()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    println!(
        "  then a worker starts: {}",
        said(early.result_timeout(limit).await)
    );

    // Cancelled while it runs: its future is dropped.
    let mut running = producer.delayed_call(report::call(2026)).await?;
    while running.status() != ivy::Status::Running {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("cancel while running: {}", running.cancel().await?);
    println!("  {}", said(running.result_timeout(limit).await));
    match producer.cancel(running.id()).await? {
        CancelOutcome::AlreadyFinished => println!("  cancel again: already finished"),
        other => println!("  cancel again: {other}"),
    }

    // Shared state and a permanent error.
    let mut greeted = producer.delayed_call(greet::call("ada".into())).await?;
    println!("state: {}", said(greeted.result_timeout(limit).await));
    let mut refused = producer.delayed_call(charge::call(0)).await?;
    println!(
        "permanent error, not retried: {}",
        said(refused.result_timeout(limit).await)
    );

    // A unique call: the second is not published and resolves to the first's result.
    let window = Duration::from_secs(60);
    let mut first = producer
        .delayed_call(charge::call(7).id("order-7").unique_for(window))
        .await?;
    let mut again = producer
        .delayed_call(charge::call(7).id("order-7").unique_for(window))
        .await?;
    println!(
        "unique: {} and {} (ids {} and {})",
        said(first.result_timeout(limit).await),
        said(again.result_timeout(limit).await),
        first.id(),
        again.id()
    );

    let _ = stop.send(());
    let report = worker.await.expect("the worker task")?;
    println!(
        "worker stopped: {} succeeded, {} failed, {} cancelled",
        report.succeeded, report.failed, report.cancelled
    );
    Ok(())
}
