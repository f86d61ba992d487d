//! The backend conformance suite: what every [`Broker`] and [`Notifier`] must do for the
//! producer and worker to keep their promises. A backend crate runs all of it with one line:
//!
//! ```text
//! ivy_core::broker_conformance!(make_broker);     // async fn make_broker() -> impl Broker
//! ivy_core::notifier_conformance!(make_notifier); // async fn make_notifier() -> impl Notifier
//! ```
//!
//! Each check uses fresh queue and channel names, so checks may run in parallel against one
//! server. Checks wait with generous time limits and never judge speed. The end-to-end checks
//! pair the backend under test with the memory implementation of the other trait.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::{timeout, Instant};

use crate::broker::{
    Broker, Consumer, Delivery, Incoming, Notifier, OutgoingMessage, Subscription,
};
use crate::envelope::{new_task_id, Envelope, Status, TaskFailure, PROTOCOL_VERSION};
use crate::memory::{MemoryBroker, MemoryNotifier};
use crate::task::{codegen, Call, Registry, Task, TaskOptions};
use crate::{Error, Producer, Worker};

/// The longest any single step may take before a check fails.
pub const STEP: Duration = Duration::from_secs(30);

/// A fresh name for a queue or channel.
pub fn unique(prefix: &str) -> String {
    format!("ivy-conf-{prefix}-{}", uuid::Uuid::now_v7().simple())
}

async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("conformance: `{what}` did not finish within {STEP:?}"))
}

fn msg(queue: &str, body: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        id: new_task_id(),
        queue: queue.to_string(),
        body: body.to_vec(),
        priority: None,
        delay: None,
    }
}

async fn next<C: Consumer>(c: &mut C, what: &str) -> C::Delivery {
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

/// Checks of a [`Broker`].
pub mod broker {
    use super::*;

    /// A published body comes back unchanged from the queue it was sent to.
    pub async fn round_trip<B: Broker>(b: B) {
        let q = unique("rt");
        b.publish(msg(&q, b"hello \x00\xff bytes"))
            .await
            .expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 4)
            .await
            .expect("consume");
        let d = next(&mut c, "round trip").await;
        assert_eq!(d.body(), b"hello \x00\xff bytes");
        assert_eq!(d.queue(), q);
        assert!(!d.redelivered());
        d.ack().await.expect("ack");
    }

    /// Where the broker promises FIFO, one consumer sees publish order.
    pub async fn fifo_order<B: Broker>(b: B) {
        if !b.capabilities().fifo {
            return;
        }
        let q = unique("fifo");
        for i in 0..20 {
            b.publish(msg(&q, format!("{i}").as_bytes()))
                .await
                .expect("publish");
        }
        let mut c = b
            .consume(std::slice::from_ref(&q), 20)
            .await
            .expect("consume");
        for i in 0..20 {
            let d = next(&mut c, "ordered delivery").await;
            assert_eq!(
                d.body(),
                format!("{i}").as_bytes(),
                "message {i} out of order"
            );
            d.ack().await.expect("ack");
        }
    }

    /// An acked message is gone: a later consumer sees only what came after it.
    pub async fn ack_removes<B: Broker>(b: B) {
        let q = unique("ack");
        b.publish(msg(&q, b"first")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        next(&mut c, "first").await.ack().await.expect("ack");
        c.close().await.expect("close");
        drop(c);
        b.publish(msg(&q, b"sentinel")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        let d = next(&mut c, "sentinel").await;
        assert_eq!(d.body(), b"sentinel", "an acked message came back");
        d.ack().await.expect("ack");
    }

    /// An unsettled delivery whose consumer dies is delivered again, marked redelivered.
    pub async fn redelivery_after_consumer_dies<B: Broker>(b: B) {
        let q = unique("redeliver");
        b.publish(msg(&q, b"survivor")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        let d = next(&mut c, "first delivery").await;
        assert_eq!(d.body(), b"survivor");
        drop(d);
        drop(c);
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume again");
        let d = next(&mut c, "redelivery").await;
        assert_eq!(d.body(), b"survivor");
        assert!(d.redelivered(), "a redelivery must say so");
        d.ack().await.expect("ack");
    }

    /// `requeue` gives the message back at once, unchanged.
    pub async fn requeue_returns<B: Broker>(b: B) {
        let q = unique("requeue");
        b.publish(msg(&q, b"again")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        next(&mut c, "first")
            .await
            .requeue()
            .await
            .expect("requeue");
        let d = next(&mut c, "requeued").await;
        assert_eq!(d.body(), b"again");
        d.ack().await.expect("ack");
    }

    /// `retry` replaces the body and delivers it again no earlier than the delay.
    pub async fn retry_after_delay<B: Broker>(b: B) {
        let q = unique("retry");
        b.publish(msg(&q, b"attempt 0")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        let d = next(&mut c, "first").await;
        let delay = Duration::from_millis(700);
        let start = Instant::now();
        d.retry(b"attempt 1".to_vec(), delay).await.expect("retry");
        let d = next(&mut c, "retried").await;
        let waited = start.elapsed();
        assert_eq!(d.body(), b"attempt 1");
        assert!(
            waited + Duration::from_millis(100) >= delay,
            "retried after {waited:?}, before its delay of {delay:?}"
        );
        d.ack().await.expect("ack");
    }

    /// A delayed publish is not delivered before its delay.
    pub async fn delayed_publish<B: Broker>(b: B) {
        let q = unique("delay");
        let mut m = msg(&q, b"later");
        let delay = Duration::from_millis(700);
        m.delay = Some(delay);
        let start = Instant::now();
        b.publish(m).await.expect("publish");
        b.publish(msg(&q, b"now")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 2)
            .await
            .expect("consume");
        let first = next(&mut c, "undelayed").await;
        assert_eq!(
            first.body(),
            b"now",
            "a delayed message overtook an immediate one"
        );
        let d = next(&mut c, "delayed").await;
        assert_eq!(d.body(), b"later");
        assert!(start.elapsed() + Duration::from_millis(100) >= delay);
        first.ack().await.expect("ack");
        d.ack().await.expect("ack");
    }

    /// A dead-lettered message lands in the dead letters with its reason and is not redelivered.
    pub async fn dead_letter_keeps_reason<B: Broker>(b: B) {
        let q = unique("dead");
        b.publish(msg(&q, b"poison")).await.expect("publish");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        next(&mut c, "poison")
            .await
            .dead_letter("it is poison".into())
            .await
            .expect("dead_letter");
        let dead = wait_dead_letters(&b, &q, 1).await;
        assert_eq!(dead[0].body, b"poison");
        assert_eq!(dead[0].reason, "it is poison");
        assert_eq!(dead[0].queue, q);
        b.publish(msg(&q, b"sentinel")).await.expect("publish");
        let d = next(&mut c, "sentinel").await;
        assert_eq!(d.body(), b"sentinel", "a dead letter was redelivered");
        d.ack().await.expect("ack");
    }

    /// A consumer holds at most `prefetch` unsettled deliveries.
    pub async fn prefetch_limits_unsettled<B: Broker>(b: B) {
        let q = unique("prefetch");
        for i in 0..3 {
            b.publish(msg(&q, format!("{i}").as_bytes()))
                .await
                .expect("publish");
        }
        let mut c = b
            .consume(std::slice::from_ref(&q), 2)
            .await
            .expect("consume");
        let d1 = next(&mut c, "1st").await;
        let d2 = next(&mut c, "2nd").await;
        let third = timeout(Duration::from_millis(500), c.next()).await;
        assert!(
            third.is_err(),
            "a third delivery arrived with a prefetch of 2"
        );
        d1.ack().await.expect("ack");
        let d3 = next(&mut c, "3rd after an ack").await;
        d2.ack().await.expect("ack");
        d3.ack().await.expect("ack");
    }

    /// Where the broker supports priorities, a higher one is delivered first.
    pub async fn priorities<B: Broker>(b: B) {
        if !b.capabilities().priorities {
            return;
        }
        let q = unique("prio");
        for (body, p) in [(&b"low"[..], 1u8), (b"low", 1), (b"high", 9)] {
            let mut m = msg(&q, body);
            m.priority = Some(p);
            b.publish(m).await.expect("publish");
        }
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume");
        let d = next(&mut c, "highest priority").await;
        assert_eq!(d.body(), b"high");
        d.ack().await.expect("ack");
    }

    /// A body over the limit is refused before it is sent, with a clear error.
    pub async fn oversized_refused<B: Broker>(b: B) {
        let q = unique("big");
        let limit = b.capabilities().max_message_size;
        match b.publish(msg(&q, &vec![b'x'; limit + 1])).await {
            Err(Error::MessageTooLarge { size, limit: l }) => {
                assert_eq!((size, l), (limit + 1, limit))
            }
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
    }

    /// The producer and worker work end to end on this broker (notifier: memory).
    pub async fn end_to_end<B: Broker>(b: B) {
        super::end_to_end(b, MemoryNotifier::new()).await
    }

    /// A worker that dies mid-task loses nothing: another worker completes the call.
    pub async fn worker_killed_mid_task<B: Broker>(b: B) {
        super::worker_killed_mid_task(b, MemoryNotifier::new()).await
    }

    /// Poison messages end in the dead letters with their reason; the worker goes on.
    pub async fn poison_messages<B: Broker>(b: B) {
        super::poison_messages(b, MemoryNotifier::new()).await
    }

    /// SIGTERM-like shutdown: running tasks finish within the grace period, the rest return.
    pub async fn graceful_shutdown<B: Broker>(b: B) {
        super::graceful_shutdown(b, MemoryNotifier::new()).await
    }

    /// With encryption on: calls and results travel sealed, plain or foreign-key calls are
    /// refused to the dead letters, old keys still work after rotation, and per-key task
    /// permissions hold.
    pub async fn encryption<B: Broker>(b: B) {
        super::encryption(b, MemoryNotifier::new()).await
    }
}

/// Checks of a [`Notifier`].
pub mod notifier {
    use super::*;

    async fn recv<S: Subscription>(s: &mut S) -> Vec<u8> {
        loop {
            match step("notification", s.next()).await {
                Some(Ok(Incoming::Message(p))) => return p,
                Some(Ok(Incoming::Gap)) => continue,
                Some(Err(e)) => panic!("subscription error: {e}"),
                None => panic!("subscription closed"),
            }
        }
    }

    /// Payloads published on a channel reach its subscriber in order; other channels' do not.
    pub async fn publish_subscribe<N: Notifier>(n: N) {
        let ch = unique("ch");
        let other = unique("other");
        let mut s = n.subscribe(&ch).await.expect("subscribe");
        for i in 0..10 {
            n.publish(&other, b"not for you".to_vec())
                .await
                .expect("publish");
            n.publish(&ch, format!("{i}").into_bytes())
                .await
                .expect("publish");
        }
        for i in 0..10 {
            assert_eq!(recv(&mut s).await, format!("{i}").into_bytes());
        }
    }

    /// A final payload is published and kept: a late reader fetches it by task id.
    pub async fn final_is_kept_for_late_readers<N: Notifier>(n: N) {
        let ch = unique("final");
        let id = new_task_id();
        let mut s = n.subscribe(&ch).await.expect("subscribe");
        n.publish_final(&ch, &id, b"the result".to_vec(), Duration::from_secs(60))
            .await
            .expect("publish_final");
        assert_eq!(recv(&mut s).await, b"the result");
        assert_eq!(
            n.fetch(&id).await.expect("fetch").as_deref(),
            Some(&b"the result"[..])
        );
        // Nobody listening at all: still kept.
        let id2 = new_task_id();
        n.publish_final(
            &unique("nobody"),
            &id2,
            b"kept".to_vec(),
            Duration::from_secs(60),
        )
        .await
        .expect("publish_final");
        assert_eq!(
            n.fetch(&id2).await.expect("fetch").as_deref(),
            Some(&b"kept"[..])
        );
        assert_eq!(n.fetch(&new_task_id()).await.expect("fetch"), None);
    }

    /// A kept result expires after its time to live.
    pub async fn results_expire<N: Notifier>(n: N) {
        let id = new_task_id();
        n.publish_final(
            &unique("ttl"),
            &id,
            b"brief".to_vec(),
            Duration::from_secs(1),
        )
        .await
        .expect("publish_final");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(
            n.fetch(&id).await.expect("fetch"),
            None,
            "the result outlived its TTL"
        );
    }

    /// The producer and worker work end to end with this notifier (broker: memory).
    pub async fn end_to_end<N: Notifier>(n: N) {
        super::end_to_end(MemoryBroker::new(), n).await
    }

    /// A producer that asks after the result was published still gets it.
    pub async fn late_producer_gets_result<N: Notifier>(n: N) {
        let b = MemoryBroker::new();
        let q = unique("late");
        let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
        let first = Producer::new(b.clone(), n.clone());
        let id = {
            let mut h = first.delayed_call(echo(&q, json!(7))).await.expect("call");
            h.result().await.expect("result");
            h.id().to_string()
        };
        drop(first);
        let other = Producer::new(b, n);
        let mut h = other.handle::<Echo>(id).await.expect("handle");
        let v = step("late result", h.result()).await.expect("late result");
        assert_eq!(v, json!({"value": 7}));
        worker.stop().await;
    }
}

// ---- Tasks of the suite, written by hand (this crate cannot use the macro). ----

/// Returns its arguments.
#[derive(Debug)]
pub struct Echo;
impl Task for Echo {
    const NAME: &'static str = "ivy.conformance.echo";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = Value;
    async fn run(args: Map<String, Value>) -> Result<Value, TaskFailure> {
        Ok(Value::Object(args))
    }
}

/// Adds two `u64`, so wrong argument types can be sent to it.
#[derive(Debug)]
pub struct Add;
impl Task for Add {
    const NAME: &'static str = "ivy.conformance.add";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = u64;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let x: u64 = codegen::decode_arg(&mut args, "x")?;
        let y: u64 = codegen::decode_arg(&mut args, "y")?;
        codegen::no_extra_args(&args)?;
        codegen::encode_output(x + y)
    }
}

/// Always fails; retried once after 50 ms.
#[derive(Debug)]
pub struct Boom;
impl Task for Boom {
    const NAME: &'static str = "ivy.conformance.boom";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT
        .with_max_retries(1)
        .with_retry_backoff(Duration::from_millis(50));
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        Err(TaskFailure {
            kind: "conformance::Boom".into(),
            message: "boom".into(),
            chain: vec!["the fuse was lit".into()],
        })
    }
}

/// Sleeps `ms`, reporting progress 1, 2, 3 on the way; returns `"done"`.
#[derive(Debug)]
pub struct Slow;
impl Task for Slow {
    const NAME: &'static str = "ivy.conformance.slow";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = String;
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let ms: u64 = codegen::decode_arg(&mut args, "ms")?;
        for i in 1..=3u32 {
            crate::progress(&i).await.ok();
            tokio::time::sleep(Duration::from_millis(ms / 3)).await;
        }
        codegen::encode_output("done")
    }
}

static MARKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn marked(key: &str) -> bool {
    MARKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|k| k == key)
}

/// Records `key` in a process-wide list, so a fire-and-forget call can be seen to have run.
#[derive(Debug)]
pub struct Mark;
impl Task for Mark {
    const NAME: &'static str = "ivy.conformance.mark";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = ();
    async fn run(mut args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let key: String = codegen::decode_arg(&mut args, "key")?;
        MARKS.lock().unwrap_or_else(|e| e.into_inner()).push(key);
        codegen::encode_output(())
    }
}

/// Panics.
#[derive(Debug)]
pub struct Panics;
impl Task for Panics {
    const NAME: &'static str = "ivy.conformance.panics";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT.with_max_retries(0);
    type Output = ();
    async fn run(_: Map<String, Value>) -> Result<Value, TaskFailure> {
        panic!("the task lost its mind")
    }
}

fn registry() -> Registry {
    Registry::new()
        .register::<Echo>()
        .and_then(|r| r.register::<Add>())
        .and_then(|r| r.register::<Boom>())
        .and_then(|r| r.register::<Slow>())
        .and_then(|r| r.register::<Panics>())
        .and_then(|r| r.register::<Mark>())
        .expect("distinct names")
}

fn call<T: Task>(queue: &str, args: Value) -> Call<T> {
    let Value::Object(map) = args else {
        panic!("arguments are an object")
    };
    Call::<T>::__new(Ok(map)).queue(queue)
}

fn echo(queue: &str, v: Value) -> Call<Echo> {
    call(queue, json!({ "value": v }))
}

/// Waits until the worker reports the call running.
async fn until_running<T: Task>(h: &crate::TaskHandle<T>, what: &str) {
    step(what, async {
        while h.status() != Status::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<crate::Result<crate::WorkerReport>>,
}

impl Running {
    async fn stop(self) -> crate::WorkerReport {
        let _ = self.stop.send(());
        step("worker stop", self.join)
            .await
            .expect("worker task")
            .expect("worker run")
    }
}

fn spawn_worker<B: Broker, N: Notifier>(b: &B, n: &N, q: &str, grace: Duration) -> Running {
    spawn_configured(
        Worker::with_registry(b.clone(), n.clone(), registry())
            .queues([q.to_string()])
            .concurrency(4)
            .grace_period(grace),
    )
}

fn spawn_configured<B: Broker, N: Notifier>(w: Worker<B, N>) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(w.run(async {
        let _ = stopped.await;
    }));
    Running { stop, join }
}

async fn end_to_end<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("e2e");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());

    // A typed result.
    let mut h = p
        .delayed_call(call::<Add>(&q, json!({"x": 2, "y": 40})))
        .await
        .expect("call");
    assert_eq!(step("add", h.result()).await.expect("result"), 42);
    assert_eq!(h.status(), Status::Done);

    // Many at once, each result to its own handle.
    let mut handles = Vec::new();
    for i in 0..50u64 {
        handles.push((
            i,
            p.delayed_call(call::<Add>(&q, json!({"x": i, "y": 1})))
                .await
                .expect("call"),
        ));
    }
    for (i, mut h) in handles {
        assert_eq!(step("batch", h.result()).await.expect("result"), i + 1);
    }

    // Progress, in order, then the result.
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 300})))
        .await
        .expect("call");
    let progress: Vec<Value> =
        step("progress", futures_util::StreamExt::collect(h.progress())).await;
    assert!(!progress.is_empty(), "no progress arrived");
    assert!(
        progress.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()),
        "{progress:?}"
    );
    assert_eq!(progress.last(), Some(&json!(3)));
    assert_eq!(step("slow", h.result()).await.expect("result"), "done");

    // A task error arrives structured, after its retry, and the call is dead-lettered.
    let mut h = p
        .delayed_call(call::<Boom>(&q, json!({"why": "testing"})))
        .await
        .expect("call");
    match step("boom", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, "conformance::Boom");
            assert_eq!(f.message, "boom");
            assert_eq!(f.chain, vec!["the fuse was lit".to_string()]);
        }
        other => panic!("expected the task's error, got {other:?}"),
    }
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert!(
        dead[0].reason.contains("failed after 2 attempt(s)"),
        "{}",
        dead[0].reason
    );
    // The retry carried the arguments along (the first attempt consumed its copy).
    let retried = Envelope::from_slice(&dead[0].body).expect("envelope");
    assert_eq!(retried.attempt, 1);
    assert_eq!(Value::Object(retried.args), json!({"why": "testing"}));

    // A panic is caught and reported.
    let mut h = p
        .delayed_call(call::<Panics>(&q, json!({})))
        .await
        .expect("call");
    match step("panic", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::PANIC);
            assert!(f.message.contains("lost its mind"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    wait_dead_letters(&b, &q, 1).await;

    // result_or and result_timeout.
    let v = p
        .delayed_call(call::<Boom>(&q, json!({})).max_retries(0))
        .await
        .expect("call")
        .result_or(())
        .await;
    assert_eq!(v, ());
    wait_dead_letters(&b, &q, 1).await;
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 3000})))
        .await
        .expect("call");
    assert!(matches!(
        h.result_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout(_))
    ));
    assert_eq!(
        step("slow after timeout", h.result())
            .await
            .expect("result"),
        "done"
    );

    // Fire and forget: the task runs, nothing is kept.
    let key = unique("mark");
    let id = p
        .send(call::<Mark>(&q, json!({ "key": key })))
        .await
        .expect("send");
    step("fire-and-forget call to run", async {
        while !marked(&key) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let report = worker.stop().await;
    assert_eq!(report.succeeded, 54, "{report:?}");
    assert_eq!(report.failed, 3, "{report:?}");
    assert_eq!(n.fetch(&id).await.expect("fetch"), None);
}

async fn poison_messages<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("poison");
    // A worker limit below every broker's, so an oversized body can reach it.
    let worker = spawn_configured(
        Worker::with_registry(b.clone(), n.clone(), registry())
            .queues([q.clone()])
            .max_message_size(16 * 1024),
    );
    let envelope = |task: &str, args: Value| {
        json!({"v": PROTOCOL_VERSION, "id": new_task_id(), "task": task, "args": args,
               "queue": q, "attempt": 0, "max_retries": 3, "created_at": 0})
        .to_string()
        .into_bytes()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not an Ivy envelope"),
        (b"[1, 2, 3]".to_vec(), "not an Ivy envelope"),
        (
            envelope("no.such.task", json!({})),
            "unknown task `no.such.task`",
        ),
        (
            envelope(Add::NAME, json!({"x": "two", "y": 1})),
            "argument `x`",
        ),
        (envelope(Add::NAME, json!({"x": 1})), "missing argument `y`"),
        (
            envelope(Echo::NAME, json!({"blob": "x".repeat(32 * 1024)})),
            "exceeds the worker's limit of 16384 bytes",
        ),
        (
            json!({"v": 99, "id": "x", "task": "t", "args": {}, "queue": q, "attempt": 0,
                   "max_retries": 0, "created_at": 0})
            .to_string()
            .into_bytes(),
            "protocol version 99",
        ),
    ];
    for (body, _) in &cases {
        b.publish(msg(&q, body)).await.expect("publish poison");
    }
    let mut dead = wait_dead_letters(&b, &q, cases.len()).await;
    for (body, reason) in &cases {
        let i = dead
            .iter()
            .position(|d| &d.body == body)
            .unwrap_or_else(|| {
                panic!(
                    "poison message not dead-lettered: {}",
                    String::from_utf8_lossy(body)
                )
            });
        let d = dead.remove(i);
        assert!(
            d.reason.contains(reason),
            "reason {:?} lacks {reason:?}",
            d.reason
        );
    }
    // The worker is still consuming.
    let p = Producer::new(b.clone(), n.clone());
    let mut h = p
        .delayed_call(call::<Add>(&q, json!({"x": 1, "y": 2})))
        .await
        .expect("call");
    assert_eq!(step("after poison", h.result()).await.expect("result"), 3);
    let report = worker.stop().await;
    assert_eq!(report.dead_lettered, cases.len() as u64, "{report:?}");
}

async fn worker_killed_mid_task<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("killed");
    let first = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 1500})))
        .await
        .expect("call");
    until_running(&h, "task to start").await;
    // Kill: the worker future is dropped mid-task, as in a crash (no graceful shutdown).
    first.join.abort();
    let _ = first.join.await;
    let second = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    assert_eq!(
        step("redelivered task", h.result()).await.expect("result"),
        "done"
    );
    let report = second.stop().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
}

async fn graceful_shutdown<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("graceful");
    let p = Producer::new(b.clone(), n.clone());
    // Finishes within the grace period.
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(10));
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 600})))
        .await
        .expect("call");
    until_running(&h, "start").await;
    let report = worker.stop().await;
    assert_eq!(
        report.succeeded, 1,
        "the running task did not finish: {report:?}"
    );
    assert_eq!(step("result", h.result()).await.expect("result"), "done");

    // Does not finish within the grace period: returned to the broker, completed later.
    let worker = spawn_worker(&b, &n, &q, Duration::from_millis(200));
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 3000})))
        .await
        .expect("call");
    until_running(&h, "start").await;
    let report = worker.stop().await;
    assert_eq!(report.returned, 1, "{report:?}");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(10));
    assert_eq!(
        step("result after return", h.result())
            .await
            .expect("result"),
        "done"
    );
    worker.stop().await;
}

const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
const K3: &str = "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
const K9: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfefff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

async fn encryption<B: Broker, N: Notifier>(b: B, n: N) {
    use crate::crypto::Keyring;
    let q = unique("crypt");
    let ring = |spec: &str| Keyring::from_spec(spec).expect("test keys");
    // The worker: k2 is current, k1 still opens; k3 may only call `add`.
    let worker_ring = ring(&format!("k2:{K2},k1:{K1},k3:{K3}"))
        .allow_tasks("k3", &[Add::NAME])
        .expect("pattern");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let w = Worker::with_registry(b.clone(), n.clone(), registry())
        .queues([q.clone()])
        .keyring(worker_ring);
    let worker = Running {
        stop,
        join: tokio::spawn(w.run(async {
            let _ = stopped.await;
        })),
    };

    // Results, progress and errors arrive through sealed messages.
    let p = Producer::new(b.clone(), n.clone()).with_keyring(ring(&format!("k2:{K2}")));
    let mut h = p
        .delayed_call(call::<Add>(&q, json!({"x": 20, "y": 22})))
        .await
        .expect("call");
    assert_eq!(step("sealed add", h.result()).await.expect("result"), 42);
    let mut h = p
        .delayed_call(call::<Slow>(&q, json!({"ms": 90})))
        .await
        .expect("call");
    let progress: Vec<Value> = step(
        "sealed progress",
        futures_util::StreamExt::collect(h.progress()),
    )
    .await;
    assert_eq!(progress.last(), Some(&json!(3)));
    assert_eq!(
        step("sealed slow", h.result()).await.expect("result"),
        "done"
    );

    // What travels is sealed: a call parked on a queue nobody consumes shows no plaintext.
    let parked = unique("parked");
    p.send(call::<Echo>(&parked, json!({"value": "top secret"})))
        .await
        .expect("send");
    let mut c = b
        .consume(std::slice::from_ref(&parked), 1)
        .await
        .expect("consume");
    let d = next(&mut c, "parked call").await;
    assert!(
        d.body().starts_with(b"ivy1:"),
        "not sealed: {:?}",
        String::from_utf8_lossy(d.body())
    );
    assert!(!String::from_utf8_lossy(d.body()).contains("top secret"));
    d.ack().await.expect("ack");
    drop(c);

    // Rotation: a producer that only knows the old key k1 is still served.
    let old = Producer::new(b.clone(), n.clone()).with_keyring(ring(&format!("k1:{K1}")));
    let key = unique("rotated");
    old.send(call::<Mark>(&q, json!({ "key": key })))
        .await
        .expect("send under k1");
    step("call under the old key", async {
        while !marked(&key) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A retry is sealed too, and keeps its arguments.
    let mut h = p
        .delayed_call(call::<Boom>(&q, json!({"why": "sealed"})))
        .await
        .expect("call");
    assert!(matches!(
        step("sealed boom", h.result()).await,
        Err(Error::Task(_))
    ));
    let dead = wait_dead_letters(&b, &q, 1).await;
    assert!(dead[0].body.starts_with(b"ivy1:"), "dead letter not sealed");
    let opened = ring(&format!("k2:{K2}"))
        .open(&dead[0].body)
        .expect("opens");
    let retried = Envelope::from_slice(&opened.plaintext).expect("envelope");
    assert_eq!(retried.attempt, 1);
    assert_eq!(Value::Object(retried.args), json!({"why": "sealed"}));

    // Permissions: k3 may call `add` but not `echo`.
    let limited =
        Producer::new(b.clone(), n.clone()).with_keyring(ring(&format!("k3:{K3},k2:{K2}")));
    let mut h = limited
        .delayed_call(call::<Add>(&q, json!({"x": 1, "y": 1})))
        .await
        .expect("call");
    assert_eq!(step("permitted", h.result()).await.expect("result"), 2);
    let mut h = limited
        .delayed_call(echo(&q, json!(1)))
        .await
        .expect("call");
    match step("forbidden", h.result()).await {
        Err(Error::Task(f)) => assert_eq!(f.kind, TaskFailure::FORBIDDEN, "{f}"),
        other => panic!("expected ivy.forbidden, got {other:?}"),
    }

    // Refused to the dead letters: a plain call published by hand, a call under an unknown key,
    // and a sealed call with one bit flipped.
    let plain = json!({"v": PROTOCOL_VERSION, "id": new_task_id(), "task": Add::NAME,
                       "args": {"x": 1, "y": 2}, "queue": q, "attempt": 0, "max_retries": 0,
                       "created_at": 0})
    .to_string()
    .into_bytes();
    let foreign = ring(&format!("k9:{K9}")).seal(&plain);
    let mut flipped = ring(&format!("k2:{K2}")).seal(&plain);
    let last = flipped.len() - 3;
    flipped[last] ^= 0x01;
    for body in [&plain, &foreign, &flipped] {
        b.publish(msg(&q, body)).await.expect("publish");
    }
    let dead = wait_dead_letters(&b, &q, 4).await; // 3 refused + the forbidden echo
    for body in [&plain, &foreign, &flipped] {
        let d = dead
            .iter()
            .find(|d| &d.body == body)
            .expect("refused message in the dead letters");
        assert!(
            d.reason.starts_with("refused by the keyring"),
            "{}",
            d.reason
        );
    }
    assert!(dead.iter().any(|d| d.reason.contains("may not call task")));
    let report = worker.stop().await;
    assert_eq!(report.refused, 4, "{report:?}");
}

/// Runs every broker check on a fresh broker from `make` each time.
#[macro_export]
macro_rules! broker_conformance {
    ($make:ident) => {
        mod broker_conformance {
            $crate::__conformance_cases!(
                $make, broker;
                round_trip, fifo_order, ack_removes, redelivery_after_consumer_dies,
                requeue_returns, retry_after_delay, delayed_publish, dead_letter_keeps_reason,
                prefetch_limits_unsettled, priorities, oversized_refused, end_to_end,
                worker_killed_mid_task, poison_messages, graceful_shutdown, encryption
            );
        }
    };
}

/// Runs every notifier check on a fresh notifier from `make` each time.
#[macro_export]
macro_rules! notifier_conformance {
    ($make:ident) => {
        mod notifier_conformance {
            $crate::__conformance_cases!(
                $make, notifier;
                publish_subscribe, final_is_kept_for_late_readers, results_expire, end_to_end,
                late_producer_gets_result
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:ident, $kind:ident; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$kind::$case(super::$make().await).await
            }
        )*
    };
}
