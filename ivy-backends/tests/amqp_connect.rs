//! Connecting to RabbitMQ: errors that waiting cannot fix come back at once, naming the
//! (redacted) URL; a broker that is not there is waited for the whole `connect_timeout_ms`.
#![cfg(feature = "amqp")]

use std::time::{Duration, Instant};

use ivy_backends::amqp::AmqpBroker;
use ivy_core::conformance::unique;
use ivy_core::Broker;

mod common;
use common::{amqp_url, chain, msg};

/// Far longer than any of these tests may take: an error that comes back at all proves it
/// did not wait for the timeout.
const LONG: &str = "connect_timeout_ms=60000";
/// What the tests give a call that must fail at once.
const PROMPTLY: Duration = Duration::from_secs(30);

fn with(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

/// `url` with its vhost replaced by `vhost`.
fn on_vhost(vhost: &str) -> String {
    let url = amqp_url();
    let (without_query, query) = url.split_once('?').unwrap_or((&url, ""));
    let authority_end = without_query["amqp://".len()..]
        .find('/')
        .map_or(without_query.len(), |i| i + "amqp://".len());
    let mut out = format!("{}/{vhost}", &without_query[..authority_end]);
    if !query.is_empty() {
        out = format!("{out}?{query}");
    }
    out
}

async fn refused_at_once(url: &str) -> String {
    let started = Instant::now();
    let e = tokio::time::timeout(PROMPTLY, AmqpBroker::connect(url))
        .await
        .unwrap_or_else(|_| panic!("no answer within {PROMPTLY:?}: it waits for the timeout"))
        .expect_err("refused");
    let text = chain(&e);
    assert!(
        !text.contains("unreachable"),
        "after {:?}: {text}",
        started.elapsed()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vhost_fails_at_once_naming_the_url() {
    let vhost = unique("no-such-vhost");
    let url = with(&on_vhost(&vhost), LONG);
    let text = refused_at_once(&url).await;
    assert!(text.contains(&vhost), "{text}");
    assert!(text.contains("vhost"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_ending_in_a_bare_slash_says_how_to_name_the_default_vhost() {
    // `amqp://host:5672/` names the empty vhost, not `/` (the AMQP URI spec; Celery differs).
    let url = with(&on_vhost(""), LONG);
    let text = refused_at_once(&url).await;
    assert!(text.contains("vhost  not found"), "{text}");
    assert!(
        text.contains("%2f"),
        "says how to write the default vhost: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_at_once_naming_the_redacted_url() {
    let url = with(&amqp_url(), LONG).replacen("guest:guest@", "guest:hunter2@", 1);
    assert!(
        url.contains("hunter2"),
        "the test needs a URL with guest:guest@"
    );
    let text = refused_at_once(&url).await;
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1"), "{text}");
    assert!(text.contains("ACCESS_REFUSED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_a_consumer_at_once() {
    let url = with(&amqp_url(), LONG).replacen("guest:guest@", "guest:hunter2@", 1);
    let b = AmqpBroker::from_url(&url).unwrap();
    let e = tokio::time::timeout(PROMPTLY, b.consume(&[unique("amqp-refused")], 1))
        .await
        .unwrap_or_else(|_| panic!("no answer within {PROMPTLY:?}: it waits for the timeout"))
        .expect_err("refused");
    let text = chain(&e);
    assert!(!text.contains("unreachable"), "{text}");
    assert!(text.contains("ACCESS_REFUSED"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// Nothing listens on port 1: every attempt is refused by the OS, which waiting may fix
/// (a broker starting up), so the whole timeout is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_tried_for_the_whole_timeout() {
    let timeout = Duration::from_millis(3_000);
    let url = format!(
        "amqp://guest:hunter2@127.0.0.1:1/%2f?connect_timeout_ms={}",
        timeout.as_millis()
    );
    let b = AmqpBroker::from_url(&url).unwrap();

    let started = Instant::now();
    let e = b
        .publish(msg("nowhere", "x"))
        .await
        .expect_err("nothing there");
    let waited = started.elapsed();
    assert!(waited >= timeout, "a publish gave up after {waited:?}");
    let text = chain(&e);
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1:1"), "{text}");

    let started = Instant::now();
    AmqpBroker::connect(&url).await.expect_err("nothing there");
    let waited = started.elapsed();
    assert!(waited >= timeout, "connect gave up after {waited:?}");

    let started = Instant::now();
    b.consume(&["nowhere".to_owned()], 1)
        .await
        .expect_err("nothing there");
    let waited = started.elapsed();
    assert!(waited >= timeout, "consume gave up after {waited:?}");
}

/// A listener that accepts connections and never says a word: a node that is half there (a
/// hung VM, a firewall that swallows the handshake).
fn silent_node() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_passed_over_for_the_next() {
    let (_held, silent) = silent_node();
    // The shared RabbitMQ as the second node of the list.
    let real = amqp_url();
    let rest = real.strip_prefix("amqp://guest:guest@").expect("guest URL");
    let url = with(
        &format!("amqp://guest:guest@127.0.0.1:{silent},{rest}"),
        LONG,
    );
    let b = tokio::time::timeout(PROMPTLY, AmqpBroker::connect(&url))
        .await
        .expect("the silent node costs its share of an attempt, not the whole timeout")
        .expect("connected through the second node");
    let q = unique("past-silent");
    b.publish(msg(&q, "x")).await.unwrap();
    let node = b.connected_node().expect("a node");
    assert_ne!(node, format!("127.0.0.1:{silent}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_node_down_it_waits_the_timeout_then_names_the_url() {
    let (a, b) = (closed_port(), closed_port());
    let url =
        format!("amqp://guest:secret@127.0.0.1:{a},127.0.0.1:{b}/%2f?connect_timeout_ms=1500");
    let started = Instant::now();
    let e = tokio::time::timeout(PROMPTLY, AmqpBroker::connect(&url))
        .await
        .expect("an answer after the connect timeout")
        .expect_err("nothing to connect to");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "waited the timeout"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{a},127.0.0.1:{b}")) && !text.contains("secret"),
        "names every node, password hidden: {text}"
    );
}
