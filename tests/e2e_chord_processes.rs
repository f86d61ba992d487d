//! A chord of 50 across processes: the worker process running its members is killed with
//! SIGKILL mid-way; another worker finishes them, and the callback runs exactly once, with all
//! 50 results (workflows, issue 14).
#![cfg(all(feature = "amqp", feature = "redis"))]

mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::time::Duration;

use ivy::backends::notifier_from_url;
use ivy::flow::ChordRef;
use ivy::Results;
use processes::{producer, queue, redis_url, WorkerProcess};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_of_50_survives_a_sigkilled_worker_and_calls_back_once() {
    let q = queue("chord-kill");
    let p = producer().await;
    let store = notifier_from_url(&redis_url()).await.expect("Redis");
    let mut first = WorkerProcess::start(&q, 4, 5);
    let members = (1..=50u64)
        .map(|n| tasks::slow_square::call(n, 200).queue(&q))
        .collect();
    let mut h = p
        .chord(members, tasks::total::with().queue(&q))
        .await
        .expect("chord");

    // Kill the worker once some members are done and others are running.
    let ids: Vec<String> = (0..50).map(|i| ChordRef::member_id(h.id(), i)).collect();
    tokio::time::timeout(WAIT, async {
        loop {
            let done = store.fetch_many(&ids).await.expect("fetch");
            if done.iter().flatten().count() >= 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ten members finished");
    first.signal("-KILL");
    assert_ne!(first.wait(WAIT), 0, "SIGKILL is not a clean exit");
    let done = store.fetch_many(&ids).await.expect("fetch");
    let finished = done.iter().flatten().count();
    assert!(finished < 50, "killed too late: all members had finished");

    let mut second = WorkerProcess::start(&q, 4, 5);
    let sum: u64 = (1..=50u64).map(|n| n * n).sum();
    assert_eq!(
        h.result_timeout(WAIT).await.expect("the chord's result"),
        sum
    );
    second.signal("-TERM");
    assert_eq!(second.wait(WAIT), 0);

    let logs = plain(&format!("{}\n{}", first.log(), second.log()));
    let runs: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("chord callback ran"))
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "the callback ran {} times:\n{logs}",
        runs.len()
    );
    assert!(runs[0].contains("results=50"), "{}", runs[0]);
    eprintln!("killed after {finished} of 50 members had finished");
}

/// The text without its ANSI colour codes (the worker colours its log).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
