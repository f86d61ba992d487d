//! The workflow checks (issue 14): chains, groups and chords through a producer and a worker
//! on the backend under test (the other trait from memory).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::helpers::{call, spawn_worker, step, unique};
use super::tasks::{marked, marks, until_marked, Add, Boom, Failures, Mark, Sleepy, Sum, Tick};
use crate::broker::{Broker, Consumer, Delivery, Notifier, OutgoingMessage};
use crate::envelope::{new_task_id, TaskFailure};
use crate::flow::Step;
use crate::task::{Call, Task};
use crate::{Error, Producer};

fn with<T: Task, In>(queue: &str, slot: &'static str, args: Value) -> Step<T, In> {
    let Value::Object(map) = args else {
        panic!("arguments are an object")
    };
    Step::__new(slot, Ok(map)).queue(queue)
}

fn tick(queue: &str, key: &str, n: u64) -> Call<Tick> {
    call(queue, json!({ "n": n, "key": key }))
}

/// A chain of three typed steps resolves to the last result; a chain whose middle step fails
/// ends with that step's failure, named, and its last step never runs; hooks run.
pub(super) async fn chains<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("chain");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());

    // (2 + 3) + 10 + 100
    let chain = call::<Add>(&q, json!({"x": 2, "y": 3}))
        .then(with::<Add, u64>(&q, "x", json!({"y": 10})))
        .then(with::<Add, u64>(&q, "x", json!({"y": 100})));
    let last = chain.id().to_owned();
    let mut h = p.chain(chain).await.expect("chain");
    assert_eq!(h.id(), last);
    assert_eq!(
        step("chain of three", h.result()).await.expect("result"),
        115
    );

    // The middle step fails (after its retry): the chain's handle gets its failure, naming it.
    let never = unique("never");
    let chain = call::<Add>(&q, json!({"x": 1, "y": 1}))
        .then(with::<Boom, u64>(&q, "why", json!({})))
        .then(with::<Mark, ()>(&q, "unused", json!({ "key": never })));
    let mut h = p.chain(chain).await.expect("chain");
    match step("failing chain", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, "conformance::Boom", "{f}");
            assert!(
                f.message.contains("chain step `ivy.conformance.boom`"),
                "{}",
                f.message
            );
            assert!(
                f.message.contains("1 later step(s) did not run"),
                "{}",
                f.message
            );
            assert!(f.message.ends_with(": boom"), "{}", f.message);
        }
        other => panic!("expected the middle step's failure, got {other:?}"),
    }
    assert!(!marked(&never), "a step after the failed one ran");

    // Hooks: on_success after a success, on_failure after a failure (and not the other).
    let (ok, bad) = (unique("ok-hook"), unique("bad-hook"));
    let hooks = |c: Call<Add>| {
        c.on_success(call::<Mark>(&q, json!({ "key": ok })))
            .on_failure(call::<Mark>(&q, json!({ "key": bad })))
    };
    let mut h = p
        .delayed_call(hooks(call::<Add>(&q, json!({"x": 1, "y": 2}))))
        .await
        .expect("call");
    assert_eq!(step("hooked call", h.result()).await.expect("result"), 3);
    step("on_success hook to run", async {
        while !marked(&ok) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut h = p
        .delayed_call(hooks(call::<Add>(&q, json!({"x": "one", "y": 2}))))
        .await
        .expect("call");
    assert!(matches!(
        step("bad call", h.result()).await,
        Err(Error::Task(_))
    ));
    step("on_failure hook to run", async {
        while !marked(&bad) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!((marks(&ok), marks(&bad)), (1, 1));
    worker.stop().await;
}

/// A group of 100 gives its results in call order; a group's stream gives every result once.
pub(super) async fn groups<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("group");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let mut g = p
        .group((0..100u64).map(|i| call::<Add>(&q, json!({"x": i, "y": 1}))))
        .await
        .expect("group");
    assert_eq!(g.len(), 100);
    let results = step("group of 100", g.results()).await;
    let expected: Vec<Result<u64, TaskFailure>> = (1..=100).map(Ok).collect();
    assert_eq!(results, expected);

    // As they arrive: one failure among them, each index once.
    let calls = (0..10u64).map(|i| match i {
        4 => call::<Add>(&q, json!({"x": "four", "y": 1})),
        _ => call::<Add>(&q, json!({"x": i, "y": i})),
    });
    let g = p.group(calls).await.expect("group");
    let mut got: Vec<(usize, Result<u64, TaskFailure>)> =
        step("group stream", g.into_stream().collect()).await;
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(got.len(), 10);
    for (i, r) in got {
        match r {
            Ok(v) => assert_eq!(v, 2 * i as u64),
            Err(f) => assert_eq!((i, f.kind.as_str()), (4, TaskFailure::BAD_ARGUMENTS)),
        }
    }
    worker.stop().await;
}

/// A chord of 50: the callback runs once with every result in member order. A failed member
/// fails the chord with its error, or is passed to a callback that asks for failures.
pub(super) async fn chords<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("chord");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let (members, callback) = (unique("member"), unique("callback"));
    let calls: Vec<_> = (1..=50u64).map(|i| tick(&q, &members, i)).collect();
    let sum = with::<Sum, Vec<u64>>(&q, "values", json!({ "key": callback }));
    let mut h = p.chord(calls, sum).await.expect("chord");
    assert_eq!(step("chord of 50", h.result()).await.expect("result"), 1275);
    assert_eq!((marks(&members), marks(&callback)), (50, 1));

    // Member 1 of 3 fails: the chord fails with its error; the callback does not run.
    let callback = unique("callback");
    let calls = vec![
        call::<Tick>(&q, json!({"n": 1, "key": "x"})),
        call::<Tick>(&q, json!({"n": "two", "key": "x"})),
        call::<Tick>(&q, json!({"n": 3, "key": "x"})),
    ];
    let sum = with::<Sum, Vec<u64>>(&q, "values", json!({ "key": callback }));
    let mut h = p.chord(calls, sum).await.expect("chord");
    match step("failing chord", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::BAD_ARGUMENTS, "{f}");
            assert!(f.message.contains("chord member 1 of 3"), "{}", f.message);
        }
        other => panic!("expected the member's failure, got {other:?}"),
    }
    assert!(!marked(&callback));

    // The same, passing failures to the callback.
    let calls = vec![
        call::<Tick>(&q, json!({"n": 1, "key": "x"})),
        call::<Tick>(&q, json!({"n": "two", "key": "x"})),
        call::<Tick>(&q, json!({"n": "three", "key": "x"})),
    ];
    let failures = with::<Failures, Vec<Result<u64, TaskFailure>>>(&q, "results", json!({}));
    let mut h = p
        .chord_passing_failures(calls, failures)
        .await
        .expect("chord");
    assert_eq!(
        step("chord passing failures", h.result())
            .await
            .expect("result"),
        2
    );
    worker.stop().await;
}

/// A chord member delivered twice (as after a worker died before its ack) counts once: the
/// callback runs exactly once, with the right sum.
pub(super) async fn chord_member_delivered_twice<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("twice");
    let p = Producer::new(b.clone(), n.clone());
    let (members, callback) = (unique("member"), unique("callback"));
    let calls: Vec<_> = (1..=5u64).map(|i| tick(&q, &members, i)).collect();
    let sum = with::<Sum, Vec<u64>>(&q, "values", json!({ "key": callback }));
    let mut h = p.chord(calls, sum).await.expect("chord");
    // Before any worker runs: one member's message is there twice more.
    duplicate_one(&b, &q).await;

    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    assert_eq!(step("chord", h.result()).await.expect("result"), 15);
    until_marked(&members, 6, super::STEP, "every member delivery to run").await;
    worker.stop().await;
    // A member delivered again publishes the callback again (with the same id, `once`): the
    // callback ran once all the same; nothing but such copies may be left.
    assert_only_copies_left(&b, &q, h.id()).await;
    assert_eq!((marks(&members), marks(&callback)), (6, 1));
}

/// A cancelled chain step stops the rest: the chain's handle gets `ivy.cancelled`, naming the
/// step, and the next step never runs.
pub(super) async fn cancelled_step_stops_the_chain<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("chain-cancel");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let (slow, never) = (unique("slow"), unique("never"));
    let first_id = new_task_id();
    let first = call::<Sleepy>(&q, json!({ "key": slow, "ms": 20_000 })).id(first_id.clone());
    let chain = first.then(with::<Mark, String>(&q, "unused", json!({ "key": never })));
    let mut h = p.chain(chain).await.expect("chain");
    let started = format!("started:{slow}");
    step("the first step to start", async {
        while !marked(&started) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    p.cancel(&first_id).await.expect("cancel");
    match step("cancelled chain", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::CANCELLED, "{f}");
            assert!(
                f.message.contains("chain step `ivy.conformance.sleepy`"),
                "{}",
                f.message
            );
        }
        other => panic!("expected the chain to end cancelled, got {other:?}"),
    }
    worker.stop().await;
    assert!(!marked(&never), "the step after the cancelled one ran");
}

/// Cancelling a chain's handle stops the chain at the next step: the handle gets
/// `ivy.cancelled` and the later steps never run.
pub(super) async fn cancelled_chain_stops_at_the_next_step<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("chain-handle-cancel");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone());
    let (slow, never) = (unique("slow"), unique("never"));
    let chain = call::<Sleepy>(&q, json!({ "key": slow, "ms": 500 })).then(with::<Mark, String>(
        &q,
        "unused",
        json!({ "key": never }),
    ));
    let mut h = p.chain(chain).await.expect("chain");
    let started = format!("started:{slow}");
    step("the first step to start", async {
        while !marked(&started) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    h.cancel().await.expect("cancel");
    match step("cancelled chain", h.result()).await {
        Err(Error::Task(f)) => {
            assert_eq!(f.kind, TaskFailure::CANCELLED, "{f}");
            assert!(
                f.message.contains("the chain was cancelled"),
                "{}",
                f.message
            );
        }
        other => panic!("expected the chain to end cancelled, got {other:?}"),
    }
    assert!(
        marked(&format!("finished:{slow}")),
        "the running step was not stopped"
    );
    worker.stop().await;
    assert!(!marked(&never), "the step after the cancel ran");
}

/// A chain step delivered twice publishes its successor once: the next step runs once.
pub(super) async fn chain_step_delivered_twice<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("chain-twice");
    let p = Producer::new(b.clone(), n.clone());
    let (first, second) = (unique("first"), unique("second"));
    let chain = tick(&q, &first, 7).then(with::<Tick, u64>(&q, "n", json!({ "key": second })));
    let mut h = p.chain(chain).await.expect("chain");
    duplicate_one(&b, &q).await;
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    assert_eq!(step("chain", h.result()).await.expect("result"), 7);
    until_marked(
        &first,
        2,
        super::STEP,
        "both deliveries of the first step to run",
    )
    .await;
    worker.stop().await;
    assert_only_copies_left(&b, &q, h.id()).await;
    assert_eq!((marks(&first), marks(&second)), (2, 1));
}

/// Takes the next message of `q` and puts it back twice, as a redelivery would.
async fn duplicate_one<B: Broker>(b: &B, q: &str) {
    let mut c = b.consume(&[q.to_owned()], 1).await.expect("consume");
    let d = step("a message", c.next())
        .await
        .expect("consumer open")
        .expect("delivery");
    for _ in 0..2 {
        let copy = OutgoingMessage::new(new_task_id(), q.to_owned(), d.body().to_vec());
        b.publish(copy).await.expect("publish a copy");
    }
    d.ack().await.expect("ack");
    c.close().await.expect("close");
}

/// Nothing is waiting in `q` but copies of call `id` marked `once` (which a worker would
/// recognise and not run): each is taken, until none shows within 2 s.
async fn assert_only_copies_left<B: Broker>(b: &B, q: &str, id: &str) {
    let mut c = b.consume(&[q.to_owned()], 1).await.expect("consume");
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(2), c.next()).await {
        let env = crate::Envelope::from_slice(d.body()).expect("an envelope");
        assert!(
            env.id == id && env.once,
            "a message other than a copy of {id} was left in the queue: {}",
            String::from_utf8_lossy(d.body())
        );
        d.ack().await.expect("ack");
    }
    c.close().await.expect("close");
}

/// The notifier's workflow primitive: a member joins once, concurrent joins count apart.
pub(super) async fn claims<N: Notifier>(n: N) {
    let ttl = Duration::from_secs(60);
    let set = unique("set");
    assert_eq!(n.count_member(&set, "a", ttl).await.expect("join"), 1);
    assert_eq!(n.count_member(&set, "b", ttl).await.expect("join"), 2);
    assert_eq!(n.count_member(&set, "a", ttl).await.expect("join"), 2);

    // Concurrent joins of distinct members all count, each sees a distinct count.
    let set = unique("set");
    let counts = futures_util::future::join_all((0..20).map(|i| {
        let n = n.clone();
        let set = set.clone();
        async move {
            n.count_member(&set, &format!("m{i}"), ttl)
                .await
                .expect("join")
        }
    }))
    .await;
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=20).collect::<Vec<u64>>(), "{counts:?}");
}
