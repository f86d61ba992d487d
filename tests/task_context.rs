//! What a `#[task]` can reach (issue 14): `State<T>` parameters filled from the worker, the
//! call's deadline, the cancellation flag in a `blocking` task, and `ivy::Permanent` errors.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Broker, CancelOutcome, Error, Permanent, Producer, State, TaskFailure, Worker};

#[derive(Clone)]
struct Greeting(String);

#[derive(Clone, Default)]
struct Visits(Arc<AtomicU32>);

#[ivy::task(name = "ctx.greet")]
async fn greet(name: String, greeting: State<Greeting>, visits: ivy::State<Visits>) -> String {
    visits.0 .0.fetch_add(1, Ordering::SeqCst);
    format!("{}, {name}", greeting.0 .0)
}

#[ivy::task(name = "ctx.greet_blocking", blocking)]
fn greet_blocking(greeting: State<Greeting>, name: String) -> (String, Option<String>) {
    let task = ivy::current_task().map(|t| t.name);
    (format!("{}, {name}", greeting.0 .0), task)
}

#[ivy::task(name = "ctx.deadline")]
async fn deadline() -> Option<u64> {
    let d = ivy::current_task().expect("in a worker").deadline?;
    Some(
        d.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

static SPINS: AtomicU32 = AtomicU32::new(0);

#[ivy::task(name = "ctx.spin", blocking, max_retries = 0)]
fn spin() -> String {
    SPINS.fetch_add(1, Ordering::SeqCst);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !ivy::is_cancelled() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    if ivy::is_cancelled() {
        SPINS.fetch_add(100, Ordering::SeqCst);
    }
    "returned".into()
}

static REFUSALS: AtomicU32 = AtomicU32::new(0);

#[ivy::task(name = "ctx.refuse", max_retries = 5, retry_backoff = "10ms")]
async fn refuse(order: String) -> Result<u8, Permanent> {
    REFUSALS.fetch_add(1, Ordering::SeqCst);
    Err(Permanent::new(format!("order {order} does not exist")))
}

static BOXED_REFUSALS: AtomicU32 = AtomicU32::new(0);

#[ivy::task(name = "ctx.refuse_boxed", max_retries = 5, retry_backoff = "10ms")]
async fn refuse_boxed() -> Result<u8, Box<dyn std::error::Error + Send + Sync>> {
    BOXED_REFUSALS.fetch_add(1, Ordering::SeqCst);
    let io = std::io::Error::other("checksum mismatch");
    Err(Box::new(Permanent::new(io)))
}

#[derive(Debug)]
enum OrderError {
    NotFound(u64),
    Busy,
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::NotFound(id) => write!(f, "order {id} not found"),
            OrderError::Busy => f.write_str("the order service is busy"),
        }
    }
}

impl std::error::Error for OrderError {}

impl OrderError {
    fn is_permanent(&self) -> bool {
        matches!(self, OrderError::NotFound(_))
    }
}

static LOOKUPS: AtomicU32 = AtomicU32::new(0);

#[ivy::task(name = "ctx.lookup", max_retries = 2, retry_backoff = "10ms", no_retry_on = OrderError::is_permanent)]
async fn lookup(order: u64) -> Result<u64, OrderError> {
    LOOKUPS.fetch_add(1, Ordering::SeqCst);
    if order == 0 {
        Err(OrderError::NotFound(order))
    } else {
        Err(OrderError::Busy)
    }
}

const WAIT: Duration = Duration::from_secs(20);

type Running = (
    MemoryBroker,
    Producer<MemoryBroker, MemoryNotifier>,
    tokio::sync::oneshot::Sender<()>,
);

fn start(
    configure: impl FnOnce(Worker<MemoryBroker, MemoryNotifier>) -> Worker<MemoryBroker, MemoryNotifier>,
) -> Running {
    let b = MemoryBroker::new();
    let n = MemoryNotifier::new();
    let w = configure(Worker::new(b.clone(), n.clone()).unwrap().concurrency(4));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(w.run(async {
        let _ = rx.await;
    }));
    (b.clone(), Producer::new(b, n), tx)
}

#[tokio::test]
async fn state_parameters_come_from_the_worker_and_stay_out_of_the_call() {
    let visits = Visits::default();
    let (_, p, _stop) = start(|w| w.state(Greeting("hello".into())).state(visits.clone()));
    let mut h = p.delayed_call(greet::call("ada".into())).await.unwrap();
    assert_eq!(h.result_timeout(WAIT).await.unwrap(), "hello, ada");
    let mut h = p
        .delayed_call(greet_blocking::call("bob".into()))
        .await
        .unwrap();
    assert_eq!(
        h.result_timeout(WAIT).await.unwrap(),
        (
            "hello, bob".to_string(),
            Some("ctx.greet_blocking".to_string())
        ),
        "a blocking task gets its state and its context"
    );
    assert_eq!(visits.0.load(Ordering::SeqCst), 1);
    // Still a plain function: the state is passed by hand.
    let direct = greet(
        "cy".into(),
        State(Greeting("hi".into())),
        State(visits.clone()),
    )
    .await;
    assert_eq!(direct, "hi, cy");
}

#[tokio::test]
async fn a_missing_state_fails_the_call_at_once() {
    let (b, p, _stop) = start(|w| w.state(Visits::default()));
    let mut h = p.delayed_call(greet::call("ada".into())).await.unwrap();
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::MISSING_STATE);
            assert!(f.message.contains("Greeting"), "{f}");
        }
        other => panic!("{other:?}"),
    }
    let dead = b.take_dead_letters("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("failed permanently"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test]
async fn the_deadline_is_the_calls_expiry() {
    let (_, p, _stop) = start(|w| w);
    let mut h = p.delayed_call(deadline::call()).await.unwrap();
    assert_eq!(h.result_timeout(WAIT).await.unwrap(), None);
    let before = SystemTime::now() + Duration::from_secs(60);
    let mut h = p
        .delayed_call(deadline::call().expires_in(Duration::from_secs(60)))
        .await
        .unwrap();
    let after = SystemTime::now() + Duration::from_secs(60);
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let got = h.result_timeout(WAIT).await.unwrap().expect("a deadline");
    assert!(ms(before) <= got && got <= ms(after), "{got}");
}

#[tokio::test]
async fn a_blocking_task_sees_its_cancellation() {
    let (_, p, _stop) = start(|w| w);
    let mut h = p.delayed_call(spin::call()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while SPINS.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.cancel().await.unwrap(), CancelOutcome::Cancelled);
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => assert!(f.is_cancelled(), "{f}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        SPINS.load(Ordering::SeqCst),
        101,
        "ran once and saw the flag"
    );
    assert_eq!(h.cancel().await.unwrap(), CancelOutcome::AlreadyFinished);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let (b, p, _stop) = start(|w| w);
    let mut h = p.delayed_call(refuse::call("42".into())).await.unwrap();
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => {
            assert!(f.permanent, "{f:?}");
            assert_eq!(f.message, "order 42 does not exist");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(REFUSALS.load(Ordering::SeqCst), 1, "no retry");

    // Anywhere in the error's chain.
    let mut h = p.delayed_call(refuse_boxed::call()).await.unwrap();
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => {
            assert!(f.permanent, "{f:?}");
            assert_eq!(f.message, "checksum mismatch");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(BOXED_REFUSALS.load(Ordering::SeqCst), 1, "no retry");
    let dead = b.take_dead_letters("default", 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    for d in dead {
        assert!(
            d.reason
                .contains("failed permanently (no retry) in attempt 1"),
            "{}",
            d.reason
        );
    }
}

#[tokio::test]
async fn no_retry_on_picks_the_permanent_errors() {
    let (_, p, _stop) = start(|w| w);
    let mut h = p.delayed_call(lookup::call(0)).await.unwrap();
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => assert!(f.permanent && f.message == "order 0 not found", "{f:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(LOOKUPS.load(Ordering::SeqCst), 1, "not retried");
    let mut h = p.delayed_call(lookup::call(7)).await.unwrap();
    match h.result_timeout(WAIT).await {
        Err(Error::Task(f)) => assert!(!f.permanent, "{f:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        LOOKUPS.load(Ordering::SeqCst),
        1 + 3,
        "the other error is retried twice"
    );
}
