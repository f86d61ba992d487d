//! The bulk-send check (issue 24): `send_many` and `delayed_calls` through a producer and a
//! worker on the backend under test (the other trait from memory).

use std::time::Duration;

use serde_json::json;

use super::helpers::{call, echo, spawn_worker, step, unique};
use super::tasks::{until_marked, Add, Mark};
use crate::broker::{Broker, Notifier};
use crate::{Error, Producer};

/// Every call of a bulk send is published and runs, its handle resolving to its own result;
/// a call the producer refuses (too large) fails alone; duplicates of a unique call get the
/// first call's id; a group with a refused member returns that error and runs the others.
pub(super) async fn bulk_sends<B: Broker, N: Notifier>(b: B, n: N) {
    let q = unique("bulk");
    let worker = spawn_worker(&b, &n, &q, Duration::from_secs(5));
    let p = Producer::new(b.clone(), n.clone()).with_max_message_size(4096);
    let too_large = || call::<Add>(&q, json!({"x": "x".repeat(5000), "y": 1}));

    // 25 calls with results, the eighth too large for this producer.
    let calls = (0..25u64).map(|i| match i {
        7 => too_large(),
        _ => call::<Add>(&q, json!({"x": i, "y": i})),
    });
    let handles = step("delayed_calls", p.delayed_calls(calls))
        .await
        .expect("the notification channel");
    assert_eq!(handles.len(), 25);
    for (i, handle) in (0u64..).zip(handles) {
        match (i, handle) {
            (7, Err(Error::MessageTooLarge { .. })) => {}
            (7, other) => panic!("the oversized call should fail alone, got {other:?}"),
            (i, Ok(mut h)) => assert_eq!(
                step("a bulk call's result", h.result())
                    .await
                    .expect("result"),
                2 * i
            ),
            (i, Err(e)) => panic!("bulk call {i} failed: {e}"),
        }
    }

    // 30 fire-and-forget calls: 30 distinct ids, 30 runs.
    let key = unique("bulk-mark");
    let ids: Vec<_> = p
        .send_many((0..30).map(|_| call::<Mark>(&q, json!({ "key": key }))))
        .await
        .into_iter()
        .map(|r| r.expect("send_many"))
        .collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 30, "{ids:?}");
    until_marked(&key, 30, Duration::from_secs(60), "the bulk-sent calls").await;

    // Unique calls in one bulk send: the duplicate gets the first call's id.
    let id = unique("bulk-once");
    let window = Duration::from_secs(60);
    let sent = p
        .send_many([
            echo(&q, json!(1)).id(&id).unique_for(window),
            echo(&q, json!(2)).id(&id).unique_for(window),
        ])
        .await;
    let sent: Vec<_> = sent.into_iter().map(|r| r.expect("send_many")).collect();
    assert_eq!(sent, [id.clone(), id.clone()]);

    // A group with a refused member: its error, and the others still run.
    let key = unique("bulk-group");
    let calls = (0..5).map(|i| match i {
        2 => call::<Mark>(&q, json!({ "key": "k".repeat(5000) })),
        _ => call::<Mark>(&q, json!({ "key": key })),
    });
    match p.group(calls).await {
        Err(Error::MessageTooLarge { .. }) => {}
        other => panic!("expected the refused member's error, got {other:?}"),
    }
    until_marked(
        &key,
        4,
        Duration::from_secs(60),
        "the group's other members",
    )
    .await;
    worker.stop().await;
}
