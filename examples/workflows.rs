//! Workflows on the in-memory broker: a typed chain, a group, a chord, a chain that fails at
//! its middle step and a cancelled chain. Run with `cargo run --example workflows`.

use std::time::Duration;

use futures_util::StreamExt;
use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Worker};

/// Pretends to download a page.
#[ivy::task(name = "workflows.fetch")]
async fn fetch(url: String) -> String {
    format!("<h1>{url}</h1> ivy composes typed calls")
}

/// Splits a page into at most `limit` words.
#[ivy::task(name = "workflows.words")]
async fn words(html: String, limit: usize) -> Vec<String> {
    html.split_whitespace()
        .skip(1)
        .take(limit)
        .map(str::to_owned)
        .collect()
}

/// Counts words.
#[ivy::task(name = "workflows.count")]
async fn count(words: Vec<String>) -> usize {
    words.len()
}

/// Squares a number.
#[ivy::task(name = "workflows.square")]
async fn square(n: u64) -> u64 {
    n * n
}

/// Adds numbers up: a chord's callback.
#[ivy::task(name = "workflows.total")]
async fn total(values: Vec<u64>, label: String) -> String {
    format!("{label}: {}", values.iter().sum::<u64>())
}

/// Sleeps `ms`, then returns it.
#[ivy::task(name = "workflows.nap")]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// Refuses odd numbers.
#[ivy::task(name = "workflows.even", max_retries = 0)]
async fn even(n: u64) -> Result<u64, String> {
    if n.is_multiple_of(2) {
        Ok(n)
    } else {
        Err(format!("{n} is odd"))
    }
}

/// A member's result, or its failure, in one line.
fn show(r: &Result<u64, ivy::TaskFailure>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(f) => format!("failed: {f}"),
    }
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

async fn run() -> ivy::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let broker = MemoryBroker::new();
    let notifier = MemoryNotifier::new();
    let worker = Worker::new(broker.clone(), notifier.clone())?.concurrency(8);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let producer = Producer::new(broker, notifier);
    let limit = Duration::from_secs(10);

    // A chain: each result is the first argument of the next step (checked at compile time).
    let chain = fetch::call("https://example.com".into())
        .then(words::with(3))
        .then(count::with());
    let words_counted = producer.chain(chain).await?.result_timeout(limit).await?;
    println!("chain fetch -> words(limit 3) -> count: {words_counted}");

    // A group: results in call order, or as they arrive.
    let mut group = producer.group((1..=5).map(square::call)).await?;
    let squares = group.results_timeout(limit).await?;
    let squares: Vec<String> = squares.iter().map(show).collect();
    println!("group of squares: {}", squares.join(", "));
    let mut arriving = producer
        .group((1..=3).map(square::call))
        .await?
        .into_stream();
    let mut seen = 0;
    while let Some((index, result)) = arriving.next().await {
        seen += 1;
        println!("  group stream: call {index} -> {}", show(&result));
    }
    println!("  group stream: {seen} results");

    // A chord: the callback runs once, with every member's result in order.
    let members = (1..=10).map(square::call).collect();
    let mut chord = producer
        .chord(members, total::with("sum of the first 10 squares".into()))
        .await?;
    println!("chord: {}", chord.result_timeout(limit).await?);

    // A chain that fails at its middle step: the handle says which step and why.
    let failing = square::call(3).then(even::with()).then(square::with());
    match producer.chain(failing).await?.result_timeout(limit).await {
        Err(ivy::Error::Task(f)) => println!("failed chain: {}", f.message),
        Err(other) => return Err(other),
        Ok(v) => println!("unexpected success: {v}"),
    }

    // Cancelling a chain's handle stops it before its next step.
    let slow_chain = nap::call(1000).then(square::with());
    let mut handle = producer.chain(slow_chain).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.cancel().await?;
    match handle.result_timeout(limit).await {
        Err(ivy::Error::Task(f)) => println!("cancelled chain: {} ({})", f.message, f.kind),
        Err(other) => return Err(other),
        Ok(v) => println!("unexpected success: {v}"),
    }

    let _ = stop.send(());
    let report = worker.await.expect("the worker task")?;
    println!(
        "worker stopped: {} succeeded, {} failed",
        report.succeeded, report.failed
    );
    Ok(())
}
