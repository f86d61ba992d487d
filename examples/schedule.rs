//! A schedule on the in-memory backend: a report every second and a cleanup on a cron
//! expression (every 2 s, Paris time), published by a `Scheduler` and run by a worker in the
//! same process. It stops after five reports. Run with `cargo run --example schedule`.
//!
//! Against Redis, start as many copies of the scheduler as you like: each tick is claimed in
//! Redis and published once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Schedule, Scheduler, Worker};

static REPORTS: AtomicU32 = AtomicU32::new(0);
static STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[ivy::task(name = "example.report")]
async fn report(team: String) {
    let n = REPORTS.fetch_add(1, Ordering::SeqCst) + 1;
    println!("report #{n} for {team}");
    if n == 5 {
        STOP.notify_waiters();
    }
}

#[ivy::task(name = "example.cleanup", rate_limit = "10/s")]
async fn cleanup() {
    println!("cleanup");
}

#[tokio::main]
async fn main() -> ivy::Result<()> {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(broker.clone(), notifier.clone())?;
    let scheduler = Scheduler::new(broker, notifier)
        .every(Duration::from_secs(1), report::call("ops".into()))?
        .add(
            "cleanup every 2 s",
            Schedule::cron("*/2 * * * * *")?.in_zone("Europe/Paris")?,
            cleanup::call(),
        )?;
    // A bad expression is an error naming it.
    if let Err(e) = Schedule::cron("every tuesday") {
        println!("refused: {e}");
    }
    let stop = || STOP.notified();
    let (scheduled, worked) = tokio::join!(scheduler.run(stop()), worker.run(stop()));
    scheduled?;
    println!("{}", worked?);
    Ok(())
}
