//! Checks of a [`Notifier`]'s claims and limits (issues 15, 21): claims are fenced, rate
//! limit turns are spaced and never given twice, concurrency slots are leased.

use std::time::{Duration, Instant};

use super::helpers::{step, unique};
use crate::broker::{Claim, Notifier, Turn};

/// Fenced claims (issue 21): of many owners claiming one key at once exactly one wins; the
/// winner asking again (a lost answer, a renewal) still holds it while others are refused; a
/// release by anyone else does nothing, the owner's frees it; a key marked done says so to
/// everyone; a lease runs out.
pub async fn claims_are_fenced<N: Notifier>(n: N) {
    let key = unique("claim");
    let lease = Duration::from_secs(60);
    let claims = (0..10).map(|i| {
        let (n, key) = (n.clone(), key.clone());
        tokio::spawn(async move { (i, n.claim(&key, &format!("owner-{i}"), lease).await) })
    });
    let mut winners = Vec::new();
    for claim in claims {
        let (i, answer) = step("claim", claim).await.expect("join");
        match answer.expect("claim") {
            Claim::Won => winners.push(i),
            Claim::Held => {}
            other => panic!("a fresh key answered {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one owner wins: {winners:?}");
    let owner = format!("owner-{}", winners[0]);
    let other = format!("owner-{}", (winners[0] + 1) % 10);
    assert_eq!(
        n.claim(&key, &owner, lease).await.expect("claim"),
        Claim::Won,
        "the owner asks again"
    );
    assert_eq!(
        n.claim(&key, &other, lease).await.expect("claim"),
        Claim::Held
    );
    n.release(&key, &other).await.expect("release");
    assert_eq!(
        n.claim(&key, &other, lease).await.expect("claim"),
        Claim::Held,
        "another's release does nothing"
    );
    n.release(&key, &owner).await.expect("release");
    assert_eq!(
        n.claim(&key, &other, lease).await.expect("claim"),
        Claim::Won,
        "the owner's release frees it"
    );
    n.mark_done(&key, lease).await.expect("mark");
    n.mark_done(&key, lease).await.expect("mark again");
    for who in [&owner, &other] {
        assert_eq!(n.claim(&key, who, lease).await.expect("claim"), Claim::Done);
    }
    n.release(&key, &other).await.expect("release");
    assert_eq!(
        n.claim(&key, &owner, lease).await.expect("claim"),
        Claim::Done,
        "a release does not undo done"
    );

    let key = unique("lease");
    let short = Duration::from_millis(300);
    assert_eq!(n.claim(&key, "a", short).await.expect("claim"), Claim::Won);
    assert_eq!(n.claim(&key, "b", short).await.expect("claim"), Claim::Held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.claim(&key, "b", short).await.expect("claim") != Claim::Won {
        assert!(Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        n.claim(&key, "a", short).await.expect("claim"),
        Claim::Held,
        "a lapsed owner lost it"
    );
}

/// Turns are `interval` apart and each is given once; a turn beyond the horizon is not
/// reserved.
pub async fn rate_turns_are_spaced<N: Notifier>(n: N) {
    let task = unique("rate");
    let interval = Duration::from_millis(200);
    let horizon = Duration::from_secs(10);
    let start = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..5 {
        match n
            .reserve_turn(&task, interval, horizon)
            .await
            .expect("reserve")
        {
            Turn::Reserved(wait) => waits.push(wait + start.elapsed()),
            Turn::Busy(wait) => panic!("busy for {wait:?} within the horizon"),
        }
    }
    // Measured from `start`, turn i is due 200 ms × i later (within the time the calls took).
    let took = start.elapsed();
    for (i, due) in waits.iter().enumerate() {
        let expected = interval * i as u32;
        assert!(
            *due + Duration::from_millis(50) >= expected
                && *due <= expected + took + Duration::from_millis(50),
            "turn {i} due after {due:?}, expected {expected:?}"
        );
    }
    // The next free turn is ~1 s away: beyond a 500 ms horizon, so not taken...
    let busy = n
        .reserve_turn(&task, interval, Duration::from_millis(500))
        .await
        .expect("reserve");
    let Turn::Busy(far) = busy else {
        panic!("{busy:?} beyond the horizon")
    };
    assert!(far > Duration::from_millis(500), "{far:?}");
    // ...so it is still the next one given.
    let Turn::Reserved(next) = n
        .reserve_turn(&task, interval, horizon)
        .await
        .expect("reserve")
    else {
        panic!("busy within the horizon")
    };
    assert!(
        next <= far,
        "{next:?} after the busy answer's {far:?}: a turn was lost"
    );
}

/// At most `max` holders at once; a holder renews its own slot; a released slot and an
/// expired lease are free again.
pub async fn slots_are_leased<N: Notifier>(n: N) {
    let task = unique("slots");
    let lease = Duration::from_secs(60);
    assert!(n.acquire_slot(&task, "a", 2, lease).await.expect("acquire"));
    assert!(n.acquire_slot(&task, "b", 2, lease).await.expect("acquire"));
    assert!(!n.acquire_slot(&task, "c", 2, lease).await.expect("acquire"));
    assert!(n.acquire_slot(&task, "a", 2, lease).await.expect("renew"));
    n.release_slot(&task, "a").await.expect("release");
    n.release_slot(&task, "nobody")
        .await
        .expect("release of nothing");
    assert!(n.acquire_slot(&task, "c", 2, lease).await.expect("acquire"));
    assert!(!n.acquire_slot(&task, "d", 2, lease).await.expect("acquire"));

    // A holder that never comes back loses its slot when the lease runs out.
    let task = unique("lease");
    let short = Duration::from_millis(300);
    assert!(n
        .acquire_slot(&task, "dead", 1, short)
        .await
        .expect("acquire"));
    assert!(!n
        .acquire_slot(&task, "live", 1, lease)
        .await
        .expect("acquire"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n
        .acquire_slot(&task, "live", 1, lease)
        .await
        .expect("acquire")
    {
        assert!(Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!n
        .acquire_slot(&task, "dead", 1, short)
        .await
        .expect("acquire"));
}
