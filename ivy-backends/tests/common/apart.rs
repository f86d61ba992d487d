//! Two deployments on one Redis (or one cluster) stay apart: what the namespace tests
//! (`redis_prefix.rs`, `redis_cluster.rs`) check for each pair of notifier URLs.

use std::time::Duration;

use ivy_backends::redis::RedisNotifier;
use ivy_core::cancel::{CancelOutcome, CANCEL_CHANNEL};
use ivy_core::conformance::unique;
use ivy_core::events::EVENTS_CHANNEL;
use ivy_core::{Claim, Coordination, Incoming, Presence, Results, Subscription, Turn};
use tokio::time::timeout;

const TTL: Duration = Duration::from_secs(60);

/// The next message on `sub` (as text, for readable failures), skipping gap reports.
pub async fn next_message(sub: &mut impl Subscription) -> String {
    loop {
        match timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(Incoming::Message(m)))) => return String::from_utf8_lossy(&m).into(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no message within 10 s: {other:?}"),
        }
    }
}

/// What each publishes on `channel` reaches its own subscribers only: each hears its own
/// message first although the other's was published before (one node orders the pushes of one channel).
async fn channel_stays_apart(a: &RedisNotifier, b: &RedisNotifier, channel: &str) {
    let mut on_a = a.subscribe(channel).await.unwrap();
    let mut on_b = b.subscribe(channel).await.unwrap();
    b.publish(channel, b"from b".to_vec()).await.unwrap();
    a.publish(channel, b"from a".to_vec()).await.unwrap();
    b.publish(channel, b"from b, again".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut on_a).await, "from a", "on {channel}");
    assert_eq!(next_message(&mut on_b).await, "from b", "on {channel}");
    assert_eq!(
        next_message(&mut on_b).await,
        "from b, again",
        "b heard a's message on {channel}"
    );
}

/// Everything one deployment keeps or announces in Redis, checked against the other.
pub async fn deployments_stay_apart(a: &RedisNotifier, b: &RedisNotifier) {
    // Results and their reply channel.
    let id = unique("task");
    let reply = format!("ivy.reply.{}", unique("producer"));
    channel_stays_apart(a, b, &reply).await;
    a.publish_final(&reply, &id, b"42".to_vec(), TTL)
        .await
        .unwrap();
    assert_eq!(a.fetch(&id).await.unwrap().as_deref(), Some(&b"42"[..]));
    assert_eq!(b.fetch(&id).await.unwrap(), None, "b read a's result");
    assert_eq!(
        b.fetch_many(std::slice::from_ref(&id)).await.unwrap(),
        [None]
    );

    // Events.
    channel_stays_apart(a, b, EVENTS_CHANNEL).await;

    // Announcements.
    let (worker_a, worker_b) = (unique("worker-a"), unique("worker-b"));
    a.announce(&worker_a, worker_a.clone().into_bytes(), TTL)
        .await
        .unwrap();
    b.announce(&worker_b, worker_b.clone().into_bytes(), TTL)
        .await
        .unwrap();
    let seen_by_b = b.announcements().await.unwrap();
    assert!(seen_by_b.contains(&worker_b.clone().into_bytes()));
    assert!(
        !seen_by_b.contains(&worker_a.clone().into_bytes()),
        "b lists a's worker"
    );
    assert!(!a
        .announcements()
        .await
        .unwrap()
        .contains(&worker_b.clone().into_bytes()));
    a.withdraw(&worker_a).await.unwrap();
    b.withdraw(&worker_b).await.unwrap();

    // Cancels: kept, listed and announced apart.
    let mut cancels_b = b.subscribe(CANCEL_CHANNEL).await.unwrap();
    let (cancelled_a, cancelled_b) = (unique("task"), unique("task"));
    let outcome = a.cancel(&cancelled_a, b"a's".to_vec(), TTL).await.unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelled), "{outcome:?}");
    let outcome = b.cancel(&cancelled_b, b"b's".to_vec(), TTL).await.unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelled), "{outcome:?}");
    assert_eq!(
        next_message(&mut cancels_b).await,
        "b's",
        "b heard a's cancel"
    );
    assert!(a.is_cancelled(&cancelled_a).await.unwrap());
    assert!(
        !b.is_cancelled(&cancelled_a).await.unwrap(),
        "b sees a's cancel"
    );
    let listed = b.cancellations().await.unwrap();
    assert!(listed.iter().any(|(id, _)| *id == cancelled_b));
    assert!(
        !listed.iter().any(|(id, _)| *id == cancelled_a),
        "b lists a's cancel"
    );
    // A cancel of a call whose result only a stored is not "already finished" in b.
    let outcome = b.cancel(&id, b"late".to_vec(), TTL).await.unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelled), "{outcome:?}");

    // Claims, unique calls, chords and limits: each deployment has its own.
    let key = unique("once");
    assert_eq!(a.claim(&key, "owner-a", TTL).await.unwrap(), Claim::Won);
    assert_eq!(b.claim(&key, "owner-b", TTL).await.unwrap(), Claim::Won);
    let unique_key = unique("unique");
    let first = a
        .claim_unique(&unique_key, "id-a", "t-a", TTL)
        .await
        .unwrap();
    let second = b
        .claim_unique(&unique_key, "id-b", "t-b", TTL)
        .await
        .unwrap();
    assert_eq!((first, second), (None, None), "b found a's unique claim");
    let chord = unique("chord");
    assert_eq!(a.count_member(&chord, "m-a", TTL).await.unwrap(), 1);
    assert_eq!(b.count_member(&chord, "m-b", TTL).await.unwrap(), 1);
    let task = unique("limited");
    assert!(a.acquire_slot(&task, "a", 1, TTL).await.unwrap());
    assert!(
        b.acquire_slot(&task, "b", 1, TTL).await.unwrap(),
        "a's slot counted in b"
    );
    let hour = Duration::from_secs(3600);
    let turn = a.reserve_turn(&task, hour, Duration::ZERO).await.unwrap();
    assert!(matches!(turn, Turn::Reserved(_)), "{turn:?}");
    let turn = b.reserve_turn(&task, hour, Duration::ZERO).await.unwrap();
    assert!(
        matches!(turn, Turn::Reserved(_)),
        "a's turn counted in b: {turn:?}"
    );
}
