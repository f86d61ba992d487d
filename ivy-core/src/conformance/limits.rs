//! Checks of a [`Notifier`]'s schedules and limits (issue 15): a tick is claimed once, rate
//! limit turns are spaced and never given twice, concurrency slots are leased.

use std::time::{Duration, Instant};

use super::helpers::{step, unique};
use crate::broker::{Notifier, Turn};

/// Of many replicas claiming one tick at once, exactly one wins; other ticks are separate;
/// a claim is free again once its ttl ran out.
pub async fn tick_is_claimed_once<N: Notifier>(n: N) {
    let schedule = unique("schedule");
    let claims = (0..10).map(|_| {
        let (n, s) = (n.clone(), schedule.clone());
        tokio::spawn(async move { n.claim_tick(&s, 1_000, Duration::from_secs(60)).await })
    });
    let mut won = 0;
    for claim in claims {
        if step("claim", claim).await.expect("join").expect("claim") {
            won += 1;
        }
    }
    assert_eq!(won, 1, "one replica claims the tick");
    let ttl = Duration::from_millis(300);
    assert!(n.claim_tick(&schedule, 2_000, ttl).await.expect("claim"));
    assert!(!n.claim_tick(&schedule, 2_000, ttl).await.expect("claim"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n.claim_tick(&schedule, 2_000, ttl).await.expect("claim") {
        assert!(Instant::now() < deadline, "the claim never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
