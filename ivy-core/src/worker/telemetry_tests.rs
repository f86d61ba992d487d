//! Task events and the worker's announcement, through a real worker on the memory broker.

use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::tests::{call, publish, Fails, Fine};
use super::Worker;
use crate::broker::{Broker, Incoming, OutgoingMessage, Presence, Results, Subscription};
use crate::envelope::{new_task_id, now_ms, Envelope};
use crate::events::{EventKind, TaskEvent, WorkerInfo, EVENTS_CHANNEL};
use crate::failure::TaskFailure;
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{Registry, Task, TaskOptions};

/// Reports progress `{"done": 1, "of": 2}`, then returns.
struct Reports;
impl Task for Reports {
    const NAME: &'static str = "ivy.worker-test.reports";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = ();
    async fn run(_: Map<String, Value>) -> std::result::Result<Value, TaskFailure> {
        crate::progress(&json!({"done": 1, "of": 2}))
            .await
            .map_err(|e| TaskFailure::new("test::Progress", e.to_string()))?;
        Ok(Value::Null)
    }
}

/// A fire-and-forget call of [`Reports`].
fn fire_and_forget() -> Envelope {
    Envelope::new(new_task_id(), Reports::NAME, Map::new(), now_ms()).with_queue("q")
}

/// A worker on queue `q` with events `on`, announcing every 50 ms; stop it with the sender.
fn worker(
    broker: &MemoryBroker,
    notifier: &MemoryNotifier,
    events: bool,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<crate::Result<super::WorkerReport>>,
) {
    let registry = Registry::new()
        .register::<Fine>()
        .unwrap()
        .register::<Fails>()
        .unwrap()
        .register::<Reports>()
        .unwrap();
    let w = Worker::with_registry(broker.clone(), notifier.clone(), registry)
        .queues(["q"])
        .events(events)
        .announce_every(Duration::from_millis(50));
    let id = w.id().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(w.run(async {
        let _ = stopped.await;
    }));
    (id, stop, join)
}

/// The next event on `s`, within 10 s.
async fn next_event<S: Subscription>(s: &mut S) -> TaskEvent {
    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Ok(Some(Ok(Incoming::Message(p)))) => TaskEvent::from_slice(&p).expect("an event"),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The kinds of the next `n` events about call `id` (events of other calls are skipped).
async fn kinds_of<S: Subscription>(s: &mut S, id: Option<&str>, n: usize) -> Vec<TaskEvent> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let e = next_event(s).await;
        if e.id.as_deref() == id {
            seen.push(e);
        }
    }
    seen
}

#[tokio::test]
async fn events_follow_each_call_from_received_to_settled() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let mut events = notifier.subscribe(EVENTS_CHANNEL).await.unwrap();
    let (worker_id, stop, join) = worker(&broker, &notifier, true);

    let ok = call(Fine::NAME);
    publish(&broker, &ok).await;
    let seen = kinds_of(&mut events, Some(&ok.id), 3).await;
    let kinds: Vec<_> = seen.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Received,
            EventKind::Started,
            EventKind::Succeeded
        ]
    );
    for e in &seen {
        assert_eq!(e.worker, worker_id);
        assert_eq!(e.queue, "q");
        assert_eq!(e.task.as_deref(), Some(Fine::NAME));
        assert_eq!(e.attempt, Some(0));
    }
    assert!(seen[0].wait_ms.is_some(), "{:?}", seen[0]);
    assert!(seen[2].run_ms.is_some(), "{:?}", seen[2]);
    assert!(
        seen.iter().all(|e| e.args.is_none()),
        "arguments by default: {seen:?}"
    );

    // Fails once, is retried, fails for good.
    let bad = call(Fails::NAME);
    publish(&broker, &bad).await;
    let seen = kinds_of(&mut events, Some(&bad.id), 6).await;
    let kinds: Vec<_> = seen.iter().map(|e| (e.event, e.attempt)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Received, Some(0)),
            (EventKind::Started, Some(0)),
            (EventKind::Retried, Some(0)),
            (EventKind::Received, Some(1)),
            (EventKind::Started, Some(1)),
            (EventKind::Failed, Some(1)),
        ]
    );
    assert_eq!(seen[5].error_kind.as_deref(), Some("test::Fails"));
    assert_eq!(seen[5].message.as_deref(), Some("always"));

    // An unknown task: dead-lettered with its reason, never started.
    let unknown = call("no.such.task");
    publish(&broker, &unknown).await;
    let seen = kinds_of(&mut events, Some(&unknown.id), 2).await;
    assert_eq!(seen[1].event, EventKind::DeadLettered, "{seen:?}");
    assert!(
        seen[1].message.as_deref().unwrap().contains("unknown task"),
        "{seen:?}"
    );

    // A body that is no call: an event without call fields.
    broker
        .publish(OutgoingMessage::new(
            new_task_id(),
            "q",
            b"not json".to_vec(),
        ))
        .await
        .unwrap();
    let seen = kinds_of(&mut events, None, 1).await;
    assert_eq!(seen[0].event, EventKind::DeadLettered);
    assert_eq!(seen[0].task, None);
    assert!(seen[0].message.is_some());

    let _ = stop.send(());
    join.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_events_unless_turned_on() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let mut events = notifier.subscribe(EVENTS_CHANNEL).await.unwrap();
    let (_, stop, join) = worker(&broker, &notifier, false);
    let env = call(Fine::NAME);
    publish(&broker, &env).await;
    // The result is stored after the `succeeded` event would have been queued.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while notifier.fetch(&env.id).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no result");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    join.await.unwrap().unwrap();
    // Stopping flushes queued events: none were.
    assert!(events.next().now_or_never().is_none());
}

#[tokio::test]
async fn progress_of_a_fire_and_forget_call_is_an_event_with_its_value() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let mut events = notifier.subscribe(EVENTS_CHANNEL).await.unwrap();
    let (worker_id, stop, join) = worker(&broker, &notifier, true);
    let env = fire_and_forget();
    assert_eq!(env.reply_to, None);
    publish(&broker, &env).await;
    let seen = kinds_of(&mut events, Some(&env.id), 4).await;
    let kinds: Vec<_> = seen.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Received,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Succeeded
        ]
    );
    let p = &seen[2];
    assert_eq!(p.progress, Some(json!({"done": 1, "of": 2})));
    assert_eq!(
        (
            p.worker.as_str(),
            p.queue.as_str(),
            p.task.as_deref(),
            p.attempt
        ),
        (worker_id.as_str(), "q", Some(Reports::NAME), Some(0))
    );
    assert!(seen
        .iter()
        .all(|e| e.event == EventKind::Progress || e.progress.is_none()));
    // On the wire: `"event":"progress"` and the value under `progress`.
    let wire: Value = serde_json::from_slice(&p.to_bytes()).unwrap();
    assert_eq!(wire["event"], "progress");
    assert_eq!(wire["progress"], json!({"done": 1, "of": 2}));
    let _ = stop.send(());
    join.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_progress_event_when_events_are_off() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let mut events = notifier.subscribe(EVENTS_CHANNEL).await.unwrap();
    let (_, stop, join) = worker(&broker, &notifier, false);
    // With a reply channel, so the progress notification shows that the task reported it.
    let env = fire_and_forget().with_reply_to(format!("ivy.reply.{}", new_task_id()));
    let mut replies = notifier
        .subscribe(env.reply_to.as_deref().unwrap())
        .await
        .unwrap();
    publish(&broker, &env).await;
    let got_progress = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(Incoming::Message(p))) = replies.next().await {
            if std::str::from_utf8(&p).unwrap().contains("\"progress\"") {
                return;
            }
        }
        panic!("the reply channel ended");
    })
    .await;
    assert!(got_progress.is_ok(), "no progress notification");
    let _ = stop.send(());
    join.await.unwrap().unwrap();
    // Stopping flushes queued events: none were.
    assert!(events.next().now_or_never().is_none());
}

/// The worker's own announcements, by its id.
async fn announced(n: &MemoryNotifier, id: &str) -> Option<WorkerInfo> {
    n.announcements()
        .await
        .unwrap()
        .iter()
        .map(|p| WorkerInfo::from_slice(p).expect("an announcement"))
        .find(|w| w.id == id)
}

#[tokio::test]
async fn a_running_worker_is_announced_with_its_counts_and_withdrawn_at_stop() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let (id, stop, join) = worker(&broker, &notifier, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        if let Some(info) = announced(&notifier, &id).await {
            break info;
        }
        assert!(tokio::time::Instant::now() < deadline, "never announced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info.queues, ["q"]);
    assert!(info.tasks.iter().any(|t| t == Fine::NAME), "{info:?}");
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.ttl_ms, 150);
    assert!(info.started_at <= now_ms());

    let env = Envelope::new(new_task_id(), Fine::NAME, Map::new(), now_ms()).with_queue("q");
    publish(&broker, &env).await;
    // The next refreshes show the call.
    loop {
        let info = announced(&notifier, &id).await.expect("still announced");
        if info.counts.succeeded == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let _ = stop.send(());
    join.await.unwrap().unwrap();
    assert_eq!(announced(&notifier, &id).await, None, "withdrawn at stop");
}

#[tokio::test]
async fn the_received_event_carries_the_arguments_when_the_worker_is_asked_to() {
    let (broker, notifier) = (MemoryBroker::new(), MemoryNotifier::new());
    let mut events = notifier.subscribe(EVENTS_CHANNEL).await.unwrap();
    let registry = Registry::new().register::<Fine>().unwrap();
    let w = Worker::with_registry(broker.clone(), notifier.clone(), registry)
        .queues(["q"])
        .events(true)
        .event_args(true);
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(w.run(async {
        let _ = stopped.await;
    }));
    let mut env = call(Fine::NAME);
    env.args.insert("who".into(), json!("ada"));
    publish(&broker, &env).await;
    let seen = kinds_of(&mut events, Some(&env.id), 3).await;
    assert_eq!(seen[0].event, EventKind::Received);
    assert_eq!(seen[0].args, Some(json!({"who": "ada"})), "{:?}", seen[0]);
    assert!(seen[1..].iter().all(|e| e.args.is_none()), "{seen:?}");
    let _ = stop.send(());
    join.await.unwrap().unwrap();
}
