//! Results survive outages of the result store: a producer's handles keep waiting while their
//! own Redis is down, and say so when their limit passes during an outage; stored results are
//! re-read in one request.
//!
//! These tests stop their own Redis (port 6391, started here), never the shared one. They
//! share that server, so they take turns (`TURN`).
#![cfg(feature = "redis")]

mod common;
use common::own_redis::{Counting, OwnRedis, StopAtEnd};

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ivy_backends::redis::{RedisNotifier, RedisSubscription};
use ivy_core::conformance::{unique, Echo};
use ivy_core::memory::MemoryBroker;
use ivy_core::{Call, Error, Notification, Outcome, Producer, Result, Results, Subscription};
use serde_json::{json, Map};
use tokio::sync::Mutex;

const PASSWORD: &str = "outage-secret";
static REDIS: OwnRedis = OwnRedis::new(6391, Some(PASSWORD));

/// One test at a time on the one server.
static TURN: Mutex<()> = Mutex::const_new(());

fn url() -> String {
    REDIS.url()
}

fn redis_cli(args: &[&str]) -> Option<String> {
    REDIS.cli(args)
}

/// Starts the test's Redis; it stops when the returned guard is dropped.
fn own_redis() -> StopAtEnd {
    REDIS.start();
    REDIS.stop_at_end()
}

fn echo() -> Call<Echo> {
    Call::__new(Ok(Map::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_waits_through_an_outage_and_names_it_when_its_limit_passes() {
    let _turn = TURN.lock().await;
    let _redis = own_redis();
    let notifier = Counting::connect(&url()).await;
    let failed_reads = notifier.failed_reads.clone();
    let producer =
        Producer::new(MemoryBroker::new(), notifier).with_result_reread(Duration::from_millis(200));
    let mut patient = producer.delayed_call(echo()).await.unwrap();
    let mut hasty = producer.delayed_call(echo()).await.unwrap();
    // On a producer of its own, with the default re-read interval (15 s): no other handle
    // reads the store for it.
    let alone = Producer::new(
        MemoryBroker::new(),
        RedisNotifier::connect(&url()).await.unwrap(),
    );
    let mut lone = alone.delayed_call(echo()).await.unwrap();
    let patient_id = patient.id().to_owned();
    let waiting =
        tokio::spawn(async move { patient.result_timeout(Duration::from_secs(120)).await });

    REDIS.stop();
    // The patient handle re-reads the store (every 200 ms) and fails, more than once (or,
    // wrongly, gives up).
    let start = Instant::now();
    while failed_reads.load(Ordering::SeqCst) < 3 && !waiting.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(60), "failed re-reads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !waiting.is_finished(),
        "a handle with time left keeps waiting through the outage: {:?}",
        waiting.await
    );

    // A handle whose limit passes during the outage says that the store was out of reach.
    let err = hasty
        .result_timeout(Duration::from_millis(500))
        .await
        .expect_err("no result while Redis is down");
    assert!(
        matches!(err, Error::ResultStoreUnreachable { .. }),
        "not a bare timeout: {err:?}"
    );
    let said = common::chain(&err);
    assert!(said.contains("unreachable"), "{said}");
    assert!(said.contains("redis://:***@127.0.0.1:6391"), "{said}");
    assert!(!said.contains(PASSWORD), "{said}");

    // So does a handle with a limit shorter than the re-read interval: it takes a last look
    // (half-way through a limit this short, time enough for a failed read).
    let err = lone
        .result_timeout(Duration::from_secs(8))
        .await
        .expect_err("no result while Redis is down");
    assert!(
        matches!(err, Error::ResultStoreUnreachable { .. }),
        "not a bare timeout: {err:?}"
    );
    assert!(common::chain(&err).contains("redis://:***@127.0.0.1:6391"));

    // Redis back, the result stored: the patient handle gets it.
    let _redis = own_redis();
    let worker_side = RedisNotifier::connect(&url()).await.unwrap();
    let note = Notification::result(patient_id.clone(), 0, Outcome::Ok(json!({"ok": 1})));
    worker_side
        .publish_final(
            &unique("elsewhere"),
            &patient_id,
            note.to_bytes(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the handle finishes once the result is stored")
        .unwrap();
    assert_eq!(got.unwrap(), json!({"ok": 1}));
}

/// How many times the test's Redis ran `command` since its statistics were reset.
fn calls(command: &str) -> u64 {
    let stats = redis_cli(&["info", "commandstats"]).unwrap_or_default();
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a call count"))
}

/// After a gap the producer re-reads every waiting call's result: one `MGET`, not a `GET`
/// per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_results_are_read_in_one_request() {
    let _turn = TURN.lock().await;
    let _redis = own_redis();
    let n = RedisNotifier::connect(&url()).await.unwrap();
    let (a, missing, b) = (unique("a"), unique("missing"), unique("b"));
    let ttl = Duration::from_secs(60);
    let ch = unique("ch");
    n.publish_final(&ch, &a, b"first".to_vec(), ttl)
        .await
        .unwrap();
    n.publish_final(&ch, &b, b"second".to_vec(), ttl)
        .await
        .unwrap();
    assert_eq!(redis_cli(&["config", "resetstat"]).as_deref(), Some("OK"));

    let found = n.fetch_many(&[a, missing, b]).await.unwrap();
    assert_eq!(
        found,
        vec![Some(b"first".to_vec()), None, Some(b"second".to_vec())]
    );
    assert_eq!(calls("mget"), 1, "one MGET");
    assert_eq!(calls("get"), 0, "no GET per id");
    assert_eq!(
        n.fetch_many(&[]).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
}

/// Freezes the test's Redis (`SIGSTOP`): its connections stay open but nothing answers.
/// Thawed when dropped, also while unwinding from a failed assertion.
struct Frozen(String);

impl Frozen {
    fn freeze() -> Self {
        let pid = REDIS.pid();
        let status = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(status.success(), "kill -STOP {pid}: {status}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

async fn next_incoming(
    s: &mut RedisSubscription,
    what: &str,
) -> Option<Result<ivy_core::Incoming>> {
    tokio::time::timeout(Duration::from_secs(60), s.next())
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

/// A subscription whose server freezes (the connection open, nothing answering) notices, and
/// after the thaw is subscribed again: it reports the gap, and what is published is received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_notices_a_frozen_server() {
    let _turn = TURN.lock().await;
    let _redis = own_redis();
    let n = RedisNotifier::connect(&url()).await.unwrap();
    let ch = unique("frozen");
    let mut s = n.subscribe(&ch).await.unwrap();

    let frozen = Frozen::freeze();
    let noticed = next_incoming(&mut s, "the subscription notices the freeze")
        .await
        .expect("subscription open")
        .expect_err("an error saying the connection stopped answering");
    let said = common::chain(&noticed);
    assert!(said.contains("stopped answering"), "{said}");
    assert!(said.contains("redis://:***@127.0.0.1:6391"), "{said}");
    assert_eq!(s.interruptions(), 1);
    drop(frozen);

    let mut restored = false;
    while !restored {
        match next_incoming(&mut s, "the subscription restored").await {
            Some(Ok(ivy_core::Incoming::Gap)) => restored = true,
            Some(Ok(ivy_core::Incoming::Interrupted)) => {}
            // Still reconnecting while the server catches up.
            Some(Err(e)) => eprintln!("while thawing: {}", common::chain(&e)),
            other => panic!("a gap before anything else: {other:?}"),
        }
    }
    n.publish(&ch, b"after".to_vec()).await.unwrap();
    assert_eq!(
        next_incoming(&mut s, "the message published after the thaw")
            .await
            .expect("subscription open")
            .expect("no error"),
        ivy_core::Incoming::Message(b"after".to_vec())
    );
}

/// A subscription read more slowly than notifications come holds a bounded number of them;
/// beyond that it drops them and reports a gap, so its reader re-reads the stored results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscription_is_bounded_and_reports_a_gap() {
    let _turn = TURN.lock().await;
    let _redis = own_redis();
    let n = RedisNotifier::connect(&url()).await.unwrap();
    let ch = unique("flood");
    let mut s = n.subscribe(&ch).await.unwrap();
    // More than a subscription buffers (4096), none read yet.
    for i in 0..6000 {
        n.publish(&ch, format!("{i}").into_bytes()).await.unwrap();
    }
    let mut messages = 0;
    loop {
        match next_incoming(&mut s, "the buffered notifications and a gap").await {
            Some(Ok(ivy_core::Incoming::Gap)) => break,
            Some(Ok(ivy_core::Incoming::Message(_))) => messages += 1,
            other => panic!("a message or a gap: {other:?}"),
        }
    }
    assert!(messages < 6000, "{messages} messages before the gap");
}
