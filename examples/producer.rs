//! A producer process: `IVY_BROKER_URL=… IVY_RESULT_URL=… cargo run --example producer -- [N]`.
//!
//! Sends N calls of `examples.add(i, i)` (default 10) plus one `slow_square` with progress and
//! one failing call, waits for every result, prints them, and exits 1 if any result is missing
//! or wrong (2 for a setting it cannot read).

#[path = "shared/tasks.rs"]
mod tasks;

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;

#[tokio::main]
async fn main() -> ExitCode {
    tasks::init_logging();
    let (broker_url, result_url) = tasks::urls();
    tasks::require_shared(&broker_url, "IVY_BROKER_URL");
    tasks::require_shared(&result_url, "IVY_RESULT_URL");
    let n: u64 = match std::env::args().nth(1) {
        None => 10,
        Some(a) => a.parse().unwrap_or_else(|_| {
            tasks::usage_error(format!("the number of calls {a:?} is not a whole number"))
        }),
    };
    let wait = tasks::setting(
        "IVY_RESULT_TIMEOUT_SECS",
        Duration::from_secs(60),
        "a whole number of seconds",
        |s| s.parse::<u64>().ok().map(Duration::from_secs),
    );
    let keyring = tasks::keyring();
    tasks::exit_status(run(&broker_url, &result_url, keyring, n, wait).await)
}

async fn run(
    broker_url: &str,
    result_url: &str,
    keyring: ivy::Keyring,
    n: u64,
    wait: Duration,
) -> ivy::Result<()> {
    let broker = ivy::backends::broker_from_url(broker_url).await?;
    let notifier = ivy::backends::notifier_from_url(result_url).await?;
    let producer = ivy::Producer::new(broker, notifier).with_keyring(keyring);

    let mut handles = Vec::new();
    for i in 0..n {
        handles.push((i, producer.delayed_call(tasks::add::call(i, i)).await?));
    }
    let mut square = producer
        .delayed_call(tasks::slow_square::call(12, 400))
        .await?;
    let mut failing = producer
        .delayed_call(tasks::fail::call("on purpose".into()))
        .await?;

    let mut wrong = 0;
    for (i, mut h) in handles {
        let v = h.result_timeout(wait).await?;
        if v != 2 * i {
            wrong += 1;
        }
        println!("add({i}, {i}) = {v}");
    }
    let mut progress = square.progress();
    while let Some(p) = progress.next().await {
        println!("slow_square progress: {p}");
    }
    println!("slow_square(12) = {}", square.result_timeout(wait).await?);
    match failing.result_timeout(wait).await {
        Err(ivy::Error::Task(f)) => println!("fail(): {} ({})", f.message, f.kind),
        other => {
            match other {
                Ok(()) => println!("fail(): unexpected success"),
                Err(e) => println!("fail(): unexpected error: {e}"),
            }
            wrong += 1;
        }
    }
    if wrong > 0 {
        eprintln!("{wrong} wrong result(s)");
        std::process::exit(1);
    }
    println!("all {} results received", n + 2);
    Ok(())
}
