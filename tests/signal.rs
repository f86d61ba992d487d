//! A real SIGTERM: the worker stops taking messages, lets the running task finish and returns
//! `Ok`. Alone in its binary, because the signal goes to the whole test process.

use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Status, Worker};

/// Set once SIGTERM has been sent: `signal.slow` runs until then, so it is running when the
/// signal arrives.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[ivy::task(name = "signal.slow", max_retries = 0)]
async fn slow() -> String {
    while !SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "finished".to_string()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_task_finish() {
    let b = MemoryBroker::new();
    let n = MemoryNotifier::new();
    let worker = Worker::new(b.clone(), n.clone())
        .unwrap()
        .grace_period(Duration::from_secs(10));
    let running = tokio::spawn(worker.run_until_signal());
    let p = Producer::new(b.clone(), n);
    let mut h = p.delayed_call(slow::call()).await.unwrap();
    let queued = p.send(slow::call()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.status() != Status::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the task started");
    // The signal handler is installed once the worker runs, which it does by now.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the worker stopped")
        .unwrap()
        .expect("a clean stop");
    assert_eq!(report.returned, 0, "{report:?}");
    assert_eq!(
        h.result_timeout(Duration::from_secs(5)).await.unwrap(),
        "finished"
    );
    // With a concurrency of 16 the second call may have started too; whatever did not run is
    // still in the queue, nothing is lost.
    let depth = b.depth("default");
    assert_eq!(
        report.succeeded as usize + depth.ready,
        2,
        "call {queued} vanished: {report:?} {depth:?}"
    );
    assert_eq!(depth.unacked, 0);
}
