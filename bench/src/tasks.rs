//! The benchmarked tasks and the execution counter that W2 (fire-and-forget) stops on.
//!
//! Ivy's tasks and the raw worker's handler both call [`executed`], so the two sides pay the
//! same bookkeeping: one relaxed atomic add per task, and a wake-up only when a waiter's
//! target is reached.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The queue every benchmark call goes to (Ivy and raw use separate names).
pub const IVY_QUEUE: &str = "ivy-bench";

static EXECUTED: AtomicU64 = AtomicU64::new(0);
/// The count a waiter waits for; `u64::MAX` when nobody waits.
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static REACHED: Notify = Notify::const_new();

/// Counts one execution; wakes the waiter when its target is reached.
pub fn executed() {
    let count = EXECUTED.fetch_add(1, Ordering::Relaxed) + 1;
    if count >= TARGET.load(Ordering::Relaxed) {
        REACHED.notify_waiters();
    }
}

/// Executions so far in this process.
pub fn count() -> u64 {
    EXECUTED.load(Ordering::Relaxed)
}

/// Waits until at least `target` executions happened in this process.
pub async fn wait_for(target: u64) {
    loop {
        let reached = REACHED.notified();
        tokio::pin!(reached);
        reached.as_mut().enable();
        TARGET.store(target, Ordering::Relaxed);
        if count() >= target {
            TARGET.store(u64::MAX, Ordering::Relaxed);
            return;
        }
        reached.await;
    }
}

/// The trivial task of every workload.
#[ivy::task(name = "bench.add")]
pub async fn add(x: u64, y: u64) -> u64 {
    executed();
    x + y
}

/// `add` with a payload it ignores (W4: what a 16 KiB argument costs).
#[ivy::task(name = "bench.add_padded")]
pub async fn add_padded(x: u64, y: u64, pad: String) -> u64 {
    executed();
    // Read the pad so the argument is not dead weight the optimiser could skip decoding.
    x + y + u64::from(pad.is_empty())
}

/// How long a call of the handoff scenario runs (`handoff.rs`).
pub const HANDOFF_RUN: std::time::Duration = std::time::Duration::from_millis(400);

/// The handoff scenario's task: 400 ms, at most two at once across every worker.
#[ivy::task(name = "bench.narrow", max_concurrency = 2)]
pub async fn narrow(i: u64) -> u64 {
    tokio::time::sleep(HANDOFF_RUN).await;
    i
}

/// `narrow` without a limit: the handoff scenario's baseline.
#[ivy::task(name = "bench.wide")]
pub async fn wide(i: u64) -> u64 {
    tokio::time::sleep(HANDOFF_RUN).await;
    i
}
