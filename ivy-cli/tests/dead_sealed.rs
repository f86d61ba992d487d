//! Dead letters of an encrypted deployment: `ivy dead list` opens them with `IVY_KEYS` (and
//! without the keys shows only what travels in clear), and `dead replay --reset-attempts`
//! seals the changed call again, so the worker, which refuses plain text, runs it.

mod common;

use std::sync::atomic::Ordering;

use common::{amqp_url, depth, ivy, queue, redis_url, runs, until, Worker, BROKEN};

const KEYS: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_dead_letters_are_read_and_replayed_with_the_keys() {
    let (b, r) = (amqp_url(), redis_url());
    let plain = [
        ("IVY_BROKER_URL", b.as_str()),
        ("IVY_RESULT_URL", r.as_str()),
    ];
    let keyed = [plain[0], plain[1], ("IVY_KEYS", KEYS)];
    let q = queue("sealed");
    BROKEN.store(true, Ordering::SeqCst);
    let worker = Worker::start(&b, &q, Some(ivy::Keyring::from_spec(KEYS).unwrap())).await;
    let id = ivy(
        &["call", "cli_tests.flaky", r#"{"n": 1}"#, "--queue", &q],
        &keyed,
    )
    .await
    .ok()
    .stdout
    .trim()
    .to_owned();
    until("the call is dead", || async {
        let d = depth(&plain, &q, &["--no-management"]).await;
        (d["dead"] == 1 && d["ready"] == 0).then_some(())
    })
    .await;

    let opened = ivy(&["dead", "list", &q, "--json"], &keyed)
        .await
        .ok()
        .json();
    let letter = &opened["dead_letters"][0];
    assert_eq!(
        (letter["id"].as_str(), letter["task"].as_str()),
        (Some(id.as_str()), Some("cli_tests.flaky"))
    );
    assert_eq!(letter["sealed"], true);
    let locked = ivy(&["dead", "list", &q, "--json"], &plain)
        .await
        .ok()
        .json();
    let letter = &locked["dead_letters"][0];
    // The task id travels in clear (AMQP message_id); the rest is sealed.
    assert_eq!(letter["id"].as_str(), Some(id.as_str()));
    assert_eq!(
        (letter["readable"].as_bool(), letter["task"].is_null()),
        (Some(false), true)
    );

    // Without the keys the attempts cannot be reset: the dead letter stays.
    BROKEN.store(false, Ordering::SeqCst);
    let refused = ivy(&["dead", "replay", &q, "--all", "--reset-attempts"], &plain).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("cannot reset its attempts"),
        "{refused:?}"
    );
    assert_eq!(depth(&plain, &q, &["--no-management"]).await["dead"], 1);

    ivy(
        &["dead", "replay", &q, "--id", &id, "--reset-attempts"],
        &keyed,
    )
    .await
    .ok();
    until("the replayed call ran", || async {
        (runs(&id) == 1).then_some(())
    })
    .await;
    until("nothing left", || async {
        let d = depth(&plain, &q, &["--no-management"]).await;
        (d["dead"] == 0 && d["ready"] == 0).then_some(())
    })
    .await;
    worker.stop().await;
}
