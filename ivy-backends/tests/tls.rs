//! `amqps://` and `rediss://` against TLS listeners of the test's own (see
//! `common/tls.rs`), certificate verification on: a CA given in the URL (`?cacertfile=`) or
//! through `SSL_CERT_FILE` works, for the backends' own connections and for a call whose result
//! comes back; a client certificate (`?certfile=&keyfile=`) is presented; a CA that did not
//! sign the server's certificate, or a host name the certificate does not cover, fails at once
//! with an error that says so and names the URL without its password.
//!
//! One test starts the servers (a RabbitMQ node takes seconds to boot) and runs the checks in
//! turn; it stops them at the end, also when a check fails.
#![cfg(all(feature = "amqp", feature = "redis"))]

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use ivy_backends::amqp::AmqpBroker;
use ivy_backends::redis::RedisNotifier;
use ivy_core::__private::{Map, Value};
use ivy_core::conformance::unique;
use ivy_core::{
    Broker, Call, Delivery, Producer, Registry, Results, Task, TaskFailure, TaskOptions, Worker,
};

mod common;
#[path = "common/tls.rs"]
mod tls_services;

use common::{chain, msg, next_within};
use tls_services::{TlsServices, REDIS_PASSWORD};

const STEP: Duration = Duration::from_secs(30);
/// Far longer than [`AT_ONCE`]: an error that comes within it was not retried until the
/// connect timeout.
const LONG_CONNECT_TIMEOUT: &str = "connect_timeout_ms=600000";
const AT_ONCE: Duration = Duration::from_secs(60);

/// Doubles `n`.
struct Double;
impl Task for Double {
    const NAME: &'static str = "test.tls.double";
    const OPTIONS: TaskOptions = TaskOptions::DEFAULT;
    type Output = u64;
    async fn run(args: Map<String, Value>) -> Result<Value, TaskFailure> {
        let n = args.get("n").and_then(Value::as_u64).unwrap_or_default();
        Ok(Value::from(n * 2))
    }
}

/// The error of `attempt`, which must fail well before any retry loop would give up.
async fn fails_at_once<T>(
    what: &str,
    attempt: impl Future<Output = ivy_core::Result<T>>,
) -> String {
    match tokio::time::timeout(AT_ONCE, attempt).await {
        Ok(Ok(_)) => panic!("{what}: succeeded"),
        Ok(Err(e)) => chain(&e),
        Err(_) => panic!("{what}: no answer within {AT_ONCE:?}, so it was retried"),
    }
}

fn assert_says(error: &str, says: &str, url: &str) {
    assert!(error.contains(says), "expected `{says}` in: {error}");
    assert!(error.contains(url), "expected the URL `{url}` in: {error}");
    assert!(
        !error.contains("guest:guest") && !error.contains(REDIS_PASSWORD),
        "a password in: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_rediss_verify_certificates() {
    let tls = TlsServices::start();
    amqps_with_the_ca_of_the_url(&tls).await;
    amqps_refuses_what_it_cannot_verify(&tls).await;
    rediss_with_the_ca_of_the_url(&tls).await;
    rediss_refuses_what_it_cannot_verify(&tls).await;
    a_call_over_amqps_returns_its_result_over_rediss(&tls).await;
    amqps_reconnects_after_the_node_restarts(&tls).await;
    the_ca_of_ssl_cert_file_is_trusted(&tls);
}

async fn amqps_with_the_ca_of_the_url(tls: &TlsServices) {
    let ca = format!("cacertfile={}", tls.file("ca.pem"));
    let client = format!(
        "{ca}&certfile={}&keyfile={}",
        tls.file("client.pem"),
        tls.file("client.key")
    );
    // 127.0.0.1 is in the certificate; with a client certificate too (the node checks it).
    for url in [
        tls.amqps_url("127.0.0.1", &ca),
        tls.amqps_url("127.0.0.1", &client),
    ] {
        let b = AmqpBroker::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("amqps with the URL's CA: {}", chain(&e)));
        let q = unique("tls-amqps");
        b.publish(msg(&q, "over TLS"))
            .await
            .expect("publish over amqps");
        let mut c = b
            .consume(std::slice::from_ref(&q), 1)
            .await
            .expect("consume over amqps");
        let d = next_within(&mut c, STEP).await;
        assert_eq!(d.body(), b"over TLS");
        d.ack().await.expect("ack over amqps");
    }
}

async fn amqps_refuses_what_it_cannot_verify(tls: &TlsServices) {
    let shown = |host: &str| format!("amqps://guest:***@{host}:{}", tls_services::AMQPS_PORT);
    let wrong_ca = format!(
        "cacertfile={}&{LONG_CONNECT_TIMEOUT}",
        tls.file("wrong-ca.pem")
    );
    let url = tls.amqps_url("127.0.0.1", &wrong_ca);
    let e = fails_at_once("amqps, wrong CA", AmqpBroker::connect(&url)).await;
    assert_says(&e, "certificate is not trusted", &shown("127.0.0.1"));
    // Neither the consumer nor a publish waits out the connect timeout either.
    let b = AmqpBroker::from_url(&url).expect("a valid URL");
    let q = unique("tls-amqps-refused");
    let e = fails_at_once(
        "amqps consume, wrong CA",
        b.consume(std::slice::from_ref(&q), 1),
    )
    .await;
    assert_says(&e, "certificate is not trusted", &shown("127.0.0.1"));
    let e = fails_at_once("amqps publish, wrong CA", b.publish(msg(&q, "x"))).await;
    assert_says(&e, "certificate is not trusted", &shown("127.0.0.1"));

    // No CA given: the system's roots do not know the test CA.
    let url = tls.amqps_url("127.0.0.1", LONG_CONNECT_TIMEOUT);
    let e = fails_at_once("amqps, system roots", AmqpBroker::connect(&url)).await;
    assert_says(&e, "certificate is not trusted", &shown("127.0.0.1"));

    // The right CA, but a host name the certificate does not cover.
    let right_ca = format!("cacertfile={}&{LONG_CONNECT_TIMEOUT}", tls.file("ca.pem"));
    let url = tls.amqps_url("127.0.0.2", &right_ca);
    let e = fails_at_once("amqps, other host name", AmqpBroker::connect(&url)).await;
    assert_says(&e, "does not match the host name", &shown("127.0.0.2"));

    // A client certificate the node's CA did not sign.
    let foreign = format!(
        "{right_ca}&certfile={}&keyfile={}",
        tls.file("wrong-ca.pem"),
        tls.file("wrong-ca.key")
    );
    let url = tls.amqps_url("127.0.0.1", &foreign);
    let e = fails_at_once(
        "amqps, foreign client certificate",
        AmqpBroker::connect(&url),
    )
    .await;
    assert_says(&e, "refused Ivy's client certificate", &shown("127.0.0.1"));
}

async fn rediss_with_the_ca_of_the_url(tls: &TlsServices) {
    let ca = format!("cacertfile={}", tls.file("ca.pem"));
    let client = format!(
        "{ca}&certfile={}&keyfile={}",
        tls.file("client.pem"),
        tls.file("client.key")
    );
    for url in [
        tls.rediss_url("127.0.0.1", &ca),
        tls.rediss_url("127.0.0.1", &client),
    ] {
        let n = RedisNotifier::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("rediss with the URL's CA: {}", chain(&e)));
        let id = unique("tls-rediss");
        let mut sub = n.subscribe(&id).await.expect("subscribe over rediss");
        n.publish_final(&id, &id, b"stored".to_vec(), STEP)
            .await
            .expect("store over rediss");
        assert_eq!(n.fetch(&id).await.expect("fetch"), Some(b"stored".to_vec()));
        let got = tokio::time::timeout(STEP, ivy_core::Subscription::next(&mut sub))
            .await
            .expect("a notification in time")
            .expect("subscription open")
            .expect("no subscription error");
        assert_eq!(got, ivy_core::Incoming::Message(b"stored".to_vec()));
    }
}

async fn rediss_refuses_what_it_cannot_verify(tls: &TlsServices) {
    let shown = |host: &str| format!("rediss://:***@{host}:{}", tls_services::REDIS_PORT);
    let wrong_ca = format!("cacertfile={}", tls.file("wrong-ca.pem"));
    let url = tls.rediss_url("127.0.0.1", &wrong_ca);
    let e = fails_at_once("rediss, wrong CA", RedisNotifier::connect(&url)).await;
    assert_says(&e, "TLS handshake with Redis", &shown("127.0.0.1"));
    assert_says(&e, "certificate is not trusted", &shown("127.0.0.1"));

    let url = tls.rediss_url("127.0.0.1", "");
    let e = fails_at_once("rediss, system roots", RedisNotifier::connect(&url)).await;
    assert_says(&e, "certificate is not trusted", &shown("127.0.0.1"));

    let right_ca = format!("cacertfile={}", tls.file("ca.pem"));
    let url = tls.rediss_url("127.0.0.2", &right_ca);
    let e = fails_at_once("rediss, other host name", RedisNotifier::connect(&url)).await;
    assert_says(&e, "does not match the host name", &shown("127.0.0.2"));

    // redis-rs's way to skip verification is not available.
    let url = format!("{}#insecure", tls.rediss_url("127.0.0.1", ""));
    let e = fails_at_once("rediss, #insecure", RedisNotifier::connect(&url)).await;
    assert_says(&e, "unusable TLS settings", &shown("127.0.0.1"));

    let foreign = format!(
        "{right_ca}&certfile={}&keyfile={}",
        tls.file("wrong-ca.pem"),
        tls.file("wrong-ca.key")
    );
    let url = tls.rediss_url("127.0.0.1", &foreign);
    let e = fails_at_once(
        "rediss, foreign client certificate",
        RedisNotifier::connect(&url),
    )
    .await;
    assert_says(&e, "refused Ivy's client certificate", &shown("127.0.0.1"));
}

async fn a_call_over_amqps_returns_its_result_over_rediss(tls: &TlsServices) {
    let ca = format!("cacertfile={}", tls.file("ca.pem"));
    let b = AmqpBroker::connect(&tls.amqps_url("127.0.0.1", &ca))
        .await
        .expect("amqps");
    let n = RedisNotifier::connect(&tls.rediss_url("127.0.0.1", &ca))
        .await
        .expect("rediss");
    let q = unique("tls-e2e");
    let registry = Registry::new().register::<Double>().expect("one task");
    let worker = Worker::with_registry(b.clone(), n.clone(), registry)
        .queues([q.clone()])
        .concurrency(1)
        .grace_period(Duration::from_secs(5));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let p = Producer::new(b, n);
    let mut args = Map::new();
    args.insert("n".into(), Value::from(21));
    let mut h = p
        .delayed_call(Call::<Double>::__new(Ok(args)).queue(&q))
        .await
        .expect("a call over amqps");
    let result = h
        .result_timeout(STEP)
        .await
        .expect("its result over rediss");
    assert_eq!(result, 42);
    let _ = stop.send(());
    running
        .await
        .expect("the worker task")
        .expect("the worker stopped cleanly");
}

/// A lost TLS connection is an outage, not a certificate problem: a publish while the node is
/// down waits for it and goes through once it is back.
async fn amqps_reconnects_after_the_node_restarts(tls: &TlsServices) {
    let query = format!(
        "cacertfile={}&connect_timeout_ms=120000",
        tls.file("ca.pem")
    );
    let b = AmqpBroker::connect(&tls.amqps_url("127.0.0.1", &query))
        .await
        .expect("amqps");
    let q = unique("tls-restart");
    b.publish(msg(&q, "before")).await.expect("publish before");
    tls.stop_rabbitmq();
    let publish = tokio::spawn({
        let b = b.clone();
        let q = q.clone();
        async move { b.publish(msg(&q, "while down")).await }
    });
    tls.restart_rabbitmq();
    publish
        .await
        .expect("the publish task")
        .unwrap_or_else(|e| panic!("a publish across the restart: {}", chain(&e)));
    let mut c = b
        .consume(std::slice::from_ref(&q), 2)
        .await
        .expect("consume after the restart");
    for body in ["before", "while down"] {
        let d = next_within(&mut c, STEP).await;
        assert_eq!(d.body(), body.as_bytes());
        d.ack().await.expect("ack");
    }
}

/// The environment's way: `SSL_CERT_FILE`, read by the system-roots loader of both clients.
/// Environment variables are process-wide, so the check runs in a child process: this test
/// binary again, running only [`trusts_the_ca_of_ssl_cert_file`].
fn the_ca_of_ssl_cert_file_is_trusted(tls: &TlsServices) {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "trusts_the_ca_of_ssl_cert_file", "--ignored"])
        .env("SSL_CERT_FILE", tls.file("ca.pem"))
        .env("IVY_TLS_TEST_AMQPS", tls.amqps_url("127.0.0.1", ""))
        .env("IVY_TLS_TEST_REDISS", tls.rediss_url("127.0.0.1", ""))
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child test with SSL_CERT_FILE: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by amqps_and_rediss_verify_certificates, with SSL_CERT_FILE and its servers"]
async fn trusts_the_ca_of_ssl_cert_file() {
    let (Ok(amqps), Ok(rediss), Ok(_)) = (
        std::env::var("IVY_TLS_TEST_AMQPS"),
        std::env::var("IVY_TLS_TEST_REDISS"),
        std::env::var("SSL_CERT_FILE"),
    ) else {
        panic!("only amqps_and_rediss_verify_certificates runs this, with its environment");
    };
    let b = AmqpBroker::connect(&amqps)
        .await
        .unwrap_or_else(|e| panic!("amqps with SSL_CERT_FILE: {}", chain(&e)));
    let q = unique("tls-env");
    b.publish(msg(&q, "x")).await.expect("publish");
    let n = RedisNotifier::connect(&rediss)
        .await
        .unwrap_or_else(|e| panic!("rediss with SSL_CERT_FILE: {}", chain(&e)));
    assert_eq!(n.fetch(&q).await.expect("a read over rediss"), None);
}
