//! The worker's Prometheus metrics (feature `metrics`), scraped over HTTP after real calls.
#![cfg(feature = "metrics")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ivy::memory::{MemoryBroker, MemoryNotifier};
use ivy::{Producer, Worker};

#[ivy::task(name = "m.ok")]
async fn ok(n: u32) -> u32 {
    n
}

#[ivy::task(name = "m.bad", max_retries = 1, retry_backoff = "10ms")]
async fn bad() -> Result<u32, String> {
    Err("always".into())
}

/// `GET path` on `addr`: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("the metrics port answers");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample line starting with `prefix` (name and labels).
fn sample(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in:\n{body}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_calls() {
    let (b, n) = (MemoryBroker::new(), MemoryNotifier::new());
    let addr = free_port();
    let worker = Worker::new(b.clone(), n.clone()).unwrap().metrics(addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let p = Producer::new(b, n);
    for i in 0..3 {
        let mut h = p.delayed_call(ok::call(i)).await.unwrap();
        assert_eq!(h.result_timeout(Duration::from_secs(20)).await.unwrap(), i);
    }
    let mut h = p.delayed_call(bad::call()).await.unwrap();
    assert!(h.result_timeout(Duration::from_secs(20)).await.is_err());

    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        sample(&body, r#"ivy_tasks_total{task="m.ok",outcome="succeeded"}"#),
        3.0
    );
    assert_eq!(
        sample(&body, r#"ivy_tasks_total{task="m.bad",outcome="failed"}"#),
        1.0
    );
    assert_eq!(
        sample(&body, r#"ivy_task_retries_total{task="m.bad"}"#),
        1.0
    );
    assert_eq!(
        sample(&body, r#"ivy_dead_letters_total{queue="default"}"#),
        1.0
    );
    // Two attempts of m.bad and three of m.ok were timed; five calls waited.
    assert_eq!(
        sample(&body, r#"ivy_task_duration_seconds_count{task="m.ok"}"#),
        3.0
    );
    assert_eq!(
        sample(&body, r#"ivy_task_duration_seconds_count{task="m.bad"}"#),
        2.0
    );
    assert_eq!(
        sample(&body, r#"ivy_task_wait_seconds_count{task="m.ok"}"#),
        3.0
    );
    assert_eq!(sample(&body, "ivy_tasks_in_flight "), 0.0);
    assert!(
        body.contains("# TYPE ivy_task_duration_seconds histogram"),
        "{body}"
    );
    let (status, _) = tokio::task::spawn_blocking(move || get(addr, "/other"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_taken_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let worker = Worker::new(MemoryBroker::new(), MemoryNotifier::new())
        .unwrap()
        .metrics(addr);
    let err = worker.run(std::future::pending()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cannot serve the worker's metrics on {addr}")),
        "{err}"
    );
}
