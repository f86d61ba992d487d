//! RabbitMQ restarted mid-stream (`rabbitmqctl stop_app` / `start_app`): the producer and a
//! worker process recover by themselves and every call completes, whether sent before, while
//! or after RabbitMQ is stopped (it stays stopped until the worker has noticed). On a
//! RabbitMQ node of the test's own (`scripts/rabbitmq-node`, port 5688), never the shared one.
#![cfg(all(feature = "amqp", feature = "redis"))]

#[path = "../ivy-backends/tests/common/own_rabbit.rs"]
mod own_rabbit;
mod processes;
#[path = "../examples/shared/tasks.rs"]
#[allow(dead_code)]
mod tasks;

use std::time::Duration;

use ivy::backends::{AnyBroker, AnyNotifier};
use own_rabbit::OwnRabbit;
use processes::{producer_on, queue, WorkerProcess};

type Producer = ivy::Producer<AnyBroker, AnyNotifier>;

static RABBIT: OwnRabbit = OwnRabbit::new("ivy-test-e2e-restart", 5688);

type Handles = Vec<(u64, ivy::TaskHandle<tasks::add>)>;

/// Sends `add(i, 1)` for each `i`, in order; each publish waits for a confirm.
async fn send(p: &Producer, q: &str, calls: std::ops::Range<u64>) -> Handles {
    let mut handles = Vec::new();
    for i in calls {
        // During the outage this waits for the broker (within its deadline).
        let h = p
            .delayed_call(tasks::add::call(i, 1).queue(q))
            .await
            .expect("a confirmed publish");
        handles.push((i, h));
    }
    handles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_worker_ride_out_a_rabbitmq_restart() {
    let _node = tokio::task::spawn_blocking(|| RABBIT.start())
        .await
        .unwrap();
    let q = queue("rabbit-restart");
    let p = producer_on(&RABBIT.url()).await;
    let mut worker = WorkerProcess::start_on(&RABBIT.url(), &q, 4, 30);

    // Ten calls before the outage, ten sent while RabbitMQ is stopped, ten after.
    let mut handles = send(&p, &q, 0..10).await;
    let mut worker = tokio::task::spawn_blocking(move || {
        RABBIT.ctl(&["stop_app"]);
        // Keep it stopped until the worker has noticed.
        worker.wait_for_log("reconnecting", Duration::from_secs(60));
        worker
    })
    .await
    .unwrap();
    let sending = {
        let (p, q) = (p.clone(), q.clone());
        tokio::spawn(async move { send(&p, &q, 10..20).await })
    };
    let log = worker.log();
    assert!(!log.contains("consumer reconnected to RabbitMQ"), "{log}");
    let mut worker = tokio::task::spawn_blocking(move || {
        RABBIT.ctl(&["start_app"]);
        worker.wait_for_log("consumer reconnected to RabbitMQ", Duration::from_secs(60));
        worker
    })
    .await
    .unwrap();
    handles.extend(sending.await.unwrap());
    handles.extend(send(&p, &q, 20..30).await);

    assert_eq!(handles.len(), 30);
    for (i, mut h) in handles {
        assert_eq!(
            h.result_timeout(Duration::from_secs(90)).await.unwrap(),
            i + 1
        );
    }
    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(60)), 0, "{}", worker.log());
    // A call whose ack was lost in the restart runs again (at least once); none is lost.
    assert!(worker.succeeded() >= 30, "{}", worker.log());
}
