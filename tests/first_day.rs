//! A newcomer's first app does not hang in silence (issue 23): a worker consumes the queues of
//! the tasks it runs unless told otherwise, says so when an explicit list leaves one out, and a
//! producer says so when it sends to a queue no live worker consumes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Presence, Producer, Worker};

#[ivy::task(name = "first_day.named", queue = "first-day.named")]
async fn on_a_named_queue(x: u32) -> u32 {
    x + 1
}

#[ivy::task(name = "first_day.plain")]
async fn on_default(x: u32) -> u32 {
    x * 2
}

/// Where the test's subscriber writes its lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits until a line contains every one of `parts`, and returns it.
    async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {parts:?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// Lines logged on this (current-thread) runtime from now on, until the guard drops.
fn capture() -> (Lines, tracing::subscriber::DefaultGuard) {
    let lines = Lines::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(lines.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}

type Stop = tokio::sync::oneshot::Sender<()>;
type Running = tokio::task::JoinHandle<ivy::Result<ivy::WorkerReport>>;

fn run(worker: Worker<MemoryBroker, MemoryNotifier>) -> (Stop, Running) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, running)
}

#[tokio::test]
async fn a_worker_left_to_its_defaults_runs_calls_on_its_tasks_named_queues() {
    let (lines, _guard) = capture();
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let (stop, running) = run(Worker::new(b.clone(), n.clone()).unwrap());
    let p = Producer::new(b, n);

    let mut named = p.delayed_call(on_a_named_queue::call(1)).await.unwrap();
    let mut plain = p.delayed_call(on_default::call(4)).await.unwrap();
    let limit = Duration::from_secs(20);
    assert_eq!(named.result_timeout(limit).await.unwrap(), 2);
    assert_eq!(plain.result_timeout(limit).await.unwrap(), 8);

    let started = lines.wait_for(&["worker started"]).await;
    assert!(
        started.contains("queues=default, first-day.held, first-day.named "),
        "the start line names what it consumes: {started}"
    );
    assert!(
        !lines.text().contains("does not consume"),
        "{}",
        lines.text()
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_explicit_queue_list_that_leaves_a_task_out_is_warned_about() {
    let (lines, _guard) = capture();
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(b, n).unwrap().queues(["default"]);
    let (stop, running) = run(worker);

    let warning = lines
        .wait_for(&["WARN", "does not consume the queue of some of its tasks"])
        .await;
    assert!(
        warning.contains("first_day.named (queue first-day.named)"),
        "names the task and its queue: {warning}"
    );
    assert!(
        !warning.contains("first_day.plain"),
        "not a task whose queue it consumes: {warning}"
    );
    lines.wait_for(&["worker started", "queues=default "]).await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_call_to_a_queue_no_live_worker_consumes_is_warned_about_once() {
    let (lines, _guard) = capture();
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let (stop, running) = run(Worker::new(b.clone(), n.clone()).unwrap());
    // The worker's announcement is what the producer reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while n.announcements().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no announcement");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p = Producer::new(b, n);

    // Consumed: no warning for it (checked below, once the other one is in).
    let mut heard = p.delayed_call(on_default::call(1)).await.unwrap();
    assert_eq!(
        heard.result_timeout(Duration::from_secs(20)).await.unwrap(),
        2
    );
    for _ in 0..3 {
        p.send(on_default::call(2).queue("nobody-consumes-this"))
            .await
            .unwrap();
    }
    let warning = lines
        .wait_for(&["WARN", "no live worker consumes queue nobody-consumes-this"])
        .await;
    assert!(
        warning.contains("consume: default, first-day.held, first-day.named)"),
        "names the live workers' queues: {warning}"
    );
    let text = lines.text();
    assert_eq!(
        text.matches("no live worker consumes").count(),
        1,
        "once per queue, and none for a consumed queue:\n{text}"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

static HOLD: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[ivy::task(name = "first_day.held", queue = "first-day.held")]
async fn held() -> u32 {
    HOLD.notified().await;
    1
}

#[tokio::test]
async fn the_shutdown_line_counts_only_the_calls_still_in_hand() {
    let (lines, _guard) = capture();
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(b.clone(), n.clone())
        .unwrap()
        .announce_every(Duration::from_millis(20));
    let (stop, running) = run(worker);
    let p = Producer::new(b, n.clone());
    // Held first: the calls that finish after it finish while the worker waits for more.
    p.send(held::call()).await.unwrap();
    for x in 0..3 {
        let mut h = p.delayed_call(on_default::call(x)).await.unwrap();
        h.result_timeout(Duration::from_secs(20)).await.unwrap();
    }
    // Until the worker's own figures say: three settled, one in hand.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = n.announcements().await.unwrap();
        let info = seen
            .iter()
            .filter_map(|a| ivy::events::WorkerInfo::from_slice(a).ok())
            .next();
        if info.is_some_and(|i| i.running == 1 && i.counts.succeeded == 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 3 done, 1 running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    let stopping = lines.wait_for(&["worker stopping"]).await;
    HOLD.notify_one();
    running.await.unwrap().unwrap();
    assert!(stopping.contains("running=1 "), "{stopping}");
}

#[tokio::test]
async fn one_default_queue_on_the_producer_and_the_worker_carries_every_unqueued_task() {
    let (lines, _guard) = capture();
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::new(b.clone(), n.clone())
        .unwrap()
        .default_queue("first-day.app");
    let (stop, running) = run(worker);
    let p = Producer::new(b.clone(), n.clone()).with_default_queue("first-day.app");

    // A call and a chain of tasks that name no queue; the chain's second step is sent by the
    // worker.
    let mut one = p.delayed_call(on_default::call(3)).await.unwrap();
    let mut chain = p
        .chain(on_default::call(1).then(on_default::with()))
        .await
        .unwrap();
    let limit = Duration::from_secs(20);
    assert_eq!(one.result_timeout(limit).await.unwrap(), 6);
    assert_eq!(chain.result_timeout(limit).await.unwrap(), 4);

    let started = lines.wait_for(&["worker started"]).await;
    assert!(
        started.contains("queues=first-day.app, first-day.held, first-day.named "),
        "the default queue in place of `default`: {started}"
    );
    // A producer left on `default` sends there, where this worker does not consume.
    Producer::new(b.clone(), n.clone())
        .send(on_default::call(5))
        .await
        .unwrap();
    assert_eq!(b.depth("default").ready, 1);
    // The announcement names the queue `ivy call` should send the task to.
    let info = n
        .announcements()
        .await
        .unwrap()
        .iter()
        .find_map(|a| ivy::events::WorkerInfo::from_slice(a).ok())
        .unwrap();
    assert_eq!(info.task_queues["first_day.plain"], "first-day.app");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_with_no_tasks_says_how_tasks_get_linked() {
    let (lines, _guard) = capture();
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let worker = Worker::with_registry(b, n, ivy::Registry::new());
    let (stop, running) = run(worker);
    let warning = lines
        .wait_for(&["WARN", "the worker has no tasks registered"])
        .await;
    assert!(
        warning.contains("linked into the worker's binary")
            && warning.contains("Registry::new().register::<my_task>()"),
        "says how to link them: {warning}"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
