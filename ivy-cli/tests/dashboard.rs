//! `ivy dashboard` in a real browser (Debian's chromium, driven through chromedriver) against
//! the real RabbitMQ and Redis, with a worker of this process that publishes task events:
//! the queue counts, a call that appears and finishes without a reload, dead letters and
//! their replay and purge buttons, arguments with markup shown as text, and the token.
//! The run writes docs/dashboard.png, the README's picture.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use browser::{Browser, Dashboard};
use common::{amqp_url, ivy_amqp, queue, redis_url, runs, until, BROKEN};
use fantoccini::Locator;
use ivy::backends::{broker_from_url, notifier_from_url};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An argument that would run if the page put it into the DOM as markup.
const XSS: &str = r#"<script>window.__xss=1</script><img src=x onerror="window.__xss=2">"#;

/// A worker of this process on `queue` with task events on, announcing every second.
async fn events_worker(
    q: &str,
    keys: Option<ivy::Keyring>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<ivy::Result<ivy::WorkerReport>>,
) {
    let broker = broker_from_url(&amqp_url()).await.expect("RabbitMQ");
    let notifier = notifier_from_url(&redis_url()).await.expect("Redis");
    let mut w = ivy::Worker::new(broker, notifier)
        .unwrap()
        .queues([q])
        .events(true)
        .event_args(true)
        .announce_every(Duration::from_secs(1));
    if let Some(keys) = keys {
        w = w.keyring(keys);
    }
    let id = w.id().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(w.run(async move {
        stopped.await.ok();
    }));
    (id, stop, join)
}

/// `ivy call` on `q`; the task id.
async fn call(task: &str, args: Value, q: &str) -> String {
    let run = ivy_amqp(&["call", task, &args.to_string(), "--queue", q])
        .await
        .ok();
    run.stdout.trim().to_owned()
}

const KEYS: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The script that checks the queue row of `q`: every figure as given.
fn counts(q: &str, want: &[(&str, u64)]) -> String {
    let checks: Vec<String> = want
        .iter()
        .map(|(col, n)| {
            format!("(r.querySelector('[data-col=\"{col}\"]') || {{}}).textContent === '{n}'")
        })
        .collect();
    format!(
        "const r = document.querySelector('tr[data-queue=\"{q}\"]'); return !!r && {};",
        checks.join(" && ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_queues_calls_and_dead_letters_and_replays() {
    let q = queue("dash");
    // Two calls wait before any worker serves the queue.
    for n in 0..2 {
        call("cli_tests.add", json!({"x": n, "y": 1}), &q).await;
    }
    let dash = Dashboard::start(&[&q]).await;
    let browser = Browser::start().await;
    browser.client.goto(&dash.url).await.unwrap();
    browser
        .wait(
            "the queue with 2 ready, none dead, no consumer",
            &counts(
                &q,
                &[
                    ("ready", 2),
                    ("in_flight", 0),
                    ("dead", 0),
                    ("consumers", 0),
                ],
            ),
        )
        .await;
    // Marks this page: a reload would lose it.
    browser.js("window.__loaded = true; return true;").await;

    // A worker comes, with events on; a call sent now appears and finishes on the page.
    BROKEN.store(true, Ordering::SeqCst);
    let (worker_id, stop, join) = events_worker(&q, None).await;
    let id = call("cli_tests.add", json!({"x": 20, "y": 22}), &q).await;
    browser
        .wait(
            "the new call, succeeded",
            &format!("return !!document.querySelector('tr[data-call=\"{id}\"][data-status=\"succeeded\"]');"),
        )
        .await;
    browser
        .wait(
            "the worker",
            &format!("return !!document.querySelector('[data-worker=\"{worker_id}\"]');"),
        )
        .await;
    browser
        .wait(
            "the queue drained, one consumer",
            &counts(&q, &[("ready", 0), ("consumers", 1)]),
        )
        .await;

    // A call followed to its result: its page shows the stored result.
    let waited = ivy_amqp(&[
        "call",
        "cli_tests.add",
        r#"{"x": 40, "y": 2}"#,
        "--queue",
        &q,
        "--wait",
    ])
    .await
    .ok();
    let waited = waited.stdout.split_whitespace().next().unwrap().to_owned();

    // Two dead letters: a call of a task broken for now, and one whose argument is markup.
    let flaky = call("cli_tests.flaky", json!({"n": 7}), &q).await;
    let xss = call("cli_tests.fail", json!({"message": XSS}), &q).await;
    browser
        .wait("two dead letters", &counts(&q, &[("dead", 2)]))
        .await;
    for dead in [&flaky, &xss] {
        browser
            .wait(
                "the dead letter's row",
                &format!("return !!document.querySelector('tr[data-dead=\"{dead}\"]');"),
            )
            .await;
    }
    assert_eq!(
        browser.js("return window.__loaded === true;").await,
        true,
        "the page was reloaded"
    );

    // The markup shows as text, and nothing of it ran or became an element.
    let args = browser
        .text(&format!("tr[data-dead=\"{xss}\"] td.args"))
        .await;
    assert_eq!(args, json!({"message": XSS}).to_string());
    let reason = browser
        .text(&format!("tr[data-dead=\"{xss}\"] td.reason"))
        .await;
    assert!(reason.as_str().unwrap().contains(XSS), "{reason}");
    assert_eq!(
        browser
            .js("return [window.__xss === undefined, document.querySelectorAll('main script, main img').length];")
            .await,
        json!([true, 0])
    );

    // Replay the flaky call, fixed now: it runs once, and leaves the dead letters.
    BROKEN.store(false, Ordering::SeqCst);
    browser
        .client
        .find(Locator::Css(&format!(
            "tr[data-dead=\"{flaky}\"] button[data-action=\"replay\"]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the replayed call to run", || async {
        (runs(&flaky) == 1).then_some(())
    })
    .await;
    let flash = browser.text(".flash").await;
    assert_eq!(flash, json!(format!("replayed 1 dead letter(s) onto {q}")));
    browser
        .wait("one dead letter left", &counts(&q, &[("dead", 1)]))
        .await;
    browser
        .wait(
            "the replayed call, succeeded, out of the dead letters",
            &format!(
                "return !!document.querySelector('tr[data-call=\"{flaky}\"][data-status=\"succeeded\"]') \
                 && !document.querySelector('tr[data-dead=\"{flaky}\"]');"
            ),
        )
        .await;
    assert_eq!(runs(&flaky), 1);
    // The flash message fades by itself; the picture is taken without it, and without the
    // note about sealed events, which come from the test of sealed payloads running beside.
    browser
        .js("document.querySelectorAll('.flash, #status .warn').forEach(e => e.remove()); return true;")
        .await;
    let png = browser.client.screenshot().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png");
    std::fs::write(path, png).unwrap();

    // A call's page: the stored result.
    browser
        .client
        .goto(&format!("{}/calls/{waited}", dash.url))
        .await
        .unwrap();
    assert_eq!(
        browser.text("#call pre.result[data-outcome=\"ok\"]").await,
        "42"
    );
    assert_eq!(
        browser.text("#call [data-status]").await,
        "succeeded",
        "the events of the call"
    );

    // The failed call's page: its arguments and its failure, as text.
    browser
        .client
        .goto(&format!("{}/calls/{xss}", dash.url))
        .await
        .unwrap();
    let page_args = browser.text("#call pre.args").await;
    assert_eq!(page_args, json!({"message": XSS}).to_string());
    browser
        .wait(
            "the failure on the call's page",
            &format!(
                "return !!document.querySelector('#call [data-status=\"failed\"]') && \
                 document.querySelector('#call').textContent.includes({});",
                json!(XSS)
            ),
        )
        .await;
    assert_eq!(
        browser
            .js("return [window.__xss === undefined, document.querySelectorAll('main script, main img').length];")
            .await,
        json!([true, 0])
    );
    // For a person to look at; not committed.
    let png = browser.client.screenshot().await.unwrap();
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard-call.png"),
        png,
    )
    .unwrap();

    // Purge, through its confirmation.
    browser.client.goto(&dash.url).await.unwrap();
    browser
        .wait(
            "the purge button",
            &format!("return !!document.querySelector('[data-dead-queue=\"{q}\"] [data-action=\"purge\"]');"),
        )
        .await;
    browser
        .client
        .find(Locator::Css(&format!(
            "[data-dead-queue=\"{q}\"] [data-action=\"purge\"]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .client
        .wait()
        .for_element(Locator::Css("[data-action=\"confirm-purge\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait("no dead letter left", &counts(&q, &[("dead", 0)]))
        .await;
    assert_eq!(
        browser.text(".flash").await,
        json!(format!("purged 1 dead letter(s) of {q}"))
    );

    stop.send(()).ok();
    join.await.unwrap().unwrap();
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_call_shows_its_progress_live() {
    let q = queue("dash-progress");
    let (_, stop, join) = events_worker(&q, None).await;
    let dash = Dashboard::start(&[&q]).await;
    let browser = Browser::start().await;
    browser.client.goto(&dash.url).await.unwrap();
    browser
        .wait("the queue", &counts(&q, &[("consumers", 1)]))
        .await;
    browser.js("window.__loaded = true; return true;").await;

    // A fire-and-forget call, sent after the page loaded, reports 3 of 4 and waits.
    const LABEL: &str = "<b>almost</b> there";
    let id = call("cli_tests.stepwise", json!({"label": LABEL}), &q).await;
    let row = format!("tr[data-call=\"{id}\"][data-status=\"started\"]");
    browser
        .wait(
            "a bar at 75% in the recent calls",
            &format!(
                "const r = document.querySelector('{row}'); return !!r \
                 && r.querySelector('progress.bar.known')?.value === 75 \
                 && r.querySelector('progress.bar.known').max === 100 \
                 && r.querySelector('.pct').textContent === '75%';"
            ),
        )
        .await;
    assert_eq!(
        browser.js("return window.__loaded === true;").await,
        true,
        "the page was reloaded"
    );
    // For a person to look at; not committed.
    let png = browser.client.screenshot().await.unwrap();
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard-progress.png"),
        png,
    )
    .unwrap();

    // The call's page shows the same bar, then the next progress, a text, as text.
    browser
        .client
        .goto(&format!("{}/calls/{id}", dash.url))
        .await
        .unwrap();
    browser
        .wait(
            "a bar at 75% on the call's page",
            "const c = document.querySelector('#call .running-progress'); return !!c \
             && c.querySelector('progress.bar.wide.known')?.value === 75 \
             && c.querySelector('.pct').textContent === '75%';",
        )
        .await;
    browser
        .wait(
            "the running call's arguments, as text, from its received event",
            "const a = document.querySelector('#call pre.args'); return !!a \
             && a.textContent.includes('almost</b> there') && !a.querySelector('b');",
        )
        .await;
    let png = browser.client.screenshot().await.unwrap();
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard-call-progress.png"),
        png,
    )
    .unwrap();
    browser.js("window.__loaded = true; return true;").await;
    common::STEP.store(1, Ordering::SeqCst);
    browser
        .wait(
            "the text progress, escaped, beside a moving bar",
            &format!(
                "const c = document.querySelector('#call .running-progress'); return !!c \
                 && c.querySelector('.progress-text')?.textContent === {} \
                 && !c.querySelector('.progress-text b') && !c.querySelector('.bar.known');",
                json!(LABEL)
            ),
        )
        .await;
    common::STEP.store(2, Ordering::SeqCst);
    browser
        .wait(
            "the call, succeeded, without a bar",
            "return !!document.querySelector('#call [data-status=\"succeeded\"]') \
             && !document.querySelector('#call .bar');",
        )
        .await;
    assert_eq!(
        browser.js("return window.__loaded === true;").await,
        true,
        "the call's page was reloaded"
    );

    stop.send(()).ok();
    join.await.unwrap().unwrap();
    browser.close().await;
}

/// A raw HTTP/1.1 request to the dashboard; its status code and body.
async fn http(url: &str, request: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(request.replace("HOST", addr).as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_requests_without_it_are_refused() {
    // Off loopback, a token is required before anything starts.
    let run = common::ivy(
        &["dashboard", "--listen", "0.0.0.0:0"],
        &[
            ("IVY_BROKER_URL", &amqp_url()),
            ("IVY_RESULT_URL", &redis_url()),
        ],
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("needs") || run.stderr.contains("token"),
        "{run:?}"
    );

    let token = "a-long-enough-test-token-0123456789";
    let q = queue("dash-token");
    call("cli_tests.add", json!({"x": 1, "y": 1}), &q).await;
    let dash = Dashboard::start(&[&q, "--token", token]).await;
    let browser = Browser::start().await;

    // Without the token: refused, and nothing of the deployment shown.
    browser.client.goto(&dash.url).await.unwrap();
    assert_eq!(browser.text("h2").await, json!("Token required"));
    assert_eq!(
        browser
            .js("return !!document.querySelector('#queues');")
            .await,
        false
    );
    let (code, _) = http(
        &dash.url,
        "GET /events HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = http(
        &dash.url,
        "GET / HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer wrong-token-of-the-same-len\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 401);

    // With it once in the address: the page, and a cookie keeps it for the next requests.
    browser
        .client
        .goto(&format!("{}/?token={token}", dash.url))
        .await
        .unwrap();
    browser
        .wait("the queue with 1 ready", &counts(&q, &[("ready", 1)]))
        .await;
    browser.client.goto(&dash.url).await.unwrap();
    browser
        .wait(
            "the page again, by the cookie",
            &counts(&q, &[("ready", 1)]),
        )
        .await;

    // A POST with the token but without the page's CSRF token is refused.
    let body = "csrf=not-the-one&all=1";
    let (code, _) = http(
        &dash.url,
        &format!(
            "POST /queues/{q}/purge HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(code, 403);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_payloads_open_only_with_the_keys() {
    let q = queue("dash-sealed");
    let keys = ivy::Keyring::from_spec(KEYS).unwrap();
    let (_, stop, join) = events_worker(&q, Some(keys)).await;
    let locked = Dashboard::start(&[&q]).await;
    let opened = Dashboard::start_with(&[&q], &[("IVY_KEYS", KEYS)]).await;
    // Sent once both follow the events (a dashboard hears the events from its start on).
    let id = common::ivy(
        &[
            "call",
            "cli_tests.fail",
            r#"{"message": "the sealed argument"}"#,
            "--queue",
            &q,
        ],
        &[
            ("IVY_BROKER_URL", &amqp_url()),
            ("IVY_RESULT_URL", &redis_url()),
            ("IVY_KEYS", KEYS),
        ],
    )
    .await
    .ok()
    .stdout
    .trim()
    .to_owned();
    let browser = Browser::start().await;
    let row = format!("tr[data-dead=\"{id}\"]");

    // Without the keys: the dead letter and the events are there, sealed.
    browser.client.goto(&locked.url).await.unwrap();
    browser
        .wait(
            "the sealed dead letter",
            &format!("return !!document.querySelector('{row}');"),
        )
        .await;
    assert_eq!(browser.text(&format!("{row} td.args")).await, "(sealed)");
    assert_eq!(
        browser.text(&format!("{row} td.name")).await,
        "(sealed: no key opens it)"
    );
    // (The reason travels in clear, as `ivy dead list` shows it: it may quote the failure.)
    browser
        .wait(
            "a note that events are sealed",
            "return document.querySelector('#status').textContent.includes('could not be read (sealed');",
        )
        .await;

    // With them: the arguments, and the call's events.
    browser.client.goto(&opened.url).await.unwrap();
    browser
        .wait(
            "the opened dead letter",
            &format!("return !!document.querySelector('{row}');"),
        )
        .await;
    assert_eq!(
        browser.text(&format!("{row} td.args")).await,
        json!({"message": "the sealed argument"}).to_string()
    );
    assert_eq!(
        browser.text(&format!("{row} td.name")).await,
        "cli_tests.fail"
    );
    browser
        .wait(
            "the opened call's events",
            &format!("return !!document.querySelector('tr[data-call=\"{id}\"]');"),
        )
        .await;

    stop.send(()).ok();
    join.await.unwrap().unwrap();
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_is_cancelled_from_its_page() {
    let q = queue("dash-cancel");
    let dash = Dashboard::start(&[&q]).await;
    let browser = Browser::start().await;
    // No worker on `q` yet: the call waits in the queue.
    let id = call("cli_tests.add", json!({"x": 1, "y": 2}), &q).await;
    browser
        .client
        .goto(&format!("{}/calls/{id}", dash.url))
        .await
        .unwrap();
    browser
        .wait(
            "the Cancel button",
            "return !!document.querySelector('#call button[data-action=\"cancel\"]');",
        )
        .await;
    browser
        .js("document.querySelector('#call button[data-action=\"cancel\"]').click(); return true;")
        .await;
    browser
        .wait(
            "the page saying it is cancelled",
            "return (document.querySelector('.flash')?.textContent || '').startsWith('cancelled:');",
        )
        .await;
    // The worker that comes later drops it: its result is the error ivy.cancelled.
    let (_, stop, join) = events_worker(&q, None).await;
    let id = id.as_str();
    until("the cancelled result", move || async move {
        let r = ivy_amqp(&["result", id]).await;
        (r.code == 1 && r.stderr.contains("ivy.cancelled")).then_some(())
    })
    .await;
    stop.send(()).ok();
    join.await.unwrap().unwrap();
    browser.close().await;
}
