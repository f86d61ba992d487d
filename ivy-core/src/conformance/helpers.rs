//! What the checks share: time limits, fresh names, waiting for deliveries and dead letters,
//! building calls to the suite's tasks, and running a worker in the background.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::timeout;

use super::tasks::{registry, Echo};
use crate::broker::{Broker, Consumer, Notifier, OutgoingMessage};
use crate::envelope::{new_task_id, Status};
use crate::task::{Call, Task};
use crate::Worker;

/// The longest any single step may take before a check fails.
pub const STEP: Duration = Duration::from_secs(30);

/// A fresh name for a queue or channel.
pub fn unique(prefix: &str) -> String {
    format!("ivy-conf-{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub(super) async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("conformance: `{what}` did not finish within {STEP:?}"))
}

pub(super) fn msg(queue: &str, body: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        id: new_task_id(),
        queue: queue.to_string(),
        body: body.to_vec(),
        priority: None,
        delay: None,
    }
}

pub(super) async fn next<C: Consumer>(c: &mut C, what: &str) -> C::Delivery {
    step(what, c.next())
        .await
        .unwrap_or_else(|| panic!("conformance: consumer closed during `{what}`"))
        .unwrap_or_else(|e| panic!("conformance: consumer error during `{what}`: {e}"))
}

/// Polls for dead letters until `n` have arrived.
pub async fn wait_dead_letters<B: Broker>(b: &B, queue: &str, n: usize) -> Vec<crate::DeadLetter> {
    let mut got = Vec::new();
    step("dead letters to arrive", async {
        while got.len() < n {
            got.extend(
                b.take_dead_letters(queue, n - got.len())
                    .await
                    .expect("take_dead_letters"),
            );
            if got.len() < n {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;
    got
}

pub(super) fn call<T: Task>(queue: &str, args: Value) -> Call<T> {
    let Value::Object(map) = args else {
        panic!("arguments are an object")
    };
    Call::<T>::__new(Ok(map)).queue(queue)
}

pub(super) fn echo(queue: &str, v: Value) -> Call<Echo> {
    call(queue, json!({ "value": v }))
}

/// Waits until the worker reports the call running.
pub(super) async fn until_running<T: Task>(h: &crate::TaskHandle<T>, what: &str) {
    step(what, async {
        while h.status() != Status::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

pub(super) struct Running {
    pub(super) stop: tokio::sync::oneshot::Sender<()>,
    pub(super) join: tokio::task::JoinHandle<crate::Result<crate::WorkerReport>>,
}

impl Running {
    pub(super) async fn stop(self) -> crate::WorkerReport {
        let _ = self.stop.send(());
        step("worker stop", self.join)
            .await
            .expect("worker task")
            .expect("worker run")
    }
}

pub(super) fn spawn_worker<B: Broker, N: Notifier>(
    b: &B,
    n: &N,
    q: &str,
    grace: Duration,
) -> Running {
    spawn_configured(
        Worker::with_registry(b.clone(), n.clone(), registry())
            .queues([q.to_string()])
            .concurrency(4)
            .grace_period(grace),
    )
}

pub(super) fn spawn_configured<B: Broker, N: Notifier>(w: Worker<B, N>) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(w.run(async {
        let _ = stopped.await;
    }));
    Running { stop, join }
}
