//! What `#[task]` options and return types do at run time, through a real worker.

use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Error, Producer, TaskFailure, Worker};

#[derive(Debug)]
struct Outer(std::io::Error);
impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("could not charge the card")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[ivy::task(name = "t.chain", max_retries = 0)]
async fn chain() -> Result<u8, Outer> {
    Err(Outer(std::io::Error::other("gateway timeout")))
}

#[ivy::task(name = "t.boxed", max_retries = 0)]
async fn boxed() -> Result<u8, Box<dyn std::error::Error + Send + Sync>> {
    Err(Box::new(Outer(std::io::Error::other("inner"))))
}

#[ivy::task(name = "t.text", max_retries = 0)]
async fn text() -> Result<u8, String> {
    Err("just text".into())
}

#[ivy::task(name = "t.timeout", timeout = "100ms", max_retries = 0)]
async fn too_slow() -> u8 {
    tokio::time::sleep(Duration::from_secs(30)).await;
    1
}

#[ivy::task(name = "t.blocking", blocking)]
fn blocking_sum(v: Vec<u64>) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    v.iter().sum()
}

#[ivy::task(name = "t.info")]
async fn info() -> (String, u32) {
    let t = ivy::current_task().expect("inside a worker");
    (t.name, t.attempt)
}

static FLAKY_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[ivy::task(name = "t.flaky", max_retries = 3, retry_backoff = "10ms")]
async fn flaky() -> Result<u32, String> {
    let run = FLAKY_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if run < 2 {
        Err(format!("run {run} fails"))
    } else {
        Ok(ivy::current_task().unwrap().attempt)
    }
}

async fn setup() -> (
    Producer<MemoryBroker, MemoryNotifier>,
    tokio::sync::oneshot::Sender<()>,
) {
    let b = MemoryBroker::new();
    let n = MemoryNotifier::new();
    let w = Worker::new(b.clone(), n.clone()).unwrap().concurrency(4);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(w.run(async {
        let _ = rx.await;
    }));
    (Producer::new(b, n), tx)
}

const WAIT: Duration = Duration::from_secs(20);

fn failure(r: ivy::Result<impl std::fmt::Debug>) -> TaskFailure {
    match r {
        Err(Error::Task(f)) => f,
        other => panic!("expected a task failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_kind_message_and_chain() {
    let (p, _stop) = setup().await;
    let f = failure(
        p.delayed_call(chain::call())
            .await
            .unwrap()
            .result_timeout(WAIT)
            .await,
    );
    assert!(f.kind.ends_with("Outer"), "{}", f.kind);
    assert_eq!(f.message, "could not charge the card");
    assert_eq!(f.chain, vec!["gateway timeout".to_string()]);

    let f = failure(
        p.delayed_call(boxed::call())
            .await
            .unwrap()
            .result_timeout(WAIT)
            .await,
    );
    assert_eq!(f.message, "could not charge the card");
    assert_eq!(f.chain, vec!["inner".to_string()]);

    let f = failure(
        p.delayed_call(text::call())
            .await
            .unwrap()
            .result_timeout(WAIT)
            .await,
    );
    assert_eq!(f.message, "just text");
    assert!(f.chain.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_option_limits_a_run() {
    let (p, _stop) = setup().await;
    let f = failure(
        p.delayed_call(too_slow::call())
            .await
            .unwrap()
            .result_timeout(WAIT)
            .await,
    );
    assert_eq!(f.kind, TaskFailure::TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_tasks_and_task_info() {
    let (p, _stop) = setup().await;
    let mut h = p
        .delayed_call(blocking_sum::call(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(h.result_timeout(WAIT).await.unwrap(), 6);
    let mut h = p.delayed_call(info::call()).await.unwrap();
    assert_eq!(
        h.result_timeout(WAIT).await.unwrap(),
        ("t.info".to_string(), 0)
    );
    assert_eq!(
        ivy::current_task(),
        None,
        "outside a worker there is no current task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_until_success() {
    let (p, _stop) = setup().await;
    let mut h = p.delayed_call(flaky::call()).await.unwrap();
    assert_eq!(
        h.result_timeout(WAIT).await.unwrap(),
        2,
        "succeeded on the third attempt"
    );
    assert_eq!(h.status(), ivy::Status::Done);
}

#[tokio::test]
async fn oversized_call_is_refused_before_sending() {
    let b = MemoryBroker::with_max_message_size(1024);
    let p = Producer::new(b.clone(), MemoryNotifier::new());
    let err = p
        .delayed_call(blocking_sum::call(vec![7; 1000]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit, .. } if limit == 1024 - ivy::broker::RETRY_ROOM),
        "{err}"
    );
    assert_eq!(b.depth("default").ready, 0, "nothing was sent");
}

#[tokio::test]
async fn unknown_url_schemes_are_clear_errors() {
    let err = ivy::backends::broker_from_url("kafka://x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Url { .. }), "{err}");
    let err = ivy::backends::notifier_from_url("nope").await.unwrap_err();
    assert!(matches!(err, Error::Url { .. }), "{err}");
    assert!(ivy::backends::broker_from_url("memory://t").await.is_ok());
}

static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Holds every `t.gauge` call running until the test opens it.
static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[ivy::task(name = "t.gauge", max_retries = 0)]
async fn gauge() {
    use std::sync::atomic::Ordering::SeqCst;
    let now = RUNNING.fetch_add(1, SeqCst) + 1;
    MOST.fetch_max(now, SeqCst);
    while !GATE_OPEN.load(SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    RUNNING.fetch_sub(1, SeqCst);
}

/// The worker runs up to its concurrency (4 here) at once, and never more: while four calls
/// are held running, the other twelve stay in the queue, and none starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_the_tasks_running_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let b = MemoryBroker::new();
    let n = MemoryNotifier::new();
    let w = Worker::new(b.clone(), n.clone()).unwrap().concurrency(4);
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(w.run(async {
        let _ = rx.await;
    }));
    let p = Producer::new(b.clone(), n);
    let mut handles = Vec::new();
    for _ in 0..16 {
        handles.push(p.delayed_call(gauge::call()).await.unwrap());
    }
    // Wait until four run at once, held at the gate, and the worker holds no other call.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let d = b.depth("default");
        if RUNNING.load(SeqCst) == 4 && d.unacked == 4 && d.ready == 12 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "four calls running at once, twelve waiting in the queue: {} running, {d:?}",
            RUNNING.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(MOST.load(SeqCst), 4, "more than four ran at once");
    GATE_OPEN.store(true, SeqCst);
    for h in &mut handles {
        h.result_timeout(WAIT).await.unwrap();
    }
    assert_eq!(MOST.load(SeqCst), 4, "more than four ran at once");
    assert_eq!(RUNNING.load(SeqCst), 0);
}
